//! The model lifecycle around a run: the global model starts from a weights file
//! (`[model] init`), the final model is written as safetensors, and
//! `fedtune-aggregator evaluate` on that file gives the run's own final test accuracy.

mod common;

use std::process::Command;
use std::sync::Arc;

use common::{binary, config, digits, digits_trainers, scratch_dir, start_agents, start_aggregator};
use fedtune::agent::client::Exit;
use fedtune::agent::model::default_device;
use fedtune::agent::weights::{Layout, WeightsSource};
use fedtune::aggregator::{Hooks, service};
use fedtune::protocol::ModelSpec;
use rand::SeedableRng;
use rand::rngs::StdRng;

/// `fedtune-aggregator evaluate --dataset digits` of `weights` read into `model_toml`'s
/// model, with `--json` when asked.
fn evaluate_cli(model_toml: &std::path::Path, weights: &std::path::Path, json: bool) -> std::process::Output {
    let mut command = Command::new(binary("fedtune-aggregator"));
    command.args(["evaluate", "--dataset", "digits"]);
    if json {
        command.arg("--json");
    }
    command.arg("--model").arg(model_toml).arg("--weights").arg(weights);
    command.output().unwrap()
}

/// Hooks that evaluate each round's global model on `data`'s global test split.
fn test_evaluator(data: &fedtune::agent::config::FederatedData) -> Hooks {
    Hooks {
        evaluator: Some(Arc::new(fedtune::evaluate::TestSetEvaluator::new(
            data.global_test().unwrap(),
            default_device(),
        ))),
        ..Hooks::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_starts_from_a_weights_file_and_its_written_model_evaluates_as_the_run_did() {
    let dir = scratch_dir("model-files");
    let data = digits();
    let mut config = config(3, 3);
    let spec: ModelSpec = config.model.spec.clone();

    // A starting model unlike the seeded initialisation: weights from another seed.
    let start = spec.init_params(&mut StdRng::seed_from_u64(1234));
    let init_path = dir.join("start.safetensors");
    service::save_model(&spec, &start, &init_path, Layout::Burn).unwrap();
    config.model.init = Some(WeightsSource::new(&init_path));
    service::load_initial_model(&mut config).unwrap();
    assert_eq!(config.model.initial.as_deref(), Some(&start));
    // The run's first round measures the global model it sent: the file's.
    let expected_first =
        fedtune::agent::train::evaluate(&spec, &start, &data.global_test().unwrap(), &default_device())
            .unwrap()
            .accuracy;

    let hooks = test_evaluator(&data);
    let fed = start_aggregator(3, config, hooks);
    let mut agents = start_agents(&fed, digits_trainers(&data, 3));
    let report = fed.aggregator.await.unwrap().unwrap();
    while let Some(exit) = agents.join_next().await {
        assert!(matches!(exit.unwrap(), Ok(Exit::Shutdown(_))));
    }
    assert_ne!(report.global, start, "training moved the model");
    let final_test = report.final_test.unwrap();
    assert!(
        final_test.accuracy > expected_first + 0.1,
        "{final_test:?} from {expected_first}"
    );

    // The final model, written out and checked by the aggregator's `evaluate` command.
    let model_path = dir.join("final.safetensors");
    service::save_model(&spec, &report.global, &model_path, Layout::Burn).unwrap();
    let model_toml = dir.join("model.toml");
    std::fs::write(&model_toml, "[model.mlp]\ninput = 64\nhidden = [64]\nclasses = 10\n").unwrap();
    let output = evaluate_cli(&model_toml, &model_path, true);
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let printed: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(printed["samples"], 360);
    let accuracy = printed["accuracy"].as_f64().unwrap();
    assert!(
        (accuracy - final_test.accuracy).abs() < 1e-12,
        "evaluate says {accuracy}, the run ended at {}",
        final_test.accuracy
    );

    // The same rows through CSV: with the agents' `scale` they score as the digits set
    // does; unscaled (features 0..16 instead of 0..1) they do not.
    let csv = |scale: Option<&str>| -> serde_json::Value {
        let mut command = Command::new(binary("fedtune-aggregator"));
        command
            .args(["evaluate", "--json", "--dataset"])
            .arg(format!("csv:{}", common::repo().join("data/digits.csv").display()))
            .arg("--model")
            .arg(&model_toml)
            .arg("--weights")
            .arg(&model_path);
        if let Some(scale) = scale {
            command.args(["--scale", scale]);
        }
        let output = command.output().unwrap();
        assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
        serde_json::from_slice(&output.stdout).unwrap()
    };
    let (scaled, fraction, raw) = (csv(Some("0.0625")), csv(Some("1/16")), csv(None));
    assert_eq!(scaled["loss"], fraction["loss"]);
    let loss = |v: &serde_json::Value| v["loss"].as_f64().unwrap();
    assert!(loss(&raw) > 2.0 * loss(&scaled), "scaled {scaled}, raw {raw}");
    assert!(
        scaled["dataset"].as_str().unwrap().ends_with("(features × 0.0625)"),
        "{scaled}"
    );

    // A file that does not fit is a clear error listing the tensors.
    std::fs::write(&model_toml, "[model.mlp]\ninput = 64\nhidden = [32]\nclasses = 10\n").unwrap();
    let output = evaluate_cli(&model_toml, &model_path, false);
    assert!(!output.status.success());
    let err = String::from_utf8_lossy(&output.stderr);
    assert!(
        err.contains("does not fit the model") && err.contains("layers.0.weight (model [64, 32], file [64, 64])"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frozen_layers_neither_change_nor_travel() {
    let data = digits();
    let mut config = config(3, 3);
    // The digits MLP 64-64-10: freeze the first layer, train the head.
    config.model.freeze = vec!["layers.0".into()];
    let spec = config.model.spec.clone();
    let manifest = spec.manifest();
    let first_layer = 64 * 64 + 64;
    let head = manifest.numel() - first_layer;
    let start = spec.init_params(&mut StdRng::seed_from_u64(config.federation.seed));

    let fed = start_aggregator(3, config, Hooks::default());
    let mut agents = start_agents(&fed, digits_trainers(&data, 3));
    let report = fed.aggregator.await.unwrap().unwrap();
    while let Some(exit) = agents.join_next().await {
        assert!(matches!(exit.unwrap(), Ok(Exit::Shutdown(_))));
    }
    assert_eq!(report.rounds.len(), 3);
    for round in &report.rounds {
        assert_eq!(round.updates, 3, "round {}: {:?}", round.round, round.failures);
        assert!(round.applied);
        // Updates carry the head only.
        for c in round.contributions.values() {
            assert_eq!(c.update_bytes, head as u64 * 4);
        }
        // The whole model goes down once; after that the agents hold the frozen layer and
        // get the head only.
        let down = if round.round == 0 { manifest.numel() } else { head };
        assert_eq!(
            round.payload_bytes,
            3 * down as u64 * 4 + 3 * head as u64 * 4,
            "round {}",
            round.round
        );
    }
    // The frozen layer is where it started; the head moved.
    assert_eq!(report.global[..first_layer], start[..first_layer]);
    assert_ne!(report.global[first_layer..], start[first_layer..]);
    assert!(
        report.rounds[2].federated_accuracy > report.rounds[0].federated_accuracy,
        "training the head alone still learns"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lora_run_sends_only_adapters_and_writes_the_merged_model_and_the_adapters() {
    let dir = scratch_dir("model-files-lora");
    let data = digits();
    let mut config = config(3, 4);
    // The digits MLP 64-64-10 from a starting file, rank-4 adapters on both layers.
    let plain = config.model.spec.clone();
    let start = plain.init_params(&mut StdRng::seed_from_u64(77));
    let init_path = dir.join("start.safetensors");
    service::save_model(&plain, &start, &init_path, Layout::Burn).unwrap();
    config.model.init = Some(WeightsSource::new(&init_path));
    config.model.set_lora(Some(fedtune::aggregator::config::LoraConfig {
        rank: 4,
        alpha: Some(8.0),
        targets: vec![],
        train: Vec::new(),
    }));
    config.client.learning_rate = 0.01;
    service::load_initial_model(&mut config).unwrap();
    let spec = config.model.spec.clone();
    let ModelSpec::Lora(lora) = &spec else { unreachable!() };
    let adapters = (64 + 64) * 4 + (64 + 10) * 4;
    assert_eq!(config.model.trainable().unwrap().numel(), adapters);
    let initial = config.model.initial.clone().unwrap();
    // Fresh adapters start as the file's model.
    assert_eq!(lora.merged(&initial), start);

    let hooks = test_evaluator(&data);
    let fed = start_aggregator(3, config, hooks);
    let mut agents = start_agents(&fed, digits_trainers(&data, 3));
    let report = fed.aggregator.await.unwrap().unwrap();
    while let Some(exit) = agents.join_next().await {
        assert!(matches!(exit.unwrap(), Ok(Exit::Shutdown(_))));
    }
    assert_eq!(report.rounds.len(), 4);
    for round in &report.rounds {
        assert_eq!(round.updates, 3, "round {}: {:?}", round.round, round.failures);
        for c in round.contributions.values() {
            assert_eq!(c.update_bytes, adapters as u64 * 4, "only the adapters travel up");
        }
        let down = if round.round == 0 {
            spec.manifest().numel()
        } else {
            adapters
        };
        assert_eq!(
            round.payload_bytes,
            3 * (down + adapters) as u64 * 4,
            "round {}",
            round.round
        );
    }
    // The base weights are where they started; the adapters moved and changed the model.
    let manifest = spec.manifest();
    let mut offset = 0;
    for t in &manifest.tensors {
        let range = offset..offset + t.numel();
        offset = range.end;
        if fedtune::protocol::model::is_lora_factor(&t.name) {
            continue;
        }
        assert_eq!(report.global[range.clone()], initial[range], "{} moved", t.name);
    }
    let merged = lora.merged(&report.global);
    assert_ne!(merged, start);
    let final_test = report.final_test.unwrap();
    let first = report.rounds[0].test.unwrap().accuracy;
    assert!(final_test.accuracy > first, "{final_test:?} from {first}");

    // Written: the merged model, which `evaluate` scores as the run ended, and the adapters.
    let model_path = dir.join("final.safetensors");
    let written = service::save_model(&spec, &report.global, &model_path, Layout::Burn).unwrap();
    assert_eq!(
        written,
        vec![model_path.clone(), dir.join("final.adapters.safetensors")]
    );
    let model_toml = dir.join("model.toml");
    std::fs::write(
        &model_toml,
        "[model]\nlora = { rank = 4 }\n[model.mlp]\ninput = 64\nhidden = [64]\nclasses = 10\n",
    )
    .unwrap();
    let output = evaluate_cli(&model_toml, &model_path, true);
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let printed: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    let accuracy = printed["accuracy"].as_f64().unwrap();
    assert!(
        (accuracy - final_test.accuracy).abs() < 1e-9,
        "evaluate says {accuracy}, the run ended at {}",
        final_test.accuracy
    );
    let bytes = std::fs::read(&written[1]).unwrap();
    let header_len = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let header: serde_json::Value = serde_json::from_slice(&bytes[8..8 + header_len]).unwrap();
    let mut names: Vec<&str> = header
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .filter(|k| *k != "__metadata__")
        .collect();
    names.sort_unstable();
    assert_eq!(
        names,
        [
            "layers.0.weight.lora.a",
            "layers.0.weight.lora.b",
            "layers.1.weight.lora.a",
            "layers.1.weight.lora.b"
        ]
    );
    assert_eq!(header["__metadata__"]["lora_rank"], "4");
    assert_eq!(bytes.len(), 8 + header_len + adapters * 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transformer_federates_on_wordnet_text_and_lora_on_its_attention_sends_only_adapters() {
    use fedtune::agent::config::FederatedData;
    use fedtune::agent::partition::{Iid, SplitFile};
    use fedtune::agent::text::{Split, WORDNET_DIR, WordnetTask};
    use fedtune::protocol::TransformerSpec;
    // A small slice of the WordNet task (`.ci/test` installs `wordnet-base`).
    let task = WordnetTask {
        categories: vec!["animal".into(), "food".into(), "location".into()],
        per_class: 300,
        max_len: 16,
        vocab: 2_048,
        ..WordnetTask::default()
    };
    let dataset = task
        .load(WORDNET_DIR, Split::Train)
        .expect("apt-get install wordnet-base");
    let split = SplitFile::generate(dataset.labels(), &Iid, 3, 0.2, 0.2, &mut StdRng::seed_from_u64(0)).unwrap();
    let data = FederatedData { dataset, split };
    let transformer = ModelSpec::Transformer(TransformerSpec {
        max_len: 16,
        vocab: 2_048,
        d_model: 16,
        heads: 2,
        layers: 1,
        d_ff: 32,
        classes: 3,
        dropout: 0.0,
    });
    let configure = |spec: ModelSpec, lora: Option<fedtune::aggregator::config::LoraConfig>| {
        let mut config = config(3, 6);
        config.model = spec.into();
        config.model.set_lora(lora);
        config.client.learning_rate = 0.005;
        config.client.local_epochs = 3;
        config
    };
    let evaluator = || test_evaluator(&data);

    let fed = start_aggregator(3, configure(transformer.clone(), None), evaluator());
    let mut agents = start_agents(&fed, data.burn_trainers(3, &default_device()).unwrap());
    let report = fed.aggregator.await.unwrap().unwrap();
    while let Some(exit) = agents.join_next().await {
        assert!(matches!(exit.unwrap(), Ok(Exit::Shutdown(_))));
    }
    assert!(report.rounds.iter().all(|r| r.updates == 3));
    let first = report.rounds[0].test.unwrap().accuracy;
    let last = report.final_test.unwrap().accuracy;
    assert!(last > 0.6 && last > first + 0.1, "3 categories: {first} → {last}");

    // LoRA on the attention's query and value projections, from the trained model.
    let start = report.global.clone();
    let lora = fedtune::aggregator::config::LoraConfig {
        rank: 2,
        alpha: Some(4.0),
        targets: vec!["*.mha.query.*".into(), "*.mha.value.*".into()],
        train: Vec::new(),
    };
    let mut config = configure(transformer.clone(), Some(lora));
    let adapters = config.model.trainable().unwrap().numel();
    assert_eq!(adapters, 2 * (16 + 16) * 2);
    let dir = scratch_dir("model-files-transformer");
    let init = dir.join("start.safetensors");
    service::save_model(&transformer, &start, &init, Layout::Burn).unwrap();
    config.model.init = Some(WeightsSource::new(&init));
    service::load_initial_model(&mut config).unwrap();
    let fed = start_aggregator(3, config, evaluator());
    let mut agents = start_agents(&fed, data.burn_trainers(3, &default_device()).unwrap());
    let report = fed.aggregator.await.unwrap().unwrap();
    while let Some(exit) = agents.join_next().await {
        assert!(matches!(exit.unwrap(), Ok(Exit::Shutdown(_))));
    }
    for round in &report.rounds {
        assert_eq!(round.updates, 3);
        for c in round.contributions.values() {
            assert_eq!(c.update_bytes, adapters as u64 * 4);
        }
    }
    // The adapters start at zero: the first round's incoming model is the trained one.
    let from = report.rounds[0].federated_accuracy;
    assert!(from > 0.6, "{from}");
}
