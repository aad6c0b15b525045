//! Differential privacy in rounds: noise from the operating system, distributed noise,
//! adaptive clipping, settings that cannot hold.

use super::secure::run_secure;
use super::*;

#[test]
fn a_distributed_noise_round_is_charged_for_the_noise_shares_that_arrived() {
    use crate::privacy::{NoisePlacement, epsilon};
    for (silent, contributors) in [(vec![], 4usize), (vec!["d"], 3)] {
        let mut config = config(1, true);
        config.privacy.noise_multiplier = 2.0;
        config.privacy.clip = 0.5;
        config.privacy.noise = NoisePlacement::Distributed;
        config.validate().unwrap();
        let t0 = Instant::now();
        let mut fed = machine(config, &["a", "b", "c", "d"], t0);
        let before = fed.global().to_vec();
        fed.handle_timeout(t0);
        let opened = tasks(fed.actions.make_contiguous());
        for (_, task) in opened.values() {
            let secure = task.secure.unwrap();
            // σ · clip / √cohort each, in a coordinate range that holds it.
            assert_eq!(secure.noise, Some(DistributedNoise { clip: 0.5, std: 0.5 }));
            assert!(secure.clip >= 0.5 + 10.0 * 0.5, "{}", secure.clip);
        }
        let actions = run_secure(&mut fed, &silent, SecureStep::MaskedUpdate, t0);
        let record = committed(&actions)[0];
        assert!(record.applied, "{:?}", record.failures);
        assert_eq!(record.updates, contributors);
        assert_eq!(record.clip, Some(0.5));
        // The shares of the agents whose inputs arrived: σ · √(n / cohort).
        let sigma = 2.0 * (contributors as f64 / 4.0).sqrt();
        let want = epsilon(sigma, 1.0, 1, 1e-5).unwrap().epsilon;
        let got = record.epsilon.unwrap();
        assert!((got - want).abs() < 1e-9, "{got} vs {want} with {contributors} inputs");
        // Each input is clipped to norm 0.5 (from all ones): the model moves by about
        // 0.5 / √numel per value, give or take the noise.
        let n = before.len();
        let moved = fed.global().iter().zip(&before).map(|(a, b)| a - b).sum::<f32>() / n as f32;
        let clipped = 0.5 / (n as f32).sqrt();
        assert!((moved - clipped).abs() < 0.35, "moved {moved}, clipped value {clipped}");
    }
    // A dropout costs privacy: fewer shares, less noise, more ε.
    let full = epsilon(2.0, 1.0, 1, 1e-5).unwrap().epsilon;
    let short = epsilon(2.0 * 0.75f64.sqrt(), 1.0, 1, 1e-5).unwrap().epsilon;
    assert!(short > full);
}

#[test]
fn central_noise_is_fresh_from_the_os_while_everything_seeded_repeats() {
    let mut config = config(2, false);
    config.federation.cohort = 3.0;
    config.privacy.noise_multiplier = 1.0;
    config.privacy.clip = 1.0;
    config.validate().unwrap();
    let t0 = Instant::now();
    // Two federations from one configuration and seed, given the same updates.
    let run = || {
        let fed = Federation::new(Arc::new(config.clone()), 0).unwrap();
        let mut fed = connect(fed, &["a", "b", "c", "d", "e"], t0);
        fed.handle_timeout(t0);
        let mut cohorts = Vec::new();
        for _ in 0..2 {
            let opened = tasks(&drain(&mut fed));
            cohorts.push(opened.iter().map(|(a, (_, t))| (a.clone(), t.seed)).collect::<Vec<_>>());
            for (exchange, task) in opened.values() {
                fed.handle_event(
                    t0,
                    Event::Received {
                        exchange: *exchange,
                        message: Box::new(update_for(task, 10)),
                        payload: vec![0.01; numel(&fed)],
                    },
                );
            }
            let actions = drain(&mut fed);
            assert!(committed(&actions)[0].applied);
            fed.handle_timeout(t0);
        }
        (cohorts, fed.state())
    };
    let (cohorts_a, a) = run();
    let (cohorts_b, b) = run();
    assert_eq!(cohorts_a[0].len(), 3);
    assert_eq!(cohorts_a, cohorts_b, "cohorts and task seeds follow the seed");
    assert_eq!(a.rng, b.rng);
    assert_eq!(a.history, b.history);
    assert_eq!(a.privacy, b.privacy, "both spent the same privacy");
    // The released models differ: the seed (and the checkpoint) cannot regenerate the noise.
    assert_ne!(a.global, b.global, "two runs from one seed released the same noise");
}

#[test]
fn privacy_settings_that_cannot_hold_are_refused() {
    use crate::privacy::{Clipping, NoisePlacement};
    let mut central_secure = config(1, true);
    central_secure.privacy.noise_multiplier = 1.0;
    let err = central_secure.validate().unwrap_err().to_string();
    assert!(err.contains("privacy.noise = \"distributed\""), "{err}");
    let mut distributed_plain = config(1, false);
    distributed_plain.privacy.noise_multiplier = 1.0;
    distributed_plain.privacy.noise = NoisePlacement::Distributed;
    let err = distributed_plain.validate().unwrap_err().to_string();
    assert!(err.contains("needs [secure_aggregation]"), "{err}");
    let mut adaptive_distributed = config(1, true);
    adaptive_distributed.privacy.noise_multiplier = 1.0;
    adaptive_distributed.privacy.noise = NoisePlacement::Distributed;
    adaptive_distributed.privacy.clipping = Clipping::Adaptive;
    let err = adaptive_distributed.validate().unwrap_err().to_string();
    assert!(err.contains("adaptive clipping"), "{err}");
}

#[test]
fn adaptive_clipping_moves_the_clip_between_rounds_and_survives_a_restart() {
    use crate::privacy::Clipping;
    let mut config = config(3, false);
    config.privacy.noise_multiplier = 1.0;
    config.privacy.clip = 100.0;
    config.privacy.clipping = Clipping::Adaptive;
    // Noise on the count this small leaves the clip's path readable.
    config.privacy.clipped_count_stddev = Some(0.51);
    let t0 = Instant::now();
    let mut fed = machine(config.clone(), &["a", "b", "c"], t0);
    fed.handle_timeout(t0);
    let mut clips = Vec::new();
    for _ in 0..3 {
        let opened = tasks(&drain(&mut fed));
        for (exchange, task) in opened.values() {
            fed.handle_event(
                t0,
                Event::Received {
                    exchange: *exchange,
                    message: Box::new(update_for(task, 10)),
                    payload: vec![0.01; numel(&fed)],
                },
            );
        }
        let actions = drain(&mut fed);
        let record = committed(&actions)[0];
        assert!(record.applied, "{:?}", record.failures);
        clips.push(record.clip.unwrap());
        // The next round's clip is part of the state a restart resumes from.
        let saved = serde_json::to_string(&fed.state()).unwrap();
        let resumed = Federation::resume(Arc::new(config.clone()), serde_json::from_str(&saved).unwrap()).unwrap();
        assert!(resumed.ledger.clip.is_some());
        assert_eq!(resumed.ledger, fed.ledger);
        fed.handle_timeout(t0);
    }
    // Every update is far inside a clip of 100: the clip shrinks round after round.
    assert_eq!(clips[0], 100.0);
    assert!(clips[1] < clips[0] && clips[2] < clips[1], "{clips:?}");
}
