//! What the charts show, derived from the store's records and drawn once, by
//! [`super::svg`]: inline on the dashboard's pages, and as SVG and PNG files by the
//! `plot` command ([`crate::plot`]).

use fedtune_tuning::space::{Choice, Distribution, ParamValue};

use super::svg::{self, Axis, AxisKind, LineChart, Marker, ParallelChart, ScatterChart, ScatterPoint, Series, num};
use fedtune_federation::RoundRecord;
use fedtune_tuning::{Direction, FrozenTrial, StudyHeader, TrialState, pareto_front};

/// Trials drawn in the intermediate-values chart (the most recent, and the best).
const INTERMEDIATE_TRIALS: usize = 100;

pub(crate) fn series(name: &str, color: usize, points: Vec<(f64, f64)>) -> Series {
    Series {
        name: name.into(),
        points,
        color: svg::color(color),
        dashed: false,
        testid: None,
    }
}

fn by_round(records: &[&RoundRecord], value: impl Fn(&RoundRecord) -> Option<f64>) -> Vec<(f64, f64)> {
    records
        .iter()
        .filter_map(|r| value(r).map(|v| (r.round as f64, v)))
        .collect()
}

/// A run's charts by round: global accuracy, loss, fairness across agents, and the
/// server learning rate when the strategy has one. The server's test accuracy and loss
/// are drawn only when some round was evaluated on a test set: a run without one has no
/// test series, not an empty one in the legend.
pub(crate) fn run_charts(records: &[&RoundRecord]) -> Vec<LineChart> {
    let mut charts = Vec::with_capacity(4);
    let tested = records.iter().any(|r| r.test.is_some());
    let mut accuracy = Vec::with_capacity(2);
    if tested {
        accuracy.push(Series {
            testid: Some("test-accuracy-point".into()),
            ..series("test accuracy", 0, by_round(records, |r| r.test.map(|t| t.accuracy)))
        });
    }
    accuracy.push(Series {
        testid: Some("federated-accuracy-point".into()),
        ..series(
            "federated accuracy (agents, before training)",
            1,
            by_round(records, |r| (r.updates > 0).then_some(r.federated_accuracy)),
        )
    });
    charts.push(LineChart {
        title: if tested {
            "Global model accuracy".into()
        } else {
            // One series draws no legend: the title says what it is.
            "Global model accuracy: federated (agents, before training; no server test set)".into()
        },
        x_label: "round".into(),
        y_label: "accuracy".into(),
        series: accuracy,
        markers: Vec::new(),
        y_range: Some((0.0, 1.0)),
        testid: "accuracy-chart".into(),
    });
    let mut loss = Vec::with_capacity(3);
    if tested {
        loss.push(series("test loss", 0, by_round(records, |r| r.test.map(|t| t.loss))));
    }
    loss.push(series(
        "federated loss",
        1,
        by_round(records, |r| (r.updates > 0).then_some(r.federated_loss)),
    ));
    loss.push(series(
        "train loss",
        2,
        by_round(records, |r| (r.updates > 0).then_some(r.train_loss)),
    ));
    charts.push(LineChart {
        title: "Loss".into(),
        x_label: "round".into(),
        y_label: "loss".into(),
        series: loss,
        markers: Vec::new(),
        y_range: None,
        testid: "loss-chart".into(),
    });
    let measured =
        |value: fn(&RoundRecord) -> f64| by_round(records, move |r| (r.fairness.agents > 0).then(|| value(r)));
    charts.push(LineChart {
        title: "Fairness across agents (incoming model)".into(),
        x_label: "round".into(),
        y_label: "accuracy / index".into(),
        series: vec![
            series("mean accuracy", 0, measured(|r| r.fairness.mean_accuracy)),
            series("worst 10%", 3, measured(|r| r.fairness.worst_10pct_accuracy)),
            series("worst agent", 4, measured(|r| r.fairness.worst_accuracy)),
            Series {
                dashed: true,
                ..series("Jain's index", 2, measured(|r| r.fairness.jain_index))
            },
        ],
        markers: records
            .iter()
            .filter(|r| !r.violations.is_empty())
            .map(|r| Marker {
                x: r.round as f64,
                label: format!("round {}: {}", r.round, r.violations.join("; ")),
            })
            .collect(),
        y_range: Some((0.0, 1.0)),
        testid: "fairness-chart".into(),
    });
    if records.iter().any(|r| r.server_learning_rate.is_some()) {
        charts.push(LineChart {
            title: "Server learning rate".into(),
            x_label: "round".into(),
            y_label: "learning rate".into(),
            series: vec![series(
                "server learning rate",
                5,
                by_round(records, |r| r.server_learning_rate),
            )],
            markers: Vec::new(),
            y_range: None,
            testid: "server-lr-chart".into(),
        });
    }
    charts
}

pub(crate) fn direction_word(direction: Direction) -> &'static str {
    match direction {
        Direction::Minimize => "minimise",
        Direction::Maximize => "maximise",
    }
}

/// The study's chosen trial: feasible before infeasible, then the best first objective
/// (the rule of the study's report when no scalarization weights are set).
pub(crate) fn best_trial<'a>(trials: &'a [FrozenTrial], directions: &[Direction]) -> Option<&'a FrozenTrial> {
    trials
        .iter()
        .filter_map(|t| t.losses(directions).map(|l| (t, (!t.feasible, l[0]))))
        .min_by(|a, b| a.1.0.cmp(&b.1.0).then(a.1.1.total_cmp(&b.1.1)))
        .map(|(t, _)| t)
}

fn state_color(trial: &FrozenTrial) -> &'static str {
    match trial.state {
        TrialState::Complete if trial.feasible => svg::color(0),
        TrialState::Complete => svg::color(1),
        TrialState::Pruned => "#9AA0A6",
        TrialState::Failed => "#D93025",
        TrialState::Running => svg::color(2),
    }
}

/// Objective `k` of every trial by number, pruned ones at their last reported value,
/// with the best-so-far line of complete, feasible trials.
pub(crate) fn history_chart(
    id: i64,
    trials: &[FrozenTrial],
    k: usize,
    name: &str,
    direction: Direction,
) -> ScatterChart {
    let mut points = Vec::with_capacity(trials.len());
    let mut best_line = Vec::new();
    let mut best: Option<f64> = None;
    for t in trials {
        let value = match t.state {
            TrialState::Complete => t.values.as_ref().and_then(|v| v.get(k)).copied(),
            TrialState::Pruned | TrialState::Running => t.intermediate.values().last().and_then(|v| v.get(k)).copied(),
            TrialState::Failed => None,
        };
        let Some(value) = value.filter(|v| v.is_finite()) else {
            continue;
        };
        points.push(ScatterPoint {
            x: t.number as f64,
            y: value,
            label: format!("trial {} ({}): {name} {}", t.number, t.state, num(Some(value))),
            color: state_color(t),
            radius: 3.0,
            href: Some(format!("/runs/{id}?trial={}", t.number)),
            emphasised: false,
        });
        if t.state == TrialState::Complete && t.feasible {
            let better = best.is_none_or(|b| direction.loss(value) < direction.loss(b));
            if better {
                best = Some(value);
            }
            if let Some(b) = best {
                best_line.push((t.number as f64, b));
            }
        }
    }
    let testid = if k == 0 {
        "history-chart".to_owned()
    } else {
        format!("history-chart-{k}")
    };
    ScatterChart {
        title: format!("Optimisation history: {name} ({})", direction_word(direction)),
        x_label: "trial".into(),
        y_label: name.into(),
        points,
        lines: vec![Series {
            testid: Some(format!("{testid}-best")),
            ..series("best so far", 3, best_line)
        }],
        testid,
        step_lines: true,
    }
}

/// The first objective at every round of the most recent trials (and the best one);
/// pruned trials dashed grey, so where the pruner stopped them shows.
pub(crate) fn intermediate_chart(trials: &[FrozenTrial], name: &str, best: Option<u64>) -> LineChart {
    let mut shown: Vec<&FrozenTrial> = trials
        .iter()
        .rev()
        .filter(|t| !t.intermediate.is_empty())
        .take(INTERMEDIATE_TRIALS)
        .collect();
    if let Some(best) = best.and_then(|b| trials.iter().find(|t| t.number == b))
        && !shown.iter().any(|t| t.number == best.number)
    {
        shown.push(best);
    }
    shown.sort_by_key(|t| t.number);
    let series: Vec<Series> = shown
        .iter()
        .map(|t| Series {
            name: format!("trial {}", t.number),
            points: t
                .intermediate
                .iter()
                .filter_map(|(step, v)| v.first().map(|v| (*step as f64, *v)))
                .collect(),
            color: if t.state == TrialState::Pruned {
                "#9AA0A6"
            } else if Some(t.number) == best {
                "#D93025"
            } else {
                svg::color(t.number as usize)
            },
            dashed: t.state == TrialState::Pruned,
            testid: None,
        })
        .collect();
    LineChart {
        title: format!(
            "Intermediate values: {name} by round ({} of {} trials; pruned dashed, best red)",
            shown.len(),
            trials.len()
        ),
        x_label: "round".into(),
        y_label: name.into(),
        series,
        markers: Vec::new(),
        y_range: None,
        testid: "intermediate-chart".into(),
    }
}

/// A parameter's axis, and where a trial's value of it lies on that axis.
struct ParamAxis<'a> {
    name: &'a str,
    distribution: &'a Distribution,
    /// For a choice, each choice's position on the axis (choices listed in `labels`).
    ranks: Vec<usize>,
    labels: Vec<String>,
}

impl<'a> ParamAxis<'a> {
    /// Floats and integers on a numeric axis; choices on a categorical one, numeric
    /// choices (`choice(16, 32, 64)`) in numeric order, others as the space lists them.
    fn new(name: &'a str, distribution: &'a Distribution) -> Self {
        let Distribution::Categorical { choices } = distribution else {
            return Self {
                name,
                distribution,
                ranks: Vec::new(),
                labels: Vec::new(),
            };
        };
        let numbers: Option<Vec<f64>> = choices.iter().map(Choice::as_f64).collect();
        let mut order: Vec<usize> = (0..choices.len()).collect();
        if let Some(numbers) = &numbers {
            order.sort_by(|&a, &b| numbers[a].total_cmp(&numbers[b]));
        }
        let mut ranks = vec![0; choices.len()];
        for (rank, &i) in order.iter().enumerate() {
            ranks[i] = rank;
        }
        Self {
            name,
            distribution,
            ranks,
            labels: order.iter().map(|&i| choices[i].to_string()).collect(),
        }
    }

    fn axis(&self) -> Axis {
        Axis {
            name: self.name.to_owned(),
            kind: match self.distribution {
                Distribution::Float { log, .. } | Distribution::Int { log, .. } => AxisKind::Numeric { log: *log },
                Distribution::Categorical { .. } => AxisKind::Categorical(self.labels.clone()),
            },
        }
    }

    /// Where `value` lies: a number on a numeric axis, a position on a categorical one;
    /// NaN when the trial has none the axis knows.
    fn at(&self, value: Option<&ParamValue>) -> f64 {
        let Some(value) = value else { return f64::NAN };
        match self.distribution {
            Distribution::Categorical { choices } => {
                choice_index(choices, value).map_or(f64::NAN, |i| self.ranks[i] as f64)
            }
            _ => value.as_f64().unwrap_or(f64::NAN),
        }
    }
}

/// Which of `choices` `value` is. A numeric choice read back from a store's JSON is a
/// plain number (`32`, not the choice `32`), so numbers match numeric choices by value.
fn choice_index(choices: &[Choice], value: &ParamValue) -> Option<usize> {
    if let ParamValue::Categorical(c) = value
        && let Some(i) = choices.iter().position(|x| x == c)
    {
        return Some(i);
    }
    let x = value.as_f64()?;
    choices.iter().position(|c| c.as_f64() == Some(x))
}

/// One axis per parameter and one for the first objective; a line per complete trial,
/// shaded by its objective (darkest = best).
pub(crate) fn parallel_chart(
    header: &StudyHeader,
    trials: &[FrozenTrial],
    name: &str,
    direction: Direction,
) -> ParallelChart {
    let done: Vec<(&FrozenTrial, f64)> = trials
        .iter()
        .filter_map(|t| {
            let v = *t.values.as_ref()?.first()?;
            (t.state == TrialState::Complete && v.is_finite()).then_some((t, v))
        })
        .collect();
    let params: Vec<ParamAxis> = header
        .space
        .params
        .iter()
        .map(|p| ParamAxis::new(&p.name, &p.distribution))
        .collect();
    let mut axes: Vec<Axis> = params.iter().map(ParamAxis::axis).collect();
    axes.push(Axis {
        name: name.into(),
        kind: AxisKind::Numeric { log: false },
    });
    let rows: Vec<Vec<f64>> = done
        .iter()
        .map(|(t, value)| {
            let mut row: Vec<f64> = params.iter().map(|p| p.at(t.params.get(p.name))).collect();
            row.push(*value);
            row
        })
        .collect();
    let losses: Vec<f64> = done.iter().map(|(_, v)| direction.loss(*v)).collect();
    let (lo, hi) = losses.iter().fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), &l| {
        (lo.min(l), hi.max(l))
    });
    let shade = losses
        .iter()
        .map(|l| if hi > lo { (hi - l) / (hi - lo) } else { 1.0 })
        .collect();
    ParallelChart {
        title: format!("Parallel coordinates ({} complete trials)", done.len()),
        axes,
        rows,
        shade,
        row_labels: done
            .iter()
            .map(|(t, v)| format!("trial {}: {name} {}", t.number, num(Some(*v))))
            .collect(),
        testid: "parallel-chart".into(),
    }
}

/// The Pareto front of complete, feasible trials, for each pair of the first three
/// objectives; the chosen trial ringed.
pub(crate) fn pareto_charts(
    id: i64,
    trials: &[FrozenTrial],
    names: &[String],
    directions: &[Direction],
    best: Option<u64>,
) -> Vec<ScatterChart> {
    let front: Vec<u64> = pareto_front(trials, directions).iter().map(|t| t.number).collect();
    let dims = names.len().min(3);
    let mut charts = Vec::new();
    for a in 0..dims {
        for b in a + 1..dims {
            let mut points = Vec::new();
            let mut line = Vec::new();
            for t in trials.iter().filter(|t| t.state == TrialState::Complete) {
                let Some(values) = t.values.as_ref() else { continue };
                let (Some(&x), Some(&y)) = (values.get(a), values.get(b)) else {
                    continue;
                };
                if !(x.is_finite() && y.is_finite()) {
                    continue;
                }
                let on_front = front.contains(&t.number);
                if on_front && dims == 2 {
                    line.push((x, y));
                }
                points.push((
                    on_front,
                    ScatterPoint {
                        x,
                        y,
                        label: format!(
                            "trial {}{}: {} {}, {} {}",
                            t.number,
                            if on_front { " (Pareto front)" } else { "" },
                            names[a],
                            num(Some(x)),
                            names[b],
                            num(Some(y))
                        ),
                        color: if on_front { "#D93025" } else { "#9AA0A6" },
                        radius: if on_front { 4.0 } else { 3.0 },
                        href: Some(format!("/runs/{id}?trial={}", t.number)),
                        emphasised: Some(t.number) == best,
                    },
                ));
            }
            // Later points cover earlier ones: the front goes over the trials it
            // dominates, and the chosen trial's ring over everything.
            points.sort_by_key(|(on_front, p)| (*on_front, p.emphasised));
            line.sort_by(|p, q| p.0.total_cmp(&q.0));
            let testid = if a == 0 && b == 1 {
                "pareto-chart".to_owned()
            } else {
                format!("pareto-chart-{a}-{b}")
            };
            charts.push(ScatterChart {
                title: format!(
                    "Pareto front: {} ({}) vs {} ({}); {} trials on it, chosen ringed",
                    names[a],
                    direction_word(directions[a]),
                    names[b],
                    direction_word(directions[b]),
                    front.len()
                ),
                x_label: names[a].clone(),
                y_label: names[b].clone(),
                points: points.into_iter().map(|(_, p)| p).collect(),
                lines: vec![series("front", 4, line)],
                testid,
                step_lines: false,
            });
        }
    }
    charts
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dashboard::svg::{Size, line_chart};
    use fedtune_federation::GlobalEvaluation;

    fn round(n: u64, test: Option<f64>) -> RoundRecord {
        let mut record = crate::fixtures::round_record(n, &["a", "b"]);
        record.test = test.map(|accuracy| GlobalEvaluation {
            loss: 1.0 - accuracy,
            accuracy,
            samples: 8,
        });
        record
    }

    fn names(chart: &LineChart) -> Vec<&str> {
        chart.series.iter().map(|s| s.name.as_str()).collect()
    }

    #[test]
    fn a_run_without_a_test_set_draws_no_test_series() {
        let rounds = [round(0, None), round(1, None)];
        let records: Vec<&RoundRecord> = rounds.iter().collect();
        let charts = run_charts(&records);
        for chart in &charts[..2] {
            assert!(
                names(chart).iter().all(|n| !n.starts_with("test")),
                "{}: {:?}",
                chart.title,
                names(chart)
            );
            let svg = line_chart(chart, Size::PAGE);
            assert!(!svg.contains(">test "), "{svg}");
            assert!(!svg.contains("test-accuracy-point"), "{svg}");
        }
        assert_eq!(names(&charts[1]), ["federated loss", "train loss"]);
        // One evaluated round is enough for the series, with its one point.
        let rounds = [round(0, None), round(1, Some(0.75))];
        let records: Vec<&RoundRecord> = rounds.iter().collect();
        let charts = run_charts(&records);
        assert_eq!(names(&charts[0])[0], "test accuracy");
        assert_eq!(charts[0].series[0].points, [(1.0, 0.75)]);
        assert_eq!(names(&charts[1])[0], "test loss");
        let svg = line_chart(&charts[0], Size::PAGE);
        assert!(svg.contains(">test accuracy<"), "{svg}");
        assert_eq!(svg.matches(r#"data-testid="test-accuracy-point""#).count(), 1);
    }

    #[test]
    fn numeric_choices_get_an_axis_in_numeric_order() {
        use fedtune_tuning::Objective;
        use fedtune_tuning::space::{ParamSpec, SearchSpace};
        let space = SearchSpace::new(vec![
            ParamSpec::parse("learning_rate", "loguniform(1e-3, 1e-1)").unwrap(),
            ParamSpec::parse("batch_size", "choice(64, 16, 32)").unwrap(),
            ParamSpec::parse("optimizer", "choice(sgd, adam)").unwrap(),
        ])
        .unwrap();
        let header = StudyHeader {
            space,
            objectives: vec![Objective::new("accuracy", Direction::Maximize)],
        };
        // Parameters as the store gives them back (JSON: a numeric choice is a number),
        // and one as the sampler made it.
        let stored = |json: serde_json::Value| serde_json::from_value(json).unwrap();
        let mut trials = vec![
            FrozenTrial::complete(
                0,
                stored(serde_json::json!({"learning_rate": 0.01, "batch_size": 32, "optimizer": "adam"})),
                0.9,
            ),
            FrozenTrial::complete(
                1,
                stored(serde_json::json!({"learning_rate": 0.001, "batch_size": 16, "optimizer": "sgd"})),
                0.7,
            ),
        ];
        let mut sampled = trials[0].params.clone();
        sampled.insert("batch_size".into(), ParamValue::Categorical(Choice::Int(64)));
        trials.push(FrozenTrial::complete(2, sampled, 0.8));
        let chart = parallel_chart(&header, &trials, "accuracy", Direction::Maximize);
        let names: Vec<&str> = chart.axes.iter().map(|a| a.name.as_str()).collect();
        assert_eq!(names, ["learning_rate", "batch_size", "optimizer", "accuracy"]);
        let AxisKind::Categorical(labels) = &chart.axes[1].kind else {
            panic!("batch_size has no categorical axis")
        };
        assert_eq!(labels, &["16", "32", "64"]);
        let AxisKind::Categorical(labels) = &chart.axes[2].kind else {
            panic!("optimizer has no categorical axis")
        };
        assert_eq!(labels, &["sgd", "adam"], "string choices keep the space's order");
        let batch: Vec<f64> = chart.rows.iter().map(|r| r[1]).collect();
        assert_eq!(batch, [1.0, 0.0, 2.0]);
        let optimizer: Vec<f64> = chart.rows.iter().map(|r| r[2]).collect();
        assert_eq!(optimizer, [1.0, 0.0, 1.0]);
        // Every trial's line crosses every axis: one unbroken path of four points.
        let svg = svg::parallel_chart(&chart);
        let paths: Vec<&str> = svg
            .split(r#"<path d=""#)
            .skip(1)
            .map(|p| p.split('"').next().unwrap_or(""))
            .collect();
        assert_eq!(paths.len(), 3, "{svg}");
        for d in paths {
            assert_eq!((d.matches('M').count(), d.matches('L').count()), (1, 3), "{d}");
        }
        assert!(svg.contains(">64<") && svg.contains(">16<"), "{svg}");
    }

    #[test]
    fn mixed_choices_match_stored_numbers_by_value() {
        let choices = vec![
            Choice::Bool(true),
            Choice::Float(0.5),
            Choice::from("a b"),
            Choice::Int(-3),
        ];
        assert_eq!(choice_index(&choices, &ParamValue::Float(0.5)), Some(1));
        assert_eq!(choice_index(&choices, &ParamValue::Int(-3)), Some(3));
        assert_eq!(
            choice_index(&choices, &ParamValue::Categorical(Choice::Bool(true))),
            Some(0)
        );
        assert_eq!(choice_index(&choices, &ParamValue::Categorical("a b".into())), Some(2));
        assert_eq!(choice_index(&choices, &ParamValue::Int(7)), None);
        // Mixed choices keep the order the space lists them in.
        let mixed = Distribution::categorical(choices).unwrap();
        let axis = ParamAxis::new("mixed", &mixed);
        assert_eq!(axis.labels, ["true", "0.5", "\"a b\"", "-3"]);
        assert_eq!(axis.at(Some(&ParamValue::Int(-3))), 3.0);
        assert!(axis.at(None).is_nan());
    }

    #[test]
    fn the_front_is_drawn_over_the_trials_it_dominates() {
        // Maximise x, minimise y: trial 1 dominates 0 and 2, and is drawn last.
        let trials: Vec<FrozenTrial> = [(0.5, 2.0), (0.9, 1.0), (0.6, 3.0)]
            .into_iter()
            .enumerate()
            .map(|(n, (x, y))| FrozenTrial {
                values: Some(vec![x, y]),
                ..FrozenTrial::complete(n as u64, Default::default(), x)
            })
            .collect();
        let names = ["accuracy".to_owned(), "bytes".to_owned()];
        let charts = pareto_charts(1, &trials, &names, &[Direction::Maximize, Direction::Minimize], Some(1));
        let labels: Vec<&str> = charts[0].points.iter().map(|p| p.label.as_str()).collect();
        assert_eq!(labels.len(), 3);
        assert!(labels[2].starts_with("trial 1 (Pareto front)"), "{labels:?}");
        assert!(charts[0].points[2].emphasised);
    }
}
