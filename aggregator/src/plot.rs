//! Charts as files: a run's accuracy, loss and fairness by round, a study's optimisation
//! history, intermediate values and Pareto front, each written as SVG and PNG. The SVG
//! is the dashboard's own ([`crate::dashboard::charts`] drawn by [`crate::dashboard::svg`]),
//! larger; the PNG is that SVG rasterised with resvg. A file shows what the page shows,
//! and there is one renderer to keep right.
//!
//! PNG text is drawn with DejaVu Sans, embedded in the binary: plots come out the same
//! on a device or a CI machine with no fonts installed.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use resvg::{tiny_skia, usvg};

use crate::dashboard::charts;
use crate::dashboard::svg::{self, LineChart, ScatterChart, Size};
use crate::tune::TuneReport;
use fedtune_federation::RoundRecord;
use fedtune_tuning::{Direction, FrozenTrial, Objective};

/// Files are 960 × 540: the page's width at 16:9, one and a half times larger so that
/// text reads at the size of a document's.
const FILE: Size = Size {
    width: 640.0,
    height: 360.0,
    scale: 1.5,
};
/// The family name of the embedded face.
const FONT: &str = "DejaVu Sans";

/// Why plots could not be written.
#[derive(Debug, thiserror::Error)]
pub enum PlotError {
    /// The output directory could not be made.
    #[error("cannot create {path}: {source}")]
    Directory {
        /// The directory.
        path: PathBuf,
        /// What the file system said.
        source: std::io::Error,
    },
    /// Drawing or writing one file failed.
    #[error("cannot write {path}: {message}")]
    Draw {
        /// The file.
        path: PathBuf,
        /// What the file system or the rasteriser said.
        message: String,
    },
}

/// A chart to draw.
enum Chart {
    Line(LineChart),
    Scatter(ScatterChart),
}

impl Chart {
    fn testid(&self) -> &str {
        match self {
            Chart::Line(c) => &c.testid,
            Chart::Scatter(c) => &c.testid,
        }
    }

    fn svg(&self) -> String {
        match self {
            Chart::Line(c) => svg::line_chart(c, FILE),
            Chart::Scatter(c) => svg::scatter_chart(c, FILE),
        }
    }

    /// A scatter chart whose points link nowhere: the dashboard's links are to its own
    /// routes, which a file opened on its own cannot follow.
    fn unlinked(mut chart: ScatterChart) -> Self {
        for point in &mut chart.points {
            point.href = None;
        }
        Chart::Scatter(chart)
    }
}

/// Writes a run's charts (accuracy, loss, fairness, and server learning rate when it
/// has one) into `out` as `NAME.svg` and `NAME.png`, and returns the files written.
///
/// # Errors
/// When `out` cannot be created or a file cannot be written.
pub fn run(records: &[RoundRecord], out: &Path) -> Result<Vec<PathBuf>, PlotError> {
    let records: Vec<&RoundRecord> = records.iter().collect();
    let charts = charts::run_charts(&records).into_iter().map(Chart::Line).collect();
    write_all(charts, out)
}

/// Writes a study's charts (optimisation history per objective, intermediate values, and
/// the Pareto front for two or three objectives) into `out`, and returns the files written.
///
/// # Errors
/// When `out` cannot be created or a file cannot be written.
pub fn study(objectives: &[Objective], trials: &[FrozenTrial], out: &Path) -> Result<Vec<PathBuf>, PlotError> {
    // The dashboard's charts take a study id for their links, which files drop.
    let id = 0;
    let directions: Vec<Direction> = objectives.iter().map(|o| o.direction).collect();
    let names: Vec<String> = objectives.iter().map(|o| o.name.clone()).collect();
    let best = charts::best_trial(trials, &directions).map(|t| t.number);
    let mut all: Vec<Chart> = names
        .iter()
        .enumerate()
        .take(3)
        .map(|(k, name)| Chart::unlinked(charts::history_chart(id, trials, k, name, directions[k])))
        .collect();
    if let Some(first) = names.first() {
        all.push(Chart::Line(charts::intermediate_chart(trials, first, best)));
    }
    if names.len() >= 2 {
        all.extend(
            charts::pareto_charts(id, trials, &names, &directions, best)
                .into_iter()
                .map(Chart::unlinked),
        );
    }
    write_all(all, out)
}

/// [`study`] for a study that just ran (the `tune` example's `--plot`): its trials'
/// per-round curves are the intermediate values.
///
/// # Errors
/// As [`study`].
pub fn tune_report(report: &TuneReport, out: &Path) -> Result<Vec<PathBuf>, PlotError> {
    let trials: Vec<FrozenTrial> = report
        .trials
        .iter()
        .map(|t| FrozenTrial {
            number: t.number,
            params: t.params.clone(),
            values: t.values.clone(),
            state: t.state,
            feasible: t.feasible,
            intermediate: (1..).zip(t.curve.iter().map(|v| vec![*v])).collect(),
            fail_reason: t.fail_reason.clone(),
        })
        .collect();
    study(&report.objectives, &trials, out)
}

fn write_all(charts: Vec<Chart>, out: &Path) -> Result<Vec<PathBuf>, PlotError> {
    std::fs::create_dir_all(out).map_err(|source| PlotError::Directory {
        path: out.to_path_buf(),
        source,
    })?;
    let options = raster_options();
    let mut written = Vec::with_capacity(charts.len() * 2);
    for chart in &charts {
        let name = chart.testid().replace("-chart", "");
        let svg = chart.svg();
        let svg_path = out.join(format!("{name}.svg"));
        std::fs::write(&svg_path, &svg).map_err(|e| PlotError::Draw {
            path: svg_path.clone(),
            message: e.to_string(),
        })?;
        written.push(svg_path);
        let png_path = out.join(format!("{name}.png"));
        rasterise(&svg, &options)
            .and_then(|png| std::fs::write(&png_path, png).map_err(|e| e.to_string()))
            .map_err(|message| PlotError::Draw {
                path: png_path.clone(),
                message,
            })?;
        written.push(png_path);
    }
    Ok(written)
}

/// How SVGs are read for rasterising: every family a chart names (`system-ui`,
/// `sans-serif`, and usvg's fallback, serif) is the embedded DejaVu Sans, so text never
/// depends on the fonts a machine has.
fn raster_options() -> usvg::Options<'static> {
    let mut options = usvg::Options {
        font_family: FONT.to_owned(),
        ..usvg::Options::default()
    };
    let fonts = options.fontdb_mut();
    fonts.load_font_source(usvg::fontdb::Source::Binary(Arc::new(dejavu::sans::regular())));
    fonts.set_sans_serif_family(FONT);
    fonts.set_serif_family(FONT);
    options
}

/// `svg` as a PNG at its displayed size.
fn rasterise(svg: &str, options: &usvg::Options) -> Result<Vec<u8>, String> {
    pixmap(svg, options)?.encode_png().map_err(|e| e.to_string())
}

/// `svg`'s pixels at its displayed size.
fn pixmap(svg: &str, options: &usvg::Options) -> Result<tiny_skia::Pixmap, String> {
    let tree = usvg::Tree::from_str(svg, options).map_err(|e| e.to_string())?;
    let size = tree.size().to_int_size();
    let mut pixmap = tiny_skia::Pixmap::new(size.width(), size.height())
        .ok_or_else(|| format!("an empty image ({} × {})", size.width(), size.height()))?;
    resvg::render(&tree, tiny_skia::Transform::identity(), &mut pixmap.as_mut());
    Ok(pixmap)
}

#[cfg(test)]
mod tests {
    use super::*;
    use fedtune_tuning::TrialState;

    fn empty_chart() -> LineChart {
        LineChart {
            title: "Global model accuracy".into(),
            x_label: "round".into(),
            y_label: "accuracy".into(),
            series: Vec::new(),
            markers: Vec::new(),
            y_range: None,
            testid: "accuracy-chart".into(),
        }
    }

    /// Dark pixels (text; no line of a chart is this dark) in rows `rows` of `pixmap`.
    fn ink(pixmap: &tiny_skia::Pixmap, rows: std::ops::Range<u32>) -> usize {
        rows.flat_map(|y| (0..pixmap.width()).map(move |x| (x, y)))
            .filter_map(|(x, y)| pixmap.pixel(x, y))
            .filter(|p| p.red() < 100 && p.green() < 100 && p.blue() < 100)
            .count()
    }

    #[test]
    fn files_are_the_page_chart_drawn_larger() {
        let svg = Chart::Line(empty_chart()).svg();
        assert!(
            svg.starts_with("<svg") && svg.contains(r#"viewBox="0 0 640 360" width="960" height="540""#),
            "{svg}"
        );
        assert!(svg.contains(r#"data-testid="accuracy-chart""#));
    }

    #[test]
    fn text_renders_from_the_embedded_face_alone() {
        // resvg is built without system font lookup: any text in the image came from
        // the embedded face.
        let pixmap = pixmap(&Chart::Line(empty_chart()).svg(), &raster_options()).unwrap();
        assert_eq!((pixmap.width(), pixmap.height()), (960, 540));
        let title = ink(&pixmap, 0..36);
        assert!(title > 100, "{title} dark pixels in the title band");
        let message = (36..540)
            .flat_map(|y| (0..960).map(move |x| (x, y)))
            .filter_map(|(x, y)| pixmap.pixel(x, y))
            .filter(|p| p.red() < 200)
            .count();
        assert!(message > 50, "{message} grey pixels of \"no data yet\"");
    }

    #[test]
    fn study_points_in_files_link_nowhere() {
        let trials: Vec<FrozenTrial> = (0..4)
            .map(|n| FrozenTrial {
                number: n,
                params: Default::default(),
                values: Some(vec![n as f64, 4.0 - n as f64]),
                state: TrialState::Complete,
                feasible: true,
                intermediate: Default::default(),
                fail_reason: None,
            })
            .collect();
        let objectives = [
            Objective::new("accuracy", Direction::Maximize),
            Objective::new("bytes", Direction::Minimize),
        ];
        let out = std::env::temp_dir().join(format!("fedtune-plot-links-{}", std::process::id()));
        let files = study(&objectives, &trials, &out).unwrap();
        let pareto = std::fs::read_to_string(out.join("pareto.svg")).unwrap();
        let _ = std::fs::remove_dir_all(&out);
        assert_eq!(files.len(), 8, "{files:?}");
        assert_eq!(pareto.matches("<circle").count(), 5, "four trials, the chosen ringed");
        assert!(!pareto.contains("<a "), "{pareto}");
    }
}
