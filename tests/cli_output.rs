//! What the binaries say to an operator: errors as one line of words (no backtrace, no
//! repeated cause, the setting that named a bad file), logs without colour codes when
//! nobody is looking at a terminal, and a quiet end when the reader of stdout goes away.

mod common;

use std::process::{Command, Stdio};

/// The shipped aggregator config in `dir` (its PKI made by `init`), edited by `edit`.
fn aggregator_config(dir: &std::path::Path, edit: impl Fn(String) -> String) -> std::path::PathBuf {
    common::init_pki(dir, 2);
    let toml = std::fs::read_to_string(common::repo().join("config/aggregator.toml"))
        .unwrap()
        .replace("127.0.0.1:4433", &format!("127.0.0.1:{}", common::free_udp_port()));
    let path = dir.join("aggregator.toml");
    std::fs::write(&path, edit(toml)).unwrap();
    path
}

/// `serve` on `config` with a backtrace asked for; its exit status and stderr.
fn serve(config: &std::path::Path) -> (bool, String) {
    let output = Command::new(common::binary("fedtune-aggregator"))
        .args(["serve", "--config"])
        .arg(config)
        .env("RUST_BACKTRACE", "1")
        .env_remove("NO_COLOR")
        .output()
        .unwrap();
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[test]
fn a_missing_file_names_its_setting_once_and_no_backtrace_is_printed() {
    let dir = common::scratch_dir("cli-missing-file");
    let config = aggregator_config(&dir, |t| {
        t.replace("cert = \"pki/server.pem\"", "cert = \"pki/nope.pem\"")
    });
    let (ok, stderr) = serve(&config);
    assert!(!ok);
    assert!(stderr.starts_with("error: [pki] cert: "), "{stderr}");
    assert!(stderr.contains("nope.pem"), "{stderr}");
    assert_eq!(stderr.matches("No such file").count(), 1, "the OS error once: {stderr}");
    assert!(
        !stderr.contains("Caused by") && !stderr.contains("backtrace"),
        "{stderr}"
    );
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
}

#[test]
fn a_key_that_does_not_match_its_certificate_names_both_files() {
    let dir = common::scratch_dir("cli-key-mismatch");
    let config = aggregator_config(&dir, |t| {
        t.replace("key = \"pki/server.key\"", "key = \"pki/agents/agent-1.key\"")
    });
    let (ok, stderr) = serve(&config);
    assert!(!ok);
    assert!(
        stderr.contains("agent-1.key") && stderr.contains("server.pem") && stderr.contains("does not belong"),
        "{stderr}"
    );
    assert!(
        !stderr.contains("KeyMismatch"),
        "no Rust names in user output: {stderr}"
    );
}

#[test]
fn logs_carry_no_colour_codes_when_stderr_is_not_a_terminal() {
    let dir = common::scratch_dir("cli-no-ansi");
    // No agent comes: serve logs that it is serving and waiting, then gives up.
    let config = aggregator_config(&dir, |t| {
        t.replace("wait_for_agents_secs = 120", "wait_for_agents_secs = 1")
    });
    let (ok, stderr) = serve(&config);
    assert!(!ok, "no agent came: {stderr}");
    assert!(stderr.contains("serving on"), "{stderr}");
    assert!(
        !stderr.contains('\u{1b}'),
        "ANSI escape codes in piped logs: {stderr:?}"
    );
}

#[test]
fn a_reader_that_goes_away_ends_the_listing_quietly() {
    let dir = common::scratch_dir("cli-broken-pipe");
    let db = dir.join("fedtune.db");
    drop(fedtune::store::open(&db).unwrap());
    // `runs … | head -0`: the reader has gone before the first line is written.
    let mut child = Command::new(common::binary("fedtune-aggregator"))
        .args(["runs", "--db"])
        .arg(&db)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take());
    let output = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{:?}: {stderr}", output.status);
    assert!(stderr.is_empty(), "{stderr}");
}

/// `fedtune-agent run` on `config/agent.toml` edited by `edit` (its PKI made in `dir`); its
/// exit status, stdout and stderr.
fn agent(dir: &std::path::Path, edit: impl Fn(String) -> String) -> (bool, String, String) {
    common::init_pki(dir, 2);
    let path = common::agent_config(dir, common::free_udp_port(), 0);
    let toml = std::fs::read_to_string(&path).unwrap();
    std::fs::write(&path, edit(toml)).unwrap();
    let output = Command::new(common::binary("fedtune-agent"))
        .args(["run", "--config"])
        .arg(&path)
        .env("RUST_BACKTRACE", "1")
        .env_remove("NO_COLOR")
        .output()
        .unwrap();
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[test]
fn an_agent_whose_key_is_not_its_certificates_names_both_files_and_its_settings() {
    let dir = common::scratch_dir("cli-agent-key");
    let (ok, stdout, stderr) = agent(&dir, |t| t.replace("agents/agent-0.key", "agents/agent-1.key"));
    assert!(!ok);
    assert!(stdout.is_empty(), "logs and errors go to stderr: {stdout}");
    assert!(
        stderr.contains("agent-1.key") && stderr.contains("agent-0.pem") && stderr.contains("does not belong"),
        "{stderr}"
    );
    assert!(
        !stderr.contains("backtrace") && !stderr.contains("InconsistentKeys"),
        "{stderr}"
    );
    assert!(!stderr.contains('\u{1b}'), "{stderr:?}");
}

#[test]
fn an_agent_with_a_missing_file_names_its_setting() {
    let dir = common::scratch_dir("cli-agent-missing");
    let (ok, _, stderr) = agent(&dir, |t| t.replace("agents/agent-0.pem", "agents/nobody.pem"));
    assert!(!ok);
    assert!(stderr.starts_with("error: [pki] cert: "), "{stderr}");
    assert_eq!(stderr.matches("No such file").count(), 1, "{stderr}");
}

#[test]
fn other_missing_files_name_their_settings() {
    for (setting, edit) in [
        (
            "[model] init: ",
            Box::new(|t: String| t.replace("# init = \"pretrained.safetensors\" ", "init = \"missing.safetensors\""))
                as Box<dyn Fn(String) -> String>,
        ),
        (
            "[tuning] space: ",
            Box::new(|t: String| {
                t.replace("# [tuning]", "[tuning]")
                    .replace("# space = \"../presets/tabular.toml\"", "space = \"nope.toml\"")
            }),
        ),
    ] {
        let dir = common::scratch_dir("cli-missing-setting");
        let config = aggregator_config(&dir, edit);
        let (ok, stderr) = serve(&config);
        assert!(!ok);
        assert!(stderr.contains(setting), "{setting}: {stderr}");
        assert_eq!(stderr.lines().count(), 1, "{stderr}");
    }
}
