//! `fedtune-aggregator plot`: a run's and a study's charts as SVG and PNG files, read back
//! (the PNGs decoded, the SVGs searched) and checked against what the store holds.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::synthetic;
use fedtune_tuning::{Direction, pareto_front};

fn plot(db: &Path, args: &[&str]) -> Output {
    Command::new(common::binary("fedtune-aggregator"))
        .arg("plot")
        .arg("--db")
        .arg(db)
        .args(args)
        .env("RUST_BACKTRACE", "0")
        .output()
        .unwrap()
}

/// The files `plot` listed, one per line.
fn written(output: &Output) -> Vec<PathBuf> {
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    String::from_utf8(output.stdout.clone())
        .unwrap()
        .lines()
        .map(PathBuf::from)
        .collect()
}

/// Pixels of `image` near `rgb` (small dots are anti-aliased into their background).
fn pixels_of(image: &image::RgbImage, rgb: [u8; 3]) -> usize {
    image
        .pixels()
        .filter(|p| p.0.iter().zip(rgb).all(|(a, b)| a.abs_diff(b) <= 40))
        .count()
}

/// Decodes a PNG `plot` wrote: the chart's size, with text in its title band and lines of
/// `colour` drawn.
fn check_png(path: &Path, colour: [u8; 3]) {
    let image = image::open(path).unwrap().to_rgb8();
    assert_eq!(image.dimensions(), (960, 540), "{}", path.display());
    let title_ink = (0..960)
        .flat_map(|x| (0..36).map(move |y| (x, y)))
        .filter(|&(x, y)| image.get_pixel(x, y).0.iter().all(|&c| c < 100))
        .count();
    assert!(
        title_ink > 50,
        "{}: no title text ({title_ink} dark pixels)",
        path.display()
    );
    let drawn = pixels_of(&image, colour);
    assert!(drawn > 300, "{}: {drawn} pixels of {colour:?}", path.display());
}

#[test]
fn a_run_plots_accuracy_loss_and_fairness_with_its_violations() {
    let dir = common::scratch_dir("plot-run");
    let db = dir.join("fedtune.db");
    let (run, study) = synthetic::store(&db, 40, 0);
    let out = dir.join("run");
    let files = written(&plot(&db, &["--run", &run.to_string(), "--out", out.to_str().unwrap()]));
    let names: Vec<String> = files
        .iter()
        .map(|f| f.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    assert_eq!(
        names,
        [
            "accuracy.svg",
            "accuracy.png",
            "loss.svg",
            "loss.png",
            "fairness.svg",
            "fairness.png"
        ]
    );
    // Test accuracy and mean accuracy in the palette's blue, train loss in its green.
    check_png(&out.join("accuracy.png"), [0x1a, 0x73, 0xe8]);
    check_png(&out.join("fairness.png"), [0x1a, 0x73, 0xe8]);
    check_png(&out.join("loss.png"), [0x18, 0x80, 0x38]);
    let fairness = std::fs::read_to_string(out.join("fairness.svg")).unwrap();
    assert!(fairness.starts_with("<svg"), "{}", &fairness[..80]);
    assert!(fairness.contains("Fairness across agents"));
    for legend in ["mean accuracy", "worst 10%", "worst agent", "Jain&apos;s index"] {
        assert!(fairness.contains(legend), "{legend} in the fairness legend");
    }
    // Rounds 6, 13, 20, 27, 34 have violations: one dashed red marker line each.
    let markers = fairness.matches(r##"stroke="#D93025""##).count();
    assert!(markers >= 5, "{markers} violation markers");

    // Asking for the wrong kind, or a run that is not there, says so.
    let wrong = plot(&db, &["--run", &study.to_string(), "--out", out.to_str().unwrap()]);
    assert!(!wrong.status.success());
    assert!(String::from_utf8_lossy(&wrong.stderr).contains("is a study, not a run"));
    let missing = plot(&db, &["--run", "99", "--out", out.to_str().unwrap()]);
    assert!(!missing.status.success());
    assert!(String::from_utf8_lossy(&missing.stderr).contains("99"));
}

#[test]
fn a_study_plots_its_history_intermediate_values_and_pareto_front() {
    let dir = common::scratch_dir("plot-study");
    let db = dir.join("fedtune.db");
    let (_run, study) = synthetic::store(&db, 1, 60);
    let out = dir.join("study");
    let files = written(&plot(
        &db,
        &["--study", &study.to_string(), "--out", out.to_str().unwrap()],
    ));
    for name in ["history", "history-1", "intermediate", "pareto"] {
        for ext in ["svg", "png"] {
            let file = out.join(format!("{name}.{ext}"));
            assert!(files.contains(&file), "{} in {files:?}", file.display());
        }
    }
    // Complete, feasible trials in the palette's blue; the front in red.
    check_png(&out.join("history.png"), [0x1a, 0x73, 0xe8]);
    check_png(&out.join("pareto.png"), [0xd9, 0x30, 0x25]);

    // Every trial on the store's Pareto front is a red point, and only those.
    use fedtune_store::{SqliteStore, Storage};
    let store = SqliteStore::open_read_only(&db).unwrap();
    let trials: Vec<_> = store.trials(study).unwrap().into_iter().map(|t| t.trial).collect();
    let front = pareto_front(&trials, &[Direction::Maximize, Direction::Minimize]).len();
    assert!(front >= 2, "a front of {front}");
    let pareto = std::fs::read_to_string(out.join("pareto.svg")).unwrap();
    let circles = pareto.matches("<circle").count();
    let red = pareto
        .split("<circle")
        .skip(1)
        .filter(|c| c.split("/>").next().unwrap().contains(r##"fill="#D93025""##))
        .count();
    assert_eq!(red, front, "red points of {circles} circles");
}
