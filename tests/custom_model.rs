//! The bring-your-own-model example runs end to end: a residual MLP fedtune's zoo does
//! not have, federated over loopback QUIC by its name and manifest, learns the digits.

mod common;

use std::process::Command;

#[test]
fn the_custom_model_example_federates_a_model_outside_the_zoo() {
    // `cargo test` builds the examples next to the test binaries.
    let example = common::binary("examples/custom_model");
    let dir = common::scratch_dir("custom-model");
    let summary = dir.join("summary.json");
    let output = Command::new(&example)
        .args(["--agents", "4", "--rounds", "6", "--summary"])
        .arg(&summary)
        .env("RUST_LOG", "warn")
        .output()
        .unwrap_or_else(|e| panic!("{}: {e}", example.display()));
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let summary: serde_json::Value = serde_json::from_slice(&std::fs::read(&summary).unwrap()).unwrap();
    assert_eq!(summary["rounds"], 6);
    let tensors: Vec<&str> = summary["tensors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t.as_str().unwrap())
        .collect();
    assert!(
        tensors.contains(&"blocks.1.b.weight") && tensors.contains(&"norm.gamma"),
        "{tensors:?}"
    );
    let by_round: Vec<f64> = summary["test_accuracy_by_round"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_f64().unwrap())
        .collect();
    let last = summary["final_test_accuracy"].as_f64().unwrap();
    assert!(
        last > 0.8 && last >= by_round[0],
        "test accuracy {by_round:?} -> {last}"
    );
}
