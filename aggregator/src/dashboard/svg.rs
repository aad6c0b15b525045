//! Charts rendered on the server as SVG.
//!
//! The dashboard draws its charts here rather than with a JavaScript plotting library:
//! the binary stays self-contained (no CDN, no npm build step), pages show their charts
//! without JavaScript, and the markup is small enough for a thousand points. Every
//! function returns one `<svg>` element with a `data-testid`, inline presentation
//! attributes (so it renders without CSS) and class names a stylesheet may use. Text is
//! escaped; non-finite values are skipped; empty data draws "no data yet".

use std::fmt::Write;

const WIDTH: f64 = 640.0;
const HEIGHT: f64 = 300.0;
const LEFT: f64 = 58.0;
const RIGHT: f64 = 16.0;
const TOP: f64 = 34.0;
const BOTTOM: f64 = 44.0;
/// Series drawn with a circle per point when they have at most this many points (and
/// there are few series).
const DOT_LIMIT: usize = 60;

/// Four significant digits, compactly; `–` for nothing.
pub fn num(v: Option<f64>) -> String {
    match v {
        Some(v) if v.is_finite() => {
            if v == 0.0 {
                "0".into()
            } else if v.abs() >= 1e5 || v.abs() < 1e-3 {
                format!("{v:.3e}")
            } else {
                let digits = (3 - v.abs().log10().floor() as i32).max(0) as usize;
                format!("{v:.digits$}")
            }
        }
        _ => "–".into(),
    }
}

/// Escapes text for HTML and SVG text and attribute values.
pub fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// A palette colour by index (eight that stay apart, cycled).
pub fn color(i: usize) -> &'static str {
    const PALETTE: [&str; 8] = [
        "#1a73e8", "#e8710a", "#188038", "#9334e6", "#d93025", "#12b5cb", "#f9ab00", "#5f6368",
    ];
    PALETTE[i % PALETTE.len()]
}

/// A line of a chart.
pub struct Series {
    /// Legend label.
    pub name: String,
    /// `(x, y)` points; a non-finite `y` leaves a gap.
    pub points: Vec<(f64, f64)>,
    /// Stroke colour.
    pub color: &'static str,
    /// Dashed stroke.
    pub dashed: bool,
    /// When set, every point is also a `<circle data-testid=… data-x=… data-y=…>`, the
    /// values printed exactly, so a test can read back what was plotted.
    pub testid: Option<String>,
}

/// A vertical dashed red line (a fairness violation, say) with a tooltip.
pub struct Marker {
    /// Where.
    pub x: f64,
    /// Tooltip.
    pub label: String,
}

/// A line chart.
pub struct LineChart {
    /// Title.
    pub title: String,
    /// X axis label.
    pub x_label: String,
    /// Y axis label.
    pub y_label: String,
    /// The lines.
    pub series: Vec<Series>,
    /// Vertical markers.
    pub markers: Vec<Marker>,
    /// A fixed y range (e.g. `(0, 1)` for accuracy); else from the data, padded.
    pub y_range: Option<(f64, f64)>,
    /// `data-testid` of the `<svg>`.
    pub testid: String,
}

/// A point of a scatter chart.
pub struct ScatterPoint {
    /// X.
    pub x: f64,
    /// Y.
    pub y: f64,
    /// Tooltip.
    pub label: String,
    /// Fill.
    pub color: &'static str,
    /// Radius in pixels.
    pub radius: f64,
    /// A link the point opens.
    pub href: Option<String>,
    /// Ringed in black (the chosen trial).
    pub emphasised: bool,
}

/// A scatter chart with optional lines over it.
pub struct ScatterChart {
    /// Title.
    pub title: String,
    /// X axis label.
    pub x_label: String,
    /// Y axis label.
    pub y_label: String,
    /// The points.
    pub points: Vec<ScatterPoint>,
    /// Lines drawn over the points (best so far, a Pareto front).
    pub lines: Vec<Series>,
    /// `data-testid` of the `<svg>`.
    pub testid: String,
    /// Draw `lines` as steps (across, then up or down).
    pub step_lines: bool,
}

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

/// A cohort member's row of a round timeline.
pub struct TimelineRow {
    /// The agent.
    pub agent: String,
    /// Seconds from the round's start to its answer; `None` when none came.
    pub at: Option<f64>,
    /// `update`, or why not (`straggler`, `refused`, …).
    pub outcome: String,
    /// The failure in words.
    pub detail: Option<String>,
}

/// A linear mapping from data to pixels.
#[derive(Clone, Copy)]
struct Scale {
    lo: f64,
    hi: f64,
    from: f64,
    to: f64,
}

impl Scale {
    fn new((lo, hi): (f64, f64), from: f64, to: f64) -> Self {
        Self { lo, hi, from, to }
    }

    fn at(self, v: f64) -> f64 {
        let span = self.hi - self.lo;
        let t = if span > 0.0 { (v - self.lo) / span } else { 0.5 };
        self.from + t.clamp(-0.05, 1.05) * (self.to - self.from)
    }
}

/// The range of `values` (finite ones), widened when empty or flat.
pub(crate) fn range(values: impl Iterator<Item = f64>) -> Option<(f64, f64)> {
    let (lo, hi) = values
        .filter(|v| v.is_finite())
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), v| (lo.min(v), hi.max(v)));
    if lo > hi {
        return None;
    }
    if hi - lo <= f64::EPSILON * hi.abs().max(1.0) {
        let pad = if lo == 0.0 { 1.0 } else { lo.abs() * 0.1 };
        return Some((lo - pad, hi + pad));
    }
    Some((lo, hi))
}

/// `lo..hi` widened by 5% on each side.
pub(crate) fn padded((lo, hi): (f64, f64)) -> (f64, f64) {
    let pad = (hi - lo) * 0.05;
    (lo - pad, hi + pad)
}

/// About five round tick values (1, 2 or 5 × 10ᵏ apart) inside `lo..=hi`.
pub fn ticks(lo: f64, hi: f64) -> Vec<f64> {
    if !(lo.is_finite() && hi.is_finite()) || hi <= lo {
        return if lo.is_finite() { vec![lo] } else { Vec::new() };
    }
    let raw = (hi - lo) / 5.0;
    let magnitude = 10f64.powf(raw.log10().floor());
    let step = [1.0, 2.0, 5.0, 10.0]
        .iter()
        .map(|m| m * magnitude)
        .find(|s| *s >= raw)
        .unwrap_or(10.0 * magnitude);
    let first = (lo / step).ceil() as i64;
    let last = (hi / step).floor() as i64;
    (first..=last).take(20).map(|k| k as f64 * step).collect()
}

/// A tick label: short, `1.5k`, `0.25`, `2e-4`.
pub fn tick_label(v: f64) -> String {
    let a = v.abs();
    if a == 0.0 || a < 1e-12 {
        "0".into()
    } else if a >= 1e6 {
        format!("{}M", trimmed(v / 1e6, 3))
    } else if a >= 1e4 {
        format!("{}k", trimmed(v / 1e3, 3))
    } else if a < 1e-3 {
        format!("{v:.0e}")
    } else {
        trimmed(v, 4)
    }
}

/// `v` with `decimals` decimals, trailing zeros dropped.
fn trimmed(v: f64, decimals: usize) -> String {
    let s = format!("{v:.decimals$}");
    if s.contains('.') {
        s.trim_end_matches('0').trim_end_matches('.').to_owned()
    } else {
        s
    }
}

fn open(out: &mut String, width: f64, height: f64, title: &str, testid: &str) {
    let _ = write!(
        out,
        r##"<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {width} {height}" width="{width}" height="{height}" data-testid="{id}" role="img" font-family="system-ui, sans-serif" font-size="11"><title>{t}</title><rect width="{width}" height="{height}" fill="#fff"/><text class="title" x="{LEFT}" y="18" font-size="13" font-weight="600" fill="#202124">{t}</text>"##,
        id = escape(testid),
        t = escape(title),
    );
}

fn no_data(out: &mut String, width: f64, height: f64) {
    let _ = write!(
        out,
        r##"<text class="empty" x="{x:.1}" y="{y:.1}" text-anchor="middle" fill="#5f6368">no data yet</text></svg>"##,
        x = width / 2.0,
        y = height / 2.0
    );
}

/// Axes, grid lines and labels of a plot area.
fn frame(out: &mut String, x: Scale, y: Scale, x_range: (f64, f64), y_range: (f64, f64), x_label: &str, y_label: &str) {
    out.push_str(r##"<g class="grid" stroke="#e8eaed">"##);
    for t in ticks(y_range.0, y_range.1) {
        let py = y.at(t);
        let _ = write!(
            out,
            r#"<line x1="{:.1}" x2="{:.1}" y1="{py:.1}" y2="{py:.1}"/>"#,
            x.from, x.to
        );
    }
    out.push_str("</g>");
    out.push_str(r##"<g class="axis" fill="#5f6368">"##);
    for t in ticks(y_range.0, y_range.1) {
        let _ = write!(
            out,
            r#"<text x="{:.1}" y="{:.1}" text-anchor="end">{}</text>"#,
            x.from - 6.0,
            y.at(t) + 4.0,
            tick_label(t)
        );
    }
    for t in ticks(x_range.0, x_range.1) {
        let _ = write!(
            out,
            r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">{}</text>"#,
            x.at(t),
            y.from + 16.0,
            tick_label(t)
        );
    }
    let _ = write!(
        out,
        r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">{}</text><text transform="translate(14 {:.1}) rotate(-90)" text-anchor="middle">{}</text>"#,
        (x.from + x.to) / 2.0,
        y.from + 34.0,
        escape(x_label),
        (y.from + y.to) / 2.0,
        escape(y_label)
    );
    out.push_str("</g>");
    let _ = write!(
        out,
        r##"<path class="axis-line" d="M{:.1} {:.1}V{:.1}H{:.1}" fill="none" stroke="#9aa0a6"/>"##,
        x.from, y.to, y.from, x.to
    );
}

/// A legend across the top right, for two or more named series (at most 8 entries).
fn legend<'a>(out: &mut String, entries: impl Iterator<Item = (&'a str, &'static str, bool)>, width: f64) {
    let entries: Vec<_> = entries.collect();
    if entries.len() < 2 || entries.len() > 8 {
        return;
    }
    out.push_str(r#"<g class="legend">"#);
    let mut x = width - RIGHT;
    for (name, color, dashed) in entries.iter().rev() {
        let text = escape(name);
        let w = 6.0 * name.chars().count() as f64 + 26.0;
        x -= w;
        let dash = if *dashed { r#" stroke-dasharray="4 3""# } else { "" };
        let _ = write!(
            out,
            r##"<line x1="{x:.1}" x2="{:.1}" y1="28" y2="28" stroke="{color}" stroke-width="2"{dash}/><text x="{:.1}" y="31" fill="#3c4043">{text}</text>"##,
            x + 16.0,
            x + 20.0
        );
    }
    out.push_str("</g>");
}

/// The path of `points` (gaps at non-finite values), as straight segments or steps.
fn path(points: &[(f64, f64)], x: Scale, y: Scale, steps: bool) -> String {
    let mut d = String::with_capacity(points.len() * 14);
    let mut pen_down = false;
    for &(px, py) in points {
        if !(px.is_finite() && py.is_finite()) {
            pen_down = false;
            continue;
        }
        let (sx, sy) = (x.at(px), y.at(py));
        if !pen_down {
            let _ = write!(d, "M{sx:.1} {sy:.1}");
            pen_down = true;
        } else if steps {
            let _ = write!(d, "H{sx:.1}V{sy:.1}");
        } else {
            let _ = write!(d, "L{sx:.1} {sy:.1}");
        }
    }
    d
}

fn draw_series(out: &mut String, s: &Series, x: Scale, y: Scale, steps: bool, dots: bool) {
    let dash = if s.dashed { r#" stroke-dasharray="5 3""# } else { "" };
    let d = path(&s.points, x, y, steps);
    if !d.is_empty() {
        let _ = write!(
            out,
            r#"<path class="series" d="{d}" fill="none" stroke="{}" stroke-width="1.6"{dash}><title>{}</title></path>"#,
            s.color,
            escape(&s.name)
        );
    }
    if s.testid.is_none() && !dots {
        return;
    }
    let name = escape(&s.name);
    let testid = s.testid.as_deref().map(escape);
    for &(px, py) in &s.points {
        if !(px.is_finite() && py.is_finite()) {
            continue;
        }
        let id = testid.as_deref().map_or_else(String::new, |t| {
            format!(r#" data-testid="{t}" data-x="{px}" data-y="{py}""#)
        });
        let _ = write!(
            out,
            r#"<circle cx="{:.1}" cy="{:.1}" r="2.5" fill="{}"{id}><title>{name}: {}, {}</title></circle>"#,
            x.at(px),
            y.at(py),
            s.color,
            tick_label(px),
            tick_label(py)
        );
    }
}

/// A line chart of `chart.series`.
pub fn line_chart(chart: &LineChart) -> String {
    let mut out = String::with_capacity(4096);
    open(&mut out, WIDTH, HEIGHT, &chart.title, &chart.testid);
    let finite = || {
        chart
            .series
            .iter()
            .flat_map(|s| s.points.iter())
            .filter(|p| p.0.is_finite() && p.1.is_finite())
    };
    let (Some(x_range), Some(data_y)) = (range(finite().map(|p| p.0)), range(finite().map(|p| p.1))) else {
        no_data(&mut out, WIDTH, HEIGHT);
        return out;
    };
    let y_range = chart.y_range.unwrap_or_else(|| padded(data_y));
    let x = Scale::new(x_range, LEFT, WIDTH - RIGHT);
    let y = Scale::new(y_range, HEIGHT - BOTTOM, TOP + 12.0);
    frame(&mut out, x, y, x_range, y_range, &chart.x_label, &chart.y_label);
    for m in chart.markers.iter().filter(|m| m.x.is_finite()) {
        let px = x.at(m.x);
        let _ = write!(
            out,
            r##"<line class="marker" x1="{px:.1}" x2="{px:.1}" y1="{:.1}" y2="{:.1}" stroke="#d93025" stroke-dasharray="3 3"><title>{}</title></line>"##,
            y.to,
            y.from,
            escape(&m.label)
        );
    }
    let few = chart.series.len() <= 8;
    for s in &chart.series {
        draw_series(&mut out, s, x, y, false, few && s.points.len() <= DOT_LIMIT);
    }
    legend(
        &mut out,
        chart.series.iter().map(|s| (s.name.as_str(), s.color, s.dashed)),
        WIDTH,
    );
    out.push_str("</svg>");
    out
}

/// A scatter chart of `chart.points` with `chart.lines` over them.
pub fn scatter_chart(chart: &ScatterChart) -> String {
    let mut out = String::with_capacity(4096 + chart.points.len() * 160);
    open(&mut out, WIDTH, HEIGHT, &chart.title, &chart.testid);
    let xs = chart
        .points
        .iter()
        .map(|p| (p.x, p.y))
        .filter(|p| p.0.is_finite() && p.1.is_finite());
    let (Some(x_range), Some(y_data)) = (range(xs.clone().map(|p| p.0)), range(xs.map(|p| p.1))) else {
        no_data(&mut out, WIDTH, HEIGHT);
        return out;
    };
    let x_range = padded(x_range);
    let y_range = padded(y_data);
    let x = Scale::new(x_range, LEFT, WIDTH - RIGHT);
    let y = Scale::new(y_range, HEIGHT - BOTTOM, TOP + 12.0);
    frame(&mut out, x, y, x_range, y_range, &chart.x_label, &chart.y_label);
    out.push_str(r#"<g class="points">"#);
    for p in chart.points.iter().filter(|p| p.x.is_finite() && p.y.is_finite()) {
        let (cx, cy) = (x.at(p.x), y.at(p.y));
        let radius = if p.radius.is_finite() && p.radius > 0.0 {
            p.radius
        } else {
            3.0
        };
        if let Some(href) = &p.href {
            let _ = write!(out, r#"<a href="{}">"#, escape(href));
        }
        let _ = write!(
            out,
            r#"<circle cx="{cx:.1}" cy="{cy:.1}" r="{radius:.1}" fill="{}" fill-opacity="0.85"><title>{}</title></circle>"#,
            p.color,
            escape(&p.label)
        );
        if p.emphasised {
            let _ = write!(
                out,
                r##"<circle class="chosen" cx="{cx:.1}" cy="{cy:.1}" r="{:.1}" fill="none" stroke="#000" stroke-width="2"/>"##,
                radius + 4.0
            );
        }
        if p.href.is_some() {
            out.push_str("</a>");
        }
    }
    out.push_str("</g>");
    for line in &chart.lines {
        draw_series(&mut out, line, x, y, chart.step_lines, false);
    }
    legend(
        &mut out,
        chart.lines.iter().map(|s| (s.name.as_str(), s.color, s.dashed)),
        WIDTH,
    );
    out.push_str("</svg>");
    out
}

/// The colour of a shade in `[0, 1]`: pale grey-blue (worst) to deep blue (best).
fn ramp(t: f64) -> String {
    let t = if t.is_finite() { t.clamp(0.0, 1.0) } else { 0.0 };
    let lerp = |a: f64, b: f64| (a + (b - a) * t).round() as u8;
    format!(
        "#{:02x}{:02x}{:02x}",
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
    let width = (WIDTH).max(120.0 * chart.axes.len() as f64);
    let mut out = String::with_capacity(4096 + chart.rows.len() * 120);
    open(&mut out, width, HEIGHT, &chart.title, &chart.testid);
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
    out.push_str(r##"<g class="axis" fill="#3c4043" stroke="none">"##);
    for (j, axis) in chart.axes.iter().enumerate() {
        let ax = axis_x(j);
        let _ = write!(
            out,
            r##"<line x1="{ax:.1}" x2="{ax:.1}" y1="{top:.1}" y2="{bottom:.1}" stroke="#5f6368"/><text x="{ax:.1}" y="{:.1}" text-anchor="middle" font-weight="600">{}</text>"##,
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

/// Horizontal bars of values in `[0, 1]`, scaled to the largest, each printed.
pub fn bar_chart(title: &str, bars: &[(String, f64)], testid: &str) -> String {
    let row = 20.0;
    let height = TOP + 10.0 + row * bars.len().max(1) as f64;
    let mut out = String::with_capacity(1024 + bars.len() * 200);
    open(&mut out, WIDTH, height, title, testid);
    if bars.is_empty() {
        no_data(&mut out, WIDTH, height);
        return out;
    }
    let label_width = 240.0;
    let max = bars.iter().map(|b| b.1).filter(|v| v.is_finite()).fold(0.0, f64::max);
    let full = WIDTH - label_width - 70.0;
    for (i, (name, value)) in bars.iter().enumerate() {
        let y = TOP + 6.0 + row * i as f64;
        let v = if value.is_finite() { value.max(0.0) } else { 0.0 };
        let w = if max > 0.0 { full * v / max } else { 0.0 };
        let _ = write!(
            out,
            r##"<g class="bar"><title>{name}: {v:.4}</title><text x="{:.1}" y="{:.1}" text-anchor="end" fill="#3c4043">{name}</text><rect x="{label_width:.1}" y="{y:.1}" width="{w:.1}" height="{:.1}" fill="{}"/><text x="{:.1}" y="{:.1}" fill="#5f6368">{}</text></g>"##,
            label_width - 6.0,
            y + 13.0,
            row - 6.0,
            color(0),
            label_width + w + 4.0,
            y + 13.0,
            tick_label(v),
            name = escape(name),
        );
    }
    out.push_str("</svg>");
    out
}

/// A round's timeline: a row per cohort member, a dot where its answer came (at the
/// round's end, hollow, when none did), green for an update, orange or red otherwise.
pub fn timeline_chart(
    title: &str,
    rows: &[TimelineRow],
    round_seconds: f64,
    deadline: Option<f64>,
    testid: &str,
) -> String {
    let row = 18.0;
    let label_width = 120.0;
    let height = TOP + 40.0 + row * rows.len().max(1) as f64;
    let mut out = String::with_capacity(1024 + rows.len() * 220);
    open(&mut out, WIDTH, height, title, testid);
    if rows.is_empty() {
        no_data(&mut out, WIDTH, height);
        return out;
    }
    let end = rows
        .iter()
        .filter_map(|r| r.at)
        .chain([round_seconds])
        .chain(deadline)
        .filter(|v| v.is_finite() && *v >= 0.0)
        .fold(0.0, f64::max);
    let x_range = (0.0, if end > 0.0 { end } else { 1.0 });
    let x = Scale::new(x_range, label_width, WIDTH - RIGHT);
    let bottom = TOP + 8.0 + row * rows.len() as f64;
    out.push_str(r##"<g class="axis" fill="#5f6368">"##);
    for t in ticks(x_range.0, x_range.1) {
        let px = x.at(t);
        let _ = write!(
            out,
            r##"<line x1="{px:.1}" x2="{px:.1}" y1="{:.1}" y2="{bottom:.1}" stroke="#e8eaed"/><text x="{px:.1}" y="{:.1}" text-anchor="middle">{}</text>"##,
            TOP + 4.0,
            bottom + 14.0,
            tick_label(t)
        );
    }
    let _ = write!(
        out,
        r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">seconds from the round's start</text></g>"#,
        (x.from + x.to) / 2.0,
        bottom + 30.0
    );
    if let Some(d) = deadline.filter(|d| d.is_finite()) {
        let px = x.at(d);
        let _ = write!(
            out,
            r##"<line class="deadline" x1="{px:.1}" x2="{px:.1}" y1="{:.1}" y2="{bottom:.1}" stroke="#d93025" stroke-dasharray="4 3"><title>deadline</title></line>"##,
            TOP + 4.0
        );
    }
    for (i, r) in rows.iter().enumerate() {
        let y = TOP + 8.0 + row * i as f64 + row / 2.0;
        let (fill, stroke) = match (r.outcome.as_str(), r.at) {
            ("update", _) => ("#188038", "#188038"),
            ("straggler", _) => ("none", "#e8710a"),
            (_, _) => ("none", "#d93025"),
        };
        let at = r.at.filter(|v| v.is_finite()).unwrap_or(x_range.1);
        let detail = r
            .detail
            .as_deref()
            .map(|d| format!(": {}", escape(d)))
            .unwrap_or_default();
        let when = r.at.map_or_else(|| "no answer".to_owned(), |a| format!("{a:.3} s"));
        let _ = write!(
            out,
            r##"<g class="agent" data-outcome="{outcome}"><title>{agent}: {outcome} ({when}){detail}</title><text x="{:.1}" y="{:.1}" text-anchor="end" fill="#3c4043">{agent}</text><line x1="{:.1}" x2="{:.1}" y1="{y:.1}" y2="{y:.1}" stroke="#dadce0"/><circle cx="{:.1}" cy="{y:.1}" r="4.5" fill="{fill}" stroke="{stroke}" stroke-width="2"/></g>"##,
            label_width - 8.0,
            y + 4.0,
            x.from,
            x.at(at),
            x.at(at),
            agent = escape(&r.agent),
            outcome = escape(&r.outcome),
        );
    }
    out.push_str("</svg>");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn balanced(svg: &str) {
        assert_eq!(svg.matches("<svg").count(), svg.matches("</svg>").count(), "{svg}");
        assert_eq!(svg.matches("<g").count(), svg.matches("</g>").count(), "{svg}");
        assert_eq!(svg.matches("<a ").count(), svg.matches("</a>").count(), "{svg}");
    }

    fn series(points: Vec<(f64, f64)>, testid: Option<&str>) -> Series {
        Series {
            name: "acc".into(),
            points,
            color: color(0),
            dashed: false,
            testid: testid.map(str::to_owned),
        }
    }

    fn chart(series: Vec<Series>) -> LineChart {
        LineChart {
            title: "Accuracy".into(),
            x_label: "round".into(),
            y_label: "accuracy".into(),
            series,
            markers: vec![Marker {
                x: 1.0,
                label: "worst < 0.5".into(),
            }],
            y_range: Some((0.0, 1.0)),
            testid: "accuracy-chart".into(),
        }
    }

    #[test]
    fn text_is_escaped() {
        assert_eq!(
            escape(r#"<script>"a"&'b'"#),
            "&lt;script&gt;&quot;a&quot;&amp;&#39;b&#39;"
        );
        let svg = line_chart(&LineChart {
            title: "<script>alert(1)</script>".into(),
            ..chart(vec![series(vec![(0.0, 0.5)], None)])
        });
        assert!(!svg.contains("<script>"));
        assert!(svg.contains("&lt;script&gt;"));
    }

    #[test]
    fn ticks_are_round_numbers_inside_the_range() {
        assert_eq!(ticks(0.0, 1.0), vec![0.0, 0.2, 0.4, 0.6000000000000001, 0.8, 1.0]);
        let small = ticks(0.0, 0.003);
        assert!(
            small.len() >= 3 && small.iter().all(|t| (0.0..=0.003).contains(t)),
            "{small:?}"
        );
        assert_eq!(ticks(3.0, 3.0), vec![3.0]);
        let negative = ticks(-10.0, -2.0);
        assert!(negative.contains(&-10.0) && negative.contains(&-4.0), "{negative:?}");
        assert_eq!(tick_label(1500.0), "1500");
        assert_eq!(tick_label(15_000.0), "15k");
        assert_eq!(tick_label(0.25), "0.25");
        assert_eq!(tick_label(0.0002), "2e-4");
    }

    #[test]
    fn a_series_with_a_testid_marks_every_finite_point_exactly() {
        let points = vec![(0.0, 0.5), (1.0, f64::NAN), (2.0, 0.96944), (3.0, 0.97)];
        let svg = line_chart(&chart(vec![series(points, Some("test-accuracy-point"))]));
        balanced(&svg);
        assert_eq!(svg.matches(r#"data-testid="test-accuracy-point""#).count(), 3);
        assert!(svg.contains(r#"data-x="2" data-y="0.96944""#), "{svg}");
        assert!(svg.contains(r#"data-testid="accuracy-chart""#));
        assert!(svg.contains("class=\"marker\""));
        // The NaN leaves a gap: the path starts again.
        assert_eq!(svg.matches(r#"class="series" d="#).count(), 1);
        let path = svg.split(r#"class="series" d=""#).nth(1).unwrap_or("");
        assert_eq!(path.split('"').next().unwrap_or("").matches('M').count(), 2);
    }

    #[test]
    fn empty_charts_say_so() {
        for svg in [
            line_chart(&chart(Vec::new())),
            line_chart(&chart(vec![series(vec![(0.0, f64::NAN)], None)])),
            bar_chart("Importance", &[], "importance-chart"),
            timeline_chart("Round 0", &[], 0.0, None, "round-timeline"),
        ] {
            assert!(svg.contains("no data yet"), "{svg}");
            balanced(&svg);
        }
    }

    #[test]
    fn a_flat_series_still_draws() {
        let svg = line_chart(&LineChart {
            y_range: None,
            ..chart(vec![series(vec![(0.0, 2.0), (1.0, 2.0)], Some("p"))])
        });
        balanced(&svg);
        assert!(svg.contains(r#"data-y="2""#) && !svg.contains("NaN"), "{svg}");
    }

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

    #[test]
    fn the_chosen_point_is_ringed_and_linked() {
        let point = |x: f64, emphasised: bool| ScatterPoint {
            x,
            y: x * 2.0,
            label: format!("trial {x}"),
            color: color(1),
            radius: 3.0,
            href: Some(format!("/runs/1?trial={x}&a=b")),
            emphasised,
        };
        let svg = scatter_chart(&ScatterChart {
            title: "History".into(),
            x_label: "trial".into(),
            y_label: "accuracy".into(),
            points: vec![point(0.0, false), point(1.0, true)],
            lines: vec![series(vec![(0.0, 0.0), (1.0, 2.0)], None)],
            testid: "history-chart".into(),
            step_lines: true,
        });
        balanced(&svg);
        assert_eq!(svg.matches(r#"class="chosen""#).count(), 1);
        assert!(svg.contains("trial=1&amp;a=b"));
        assert!(svg.contains('H') && svg.contains('V'));
    }

    #[test]
    fn a_timeline_has_a_row_per_member() {
        let rows = vec![
            TimelineRow {
                agent: "agent-0".into(),
                at: Some(0.2),
                outcome: "update".into(),
                detail: None,
            },
            TimelineRow {
                agent: "agent-1".into(),
                at: None,
                outcome: "straggler".into(),
                detail: Some("no update before the round closed".into()),
            },
        ];
        let svg = timeline_chart("Round 3", &rows, 0.5, Some(0.5), "round-timeline");
        balanced(&svg);
        assert_eq!(svg.matches(r#"class="agent""#).count(), 2);
        assert!(svg.contains(r#"data-outcome="straggler""#) && svg.contains("deadline"));
    }

    #[test]
    fn bars_scale_to_the_largest() {
        let svg = bar_chart(
            "Importance",
            &[("lr".into(), 0.75), ("batch".into(), 0.25)],
            "importance-chart",
        );
        balanced(&svg);
        assert!(svg.contains(">lr<") && svg.contains(">0.75<"), "{svg}");
    }
}
