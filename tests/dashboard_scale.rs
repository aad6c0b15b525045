//! The dashboard at scale, in a real browser: a run of 1,000 rounds and a study of
//! 1,000 trials show their first plot quickly (the aim: under a second). Its own test binary, so that
//! nothing else of the suite runs beside the timing.
//!
//! Needs what tests/dashboard.rs needs (`bash .ci/test` installs it).

mod common;

use common::browser::{browser, dashboard, get, screenshot};
use common::synthetic;

#[test]
fn a_thousand_rounds_and_a_thousand_trials_show_their_first_plot_within_a_second() {
    let dir = common::scratch_dir("dashboard-scale");
    let db = dir.join("big.db");
    let (run, study) = synthetic::store(&db, 1000, 1000);
    let (_dashboard, port) = dashboard(&db);
    let addr = format!("127.0.0.1:{port}");

    // A dashboard over a store alone has no metrics, and says why.
    let (status, body) = get(port, "/metrics", None).unwrap();
    assert_eq!(status, 404);
    assert!(body.contains("serve"), "{body}");

    let mut times = Vec::new();
    for (what, path, chart, shot) in [
        (
            "1,000-round run",
            format!("/runs/{run}"),
            "accuracy-chart",
            "dashboard-scale-run.png",
        ),
        (
            "1,000-trial study",
            format!("/studies/{study}"),
            "history-chart",
            "dashboard-scale-study.png",
        ),
    ] {
        // The first load warms the browser and the store's pages.
        let url = format!("http://{addr}{path}");
        browser(&["first-plot", &url, chart]);
        let shot = screenshot(shot, &dir);
        // The machine is shared with the other tests: the best of three loads.
        let ms = (0..3)
            .map(|_| {
                browser(&["first-plot", &url, chart, shot.to_str().unwrap()])["first_plot_ms"]
                    .as_f64()
                    .unwrap()
            })
            .fold(f64::INFINITY, f64::min);
        eprintln!("first plot of the {what}: {ms:.0} ms");
        times.push((what, ms));
    }
    // The aim is under a second (measured on a quiet machine: see the README); the bound
    // here is looser so a busy CI machine does not fail it, yet it catches a page that
    // grows quadratically with trials or rounds.
    for (what, ms) in times {
        assert!(ms < 3000.0, "the {what} showed its first plot after {ms} ms");
    }
}
