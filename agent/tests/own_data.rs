//! A device's own files as its data: texts labelled by class name, tokenized by the
//! model's tokenizer (the tiny BERT of `tests/fixtures/bert-tiny`), and CSV rows with a
//! named label column; every bad file or row named, and tasks the rows cannot serve
//! declined with the reason.

use std::path::{Path, PathBuf};

use fedtune_agent::cancel::Cancel;
use fedtune_agent::config::{DataConfig, DataSource};
use fedtune_agent::model::default_device;
use fedtune_agent::own::{LocalData, load};
use fedtune_agent::pretrained::{PretrainedOptions, describe};
use fedtune_agent::trainer::{Trainer, TrainerError};
use fedtune_protocol::{BertSpec, ClientHyperparameters, MlpSpec, ModelSpec, Task};
use rand::SeedableRng;

fn fixture() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/bert-tiny/classifier")
}

fn scratch(name: &str, content: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("fedtune-own-data-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(name);
    std::fs::write(&path, content).unwrap();
    path
}

fn data(source: DataSource) -> DataConfig {
    DataConfig {
        source,
        partition: None,
        clients: 10,
        client: 0,
        seed: 3,
        validation: 0.25,
    }
}

fn text(path: &Path) -> DataConfig {
    data(DataSource::Text {
        path: path.to_path_buf(),
        text: "text".into(),
        label: "label".into(),
        tokenizer: fixture().join("tokenizer.json"),
    })
}

fn bert() -> (BertSpec, Vec<String>) {
    let options = PretrainedOptions {
        max_len: 16,
        ..PretrainedOptions::default()
    };
    let described = describe(&fixture(), &options).unwrap();
    (described.spec, described.classes)
}

fn task(model: ModelSpec, classes: &[String]) -> Task {
    Task {
        study: "own".into(),
        trial: 0,
        round: 0,
        manifest_hash: model.manifest().hash(),
        model,
        hyperparameters: ClientHyperparameters {
            batch_size: 4,
            local_epochs: 1,
            ..ClientHyperparameters::default()
        },
        deadline_ms: 60_000,
        seed: 1,
        measure_train_loss: false,
        secure: None,
        frozen: Vec::new(),
        base: None,
        classes: classes.to_vec(),
    }
}

/// Why `trainer` refuses a task for `model` with `classes` (the parameters do not
/// matter: a refusal comes before training).
fn refusal(trainer: &mut dyn Trainer, model: ModelSpec, classes: &[String]) -> TrainerError {
    let params = model.init_params(&mut rand::rngs::StdRng::seed_from_u64(1));
    trainer
        .fit(&task(model, classes), &params, &Cancel::never())
        .unwrap_err()
}

const REVIEWS: &str = "{\"text\": \"The movie was good, the acting wonderful.\", \"label\": \"positive\"}
{\"text\": \"Café déjà vu\", \"label\": \"neutral\"}
{\"text\": \"It was bad. Very bad!\", \"label\": \"negative\"}
{\"text\": \"I love it 😀\", \"label\": \"positive\"}
{\"text\": \"the server aggregates the updates\", \"label\": 1}
{\"text\": \"the clients are slow\", \"label\": \"negative\"}
{\"text\": \"wonderful acting\", \"label\": \"positive\"}
{\"text\": \"the weights\", \"label\": \"neutral\"}
";

#[test]
fn a_device_trains_a_bert_on_its_own_texts_labelled_by_class_name() {
    let path = scratch("reviews.jsonl", REVIEWS);
    let LocalData::Rows(rows) = load(&text(&path)).unwrap() else {
        panic!("text rows wait for the model")
    };
    assert_eq!((rows.train_rows(), rows.validation_rows()), (6, 2));
    let (spec, classes) = bert();
    let mut trainer = LocalData::Rows(rows).trainer(default_device());
    assert_eq!(trainer.capabilities().train_samples, 6);
    let model = ModelSpec::Bert(spec.clone());
    let global = model.init_params(&mut rand::rngs::StdRng::seed_from_u64(1));
    let outcome = trainer
        .fit(&task(model.clone(), &classes), &global, &Cancel::never())
        .unwrap();
    assert_eq!(outcome.num_samples, 6);
    assert_eq!(outcome.metrics.validation_samples, 2);

    // Classes the rows do not name, another tokenizer: declined, with the reason.
    let other: Vec<String> = ["good", "bad", "meh"].map(String::from).to_vec();
    let err = trainer
        .fit(&task(model.clone(), &other), &global, &Cancel::never())
        .unwrap_err();
    assert!(matches!(err, TrainerError::Declined(_)), "{err}");
    assert!(
        err.to_string()
            .contains("reviews.jsonl, row 1: label `positive` is not one of the model's classes (good, bad, meh)"),
        "{err}"
    );
    let foreign = ModelSpec::Bert(BertSpec {
        tokenizer: Some("0123456789abcdef".into()),
        ..spec
    });
    let err = trainer
        .fit(&task(foreign, &classes), &global, &Cancel::never())
        .unwrap_err();
    assert!(
        err.to_string().contains("tokenizer") && err.to_string().contains("is not the model's (0123456789ab…)"),
        "{err}"
    );
    // A feature model does not read text.
    let mlp = ModelSpec::Mlp(MlpSpec {
        input: 16,
        hidden: vec![],
        classes: 3,
    });
    let err = refusal(trainer.as_mut(), mlp, &classes);
    assert!(err.to_string().contains("this device holds text"), "{err}");
}

#[test]
fn a_csv_with_a_named_label_column_trains_a_feature_model() {
    let path = scratch(
        "flowers.csv",
        "petal_length,petal_width,species\n1.4,0.2,setosa\n4.7,1.4,versicolor\n5.9,2.1,virginica\n1.3,0.2,setosa\n4.5,1.5,versicolor\n6.0,2.5,virginica\n",
    );
    let config = data(DataSource::Csv {
        path: path.clone(),
        scale: 1.0,
        label: Some("species".into()),
    });
    let LocalData::Rows(rows) = load(&config).unwrap() else {
        panic!("named labels wait for the classes")
    };
    let mut trainer = LocalData::Rows(rows).trainer(default_device());
    let classes: Vec<String> = ["setosa", "versicolor", "virginica"].map(String::from).to_vec();
    let model = ModelSpec::Mlp(MlpSpec {
        input: 2,
        hidden: vec![4],
        classes: 3,
    });
    let global = model.init_params(&mut rand::rngs::StdRng::seed_from_u64(2));
    let outcome = trainer.fit(&task(model, &classes), &global, &Cancel::never()).unwrap();
    assert_eq!(outcome.num_samples + outcome.metrics.validation_samples, 6);
}

#[test]
fn bad_files_and_rows_are_named_and_an_empty_device_declines() {
    let missing_label = scratch("nolabel.csv", "a,b\n1,2\n");
    let config = data(DataSource::Csv {
        path: missing_label,
        scale: 1.0,
        label: Some("species".into()),
    });
    let err = load(&config).unwrap_err().to_string();
    assert!(
        err.contains("nolabel.csv") && err.contains("no column `species`"),
        "{err}"
    );

    let unlabelled = scratch("unlabelled.jsonl", "{\"text\": \"fine\"}\n");
    let err = load(&text(&unlabelled)).unwrap_err().to_string();
    assert!(err.contains("unlabelled.jsonl, row 1: no label"), "{err}");

    let blank = scratch(
        "blank.jsonl",
        "{\"text\": \"fine\", \"label\": 0}\n{\"text\": \"  \", \"label\": 0}\n",
    );
    let err = load(&text(&blank)).unwrap_err().to_string();
    assert!(
        err.contains("blank.jsonl, row 2: the text tokenizes to nothing"),
        "{err}"
    );

    let mut partitioned = text(&blank);
    partitioned.partition = Some("iid".parse().unwrap());
    assert!(
        load(&partitioned)
            .unwrap_err()
            .to_string()
            .contains("take no partition")
    );

    // A device with no row to train on starts, and declines every task saying why.
    let empty = scratch("empty.jsonl", "\n");
    let LocalData::Rows(rows) = load(&text(&empty)).unwrap() else {
        unreachable!()
    };
    let mut trainer = LocalData::Rows(rows).trainer(default_device());
    let (spec, classes) = bert();
    let err = refusal(trainer.as_mut(), ModelSpec::Bert(spec), &classes);
    assert!(
        matches!(err, TrainerError::Declined(_)) && err.to_string().contains("no row to train on"),
        "{err}"
    );
}

/// Writes an image folder: `images` as (class, file name, grey level, side), PNG or
/// JPEG by extension, grey or RGB by the name's `rgb` prefix.
fn image_folder(name: &str, images: &[(&str, &str, u8, u32)]) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("fedtune-own-images-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    for &(class, file, level, side) in images {
        std::fs::create_dir_all(dir.join(class)).unwrap();
        let path = dir.join(class).join(file);
        if file.starts_with("rgb") {
            image::RgbImage::from_pixel(side, side, image::Rgb([level, level, level]))
                .save(&path)
                .unwrap();
        } else {
            image::GrayImage::from_pixel(side, side, image::Luma([level]))
                .save(&path)
                .unwrap();
        }
    }
    dir
}

fn images(path: &Path) -> DataConfig {
    data(DataSource::ImageFolder {
        path: path.to_path_buf(),
    })
}

fn cnn(channels: usize, side: usize, classes: usize) -> ModelSpec {
    ModelSpec::Cnn(fedtune_protocol::CnnSpec {
        channels,
        height: side,
        width: side,
        blocks: vec![fedtune_protocol::ConvBlock {
            channels: 4,
            kernel: 3,
            padding: 1,
            pool: 2,
            batch_norm: false,
        }],
        hidden: vec![],
        classes,
        norm_stats: Default::default(),
    })
}

#[test]
fn an_image_folder_trains_a_cnn_whatever_the_files_size_and_colour() {
    let dir = image_folder(
        "good",
        &[
            ("dark", "a.png", 10, 8),
            ("dark", "b.PNG", 20, 12),
            ("dark", "rgb-c.jpg", 30, 8),
            ("light", "a.png", 230, 8),
            ("light", "rgb-b.jpeg", 240, 5),
            ("light", "c.png", 250, 8),
            ("light", "d.png", 220, 8),
        ],
    );
    std::fs::write(dir.join("light/README.txt"), "not an image").unwrap();
    let LocalData::Rows(rows) = load(&images(&dir)).unwrap() else {
        panic!("images wait for the model's shape")
    };
    assert_eq!(rows.train_rows() + rows.validation_rows(), 7);
    let mut trainer = LocalData::Rows(rows).trainer(default_device());
    let classes: Vec<String> = ["dark", "light"].map(String::from).to_vec();
    for channels in [1, 3] {
        let model = cnn(channels, 8, 2);
        let global = model.init_params(&mut rand::rngs::StdRng::seed_from_u64(3));
        let outcome = trainer.fit(&task(model, &classes), &global, &Cancel::never()).unwrap();
        assert_eq!(outcome.num_samples + outcome.metrics.validation_samples, 7);
    }

    // A class folder outside the model's classes, a model that reads no images.
    let other: Vec<String> = ["dark", "medium"].map(String::from).to_vec();
    let err = refusal(trainer.as_mut(), cnn(1, 8, 2), &other);
    assert!(matches!(err, TrainerError::Declined(_)), "{err}");
    let message = err.to_string();
    assert!(
        message.contains("light") && message.contains("is not one of the model's classes (dark, medium)"),
        "{message}"
    );
    let mlp = ModelSpec::Mlp(MlpSpec {
        input: 64,
        hidden: vec![],
        classes: 2,
    });
    let err = refusal(trainer.as_mut(), mlp, &classes);
    assert!(err.to_string().contains("this device holds images"), "{err}");
}

#[test]
fn a_corrupt_image_is_named_and_an_empty_folder_declines() {
    let dir = image_folder("corrupt", &[("cat", "ok.png", 100, 8)]);
    std::fs::write(dir.join("cat/broken.png"), b"\x89PNG\r\n\x1a\nnot really").unwrap();
    let err = load(&images(&dir)).unwrap_err().to_string();
    assert!(
        err.contains("broken.png") && err.contains("not a readable image"),
        "{err}"
    );

    let err = load(&images(&dir.join("missing"))).unwrap_err().to_string();
    assert!(err.contains("missing"), "{err}");

    let mut partitioned = images(&dir);
    partitioned.partition = Some("iid".parse().unwrap());
    assert!(
        load(&partitioned)
            .unwrap_err()
            .to_string()
            .contains("take no partition")
    );

    let empty = image_folder("empty", &[]);
    std::fs::create_dir_all(empty.join("cat")).unwrap();
    let LocalData::Rows(rows) = load(&images(&empty)).unwrap() else {
        unreachable!()
    };
    let mut trainer = LocalData::Rows(rows).trainer(default_device());
    let err = refusal(trainer.as_mut(), cnn(1, 8, 1), &["cat".to_string()]);
    assert!(err.to_string().contains("no row to train on"), "{err}");
}
