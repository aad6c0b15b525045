//! Model specs as users write them (`[model]` in TOML, or JSON): never a panic, and a
//! spec that validates has a manifest whose sizes add up without overflow.

#![no_main]

use fedtune_protocol::ModelSpec;
use libfuzzer_sys::fuzz_target;

fn check(spec: &ModelSpec) {
    if spec.validate().is_err() {
        return;
    }
    let manifest = spec.manifest();
    let total: usize = manifest.tensors.iter().map(|t| t.numel()).sum();
    assert_eq!(total, manifest.numel());
    let _ = manifest.hash();
    let _ = fedtune_protocol::freeze::Trainable::new(&manifest, &["*.weight".to_owned()]);
}

fuzz_target!(|data: &[u8]| {
    if let Ok(spec) = serde_json::from_slice::<ModelSpec>(data) {
        check(&spec);
    }
    if let Ok(text) = std::str::from_utf8(data)
        && let Ok(spec) = toml::from_str::<ModelSpec>(text)
    {
        check(&spec);
    }
});
