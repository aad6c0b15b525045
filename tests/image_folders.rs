//! Three agents, each reading its own image folder (one subfolder per class, named by
//! the aggregator's `[model] classes`), federate a CNN over QUIC on loopback: PNG and
//! JPEG files, grey and RGB, at the model's size and not, all become the model's input.

mod common;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use common::{config, digits, start_agents, start_aggregator};
use fedtune::agent::client::Exit;
use fedtune::agent::config::{DataConfig, DataSource};
use fedtune::agent::data::Dataset;
use fedtune::agent::model::default_device;
use fedtune::agent::own::load;
use fedtune::aggregator::Hooks;
use fedtune::protocol::{CnnSpec, ConvBlock, ModelSpec};

const CLASSES: [&str; 10] = [
    "zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine",
];

/// How an agent stores its images.
#[derive(Clone, Copy)]
enum Files {
    /// 8×8 grey PNG, the model's own input.
    GreyPng,
    /// 16×16 RGB PNG: converted to grey and resized.
    RgbPng,
    /// 8×8 grey JPEG (lossy).
    Jpeg,
}

/// Writes `rows` of `data` (digits, features in [0, 1]) as an image folder.
fn write_folder(dir: &Path, data: &Dataset, rows: &[usize], files: Files) {
    let features = data.features();
    for &row in rows {
        let class = CLASSES[data.labels()[row] as usize];
        std::fs::create_dir_all(dir.join(class)).unwrap();
        let pixels: Vec<u8> = features[row * 64..(row + 1) * 64]
            .iter()
            .map(|&v| (v * 255.0).round() as u8)
            .collect();
        let grey = image::GrayImage::from_raw(8, 8, pixels).unwrap();
        match files {
            Files::GreyPng => grey.save(dir.join(class).join(format!("{row}.png"))).unwrap(),
            Files::Jpeg => grey.save(dir.join(class).join(format!("{row}.jpg"))).unwrap(),
            Files::RgbPng => image::DynamicImage::ImageLuma8(grey)
                .resize_exact(16, 16, image::imageops::FilterType::Nearest)
                .to_rgb8()
                .save(dir.join(class).join(format!("{row}.png")))
                .unwrap(),
        }
    }
}

fn cnn() -> ModelSpec {
    ModelSpec::Cnn(CnnSpec {
        channels: 1,
        height: 8,
        width: 8,
        blocks: vec![ConvBlock {
            channels: 8,
            kernel: 3,
            padding: 1,
            pool: 2,
            batch_norm: false,
        }],
        hidden: vec![],
        classes: 10,
        norm_stats: Default::default(),
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_agents_federate_a_cnn_over_their_own_image_folders() {
    let data = digits();
    let root: PathBuf = std::env::temp_dir().join(format!("fedtune-image-folders-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&root);
    let trainers: Vec<_> = [Files::GreyPng, Files::RgbPng, Files::Jpeg]
        .into_iter()
        .enumerate()
        .map(|(i, files)| {
            // The rows the digits split gives client i, train and validation alike: this
            // device's own images.
            let own = &data.split.clients[i];
            let rows: Vec<usize> = own.train.iter().chain(&own.test).copied().collect();
            let dir = root.join(format!("agent-{i}"));
            write_folder(&dir, &data.dataset, &rows, files);
            let source = DataConfig {
                source: DataSource::ImageFolder { path: dir },
                partition: None,
                clients: 1,
                client: 0,
                seed: i as u64,
                validation: 0.2,
            };
            load(&source).unwrap().trainer(default_device())
        })
        .collect();

    let mut config = config(3, 12);
    config.model.spec = cnn();
    config.model.classes = CLASSES.map(String::from).to_vec();
    config.client.learning_rate = 0.05;
    config.client.batch_size = 16;
    config.client.local_epochs = 2;
    let test = data.global_test().unwrap();
    let hooks = Hooks {
        evaluator: Some(Arc::new(fedtune::evaluate::TestSetEvaluator::new(
            test,
            default_device(),
        ))),
        ..Hooks::default()
    };
    let fed = start_aggregator(3, config, hooks);
    let mut agents = start_agents(&fed, trainers);
    let report = fed.aggregator.await.unwrap().unwrap();
    while let Some(exit) = agents.join_next().await {
        assert!(matches!(exit.unwrap(), Ok(Exit::Shutdown(_))));
    }

    assert_eq!(report.rounds.len(), 12);
    for round in &report.rounds {
        assert_eq!(round.updates, 3, "round {}: {:?}", round.round, round.failures);
    }
    // Every agent evaluated the final model on its own images.
    assert_eq!(report.final_agent_evaluation.len(), 3);
    let accuracy = report.final_test.as_ref().unwrap().accuracy;
    assert!(accuracy > 0.8, "digits from image folders reach {accuracy}");
    let _ = std::fs::remove_dir_all(&root);
}
