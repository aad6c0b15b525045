//! `fedtune-aggregator predict` on models fedtune wrote: a digits federation's final MLP
//! predicts the global test rows (a CSV) with exactly the accuracy the run reported, and
//! a BERT from a Hugging Face folder predicts raw text (JSON Lines) with the class
//! probabilities Hugging Face computes.

mod common;

use std::path::Path;
use std::process::Command;

use fedtune::agent::pretrained::{PretrainedOptions, load_pretrained};
use fedtune::agent::weights::Layout;
use fedtune::aggregator::service::save_model;
use fedtune::protocol::ModelSpec;

fn predict(model: &Path, weights: &Path, input: &Path, json: bool) -> (bool, String, String) {
    let mut command = Command::new(common::binary("fedtune-aggregator"));
    command
        .args(["predict", "--model"])
        .arg(model)
        .arg("--weights")
        .arg(weights);
    command.arg("--input").arg(input);
    if json {
        command.arg("--json");
    }
    let out = command.env("NO_COLOR", "1").output().unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_runs_final_model_predicts_its_test_rows_with_the_accuracy_it_reported() {
    let dir = common::scratch_dir("predict-digits");
    let report = common::run_digits(3, 3, true).await;
    let reported = report.final_test.expect("the run evaluated its final model").accuracy;
    let weights = dir.join("final.safetensors");
    save_model(&fedtune::sim::digits_mlp(), &report.global, &weights, Layout::Burn).unwrap();
    let model = dir.join("model.toml");
    let mut spec = toml::Table::new();
    spec.insert(
        "model".into(),
        toml::Value::try_from(fedtune::sim::digits_mlp()).unwrap(),
    );
    std::fs::write(&model, toml::to_string(&spec).unwrap()).unwrap();

    // The global test rows as a user would hold them: a header, features, a label.
    let test = common::digits().global_test().unwrap();
    let mut csv = (0..test.dim()).map(|i| format!("f{i}")).collect::<Vec<_>>().join(",") + ",label\n";
    for (row, label) in test.features().chunks(test.dim()).zip(test.labels()) {
        let values: Vec<String> = row.iter().map(|v| format!("{v:?}")).collect();
        csv.push_str(&format!("{},{label}\n", values.join(",")));
    }
    let input = dir.join("test.csv");
    std::fs::write(&input, csv).unwrap();

    let (ok, stdout, stderr) = predict(&model, &weights, &input, false);
    assert!(ok, "{stderr}");
    let line = stdout.lines().last().unwrap();
    assert_eq!(
        line,
        format!("accuracy {reported:.4} over {} labelled rows", test.len())
    );

    let (ok, stdout, stderr) = predict(&model, &weights, &input, true);
    assert!(ok, "{stderr}");
    let rows: Vec<serde_json::Value> = stdout.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(rows.len(), test.len());
    let first = &rows[0]["probabilities"];
    let sum: f64 = first.as_array().unwrap().iter().map(|p| p.as_f64().unwrap()).sum();
    assert!((sum - 1.0).abs() < 1e-9 && first.as_array().unwrap().len() == 10);
    assert!(rows[0]["label"].is_string());

    // A row that is not numbers, or a label outside the classes, is named.
    std::fs::write(&input, "a,b\n1,x\n").unwrap();
    let (ok, _, stderr) = predict(&model, &weights, &input, false);
    assert!(
        !ok && stderr.contains("row 2: column `b` holds `x`, not a number"),
        "{stderr}"
    );
    let mut bad = (0..64).map(|i| format!("f{i}")).collect::<Vec<_>>().join(",") + ",label\n";
    bad.push_str(&format!("{},12\n", vec!["0"; 64].join(",")));
    std::fs::write(&input, bad).unwrap();
    let (ok, _, stderr) = predict(&model, &weights, &input, false);
    assert!(
        !ok && stderr.contains("row 2: label `12` is not a class id below 10"),
        "{stderr}"
    );
}

#[test]
fn a_pretrained_bert_predicts_raw_text_as_hugging_face_does() {
    #[derive(serde::Deserialize)]
    struct Expected {
        sentences: Vec<String>,
        logits: Vec<Vec<f64>>,
        labels: Vec<String>,
    }
    let fixture = common::repo().join("tests/fixtures/bert-tiny");
    let expected: Expected =
        serde_json::from_str(&std::fs::read_to_string(fixture.join("expected.json")).unwrap()).unwrap();
    let dir = common::scratch_dir("predict-bert");
    let folder = fixture.join("classifier");
    let model = dir.join("model.toml");
    std::fs::write(&model, format!("[model]\npretrained = {:?}\nmax_len = 16\n", folder)).unwrap();
    let options = PretrainedOptions {
        max_len: 16,
        ..PretrainedOptions::default()
    };
    let pretrained = load_pretrained(&folder, &options).unwrap();
    let weights = dir.join("bert.safetensors");
    save_model(
        &ModelSpec::Bert(pretrained.spec.clone()),
        &pretrained.params,
        &weights,
        Layout::Burn,
    )
    .unwrap();

    let softmax = |logits: &[f64]| {
        let max = logits.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        let exp: Vec<f64> = logits.iter().map(|l| (l - max).exp()).collect();
        let sum: f64 = exp.iter().sum();
        exp.into_iter().map(|e| e / sum).collect::<Vec<f64>>()
    };
    let argmax = |p: &[f64]| (0..p.len()).fold(0, |best, i| if p[i] > p[best] { i } else { best });
    let mut input = String::new();
    for (sentence, logits) in expected.sentences.iter().zip(&expected.logits) {
        let label = &expected.labels[argmax(&softmax(logits))];
        input.push_str(&serde_json::json!({ "text": sentence, "label": label }).to_string());
        input.push('\n');
    }
    let path = dir.join("texts.jsonl");
    std::fs::write(&path, input).unwrap();
    let (ok, stdout, stderr) = predict(&model, &weights, &path, true);
    assert!(ok, "{stderr}");
    let rows: Vec<serde_json::Value> = stdout.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(rows.len(), expected.sentences.len());
    for (row, logits) in rows.iter().zip(&expected.logits) {
        let want = softmax(logits);
        let got: Vec<f64> = row["probabilities"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p.as_f64().unwrap())
            .collect();
        for (g, w) in got.iter().zip(&want) {
            assert!((g - w).abs() < 1e-4, "{got:?} vs {want:?}");
        }
        assert_eq!(row["label"], expected.labels[argmax(&want)]);
    }
    let (ok, stdout, _) = predict(&model, &weights, &path, false);
    assert!(ok);
    assert!(
        stdout.contains("negative")
            && stdout.ends_with(&format!("accuracy 1.0000 over {} labelled rows\n", rows.len()))
    );

    // A text that is not a string, and a label the model does not have.
    std::fs::write(&path, "{\"text\": \"fine\", \"label\": \"angry\"}\n").unwrap();
    let (ok, _, stderr) = predict(&model, &weights, &path, false);
    assert!(
        !ok && stderr.contains("row 1: label `angry` is not one of the model's classes (negative, neutral, positive)"),
        "{stderr}"
    );
}
