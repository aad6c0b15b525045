//! Charts rendered on the server as SVG.
//!
//! The dashboard draws its charts here rather than with a JavaScript plotting library:
//! the binary stays self-contained (no CDN, no npm build step), pages show their charts
//! without JavaScript, and the markup is small enough for a thousand points. Every
//! function returns one `<svg>` element with a `data-testid`, inline presentation
//! attributes (so it renders without CSS) and class names a stylesheet may use. Text is
//! escaped; non-finite values are skipped; empty data draws "no data yet".
//!
//! The `plot` command writes these same charts as files ([`crate::plot`]): drawn at a
//! larger [`Size`], and rasterised from this SVG for PNG. So the markup is well-formed
//! XML, and has one spelling for pages and files that tools searching the files rely on:
//! colours `#RRGGBB` in capitals, an apostrophe `&apos;`.
//!
//! One file per kind of chart (`line`, `scatter`, `parallel`, `bar`, `timeline`); this
//! module holds what they share: sizes, scales, ticks, axes, legends, escaping, the palette.

mod bar;
mod line;
mod parallel;
mod scatter;
mod timeline;

use std::fmt::Write;

pub use bar::bar_chart;
pub use line::{LineChart, Marker, line_chart};
pub use parallel::{Axis, AxisKind, ParallelChart, parallel_chart};
pub use scatter::{ScatterChart, ScatterPoint, scatter_chart};
pub use timeline::{TimelineRow, timeline_chart};

/// Width of every chart on a page, and of line and scatter charts in files.
const WIDTH: f64 = 640.0;
/// Height of a line, scatter or parallel-coordinates chart on a page.
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
            '\'' => out.push_str("&apos;"),
            c => out.push(c),
        }
    }
    out
}

/// A palette colour by index (eight that stay apart, cycled).
pub fn color(i: usize) -> &'static str {
    const PALETTE: [&str; 8] = [
        "#1A73E8", "#E8710A", "#188038", "#9334E6", "#D93025", "#12B5CB", "#F9AB00", "#5F6368",
    ];
    PALETTE[i % PALETTE.len()]
}

/// The size a chart is drawn at: its coordinate space (the `viewBox`), and how many
/// times larger it is displayed (the `<svg>`'s `width` and `height`, and so a rasterised
/// image's pixels). Text and strokes scale with it, so a chart shown larger stays legible.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Size {
    /// Width in the chart's units.
    pub width: f64,
    /// Height in the chart's units.
    pub height: f64,
    /// Displayed size over the chart's units.
    pub scale: f64,
}

impl Size {
    /// A chart on the dashboard's pages, at its natural size.
    pub const PAGE: Size = Size {
        width: WIDTH,
        height: HEIGHT,
        scale: 1.0,
    };

    /// `width` × `height` at scale 1.
    fn natural(width: f64, height: f64) -> Self {
        Self {
            width,
            height,
            scale: 1.0,
        }
    }
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
fn range(values: impl Iterator<Item = f64>) -> Option<(f64, f64)> {
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
fn padded((lo, hi): (f64, f64)) -> (f64, f64) {
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

fn open(out: &mut String, size: Size, title: &str, testid: &str) {
    let Size { width, height, scale } = size;
    let _ = write!(
        out,
        r##"<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {width} {height}" width="{shown_width}" height="{shown_height}" data-testid="{id}" role="img" font-family="system-ui, sans-serif" font-size="11"><title>{t}</title><rect width="{width}" height="{height}" fill="#FFF"/><text class="title" x="{LEFT}" y="18" font-size="13" font-weight="600" fill="#202124">{t}</text>"##,
        shown_width = width * scale,
        shown_height = height * scale,
        id = escape(testid),
        t = escape(title),
    );
}

fn no_data(out: &mut String, width: f64, height: f64) {
    let _ = write!(
        out,
        r##"<text class="empty" x="{x:.1}" y="{y:.1}" text-anchor="middle" fill="#5F6368">no data yet</text></svg>"##,
        x = width / 2.0,
        y = height / 2.0
    );
}

/// Axes, grid lines and labels of a plot area.
fn frame(out: &mut String, x: Scale, y: Scale, x_range: (f64, f64), y_range: (f64, f64), x_label: &str, y_label: &str) {
    out.push_str(r##"<g class="grid" stroke="#E8EAED">"##);
    for t in ticks(y_range.0, y_range.1) {
        let py = y.at(t);
        let _ = write!(
            out,
            r#"<line x1="{:.1}" x2="{:.1}" y1="{py:.1}" y2="{py:.1}"/>"#,
            x.from, x.to
        );
    }
    out.push_str("</g>");
    out.push_str(r##"<g class="axis" fill="#5F6368">"##);
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
        r##"<path class="axis-line" d="M{:.1} {:.1}V{:.1}H{:.1}" fill="none" stroke="#9AA0A6"/>"##,
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
        // SVG cannot measure text: 6.6 per character is DejaVu Sans's width at 11 units
        // (the face PNGs are drawn with, and a common one in browsers), so entries from
        // narrower faces space out a little rather than run into each other.
        let w = 6.6 * name.chars().count() as f64 + 26.0;
        x -= w;
        let dash = if *dashed { r#" stroke-dasharray="4 3""# } else { "" };
        let _ = write!(
            out,
            r##"<line x1="{x:.1}" x2="{:.1}" y1="28" y2="28" stroke="{color}" stroke-width="2"{dash}/><text x="{:.1}" y="31" fill="#3C4043">{text}</text>"##,
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

#[cfg(test)]
mod testing {
    //! Builders and checks the chart kinds' tests share.

    use super::{LineChart, Marker, Series, color};

    /// Every element that opens is closed.
    pub fn balanced(svg: &str) {
        assert_eq!(svg.matches("<svg").count(), svg.matches("</svg>").count(), "{svg}");
        assert_eq!(svg.matches("<g").count(), svg.matches("</g>").count(), "{svg}");
        assert_eq!(svg.matches("<a ").count(), svg.matches("</a>").count(), "{svg}");
    }

    pub fn series(points: Vec<(f64, f64)>, testid: Option<&str>) -> Series {
        Series {
            name: "acc".into(),
            points,
            color: color(0),
            dashed: false,
            testid: testid.map(str::to_owned),
        }
    }

    pub fn chart(series: Vec<Series>) -> LineChart {
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
}

#[cfg(test)]
mod tests {
    use super::testing::{balanced, chart, series};
    use super::*;

    #[test]
    fn text_is_escaped() {
        assert_eq!(
            escape(r#"<script>"a"&'b'"#),
            "&lt;script&gt;&quot;a&quot;&amp;&apos;b&apos;"
        );
        let svg = line_chart(
            &LineChart {
                title: "<script>alert(1)</script>".into(),
                ..chart(vec![series(vec![(0.0, 0.5)], None)])
            },
            Size::PAGE,
        );
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
    fn empty_charts_say_so() {
        for svg in [
            line_chart(&chart(Vec::new()), Size::PAGE),
            line_chart(&chart(vec![series(vec![(0.0, f64::NAN)], None)]), Size::PAGE),
            bar_chart("Importance", &[], "importance-chart"),
            timeline_chart("Round 0", &[], 0.0, None, "round-timeline"),
        ] {
            assert!(svg.contains("no data yet"), "{svg}");
            balanced(&svg);
        }
    }

    #[test]
    fn a_chart_is_displayed_at_its_size_times_its_scale() {
        let page = line_chart(&chart(vec![series(vec![(0.0, 0.5)], None)]), Size::PAGE);
        assert!(
            page.contains(r#"viewBox="0 0 640 300" width="640" height="300""#),
            "{page}"
        );
        let file = line_chart(
            &chart(vec![series(vec![(0.0, 0.5)], None)]),
            Size {
                height: 360.0,
                scale: 1.5,
                ..Size::PAGE
            },
        );
        assert!(
            file.contains(r#"viewBox="0 0 640 360" width="960" height="540""#),
            "{file}"
        );
    }
}
