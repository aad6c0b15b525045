//! fedtune's BERT against Hugging Face's, on the tiny committed checkpoint of
//! `tests/fixtures/bert-tiny` (made by its `make_fixture.py` with transformers): the same
//! token ids from the same `tokenizer.json`, the same logits and pooled vectors to 1e-4,
//! from both key layouts and both file formats; and a clear error for each way a folder
//! can be wrong.

use std::path::{Path, PathBuf};

use burn::tensor::{Tensor, TensorData};
use fedtune_models::model::{BertClassifier, Classifier, default_device, load, manifest_of, with_lora};
use fedtune_models::pretrained::{Pretrained, PretrainedError, PretrainedOptions, load_pretrained};
use fedtune_protocol::{BertSpec, LoraSpec, ModelSpec, Pooling};
use serde::Deserialize;

#[derive(Deserialize)]
struct Expected {
    max_len: usize,
    labels: Vec<String>,
    sentences: Vec<String>,
    input_ids: Vec<Vec<u32>>,
    unpadded_ids: Vec<Vec<u32>>,
    logits: Vec<Vec<f32>>,
    pooled: Vec<Vec<f32>>,
    mean_pooled: Vec<Vec<f32>>,
}

fn fixture() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/bert-tiny")
}

fn expected() -> Expected {
    serde_json::from_str(&std::fs::read_to_string(fixture().join("expected.json")).unwrap()).unwrap()
}

fn options(classes: Option<&[String]>, pooling: Option<Pooling>) -> PretrainedOptions {
    PretrainedOptions {
        max_len: 16,
        pooling,
        classes: classes.map(<[String]>::to_vec),
        dropout: None,
        seed: 7,
    }
}

/// The model's rows for the fixture's sentences, through its own tokenizer.
fn rows(pretrained: &Pretrained, expected: &Expected) -> Tensor<2> {
    let ids: Vec<f32> = expected
        .sentences
        .iter()
        .flat_map(|s| pretrained.tokenizer.row(s, expected.max_len).unwrap())
        .map(|id| id as f32)
        .collect();
    Tensor::from_data(
        TensorData::new(ids, [expected.sentences.len(), expected.max_len]),
        &default_device(),
    )
}

fn model(pretrained: &Pretrained) -> BertClassifier {
    let manifest = ModelSpec::Bert(pretrained.spec.clone()).manifest();
    load(
        BertClassifier::init(&pretrained.spec, &default_device()),
        &pretrained.params,
        &manifest,
    )
    .unwrap()
}

fn assert_close(got: Tensor<2>, want: &[Vec<f32>], what: &str) {
    let got = got.into_data().try_to_vec::<f32>().unwrap();
    let want: Vec<f32> = want.iter().flatten().copied().collect();
    assert_eq!(got.len(), want.len(), "{what}: length");
    let worst = got.iter().zip(&want).map(|(a, b)| (a - b).abs()).fold(0.0f32, f32::max);
    assert!(worst < 1e-4, "{what}: largest difference {worst}");
}

#[test]
fn the_tokenizer_gives_hugging_faces_ids_truncated_and_padded_as_it_does() {
    let expected = expected();
    let pretrained = load_pretrained(&fixture().join("classifier"), &options(None, None)).unwrap();
    for ((sentence, unpadded), row) in expected
        .sentences
        .iter()
        .zip(&expected.unpadded_ids)
        .zip(&expected.input_ids)
    {
        assert_eq!(&pretrained.tokenizer.ids(sentence).unwrap(), unpadded, "{sentence:?}");
        assert_eq!(&pretrained.tokenizer.row(sentence, 16).unwrap(), row, "{sentence:?}");
    }
    // The long sentence is cut to 16 ids that still end in [SEP].
    let long = expected.input_ids.last().unwrap();
    assert_eq!((long.len(), long[15]), (16, 3));
    assert!(pretrained.tokenizer.row("hello", 1).is_err());
    assert_eq!(pretrained.tokenizer.hash().len(), 64);
}

/// A folder with BERT's `vocab.txt` and no `tokenizer.json` tokenizes as transformers'
/// `BertTokenizerFast` built from it does: Hugging Face's ids for every sentence.
#[test]
fn a_folder_with_only_a_vocab_txt_gives_the_same_ids() {
    let expected = expected();
    let dir = copy_of_classifier("vocab-only");
    std::fs::remove_file(dir.join("tokenizer.json")).unwrap();
    for file in ["vocab.txt", "tokenizer_config.json"] {
        std::fs::copy(fixture().join("classifier").join(file), dir.join(file)).unwrap();
    }
    let pretrained = load_pretrained(&dir, &options(None, None)).unwrap();
    for ((sentence, unpadded), row) in expected
        .sentences
        .iter()
        .zip(&expected.unpadded_ids)
        .zip(&expected.input_ids)
    {
        assert_eq!(&pretrained.tokenizer.ids(sentence).unwrap(), unpadded, "{sentence:?}");
        assert_eq!(&pretrained.tokenizer.row(sentence, 16).unwrap(), row, "{sentence:?}");
    }
    // The spec names this tokenizer; an agent given the same vocab.txt holds the same.
    let agent = fedtune_models::tokenizer::TextTokenizer::from_path(&dir.join("vocab.txt")).unwrap();
    assert_eq!(pretrained.spec.tokenizer.as_deref(), Some(agent.hash()));
    // Another casing is another tokenizer.
    std::fs::write(dir.join("tokenizer_config.json"), r#"{"do_lower_case": false}"#).unwrap();
    let cased = fedtune_models::tokenizer::TextTokenizer::from_path(&dir.join("vocab.txt")).unwrap();
    assert_ne!(cased.hash(), agent.hash());
    // Neither file: the folder is named.
    std::fs::remove_file(dir.join("vocab.txt")).unwrap();
    let err = load_pretrained(&dir, &options(None, None)).unwrap_err().to_string();
    assert!(err.contains("no tokenizer.json or vocab.txt"), "{err}");
}

#[test]
fn a_sequence_classification_checkpoint_gives_hugging_faces_logits() {
    let expected = expected();
    let pretrained = load_pretrained(&fixture().join("classifier"), &options(None, None)).unwrap();
    assert!(pretrained.prefixed);
    assert_eq!(pretrained.classes, expected.labels);
    assert_eq!(pretrained.spec.pooling, Pooling::Cls);
    assert!(pretrained.notes.is_empty(), "{:?}", pretrained.notes);
    let model = model(&pretrained);
    let x = rows(&pretrained, &expected);
    assert_close(model.pooled(x.clone().int()), &expected.pooled, "pooler output");
    assert_close(model.forward(x), &expected.logits, "logits");
    // The module's own layout is the spec's: Hugging Face's names, `attention.self`.
    assert_eq!(manifest_of(&model), ModelSpec::Bert(pretrained.spec.clone()).manifest());
}

#[test]
fn a_bert_model_checkpoint_loads_with_a_fresh_head_in_both_file_formats() {
    let expected = expected();
    let labels = expected.labels.clone();
    let classifier = load_pretrained(&fixture().join("classifier"), &options(None, None)).unwrap();
    let head = ModelSpec::Bert(classifier.spec.clone()).manifest().numel() - (32 * 3 + 3);

    // sentence-transformers' pooling config makes it mean pooling.
    let encoder = load_pretrained(&fixture().join("encoder"), &options(Some(&labels), None)).unwrap();
    assert!(!encoder.prefixed);
    assert_eq!(encoder.spec.pooling, Pooling::Mean);
    assert!(encoder.notes.iter().any(|n| n.contains("fresh")), "{:?}", encoder.notes);
    assert!(
        encoder.notes.iter().any(|n| n.contains("pooler")),
        "{:?}",
        encoder.notes
    );
    let x = rows(&encoder, &expected);
    assert_close(
        model(&encoder).pooled(x.clone().int()),
        &expected.mean_pooled,
        "mean pooling",
    );

    // Asked for BERT's pooler, the BertModel file gives the classifier file's encoder.
    let cls = load_pretrained(&fixture().join("encoder"), &options(Some(&labels), Some(Pooling::Cls))).unwrap();
    assert_eq!(cls.params[..head], classifier.params[..head]);
    assert_close(model(&cls).pooled(x.int()), &expected.pooled, "pooler output");

    // PyTorch's pickle format holds the same tensors.
    let bin = load_pretrained(
        &fixture().join("encoder-bin"),
        &options(Some(&labels), Some(Pooling::Cls)),
    )
    .unwrap();
    assert_eq!(bin.params, cls.params);

    // No classes named and no head in the checkpoint: say what to set.
    let err = load_pretrained(&fixture().join("encoder"), &options(None, None)).unwrap_err();
    assert!(err.to_string().contains("[model] classes"), "{err}");
}

#[test]
fn other_classes_or_mean_pooling_replace_a_checkpoints_head() {
    let classes: Vec<String> = ["a", "b", "c", "d"].map(String::from).to_vec();
    let four = load_pretrained(&fixture().join("classifier"), &options(Some(&classes), None)).unwrap();
    assert_eq!(four.spec.classes, 4);
    assert!(
        four.notes.iter().any(|n| n.contains("starts fresh for [a, b, c, d]")),
        "{:?}",
        four.notes
    );
    let mean = load_pretrained(&fixture().join("classifier"), &options(None, Some(Pooling::Mean))).unwrap();
    assert!(
        mean.notes.iter().any(|n| n.contains("mean pooling")),
        "{:?}",
        mean.notes
    );
    assert_eq!(ModelSpec::Bert(mean.spec.clone()).manifest().numel(), mean.params.len());
}

/// A copy of the classifier folder whose `config.json` and weights a test may change.
fn copy_of_classifier(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("fedtune-bert-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    for file in ["config.json", "model.safetensors", "tokenizer.json"] {
        std::fs::copy(fixture().join("classifier").join(file), dir.join(file)).unwrap();
    }
    dir
}

fn edit_config(dir: &Path, edit: impl FnOnce(&mut serde_json::Value)) {
    let path = dir.join("config.json");
    let mut config: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    edit(&mut config);
    std::fs::write(path, config.to_string()).unwrap();
}

#[test]
fn every_missing_unexpected_and_misshaped_tensor_is_listed_in_one_error() {
    use safetensors::tensor::TensorView;
    let dir = copy_of_classifier("mismatch");
    let bytes = std::fs::read(dir.join("model.safetensors")).unwrap();
    let file = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let mut kept: Vec<(String, TensorView<'_>)> = file
        .tensors()
        .into_iter()
        .filter(|(name, _)| name != "bert.encoder.layer.1.output.dense.bias")
        .collect();
    let extra = vec![0u8; 4 * 4];
    kept.push((
        "bert.encoder.layer.2.output.dense.bias".into(),
        TensorView::new(safetensors::Dtype::F32, vec![4], &extra).unwrap(),
    ));
    let short = vec![0u8; 4 * 31];
    kept.retain(|(name, _)| name != "bert.pooler.dense.bias");
    kept.push((
        "bert.pooler.dense.bias".into(),
        TensorView::new(safetensors::Dtype::F32, vec![31], &short).unwrap(),
    ));
    safetensors::serialize_to_file(kept, None, &dir.join("model.safetensors")).unwrap();
    let err = load_pretrained(&dir, &options(None, None)).unwrap_err().to_string();
    for part in [
        "missing from the file (1): bert.encoder.layer.1.output.dense.bias",
        "in the file but not in the model (1): bert.encoder.layer.2.output.dense.bias",
        "wrong shape or type (1): bert.pooler.dense.bias (model [32], file [31])",
    ] {
        assert!(err.contains(part), "{part:?} not in {err}");
    }

    // Sizes from config.json that the weights do not have: every such tensor is named.
    let dir = copy_of_classifier("sizes");
    edit_config(&dir, |c| c["intermediate_size"] = 48.into());
    let err = load_pretrained(&dir, &options(None, None)).unwrap_err().to_string();
    assert!(err.contains("wrong shape or type (6)"), "{err}");
    assert!(
        err.contains("bert.encoder.layer.0.intermediate.dense.weight (model [48, 32], file [64, 32])"),
        "{err}"
    );
}

#[test]
fn what_fedtunes_bert_does_not_compute_is_refused_naming_the_field() {
    let cases: [(&str, serde_json::Value, &str); 5] = [
        ("hidden_act", "relu".into(), "hidden_act = relu"),
        (
            "position_embedding_type",
            "relative_key".into(),
            "position_embedding_type = relative_key",
        ),
        ("model_type", "roberta".into(), "model_type = roberta"),
        ("problem_type", "regression".into(), "problem_type = regression"),
        ("is_decoder", true.into(), "is_decoder = true"),
    ];
    for (field, value, message) in cases {
        let dir = copy_of_classifier(field);
        edit_config(&dir, |c| c[field] = value);
        let err = load_pretrained(&dir, &options(None, None)).unwrap_err();
        assert!(matches!(err, PretrainedError::Unsupported { .. }), "{field}: {err}");
        assert!(err.to_string().contains(message), "{err}");
    }
    let dir = copy_of_classifier("long");
    let err = load_pretrained(
        &dir,
        &PretrainedOptions {
            max_len: 65,
            ..options(None, None)
        },
    )
    .unwrap_err();
    assert!(
        err.to_string()
            .contains("max_len 65 exceeds the 64 position embeddings"),
        "{err}"
    );
    std::fs::remove_file(dir.join("model.safetensors")).unwrap();
    let err = load_pretrained(&dir, &options(None, None)).unwrap_err();
    assert!(
        err.to_string().contains("no model.safetensors or pytorch_model.bin"),
        "{err}"
    );
}

#[test]
fn lora_adapts_the_attention_projections_hugging_face_names() {
    let pretrained = load_pretrained(&fixture().join("classifier"), &options(None, None)).unwrap();
    let targets = vec!["*.attention.self.query".to_string(), "*.value".to_string()];
    let lora = LoraSpec {
        base: Box::new(ModelSpec::Bert(pretrained.spec.clone())),
        rank: 2,
        alpha: 4.0,
        targets: targets.clone(),
        train: Vec::new(),
    };
    let adapted: Vec<String> = lora.adapted().into_iter().map(|(name, _, _)| name).collect();
    assert_eq!(
        adapted,
        [
            "bert.encoder.layer.0.attention.self.query.weight",
            "bert.encoder.layer.0.attention.self.value.weight",
            "bert.encoder.layer.1.attention.self.query.weight",
            "bert.encoder.layer.1.attention.self.value.weight",
        ]
    );
    // The head trains beside the adapters when the spec says so (`!classifier`).
    let with_head = LoraSpec {
        train: vec!["classifier".into()],
        ..lora.clone()
    };
    let frozen = ModelSpec::Lora(with_head.clone()).implied_frozen();
    assert_eq!(frozen, ["!classifier"]);
    let trainable = fedtune_protocol::freeze::Trainable::new(&ModelSpec::Lora(with_head).manifest(), &frozen).unwrap();
    assert_eq!(trainable.numel(), 4 * (32 * 2 + 2 * 32) + 32 * 3 + 3);
    let autodiff = default_device().autodiff();
    let manifest = ModelSpec::Bert(pretrained.spec.clone()).manifest();
    let trainable_model = load(
        BertClassifier::init(&pretrained.spec, &autodiff),
        &pretrained.params,
        &manifest,
    )
    .unwrap();
    let adapted = with_lora(trainable_model, 2, 4.0, &targets);
    assert_eq!(trained_values(&adapted), 4 * (32 * 2 + 2 * 32));
    let unfrozen = fedtune_models::model::freeze_paths(adapted, &frozen);
    assert_eq!(trained_values(&unfrozen), trainable.numel());
    let module = with_lora(model(&pretrained), 2, 4.0, &targets);
    assert_eq!(manifest_of(&module), ModelSpec::Lora(lora).manifest());
    // B starts at zero: the adapted model computes what the checkpoint does.
    let expected = expected();
    assert_close(
        module.forward(rows(&pretrained, &expected)),
        &expected.logits,
        "LoRA logits",
    );
}

/// Values of the parameters that take gradients.
fn trained_values<M: burn::module::Module>(module: &M) -> usize {
    struct Count(usize);
    impl burn::module::ModuleVisitor for Count {
        fn visit_float<const D: usize>(&mut self, param: &burn::module::Param<Tensor<D>>) {
            if param.is_require_grad() {
                self.0 += param.lazy_shape().num_elements();
            }
        }
    }
    let mut count = Count(0);
    module.visit(&mut count);
    count.0
}

#[test]
fn a_fresh_bert_spec_builds_the_layout_it_promises() {
    let spec = BertSpec {
        vocab: 50,
        hidden: 8,
        layers: 1,
        heads: 2,
        intermediate: 16,
        max_positions: 12,
        type_vocab: 2,
        layer_norm_eps: 1e-12,
        max_len: 10,
        pooling: Pooling::Mean,
        classes: 2,
        dropout: 0.1,
        attention_dropout: 0.1,
        tokenizer: None,
    };
    let module = BertClassifier::init(&spec, &default_device());
    assert_eq!(manifest_of(&module), ModelSpec::Bert(spec).manifest());
}

#[test]
fn a_model_written_as_a_hugging_face_folder_reads_back_as_it_was() {
    use fedtune_models::pretrained::write_folder;
    let source = fixture().join("encoder");
    let classes: Vec<String> = ["a", "b", "c", "d"].map(String::from).to_vec();
    let loaded = load_pretrained(&source, &options(Some(&classes), Some(Pooling::Cls))).unwrap();
    let dir = std::env::temp_dir().join(format!("fedtune-bert-written-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    write_folder(&dir, &loaded.spec, &loaded.params, &classes, &source).unwrap();
    let config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("config.json")).unwrap()).unwrap();
    assert_eq!(config["architectures"][0], "BertForSequenceClassification");
    assert_eq!(config["id2label"]["3"], "d");
    // Read back as a classification checkpoint: its own head and classes, nothing fresh.
    let again = load_pretrained(&dir, &options(None, None)).unwrap();
    assert!(again.prefixed && again.notes.is_empty(), "{:?}", again.notes);
    assert_eq!(again.classes, classes);
    assert_eq!(again.spec, loaded.spec);
    assert!(again.params == loaded.params);
    assert_eq!(again.tokenizer.hash(), loaded.tokenizer.hash());
    let err = write_folder(&dir, &loaded.spec, &loaded.params[1..], &classes, &source).unwrap_err();
    assert!(err.to_string().contains("parameters for a model of"), "{err}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_fedtune_written_bert_reads_back_and_a_misfit_names_hugging_face_paths() {
    use fedtune_models::weights::{Layout, WeightsSource, export, import};
    let pretrained = load_pretrained(&fixture().join("classifier"), &options(None, None)).unwrap();
    let spec = ModelSpec::Bert(pretrained.spec.clone());
    let dir = std::env::temp_dir().join(format!("fedtune-bert-burn-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("bert.safetensors");
    export(&spec, &pretrained.params, &path, Layout::Burn, &default_device()).unwrap();
    let back = import(&spec, &WeightsSource::new(&path), &default_device()).unwrap();
    assert!(back == pretrained.params);
    // Another intermediate width: every misfit is named as the model names it.
    let misfit = |spec: BertSpec| {
        import(&ModelSpec::Bert(spec), &WeightsSource::new(&path), &default_device())
            .unwrap_err()
            .to_string()
    };
    let err = misfit(BertSpec {
        intermediate: 48,
        ..pretrained.spec.clone()
    });
    assert!(
        err.contains("bert.encoder.layer.0.intermediate.dense.weight (model [32, 48], file [32, 64])"),
        "{err}"
    );
    let err = misfit(BertSpec {
        hidden: 36,
        ..pretrained.spec.clone()
    });
    assert!(
        err.contains("bert.encoder.layer.1.attention.self.query.weight (model [36, 36], file [32, 32])"),
        "{err}"
    );
    assert!(!err.contains("self_"), "{err}");
    let _ = std::fs::remove_dir_all(&dir);
}
