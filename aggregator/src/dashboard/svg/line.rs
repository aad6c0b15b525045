//! Line charts: values by round (or step), with vertical markers.

use std::fmt::Write;

use super::{
    BOTTOM, DOT_LIMIT, LEFT, RIGHT, Scale, Series, Size, TOP, draw_series, escape, frame, legend, no_data, open,
    padded, range,
};

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

/// A line chart of `chart.series`, drawn at `size`.
pub fn line_chart(chart: &LineChart, size: Size) -> String {
    let Size { width, height, .. } = size;
    let mut out = String::with_capacity(4096);
    open(&mut out, size, &chart.title, &chart.testid);
    let finite = || {
        chart
            .series
            .iter()
            .flat_map(|s| s.points.iter())
            .filter(|p| p.0.is_finite() && p.1.is_finite())
    };
    let (Some(x_range), Some(data_y)) = (range(finite().map(|p| p.0)), range(finite().map(|p| p.1))) else {
        no_data(&mut out, width, height);
        return out;
    };
    let y_range = chart.y_range.unwrap_or_else(|| padded(data_y));
    let x = Scale::new(x_range, LEFT, width - RIGHT);
    let y = Scale::new(y_range, height - BOTTOM, TOP + 12.0);
    frame(&mut out, x, y, x_range, y_range, &chart.x_label, &chart.y_label);
    for m in chart.markers.iter().filter(|m| m.x.is_finite()) {
        let px = x.at(m.x);
        let _ = write!(
            out,
            r##"<line class="marker" x1="{px:.1}" x2="{px:.1}" y1="{:.1}" y2="{:.1}" stroke="#D93025" stroke-dasharray="3 3"><title>{}</title></line>"##,
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
        width,
    );
    out.push_str("</svg>");
    out
}

#[cfg(test)]
mod tests {
    use super::super::testing::{balanced, chart, series};
    use super::*;

    #[test]
    fn a_series_with_a_testid_marks_every_finite_point_exactly() {
        let points = vec![(0.0, 0.5), (1.0, f64::NAN), (2.0, 0.96944), (3.0, 0.97)];
        let svg = line_chart(&chart(vec![series(points, Some("test-accuracy-point"))]), Size::PAGE);
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
    fn a_flat_series_still_draws() {
        let svg = line_chart(
            &LineChart {
                y_range: None,
                ..chart(vec![series(vec![(0.0, 2.0), (1.0, 2.0)], Some("p"))])
            },
            Size::PAGE,
        );
        balanced(&svg);
        assert!(svg.contains(r#"data-y="2""#) && !svg.contains("NaN"), "{svg}");
    }
}
