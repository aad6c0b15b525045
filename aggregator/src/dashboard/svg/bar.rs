//! Bar charts: a labelled bar per value (parameter importance).

use std::fmt::Write;

use super::{Size, TOP, WIDTH, color, escape, no_data, open, tick_label};

/// Horizontal bars of values in `[0, 1]`, scaled to the largest, each printed.
pub fn bar_chart(title: &str, bars: &[(String, f64)], testid: &str) -> String {
    let row = 20.0;
    let height = TOP + 10.0 + row * bars.len().max(1) as f64;
    let mut out = String::with_capacity(1024 + bars.len() * 200);
    open(&mut out, Size::natural(WIDTH, height), title, testid);
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
            r##"<g class="bar"><title>{name}: {v:.4}</title><text x="{:.1}" y="{:.1}" text-anchor="end" fill="#3C4043">{name}</text><rect x="{label_width:.1}" y="{y:.1}" width="{w:.1}" height="{:.1}" fill="{}"/><text x="{:.1}" y="{:.1}" fill="#5F6368">{}</text></g>"##,
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

#[cfg(test)]
mod tests {
    use super::super::testing::balanced;
    use super::*;

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
