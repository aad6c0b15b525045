//! Parallel-coordinates charts: a line per trial across an axis per parameter.

use std::fmt::Write;

use super::{BOTTOM, HEIGHT, LEFT, Size, TOP, WIDTH, escape, no_data, open, range, tick_label};

/// How a parallel-coordinates axis maps values.
pub enum AxisKind {
    /// Numbers, from their minimum to their maximum (log10 when `log` and all positive).
    Numeric {
        /// Log scale.
        log: bool,
    },
    /// Indices into these labels, spread evenly.
    Categorical(Vec<String>),
}

/// An axis of a parallel-coordinates chart.
pub struct Axis {
    /// Its name.
    pub name: String,
    /// How values map onto it.
    pub kind: AxisKind,
}

/// A parallel-coordinates chart.
pub struct ParallelChart {
    /// Title.
    pub title: String,
    /// The axes, left to right.
    pub axes: Vec<Axis>,
    /// `rows[i][j]`: row `i` on axis `j` (NaN: missing, the line skips the axis).
    pub rows: Vec<Vec<f64>>,
    /// Per row in `[0, 1]`, 1 the best: its colour.
    pub shade: Vec<f64>,
    /// Per row, its tooltip.
    pub row_labels: Vec<String>,
    /// `data-testid` of the `<svg>`.
    pub testid: String,
}

/// The colour of a shade in `[0, 1]`: pale grey-blue (worst) to deep blue (best).
fn ramp(t: f64) -> String {
    let t = if t.is_finite() { t.clamp(0.0, 1.0) } else { 0.0 };
    let lerp = |a: f64, b: f64| (a + (b - a) * t).round() as u8;
    format!(
        "#{:02X}{:02X}{:02X}",
        lerp(200.0, 13.0),
        lerp(210.0, 71.0),
        lerp(225.0, 161.0)
    )
}

/// A numeric axis's extent, in log10 when `log`.
#[derive(Clone, Copy)]
struct Span {
    log: bool,
    lo: f64,
    hi: f64,
}

/// How a parallel-coordinates axis maps a value to a height, 0 (bottom) … 1 (top).
enum AxisMap {
    /// Choices by index, spread evenly.
    Categorical(usize),
    /// Numbers over their span (`None`: no finite value to span).
    Numeric(Option<Span>),
}

impl AxisMap {
    /// A numeric axis over `values`; log scale only when asked and all are positive.
    fn numeric(values: impl Iterator<Item = f64> + Clone, log: bool) -> Self {
        let log = log && values.clone().filter(|v| v.is_finite()).all(|v| v > 0.0);
        let span = range(values.map(|v| if log { v.log10() } else { v })).map(|(lo, hi)| Span { log, lo, hi });
        Self::Numeric(span)
    }

    fn at(&self, v: f64) -> Option<f64> {
        match *self {
            Self::Categorical(n) => {
                (v.is_finite() && v >= 0.0 && (v as usize) < n).then(|| if n == 1 { 0.5 } else { v / (n - 1) as f64 })
            }
            Self::Numeric(Some(Span { log, lo, hi })) => {
                let v = if log { v.log10() } else { v };
                v.is_finite().then(|| ((v - lo) / (hi - lo)).clamp(0.0, 1.0))
            }
            Self::Numeric(None) => None,
        }
    }
}

/// A parallel-coordinates chart.
pub fn parallel_chart(chart: &ParallelChart) -> String {
    let width = WIDTH.max(120.0 * chart.axes.len() as f64);
    let mut out = String::with_capacity(4096 + chart.rows.len() * 120);
    open(&mut out, Size::natural(width, HEIGHT), &chart.title, &chart.testid);
    if chart.axes.is_empty() || chart.rows.is_empty() {
        no_data(&mut out, width, HEIGHT);
        return out;
    }
    let (top, bottom) = (TOP + 14.0, HEIGHT - BOTTOM);
    let step = if chart.axes.len() > 1 {
        (width - LEFT - 40.0) / (chart.axes.len() - 1) as f64
    } else {
        0.0
    };
    let axis_x = |j: usize| LEFT + step * j as f64;
    let maps: Vec<AxisMap> = chart
        .axes
        .iter()
        .enumerate()
        .map(|(j, axis)| match &axis.kind {
            AxisKind::Categorical(labels) => AxisMap::Categorical(labels.len().max(1)),
            AxisKind::Numeric { log } => AxisMap::numeric(chart.rows.iter().filter_map(|r| r.get(j).copied()), *log),
        })
        .collect();
    let to_y = |f: f64| bottom - f * (bottom - top);
    out.push_str(r#"<g class="rows" fill="none" stroke-width="1.2" stroke-opacity="0.7">"#);
    for (i, row) in chart.rows.iter().enumerate() {
        let mut d = String::new();
        let mut pen = false;
        for (j, map) in maps.iter().enumerate() {
            match row.get(j).and_then(|v| map.at(*v)) {
                Some(f) => {
                    let _ = write!(d, "{}{:.1} {:.1}", if pen { "L" } else { "M" }, axis_x(j), to_y(f));
                    pen = true;
                }
                None => pen = false,
            }
        }
        if d.is_empty() {
            continue;
        }
        let shade = chart.shade.get(i).copied().unwrap_or(0.5);
        let label = chart.row_labels.get(i).map(|l| escape(l)).unwrap_or_default();
        let _ = write!(
            out,
            r#"<path d="{d}" stroke="{}"><title>{label}</title></path>"#,
            ramp(shade)
        );
    }
    out.push_str("</g>");
    out.push_str(r##"<g class="axis" fill="#3C4043" stroke="none">"##);
    for (j, axis) in chart.axes.iter().enumerate() {
        let ax = axis_x(j);
        let _ = write!(
            out,
            r##"<line x1="{ax:.1}" x2="{ax:.1}" y1="{top:.1}" y2="{bottom:.1}" stroke="#5F6368"/><text x="{ax:.1}" y="{:.1}" text-anchor="middle" font-weight="600">{}</text>"##,
            bottom + 18.0,
            escape(&axis.name)
        );
        match &axis.kind {
            AxisKind::Categorical(labels) => {
                let n = labels.len();
                for (k, label) in labels.iter().enumerate() {
                    let f = if n <= 1 { 0.5 } else { k as f64 / (n - 1) as f64 };
                    let _ = write!(
                        out,
                        r#"<text x="{:.1}" y="{:.1}">{}</text>"#,
                        ax + 4.0,
                        to_y(f) + 4.0,
                        escape(label)
                    );
                }
            }
            AxisKind::Numeric { .. } => {
                if let Some(&AxisMap::Numeric(Some(Span { log, lo, hi }))) = maps.get(j) {
                    let shown = |v: f64| if log { 10f64.powf(v) } else { v };
                    for (f, v) in [(0.0, lo), (1.0, hi)] {
                        let _ = write!(
                            out,
                            r#"<text x="{:.1}" y="{:.1}">{}</text>"#,
                            ax + 4.0,
                            to_y(f) + 4.0,
                            tick_label(shown(v))
                        );
                    }
                    if log {
                        let _ = write!(
                            out,
                            r#"<text x="{:.1}" y="{:.1}" font-size="9">log</text>"#,
                            ax + 4.0,
                            top - 4.0
                        );
                    }
                }
            }
        }
    }
    out.push_str("</g></svg>");
    out
}

#[cfg(test)]
mod tests {
    use super::super::testing::balanced;
    use super::*;

    #[test]
    fn parallel_axes_show_log_and_categories() {
        let svg = parallel_chart(&ParallelChart {
            title: "Parallel".into(),
            axes: vec![
                Axis {
                    name: "lr".into(),
                    kind: AxisKind::Numeric { log: true },
                },
                Axis {
                    name: "optimizer".into(),
                    kind: AxisKind::Categorical(vec!["sgd".into(), "adam".into()]),
                },
            ],
            rows: vec![vec![1e-3, 0.0], vec![1e-1, 1.0], vec![f64::NAN, 1.0]],
            shade: vec![0.0, 1.0, 0.5],
            row_labels: vec!["trial 0".into(), "trial 1".into(), "trial 2".into()],
            testid: "parallel-chart".into(),
        });
        balanced(&svg);
        assert!(
            svg.contains(">log<") && svg.contains(">adam<") && svg.contains(">sgd<"),
            "{svg}"
        );
        assert_eq!(svg.matches("<title>trial").count(), 3);
        assert!(svg.contains("0.001") && svg.contains("0.1"), "{svg}");
    }
}
