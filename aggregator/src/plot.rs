//! Charts as files: a run's accuracy, loss and fairness by round, a study's optimisation
//! history, intermediate values and Pareto front, each written as SVG and PNG with
//! plotters. The charts are the dashboard's ([`crate::dashboard::charts`]), so a file
//! shows what the page shows.
//!
//! PNG text is drawn with DejaVu Sans, embedded in the binary: plots come out the same
//! on a device or a CI machine with no fonts installed.

use std::path::{Path, PathBuf};
use std::sync::Once;

use plotters::coord::Shift;
use plotters::coord::types::RangedCoordf64;
use plotters::prelude::*;

use crate::dashboard::charts;
use crate::dashboard::svg::{LineChart, ScatterChart, Series, padded, range, tick_label};
use crate::tune::TuneReport;
use fedtune_federation::RoundRecord;
use fedtune_tuning::{Direction, FrozenTrial, Objective};

/// Pixel size of every plot.
const SIZE: (u32, u32) = (960, 540);
/// Font family the PNGs are drawn with (registered once from the embedded face).
const FONT: &str = "sans-serif";
/// Above this many lines a chart has no legend (the intermediate values of 100 trials).
const LEGEND_LIMIT: usize = 8;

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
        /// What plotters said.
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
    // Points in files link nowhere; the dashboard's charts take a study id for links.
    let id = 0;
    let directions: Vec<Direction> = objectives.iter().map(|o| o.direction).collect();
    let names: Vec<String> = objectives.iter().map(|o| o.name.clone()).collect();
    let best = charts::best_trial(trials, &directions).map(|t| t.number);
    let mut all: Vec<Chart> = names
        .iter()
        .enumerate()
        .take(3)
        .map(|(k, name)| Chart::Scatter(charts::history_chart(id, trials, k, name, directions[k])))
        .collect();
    if let Some(first) = names.first() {
        all.push(Chart::Line(charts::intermediate_chart(trials, first, best)));
    }
    if names.len() >= 2 {
        all.extend(
            charts::pareto_charts(id, trials, &names, &directions, best)
                .into_iter()
                .map(Chart::Scatter),
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
        })
        .collect();
    study(&report.objectives, &trials, out)
}

fn write_all(charts: Vec<Chart>, out: &Path) -> Result<Vec<PathBuf>, PlotError> {
    std::fs::create_dir_all(out).map_err(|source| PlotError::Directory {
        path: out.to_path_buf(),
        source,
    })?;
    register_font();
    let mut written = Vec::with_capacity(charts.len() * 2);
    for chart in &charts {
        let name = chart.testid().replace("-chart", "");
        let svg = out.join(format!("{name}.svg"));
        draw(&SVGBackend::new(&svg, SIZE).into_drawing_area(), chart).map_err(|message| PlotError::Draw {
            path: svg.clone(),
            message,
        })?;
        written.push(svg);
        let png = out.join(format!("{name}.png"));
        draw(&BitMapBackend::new(&png, SIZE).into_drawing_area(), chart).map_err(|message| PlotError::Draw {
            path: png.clone(),
            message,
        })?;
        written.push(png);
    }
    Ok(written)
}

fn register_font() {
    static FONTS: Once = Once::new();
    FONTS.call_once(|| {
        // DejaVu Sans is a valid TrueType face; a failure would leave text undrawn, which
        // `draw` then reports for the file it happens in.
        let _ = plotters::style::register_font(FONT, FontStyle::Normal, dejavu::sans::regular());
    });
}

/// `#rrggbb` as a colour (grey for anything else).
fn rgb(hex: &str) -> RGBColor {
    let channel = |i: usize| hex.get(i..i + 2).and_then(|h| u8::from_str_radix(h, 16).ok());
    match (hex.len(), channel(1), channel(3), channel(5)) {
        (7, Some(r), Some(g), Some(b)) => RGBColor(r, g, b),
        _ => RGBColor(0x5f, 0x63, 0x68),
    }
}

/// Draws `chart` on `root` and presents it (writes the file).
fn draw<DB: DrawingBackend>(root: &DrawingArea<DB, Shift>, chart: &Chart) -> Result<(), String> {
    let drawn = match chart {
        Chart::Line(c) => draw_line(root, c),
        Chart::Scatter(c) => draw_scatter(root, c),
    };
    drawn.and_then(|()| root.present()).map_err(|e| e.to_string())
}

/// Plain f64 axes.
type Xy = Cartesian2d<RangedCoordf64, RangedCoordf64>;

type Drawn<DB> = Result<(), DrawingAreaErrorKind<<DB as DrawingBackend>::ErrorType>>;

/// The x and y extents of `points` (the y one replaced by `y_range` when given), padded
/// as on the dashboard; `None` when nothing is finite.
fn extents<'a>(
    points: impl Iterator<Item = &'a (f64, f64)> + Clone,
    y_range: Option<(f64, f64)>,
) -> Option<((f64, f64), (f64, f64))> {
    let finite = points.filter(|p| p.0.is_finite() && p.1.is_finite());
    let x = padded(range(finite.clone().map(|p| p.0))?);
    let y = match y_range {
        Some(y) => y,
        None => padded(range(finite.map(|p| p.1))?),
    };
    Some((x, y))
}

fn no_data<DB: DrawingBackend>(root: &DrawingArea<DB, Shift>, title: &str) -> Drawn<DB> {
    let (w, h) = root.dim_in_pixel();
    root.draw(&Text::new(title.to_owned(), (20, 20), (FONT, 20)))?;
    root.draw(&Text::new(
        "no data yet".to_owned(),
        (w as i32 / 2 - 50, h as i32 / 2),
        (FONT, 18).into_font().color(&RGBColor(0x5f, 0x63, 0x68)),
    ))
}

/// The finite runs of `points`, split where a value is missing (as the SVG path lifts
/// its pen), each as a step line when `steps`.
fn segments(points: &[(f64, f64)], steps: bool) -> Vec<Vec<(f64, f64)>> {
    let mut out: Vec<Vec<(f64, f64)>> = vec![Vec::new()];
    for &(x, y) in points {
        if !(x.is_finite() && y.is_finite()) {
            out.push(Vec::new());
            continue;
        }
        let current = out.last_mut().expect("out starts non-empty");
        if steps && let Some(&(_, last_y)) = current.last() {
            current.push((x, last_y));
        }
        current.push((x, y));
    }
    out.retain(|s| !s.is_empty());
    out
}

/// Draws `lines` on `chart`, naming each in the legend when there are few.
fn draw_lines<'a, DB: DrawingBackend + 'a>(
    chart: &mut ChartContext<'a, DB, Xy>,
    lines: &[Series],
    steps: bool,
) -> Drawn<DB> {
    let legend = lines.len() <= LEGEND_LIMIT;
    for line in lines {
        let style = rgb(line.color).stroke_width(if legend { 2 } else { 1 });
        let mut named = false;
        for segment in segments(&line.points, steps) {
            let drawn = if line.dashed {
                chart.draw_series(DashedLineSeries::new(segment, 6, 4, style))?
            } else {
                chart.draw_series(LineSeries::new(segment, style))?
            };
            if legend && !named {
                named = true;
                drawn
                    .label(line.name.clone())
                    .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], style));
            }
        }
    }
    Ok(())
}

fn legend_box<'a, DB: DrawingBackend + 'a>(
    chart: &mut ChartContext<'a, DB, Xy>,
    position: SeriesLabelPosition,
) -> Drawn<DB> {
    chart
        .configure_series_labels()
        .position(position)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK.mix(0.3))
        .label_font((FONT, 14))
        .draw()
}

/// The chart area of `root` over `x` × `y`, titled, with axes, grid and labels; ticks
/// read as on the dashboard (`1.5k`, `2e-4`), and an axis of rounds or trials
/// (`integral_x`) is labelled at whole numbers only.
fn frame<'a, DB: DrawingBackend + 'a>(
    root: &'a DrawingArea<DB, Shift>,
    (title, title_size): (&str, u32),
    (x, y): ((f64, f64), (f64, f64)),
    (x_label, y_label): (&str, &str),
    integral_x: bool,
) -> Result<ChartContext<'a, DB, Xy>, DrawingAreaErrorKind<DB::ErrorType>> {
    let mut chart = ChartBuilder::on(root)
        .caption(title, (FONT, title_size))
        .margin(14)
        .x_label_area_size(44)
        .y_label_area_size(64)
        .build_cartesian_2d(x.0..x.1, y.0..y.1)?;
    let x_ticks = |v: &f64| {
        if integral_x && v.fract() != 0.0 {
            String::new()
        } else {
            tick_label(*v)
        }
    };
    chart
        .configure_mesh()
        .x_desc(x_label)
        .y_desc(y_label)
        .x_label_formatter(&x_ticks)
        .y_label_formatter(&|v| tick_label(*v))
        .label_style((FONT, 14))
        .axis_desc_style((FONT, 15))
        .light_line_style(BLACK.mix(0.04))
        .draw()?;
    Ok(chart)
}

fn draw_line<DB: DrawingBackend>(root: &DrawingArea<DB, Shift>, c: &LineChart) -> Drawn<DB> {
    root.fill(&WHITE)?;
    let Some((x, y)) = extents(c.series.iter().flat_map(|s| s.points.iter()), c.y_range) else {
        return no_data(root, &c.title);
    };
    let integral_x = c.series.iter().flat_map(|s| &s.points).all(|p| p.0.fract() == 0.0);
    let mut chart = frame(root, (&c.title, 20), (x, y), (&c.x_label, &c.y_label), integral_x)?;
    let marker = RGBColor(0xd9, 0x30, 0x25).mix(0.5);
    for m in c.markers.iter().filter(|m| m.x.is_finite()) {
        chart.draw_series(DashedLineSeries::new([(m.x, y.0), (m.x, y.1)], 3, 3, marker.into()))?;
    }
    draw_lines(&mut chart, &c.series, false)?;
    if c.series.len() <= LEGEND_LIMIT {
        legend_box(&mut chart, SeriesLabelPosition::LowerRight)?;
    }
    Ok(())
}

fn draw_scatter<DB: DrawingBackend>(root: &DrawingArea<DB, Shift>, c: &ScatterChart) -> Drawn<DB> {
    root.fill(&WHITE)?;
    let xy: Vec<(f64, f64)> = c.points.iter().map(|p| (p.x, p.y)).collect();
    let Some((x, y)) = extents(xy.iter(), None) else {
        return no_data(root, &c.title);
    };
    let integral_x = xy.iter().all(|p| p.0.fract() == 0.0);
    let mut chart = frame(root, (&c.title, 18), (x, y), (&c.x_label, &c.y_label), integral_x)?;
    chart.draw_series(
        c.points
            .iter()
            .filter(|p| p.x.is_finite() && p.y.is_finite())
            .map(|p| Circle::new((p.x, p.y), p.radius, rgb(p.color).filled())),
    )?;
    chart.draw_series(
        c.points
            .iter()
            .filter(|p| p.emphasised && p.x.is_finite() && p.y.is_finite())
            .map(|p| Circle::new((p.x, p.y), p.radius + 5.0, BLACK.stroke_width(2))),
    )?;
    draw_lines(&mut chart, &c.lines, c.step_lines)?;
    if c.lines.iter().any(|l| !l.points.is_empty()) {
        legend_box(&mut chart, SeriesLabelPosition::UpperRight)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn colours_parse_and_fall_back_to_grey() {
        assert_eq!(rgb("#1a73e8"), RGBColor(0x1a, 0x73, 0xe8));
        assert_eq!(rgb("#zz0000"), RGBColor(0x5f, 0x63, 0x68));
        assert_eq!(rgb("red"), RGBColor(0x5f, 0x63, 0x68));
    }

    #[test]
    fn segments_break_at_missing_values_and_step_when_asked() {
        let points = [(0.0, 1.0), (1.0, 2.0), (2.0, f64::NAN), (3.0, 4.0)];
        assert_eq!(
            segments(&points, false),
            vec![vec![(0.0, 1.0), (1.0, 2.0)], vec![(3.0, 4.0)]]
        );
        assert_eq!(
            segments(&points[..2], true),
            vec![vec![(0.0, 1.0), (1.0, 1.0), (1.0, 2.0)]]
        );
    }
}
