//! Scatter charts: a point per trial, with lines over them (best so far, a front).

use std::fmt::Write;

use super::{
    BOTTOM, LEFT, RIGHT, Scale, Series, Size, TOP, draw_series, escape, frame, legend, no_data, open, padded, range,
};

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

/// A scatter chart of `chart.points` with `chart.lines` over them, drawn at `size`.
pub fn scatter_chart(chart: &ScatterChart, size: Size) -> String {
    let Size { width, height, .. } = size;
    let mut out = String::with_capacity(4096 + chart.points.len() * 160);
    open(&mut out, size, &chart.title, &chart.testid);
    let xs = chart
        .points
        .iter()
        .map(|p| (p.x, p.y))
        .filter(|p| p.0.is_finite() && p.1.is_finite());
    let (Some(x_range), Some(y_data)) = (range(xs.clone().map(|p| p.0)), range(xs.map(|p| p.1))) else {
        no_data(&mut out, width, height);
        return out;
    };
    let x_range = padded(x_range);
    let y_range = padded(y_data);
    let x = Scale::new(x_range, LEFT, width - RIGHT);
    let y = Scale::new(y_range, height - BOTTOM, TOP + 12.0);
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
        width,
    );
    out.push_str("</svg>");
    out
}

#[cfg(test)]
mod tests {
    use super::super::color;
    use super::super::testing::{balanced, series};
    use super::*;

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
        let svg = scatter_chart(
            &ScatterChart {
                title: "History".into(),
                x_label: "trial".into(),
                y_label: "accuracy".into(),
                points: vec![point(0.0, false), point(1.0, true)],
                lines: vec![series(vec![(0.0, 0.0), (1.0, 2.0)], None)],
                testid: "history-chart".into(),
                step_lines: true,
            },
            Size::PAGE,
        );
        balanced(&svg);
        assert_eq!(svg.matches(r#"class="chosen""#).count(), 1);
        assert!(svg.contains("trial=1&amp;a=b"));
        assert!(svg.contains('H') && svg.contains('V'));
    }
}
