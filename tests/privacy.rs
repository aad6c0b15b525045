//! `fedtune-aggregator privacy`: a user plans a differentially private run from the
//! command line, and gets Opacus's figures.

mod common;

use std::process::Command;

/// Opacus's example: σ 1.5, q 0.04, 2,250 steps, δ 1e-5.
const OPACUS_EPSILON: [&str; 9] = [
    "epsilon",
    "--noise-multiplier",
    "1.5",
    "--sample-rate",
    "0.04",
    "--steps",
    "2250",
    "--delta",
    "1e-5",
];

fn privacy(args: &[&str]) -> std::process::Output {
    Command::new(common::binary("fedtune-aggregator"))
        .arg("privacy")
        .args(args)
        .output()
        .unwrap()
}

#[test]
fn epsilon_and_noise_print_opacus_s_figures_as_text_or_json() {
    let out = privacy(&[OPACUS_EPSILON.as_slice(), &["--json"]].concat());
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let spent: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    for field in ["epsilon", "noise_multiplier", "sample_rate", "steps", "delta", "order"] {
        assert!(spent.get(field).is_some(), "{field} missing from {spent}");
    }
    assert!((spent["epsilon"].as_f64().unwrap() - 7.32911).abs() < 1e-3, "{spent}");

    let out = privacy(&[
        "noise",
        "--epsilon",
        "8",
        "--delta",
        "1e-5",
        "--sample-rate",
        "0.04",
        "--steps",
        "2000",
        "--json",
    ]);
    let spent: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(
        (spent["noise_multiplier"].as_f64().unwrap() - 1.3562).abs() < 1e-4,
        "{spent}"
    );

    let out = privacy(&OPACUS_EPSILON);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.starts_with("ε = 7.329"), "{text}");
}

#[test]
fn bad_input_is_a_clear_error() {
    let out = privacy(&[
        "epsilon",
        "--noise-multiplier",
        "1",
        "--sample-rate",
        "1.5",
        "--steps",
        "10",
        "--delta",
        "1e-5",
    ]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("sample rate must be in [0, 1], got 1.5"), "{err}");
    let out = privacy(&[
        "noise",
        "--epsilon",
        "0.000001",
        "--delta",
        "1e-5",
        "--sample-rate",
        "1",
        "--steps",
        "1000000",
    ]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("no noise multiplier"));
}
