//! Round timelines: when each cohort member answered, or that it did not.

use std::fmt::Write;

use super::{RIGHT, Scale, Size, TOP, WIDTH, escape, no_data, open, tick_label, ticks};

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
    open(&mut out, Size::natural(WIDTH, height), title, testid);
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
    out.push_str(r##"<g class="axis" fill="#5F6368">"##);
    for t in ticks(x_range.0, x_range.1) {
        let px = x.at(t);
        let _ = write!(
            out,
            r##"<line x1="{px:.1}" x2="{px:.1}" y1="{:.1}" y2="{bottom:.1}" stroke="#E8EAED"/><text x="{px:.1}" y="{:.1}" text-anchor="middle">{}</text>"##,
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
            r##"<line class="deadline" x1="{px:.1}" x2="{px:.1}" y1="{:.1}" y2="{bottom:.1}" stroke="#D93025" stroke-dasharray="4 3"><title>deadline</title></line>"##,
            TOP + 4.0
        );
    }
    for (i, r) in rows.iter().enumerate() {
        let y = TOP + 8.0 + row * i as f64 + row / 2.0;
        let (fill, stroke) = match (r.outcome.as_str(), r.at) {
            ("update", _) => ("#188038", "#188038"),
            ("straggler", _) => ("none", "#E8710A"),
            (_, _) => ("none", "#D93025"),
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
            r##"<g class="agent" data-outcome="{outcome}"><title>{agent}: {outcome} ({when}){detail}</title><text x="{:.1}" y="{:.1}" text-anchor="end" fill="#3C4043">{agent}</text><line x1="{:.1}" x2="{:.1}" y1="{y:.1}" y2="{y:.1}" stroke="#DADCE0"/><circle cx="{:.1}" cy="{y:.1}" r="4.5" fill="{fill}" stroke="{stroke}" stroke-width="2"/></g>"##,
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
    use super::super::testing::balanced;
    use super::*;

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
}
