//! A model pretrained in PyTorch comes in: the committed fixture (NIID-Bench LeNet,
//! exported by `tests/fixtures/lenet/make_fixture.py` as safetensors and as a `.pt` state
//! dict, with the logits PyTorch gave on fixed inputs) loads into fedtune's CNN by key
//! remapping, and gives PyTorch's logits. No torch is needed to run this.

use std::path::PathBuf;

use burn::tensor::{Tensor, TensorData};
use fedtune::agent::model::{Classifier, Cnn, default_device, flatten};
use fedtune::agent::weights::{WeightsError, WeightsSource, import, import_into};
use fedtune::protocol::{CnnSpec, ModelSpec};
use serde::Deserialize;

#[derive(Deserialize)]
struct Fixture {
    shape: [usize; 4],
    logits: Vec<Vec<f32>>,
    input_sum: f64,
}

fn fixture_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/lenet")
}

/// PyTorch's module names → fedtune's module paths.
fn lenet_source(file: &str) -> WeightsSource {
    WeightsSource::new(fixture_dir().join(file))
        .remap(r"^conv1\.", "convs.0.conv.")
        .remap(r"^conv2\.", "convs.1.conv.")
        .remap(r"^fc1\.", "head.0.")
        .remap(r"^fc2\.", "head.1.")
        .remap(r"^fc3\.", "head.2.")
}

/// The fixture's inputs: `x[n,0,i,j] = f32(0.5 · sin(0.1·(n+1)·i + 0.07·j))`, in f64.
fn inputs(fixture: &Fixture) -> Vec<f32> {
    let [batch, _, rows, cols] = fixture.shape;
    let mut x = Vec::with_capacity(batch * rows * cols);
    for n in 0..batch {
        for i in 0..rows {
            for j in 0..cols {
                x.push((0.5f64 * ((0.1f64 * (n + 1) as f64) * i as f64 + 0.07f64 * j as f64).sin()) as f32);
            }
        }
    }
    let sum: f64 = x.iter().map(|&v| f64::from(v)).sum();
    assert!(
        (sum - fixture.input_sum).abs() < 1e-9,
        "inputs differ from the fixture's: {sum}"
    );
    x
}

fn fixture() -> Fixture {
    serde_json::from_slice(&std::fs::read(fixture_dir().join("logits.json")).unwrap()).unwrap()
}

#[test]
fn the_pytorch_lenet_gives_pytorchs_logits_from_safetensors_and_from_pt() {
    let fixture = fixture();
    let spec = CnnSpec::lenet(1, 28, 28, 10);
    let device = default_device();
    let x = inputs(&fixture);
    let batch = fixture.shape[0];
    let mut flat = Vec::new();
    for file in ["lenet.safetensors", "lenet.pt"] {
        let model = import_into(Cnn::init(&spec, &device), &lenet_source(file)).unwrap();
        let logits = model
            .forward(Tensor::from_data(TensorData::new(x.clone(), [batch, 784]), &device))
            .into_data()
            .try_to_vec::<f32>()
            .unwrap();
        for (n, expected) in fixture.logits.iter().enumerate() {
            for (c, &want) in expected.iter().enumerate() {
                let got = logits[n * 10 + c];
                assert!(
                    (got - want).abs() < 1e-5,
                    "{file}: logit [{n}, {c}] is {got}, PyTorch gave {want}"
                );
            }
        }
        flat.push(flatten(&model));
    }
    assert_eq!(flat[0], flat[1], "the two files hold the same weights");
    // The flat vector the federation sends is the same one, read through the spec.
    let params = import(&ModelSpec::Cnn(spec), &lenet_source("lenet.safetensors"), &device).unwrap();
    assert_eq!(params, flat[0]);
}

#[test]
fn without_the_key_mapping_every_tensor_is_reported() {
    let spec = ModelSpec::Cnn(CnnSpec::lenet(1, 28, 28, 10));
    let err = import(
        &spec,
        &WeightsSource::new(fixture_dir().join("lenet.safetensors")),
        &default_device(),
    )
    .unwrap_err();
    let WeightsError::Mismatch {
        missing, unexpected, ..
    } = &err
    else {
        panic!("{err}")
    };
    assert_eq!(missing.len(), 10, "{err}");
    assert_eq!(unexpected.len(), 10, "{err}");
    assert!(unexpected.contains(&"fc1.weight".to_string()), "{err}");
    // A CNN with another head: the mapped file fits but for the head's shapes.
    let mut other = CnnSpec::lenet(1, 28, 28, 10);
    other.hidden = vec![100, 84];
    let err = import(
        &ModelSpec::Cnn(other),
        &lenet_source("lenet.safetensors"),
        &default_device(),
    )
    .unwrap_err();
    let WeightsError::Mismatch {
        mismatched, missing, ..
    } = &err
    else {
        panic!("{err}")
    };
    assert!(missing.is_empty(), "{err}");
    // head.0's weight and bias, head.1's weight; head.1.bias is [84] in both.
    assert_eq!(mismatched.len(), 3, "{err}");
    assert!(mismatched[0].contains("head."), "{err}");
}
