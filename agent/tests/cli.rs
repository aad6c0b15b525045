//! The `fedtune-agent` binary answers bad input with a clear error, not a panic.

use std::process::Command;

fn agent(args: &[&str]) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_fedtune-agent"))
        .args(args)
        .output()
        .expect("agent binary runs");
    (out.status.success(), String::from_utf8_lossy(&out.stderr).into_owned())
}

#[test]
fn a_missing_config_is_named() {
    let (ok, stderr) = agent(&["run", "--config", "/nonexistent/agent.toml"]);
    assert!(!ok);
    assert!(
        stderr.contains("cannot read config /nonexistent/agent.toml"),
        "{stderr}"
    );
    assert!(!stderr.contains("panicked"), "{stderr}");
}

#[test]
fn a_bad_config_value_is_named() {
    let dir = std::env::temp_dir().join(format!("fedtune-agent-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("agent.toml");
    let example = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../config/agent.toml")).unwrap();
    std::fs::write(
        &path,
        example.replace("file:../data/digits_partition.json", "dirichlet:-3"),
    )
    .unwrap();
    let (ok, stderr) = agent(&["run", "--config", path.to_str().unwrap()]);
    assert!(!ok);
    assert!(stderr.contains("dirichlet:-3"), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn missing_certificates_are_named() {
    let dir = std::env::temp_dir().join(format!("fedtune-agent-cli-pki-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("agent.toml");
    let example = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../config/agent.toml")).unwrap();
    std::fs::write(&path, example).unwrap();
    let (ok, stderr) = agent(&["run", "--config", path.to_str().unwrap()]);
    assert!(!ok);
    assert!(stderr.contains("pki/ca.pem"), "{stderr}");
    let _ = std::fs::remove_dir_all(&dir);
}
