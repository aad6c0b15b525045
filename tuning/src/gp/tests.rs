use crate::space::{ParamSpec, ParamValue, SearchSpace};

use super::acquisition::{Posterior, Scratch, log_h};
use super::data::{collect, log_warp};
use super::encode::Dim;
use super::kernel::{Evidence, Hyper};
use super::linalg::{cholesky, solve_lower, solve_upper_t};
use super::{GpConfig, GpSampler};
use crate::objective::Direction;
use crate::sampler::{Params, RandomSampler, Sampler};
use crate::stats::{norm_cdf, norm_log_pdf};
use crate::testing::{best, median, quadratic, quadratic_space, run};
use crate::trial::{FrozenTrial, TrialState};

fn small() -> GpConfig {
    GpConfig {
        n_candidates: 256,
        n_local_candidates: 64,
        n_local_search: 3,
        ..GpConfig::default()
    }
}

#[test]
fn log_warp_compresses_only_long_tails() {
    let mut tailed = vec![3.0, 1.0, 2.0, 1000.0, 1.5];
    log_warp(&mut tailed);
    let want = [1.0, 3.0, 2.0, 1.5, 1000.0].map(|v: f64| (1.0 + (v - 1.0) / 1.0).ln());
    assert_eq!(tailed, vec![want[1], want[0], want[2], want[4], want[3]]);
    let mut even = vec![3.0, 1.0, 2.0, 4.0, 1.5];
    log_warp(&mut even);
    assert_eq!(even, vec![3.0, 1.0, 2.0, 4.0, 1.5]);
}

#[test]
fn cholesky_solves_a_known_system() {
    let mut a = vec![4.0, 12.0, -16.0, 12.0, 37.0, -43.0, -16.0, -43.0, 98.0];
    assert!(cholesky(&mut a, 3));
    let want = [2.0, 0.0, 0.0, 6.0, 1.0, 0.0, -8.0, 5.0, 3.0];
    for (g, w) in a.iter().zip(want) {
        assert!((g - w).abs() < 1e-12, "{a:?}");
    }
    // A x = b with x = (1, -2, 0.5): b = A x.
    let mut b = vec![4.0 - 24.0 - 8.0, 12.0 - 74.0 - 21.5, -16.0 + 86.0 + 49.0];
    solve_lower(&a, 3, &mut b);
    solve_upper_t(&a, 3, &mut b);
    for (g, w) in b.iter().zip([1.0, -2.0, 0.5]) {
        assert!((g - w).abs() < 1e-12, "{b:?}");
    }
    let mut not_pd = vec![1.0, 2.0, 2.0, 1.0];
    assert!(!cholesky(&mut not_pd, 2));
}

#[test]
fn log_ei_is_stable() {
    for i in 0..=100 {
        let z = -8.0 + 0.16 * i as f64;
        let naive = (norm_log_pdf(z).exp() + z * norm_cdf(z)).ln();
        let got = log_h(z);
        assert!(
            (got - naive).abs() < 1e-9 * naive.abs().max(1.0),
            "z={z}: {got} vs {naive}"
        );
    }
    // Where the naive formula underflows: finite, and next to the leading asymptote
    // ln φ(z) - 2 ln|z|.
    for z in [-24.9, -25.1, -40.0, -1e3] {
        let got = log_h(z);
        let asymptote = norm_log_pdf(z) - 2.0 * (-z).ln();
        assert!(
            got.is_finite() && got < asymptote && got > asymptote - 4.0 / (z * z),
            "z={z}: {got}"
        );
    }
    // The branches agree where they meet (the slope there is about -z).
    assert!((log_h(-25.0 - 1e-9) - log_h(-25.0 + 1e-9)).abs() < 1e-7);
    assert!((log_h(-1.0 - 1e-12) - log_h(-1.0 + 1e-12)).abs() < 1e-9);
}

#[test]
fn log_ei_gradient_matches_differences() {
    let x = vec![0.1, 0.2, 0.5, 0.9, 0.8, 0.4, 0.3, 0.7];
    let y = vec![0.5, -1.0, 1.2, -0.3];
    let is_cat = vec![false, false];
    let h = Hyper {
        theta: vec![3.0, 8.0],
        scale: 1.2,
        noise: 1e-4,
    };
    let post = Posterior::new(&x, &y, &is_cat, h).unwrap();
    let mut s = Scratch::new(4);
    let u = [0.35, 0.45];
    let mut g = [0.0; 2];
    post.log_ei(&u, -1.0, Some(&mut g), &mut s);
    for c in 0..2 {
        let mut a = u;
        let mut b = u;
        a[c] += 1e-6;
        b[c] -= 1e-6;
        let fd = (post.log_ei(&a, -1.0, None, &mut s) - post.log_ei(&b, -1.0, None, &mut s)) / 2e-6;
        assert!((fd - g[c]).abs() < 1e-5 * fd.abs().max(1.0), "{c}: {fd} vs {}", g[c]);
    }
}

#[test]
fn evidence_gradient_matches_differences() {
    let x = vec![0.1, 0.0, 0.5, 1.0, 0.8, 2.0, 0.3, 1.0, 0.6, 0.0];
    let y = vec![0.5, -1.0, 1.2, -0.3, -0.4];
    let is_cat = vec![false, true];
    let mut ev = Evidence::new(&x, &y, &is_cat, 1e-6);
    let phi = [0.3, -0.5, 0.2, -3.0];
    let mut g = [0.0; 4];
    ev.eval(&phi, &mut g);
    let mut tmp = [0.0; 4];
    for c in 0..4 {
        let (mut a, mut b) = (phi, phi);
        a[c] += 1e-6;
        b[c] -= 1e-6;
        let fd = (ev.eval(&a, &mut tmp) - ev.eval(&b, &mut tmp)) / 2e-6;
        assert!((fd - g[c]).abs() < 1e-5 * fd.abs().max(1.0), "{c}: {fd} vs {}", g[c]);
    }
}

#[test]
fn deterministic_given_a_seed() {
    let space = quadratic_space();
    let a = run(&mut GpSampler::new(small(), 3).unwrap(), &space, quadratic, 16);
    let b = run(&mut GpSampler::new(small(), 3).unwrap(), &space, quadratic, 16);
    let c = run(&mut GpSampler::new(small(), 4).unwrap(), &space, quadratic, 16);
    assert_eq!(a, b);
    assert_ne!(a, c);
    // Same seed, same history, same proposal, from fresh samplers.
    let history = &a[..14];
    let p = GpSampler::new(small(), 9)
        .unwrap()
        .sample(&space, history, &[Direction::Minimize]);
    let q = GpSampler::new(small(), 9)
        .unwrap()
        .sample(&space, history, &[Direction::Minimize]);
    assert_eq!(p, q);
}

#[test]
fn beats_random_on_a_quadratic() {
    let space = quadratic_space();
    let gp: Vec<f64> = (0..5)
        .map(|s| best(&run(&mut GpSampler::new(small(), s).unwrap(), &space, quadratic, 25)))
        .collect();
    let random: Vec<f64> = (0..5)
        .map(|s| best(&run(&mut RandomSampler::new(s), &space, quadratic, 25)))
        .collect();
    let (g, r) = (median(gp), median(random));
    assert!(g < r / 10.0, "GP median best {g}, random {r}");
}

#[test]
fn handles_a_mixed_space() {
    let space = SearchSpace::new(vec![
        ParamSpec::parse("lr", "loguniform(1e-5, 1)").unwrap(),
        ParamSpec::parse("layers", "int(1, 6)").unwrap(),
        ParamSpec::parse("batch", "intlog(16, 512)").unwrap(),
        ParamSpec::parse("opt", "choice(adam, sgd, rmsprop)").unwrap(),
    ])
    .unwrap();
    let f = |p: &Params| {
        let lr = p["lr"].as_f64().unwrap().log10() + 3.0;
        let layers = p["layers"].as_f64().unwrap() - 4.0;
        let opt = match p["opt"].as_str() {
            Some("sgd") => 0.0,
            Some("adam") => 1.0,
            _ => 2.0,
        };
        lr * lr + 0.3 * layers * layers + opt + (p["batch"].as_f64().unwrap() / 64.0).log2().powi(2) * 0.1
    };
    let history = run(&mut GpSampler::new(small(), 1).unwrap(), &space, f, 30);
    for t in &history {
        for p in &space.params {
            assert!(p.distribution.contains(&t.params[&p.name]), "{:?}", t.params);
        }
    }
    // The model picks the right choice and the right integer for most late trials.
    let late = &history[20..];
    let sgd = late.iter().filter(|t| t.params["opt"].as_str() == Some("sgd")).count();
    assert!(sgd >= 6, "sgd chosen {sgd} of 10 times");
    assert!(best(&history) < 0.5, "best {}", best(&history));
}

#[test]
fn multi_objective_returns_valid_params() {
    let space = quadratic_space();
    let mut sampler = GpSampler::new(small(), 2).unwrap();
    let directions = [Direction::Minimize, Direction::Maximize];
    let mut history = Vec::new();
    for i in 0..14u64 {
        let params = sampler.sample(&space, &history, &directions).unwrap();
        let x = params["x"].as_f64().unwrap();
        let y = params["y"].as_f64().unwrap();
        let mut t = FrozenTrial::complete(i, params, 0.0);
        t.values = Some(vec![x * x + y * y, -(x - 1.0).powi(2) - y * y]);
        history.push(t);
    }
    for t in &history {
        for p in &space.params {
            assert!(p.distribution.contains(&t.params[&p.name]));
        }
    }
}

/// A 1-D history on a grid, with `f(x) = (x - 0.5)²`; trials within 0.15 of 0.5
/// are infeasible when `mark` is set.
fn one_d_history(mark: bool) -> (SearchSpace, Vec<FrozenTrial>) {
    let space = SearchSpace::new(vec![ParamSpec::parse("x", "uniform(0, 1)").unwrap()]).unwrap();
    let history = (0..12u64)
        .map(|i| {
            let x = i as f64 / 11.0;
            let mut t = FrozenTrial::complete(i, [("x".to_string(), ParamValue::Float(x))].into(), (x - 0.5).powi(2));
            t.feasible = !(mark && (x - 0.5).abs() < 0.15);
            t
        })
        .collect();
    (space, history)
}

#[test]
fn infeasible_trials_push_proposals_away() {
    for seed in 0..3 {
        let (space, history) = one_d_history(false);
        let p = GpSampler::with_seed(seed)
            .sample(&space, &history, &[Direction::Minimize])
            .unwrap();
        let x = p["x"].as_f64().unwrap();
        assert!((x - 0.5).abs() < 0.05, "feasible everywhere: proposed {x}");
        let (space, history) = one_d_history(true);
        let p = GpSampler::with_seed(seed)
            .sample(&space, &history, &[Direction::Minimize])
            .unwrap();
        let x = p["x"].as_f64().unwrap();
        assert!((x - 0.5).abs() > 0.08, "infeasible around 0.5: proposed {x}");
    }
}

#[test]
fn running_trials_spread_proposals() {
    let (space, mut history) = one_d_history(false);
    let mut sampler = GpSampler::with_seed(0);
    let first = sampler.sample(&space, &history, &[Direction::Minimize]).unwrap();
    let mut running = FrozenTrial::complete(12, first.clone(), 0.0);
    running.state = TrialState::Running;
    running.values = None;
    history.push(running);
    let second = sampler.sample(&space, &history, &[Direction::Minimize]).unwrap();
    let (a, b) = (first["x"].as_f64().unwrap(), second["x"].as_f64().unwrap());
    assert!((a - b).abs() > 0.02, "{a} then {b}");
}

#[test]
fn pruned_and_failed_trials() {
    let (space, mut history) = one_d_history(false);
    let mut pruned = FrozenTrial::complete(12, [("x".to_string(), ParamValue::Float(0.95))].into(), 0.0);
    pruned.state = TrialState::Pruned;
    pruned.values = None;
    pruned.intermediate.insert(3, vec![0.9]);
    let mut failed = pruned.clone();
    failed.state = TrialState::Failed;
    history.push(pruned);
    history.push(failed);
    let data = collect(
        &space
            .params
            .iter()
            .map(|p| Dim::of(&p.distribution))
            .collect::<Vec<_>>(),
        &space,
        &history,
        &[Direction::Minimize],
    );
    assert_eq!(data.outcomes.len(), 13);
    assert_eq!(data.losses[12], vec![0.9]);
}

#[test]
fn degenerate_histories_still_give_valid_params() {
    let space = quadratic_space();
    let p = |x: f64, y: f64| {
        Params::from([
            ("x".to_string(), ParamValue::Float(x)),
            ("y".to_string(), ParamValue::Float(y)),
        ])
    };
    // Every trial at one point with one value; then equal values everywhere; then
    // non-finite values.
    let cases: Vec<Vec<FrozenTrial>> = vec![
        (0..12).map(|i| FrozenTrial::complete(i, p(0.5, 0.5), 1.0)).collect(),
        (0..12)
            .map(|i| FrozenTrial::complete(i, p(i as f64 / 3.0 - 2.0, 0.0), 3.0))
            .collect(),
        (0..12)
            .map(|i| FrozenTrial::complete(i, p(i as f64 / 3.0 - 2.0, 1.0), if i % 2 == 0 { f64::NAN } else { 2.0 }))
            .collect(),
    ];
    for history in cases {
        let mut gp = GpSampler::with_seed(1);
        let params = gp.sample(&space, &history, &[Direction::Minimize]).unwrap();
        for spec in &space.params {
            assert!(spec.distribution.contains(&params[&spec.name]), "{params:?}");
        }
    }
}
