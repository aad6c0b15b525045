//! Search spaces as users write them: a distribution in the text form
//! (`loguniform(1e-4, 1e-1)`, `choice(a, b)`, …), a whole space as JSON or TOML, and the
//! `[params]` table of a TOML file. Never a panic; a `[params]` table gives a valid space
//! or an error; and every accepted distribution maps the unit interval into itself: a
//! value drawn from it is in it, and goes back to a point of [0, 1].

#![no_main]

use fedtune_tuning::space::file::parse_space_toml;
use fedtune_tuning::space::{Distribution, ParamSpec, SearchSpace};
use libfuzzer_sys::fuzz_target;

fn check(distribution: &Distribution) {
    if distribution.validate().is_err() {
        return;
    }
    let _ = distribution.internal_bounds();
    let _ = distribution.n_choices();
    for u in [0.0, 0.25, 0.5, 0.999, 1.0] {
        let value = distribution.from_unit(u);
        assert!(
            distribution.contains(&value),
            "{distribution:?} at {u} gives {value:?}, outside it"
        );
        if let Some(back) = distribution.to_unit(&value) {
            assert!(
                (0.0..=1.0).contains(&back) || back.is_nan(),
                "{distribution:?}: {value:?} maps to {back}"
            );
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    if let Ok(distribution) = Distribution::parse(text) {
        check(&distribution);
    }
    let _ = ParamSpec::parse("x", text);
    if let Ok(space) = serde_json::from_str::<SearchSpace>(text) {
        space.params.iter().for_each(|p| check(&p.distribution));
        let _ = space.validate();
    }
    if let Ok(space) = toml::from_str::<SearchSpace>(text) {
        space.params.iter().for_each(|p| check(&p.distribution));
        let _ = space.validate();
    }
    // The `[params]` table users write (`--space presets/vision.toml`).
    if let Ok(space) = parse_space_toml(text) {
        space.params.iter().for_each(|p| check(&p.distribution));
        space.validate().expect("a parsed [params] space is valid");
    }
});
