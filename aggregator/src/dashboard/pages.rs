//! The dashboard's pages, rendered to HTML strings from what the store holds.

use std::collections::BTreeMap;
use std::fmt::Write;

use super::charts;
use super::svg::{self, Size, TimelineRow, escape, num};
use fedtune_federation::RoundRecord;
use fedtune_store::{RunKind, RunStatus, RunSummary, StoredRound, StoredTrial, agent_rows};
use fedtune_tuning::fedex::FedExPolicy;
use fedtune_tuning::importance::importance;
use fedtune_tuning::{Direction, FrozenTrial, StudyHeader, TrialState};

/// Rows of the rounds table (newest first); the charts show every round.
const ROUND_ROWS: usize = 200;
/// Rows of the trials table unless all are asked for (newest first).
const TRIAL_ROWS: usize = 200;

/// A whole page around `body`. With `live`, the script polls `/api/version/{id}` and
/// swaps in new content when the version differs from the one the page was made at.
pub(super) fn layout(title: &str, live: Option<(i64, &str)>, location: &str, body: &str) -> String {
    let live = match live {
        Some((id, version)) => format!(
            r#" data-version-url="/api/version/{id}" data-version="{}""#,
            escape(version)
        ),
        None => String::new(),
    };
    format!(
        r#"<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{title}</title>
<link rel="stylesheet" href="/static/dashboard.css">
</head>
<body{live}>
<header><a href="/" class="home">fedtune</a> <span class="store">{location}</span> <span id="live" class="live"></span></header>
<main id="content">
{body}
</main>
<script src="/static/dashboard.js"></script>
</body>
</html>
"#,
        title = escape(title),
        location = escape(location),
    )
}

/// A page saying what went wrong.
pub(super) fn error_page(message: &str) -> String {
    layout(
        "fedtune: error",
        None,
        "",
        &format!(
            r#"<p class="error">{}</p><p><a href="/">all runs</a></p>"#,
            escape(message)
        ),
    )
}

/// What changes whenever a run's or a study's page would: rounds committed, status, and
/// for a study how many trials there are and how many ended.
pub(super) fn version(run: &RunSummary, trials: Option<&[StoredTrial]>) -> String {
    let mut version = format!("{}.{}", run.rounds_committed, run.status.as_str());
    if let Some(trials) = trials {
        let ended = trials.iter().filter(|t| t.trial.state != TrialState::Running).count();
        let _ = write!(version, ".{}.{ended}", trials.len());
    }
    version
}

fn status_badge(status: RunStatus) -> String {
    format!(
        r#"<span class="status status-{s}" data-testid="status">{s}</span>"#,
        s = status.as_str()
    )
}

fn megabytes(bytes: u64) -> String {
    format!("{:.2}", bytes as f64 / 1e6)
}

/// A table cell that sorts by `value`.
fn cell(value: Option<f64>, text: &str) -> String {
    match value {
        Some(v) if v.is_finite() => format!(r#"<td data-value="{v}">{}</td>"#, escape(text)),
        _ => format!(r#"<td data-value="">{}</td>"#, escape(text)),
    }
}

/// The list of runs and studies.
pub(super) fn runs(runs: &[RunSummary]) -> String {
    let mut html = String::from("<h1>Runs and studies</h1>");
    if runs.is_empty() {
        html.push_str("<p>The store holds no run yet.</p>");
        return html;
    }
    html.push_str(
        r#"<input type="search" class="filter" data-filter="runs" placeholder="filter">
<table id="runs" class="sortable"><thead><tr><th data-sort>id</th><th data-sort>name</th><th data-sort>kind</th><th data-sort>status</th><th data-sort>rounds</th><th data-sort>created</th><th data-sort>updated</th></tr></thead><tbody>"#,
    );
    for run in runs.iter().rev() {
        let href = match run.kind {
            RunKind::Run => format!("/runs/{}", run.id),
            RunKind::Study => format!("/studies/{}", run.id),
        };
        let _ = write!(
            html,
            r#"<tr data-testid="run-row"><td data-value="{id}"><a href="{href}">{id}</a></td><td><a href="{href}">{name}</a></td><td>{kind}</td><td>{status}</td><td data-value="{done}">{done} / {planned}</td><td>{created}</td><td>{updated}</td></tr>"#,
            id = run.id,
            name = escape(&run.name),
            kind = run.kind.as_str(),
            status = status_badge(run.status),
            done = run.rounds_committed,
            planned = run.rounds_planned,
            created = escape(&run.created_at),
            updated = escape(&run.updated_at),
        );
    }
    html.push_str("</tbody></table>");
    html
}

/// What a run's page shows.
pub(super) struct RunView {
    /// The run (or the study, for a trial).
    pub run: RunSummary,
    /// The trial shown (0 outside a study).
    pub trial: u64,
    /// Its committed rounds, in order.
    pub rounds: Vec<StoredRound>,
    /// The trial's FedEx policy from its latest checkpoint, when it has one.
    pub policy: Option<serde_json::Value>,
    /// A study's trial as the store keeps it (`None` outside a study).
    pub stored: Option<StoredTrial>,
}

/// A run's page (or a study trial's).
pub(super) fn run(view: &RunView, round: Option<u64>) -> String {
    let RunView {
        run,
        trial,
        rounds,
        policy,
        stored,
    } = view;
    let records: Vec<&RoundRecord> = rounds.iter().map(|r| &r.record).collect();
    let mut html = String::new();
    let latest = records.last().map_or_else(|| "–".to_owned(), |r| r.round.to_string());
    let title = match run.kind {
        RunKind::Run => format!("Run {} · {}", run.id, escape(&run.name)),
        RunKind::Study => format!(
            r#"<a href="/studies/{id}">Study {id} · {name}</a> · trial {trial}"#,
            id = run.id,
            name = escape(&run.name)
        ),
    };
    let planned = match run.kind {
        RunKind::Run => format!(" of {}", run.rounds_planned),
        RunKind::Study => String::new(),
    };
    let _ = write!(
        html,
        r#"<h1>{title} {status}</h1>
<p class="summary">last committed round <strong data-testid="latest-round">{latest}</strong>{planned} · {n} rounds in the store · created {created} · updated {updated}</p>"#,
        status = status_badge(run.status),
        n = records.len(),
        created = escape(&run.created_at),
        updated = escape(&run.updated_at),
    );
    if let Some(stored) = stored {
        html.push_str(&trial_state(stored));
    }
    if records.is_empty() {
        html.push_str("<p>No round committed yet.</p>");
        return html;
    }
    html.push_str(r#"<section class="charts">"#);
    for chart in charts::run_charts(&records) {
        html.push_str(&svg::line_chart(&chart, Size::PAGE));
    }
    html.push_str("</section>");
    let shown = round
        .and_then(|n| records.iter().find(|r| r.round == n))
        .or(records.last())
        .copied();
    if let Some(shown) = shown {
        html.push_str(&round_detail(run.id, *trial, run.kind, shown, &records));
    }
    if let Some(policy) = policy {
        html.push_str(&fedex_policy(policy));
    }
    html.push_str(&agents_table(&records));
    html.push_str(&rounds_table(run.id, *trial, run.kind, &records));
    html
}

/// A study trial's state on its page; a failed trial's failure in words.
fn trial_state(stored: &StoredTrial) -> String {
    let t = &stored.trial;
    let mut html = format!(
        r#"<p class="summary">trial state <strong data-testid="trial-state">{}</strong> · updated {}</p>"#,
        state_text(t),
        escape(&stored.updated_at)
    );
    if let Some(failure) = failure(stored) {
        let _ = write!(
            html,
            r#"<p class="error" data-testid="trial-failure">trial {} failed: {}</p>"#,
            t.number,
            escape(&failure)
        );
    }
    html
}

/// A trial's state as the trials table and its page write it.
fn state_text(t: &FrozenTrial) -> String {
    let state = t.state.as_str().to_owned();
    if t.state == TrialState::Complete && !t.feasible {
        format!("{state} (infeasible)")
    } else {
        state
    }
}

/// Why a failed trial failed, in words; `None` for a trial that did not fail.
///
/// The store keeps no failure reason yet (a [`StoredTrial`] is the trial's parameters,
/// state, values and rounds, its owner and times): until it does, this says how far the
/// trial got and whose log holds the reason.
fn failure(stored: &StoredTrial) -> Option<String> {
    let t = &stored.trial;
    if t.state != TrialState::Failed {
        return None;
    }
    let rounds = t.intermediate.len();
    let plural = if rounds == 1 { "" } else { "s" };
    if let Some(reason) = &t.fail_reason {
        return Some(format!("{reason} (after {rounds} round{plural})"));
    }
    let log = match stored.owner.as_deref() {
        Some(owner) => format!("the log of aggregator {owner}"),
        None => "the aggregator's log".to_owned(),
    };
    Some(format!(
        "after {rounds} round{plural}; the store keeps no reason (see {log})"
    ))
}

fn round_link(id: i64, trial: u64, kind: RunKind, round: u64) -> String {
    match kind {
        RunKind::Run => format!("/runs/{id}?round={round}"),
        RunKind::Study => format!("/runs/{id}?trial={trial}&round={round}"),
    }
}

/// One round: who answered when, and its secure-aggregation and server-LR state.
fn round_detail(id: i64, trial: u64, kind: RunKind, record: &RoundRecord, records: &[&RoundRecord]) -> String {
    let mut html = format!(
        r#"<section class="round" id="round"><h2>Round {}</h2><p>"#,
        record.round
    );
    let position = records.iter().position(|r| r.round == record.round);
    if let Some(previous) = position.and_then(|p| p.checked_sub(1)).and_then(|p| records.get(p)) {
        let _ = write!(
            html,
            r#"<a href="{}#round">← round {}</a> "#,
            round_link(id, trial, kind, previous.round),
            previous.round
        );
    }
    if let Some(next) = position.and_then(|p| records.get(p + 1)) {
        let _ = write!(
            html,
            r#"<a href="{}#round">round {} →</a>"#,
            round_link(id, trial, kind, next.round),
            next.round
        );
    }
    let secure = if record.secure {
        "secure aggregation (the aggregator saw only the sum)"
    } else {
        "plain aggregation"
    };
    let _ = write!(
        html,
        "</p><p>{updates} of {cohort} updates · {applied} · {secure} · server learning rate {lr} · {seconds} s · {mb} MB moved</p>",
        updates = record.updates,
        cohort = record.cohort.len(),
        applied = if record.applied {
            "applied"
        } else {
            "global model unchanged"
        },
        lr = num(record.server_learning_rate),
        seconds = num(Some(record.seconds)),
        mb = megabytes(record.payload_bytes),
    );
    if let Some(error) = &record.aggregation_error {
        let _ = write!(html, r#"<p class="error">aggregation: {}</p>"#, escape(error));
    }
    for violation in &record.violations {
        let _ = write!(html, r#"<p class="violation">fairness: {}</p>"#, escape(violation));
    }
    let rows: Vec<TimelineRow> = agent_rows(trial, record)
        .into_iter()
        .map(|row| TimelineRow {
            at: record.contributions.get(&row.agent).map(|c| c.arrived_after_seconds),
            agent: row.agent,
            outcome: row.outcome,
            detail: row.detail,
        })
        .collect();
    html.push_str(&svg::timeline_chart(
        &format!("Round {}: answers by time", record.round),
        &rows,
        record.seconds,
        None,
        "round-timeline",
    ));
    html.push_str("</section>");
    html
}

#[derive(Default)]
struct AgentTotals {
    cohorts: u64,
    updates: u64,
    last_accuracy: Option<(u64, f64)>,
    refusals: u64,
    last_refusal: Option<String>,
    stragglers: u64,
    bytes: u64,
    device_seconds: f64,
}

/// Every agent that was in a cohort: participation, accuracy, refusals, bytes, time.
fn agents_table(records: &[&RoundRecord]) -> String {
    let mut agents: BTreeMap<String, AgentTotals> = BTreeMap::new();
    for record in records {
        let received: u64 = record.contributions.values().map(|c| c.update_bytes).sum();
        let per_member = record
            .payload_bytes
            .saturating_sub(received)
            .checked_div(record.cohort.len() as u64)
            .unwrap_or(0);
        for row in agent_rows(0, record) {
            let totals = agents.entry(row.agent.clone()).or_default();
            totals.cohorts += 1;
            totals.bytes += per_member;
            if let Some(accuracy) = row.accuracy {
                totals.last_accuracy = Some((record.round, accuracy));
            }
            if let Some(c) = record.contributions.get(&row.agent) {
                totals.bytes += c.update_bytes;
                totals.device_seconds += c.device_seconds;
            }
            match row.outcome.as_str() {
                "update" => totals.updates += 1,
                "straggler" => totals.stragglers += 1,
                _ => {
                    totals.refusals += 1;
                    totals.last_refusal =
                        Some(format!("round {}: {}", record.round, row.detail.unwrap_or(row.outcome)));
                }
            }
        }
    }
    let mut html = format!(
        r#"<section><h2>Agents ({n})</h2><input type="search" class="filter" data-filter="agents" placeholder="filter">
<table id="agents" class="sortable"><thead><tr><th data-sort>agent</th><th data-sort>in cohort</th><th data-sort>updates</th><th data-sort>participation</th><th data-sort>last accuracy</th><th data-sort>stragglers</th><th data-sort>refusals and failures</th><th data-sort>MB moved</th><th data-sort>device s</th></tr></thead><tbody>"#,
        n = agents.len()
    );
    let rounds = records.len().max(1) as f64;
    for (agent, t) in &agents {
        let last = t.last_accuracy.map(|(_, a)| a);
        let last_text = t.last_accuracy.map_or_else(
            || "–".to_owned(),
            |(round, a)| format!("{} (round {round})", num(Some(a))),
        );
        let refusals = match &t.last_refusal {
            Some(reason) => format!("{} · last: {reason}", t.refusals),
            None => t.refusals.to_string(),
        };
        let _ = write!(
            html,
            "<tr><td>{agent}</td>{cohorts}{updates}{share}{last}{stragglers}{refusals}{bytes}{device}</tr>",
            agent = escape(agent),
            cohorts = cell(Some(t.cohorts as f64), &t.cohorts.to_string()),
            updates = cell(Some(t.updates as f64), &t.updates.to_string()),
            share = cell(
                Some(t.updates as f64 / rounds),
                &format!("{:.0}%", 100.0 * t.updates as f64 / rounds)
            ),
            last = cell(last, &last_text),
            stragglers = cell(Some(t.stragglers as f64), &t.stragglers.to_string()),
            refusals = cell(Some(t.refusals as f64), &refusals),
            bytes = cell(Some(t.bytes as f64), &megabytes(t.bytes)),
            device = cell(Some(t.device_seconds), &num(Some(t.device_seconds))),
        );
    }
    html.push_str("</tbody></table></section>");
    html
}

/// The latest rounds, newest first.
fn rounds_table(id: i64, trial: u64, kind: RunKind, records: &[&RoundRecord]) -> String {
    let mut html = format!(
        r#"<section><h2>Rounds</h2><p class="note">{shown} most recent of {n}</p>
<table id="rounds" class="sortable"><thead><tr><th data-sort>round</th><th data-sort>updates</th><th data-sort>secure</th><th data-sort>server lr</th><th data-sort>train loss</th><th data-sort>federated acc</th><th data-sort>test acc</th><th data-sort>worst agent</th><th data-sort>Jain</th><th data-sort>seconds</th><th data-sort>device s</th><th data-sort>MB</th><th>violations</th></tr></thead><tbody>"#,
        shown = records.len().min(ROUND_ROWS),
        n = records.len(),
    );
    for r in records.iter().rev().take(ROUND_ROWS) {
        let measured = r.fairness.agents > 0;
        let _ = write!(
            html,
            r#"<tr><td data-value="{round}"><a href="{href}#round">{round}</a></td>{updates}<td>{secure}</td>{lr}{train}{fed}{test}{worst}{jain}{seconds}{device}{mb}<td>{violations}</td></tr>"#,
            round = r.round,
            href = round_link(id, trial, kind, r.round),
            updates = cell(Some(r.updates as f64), &format!("{}/{}", r.updates, r.cohort.len())),
            secure = if r.secure { "yes" } else { "no" },
            lr = cell(r.server_learning_rate, &num(r.server_learning_rate)),
            train = cell(Some(r.train_loss), &num((r.updates > 0).then_some(r.train_loss))),
            fed = cell(
                Some(r.federated_accuracy),
                &num((r.updates > 0).then_some(r.federated_accuracy))
            ),
            test = cell(r.test.map(|t| t.accuracy), &num(r.test.map(|t| t.accuracy))),
            worst = cell(
                measured.then_some(r.fairness.worst_accuracy),
                &num(measured.then_some(r.fairness.worst_accuracy))
            ),
            jain = cell(
                measured.then_some(r.fairness.jain_index),
                &num(measured.then_some(r.fairness.jain_index))
            ),
            seconds = cell(Some(r.seconds), &num(Some(r.seconds))),
            device = cell(Some(r.device_seconds), &num(Some(r.device_seconds))),
            mb = cell(Some(r.payload_bytes as f64), &megabytes(r.payload_bytes)),
            violations = escape(&r.violations.join("; ")),
        );
    }
    html.push_str("</tbody></table></section>");
    html
}

/// A trial's FedEx policy: each adaptive parameter's arms and their probabilities.
fn fedex_policy(state: &serde_json::Value) -> String {
    let Ok(policy) = serde_json::from_value::<FedExPolicy>(state.clone()) else {
        return String::new();
    };
    let summary = policy.summary();
    let mut html = format!(
        r#"<section data-testid="fedex-policy"><h2>FedEx policy</h2><p>{} rounds updated it · {} rewards used, {} skipped · baseline {}</p>"#,
        summary.rounds,
        summary.rewards_used,
        summary.rewards_skipped,
        num(summary.baseline)
    );
    for param in &summary.params {
        let bars: Vec<(String, f64)> = param
            .arms
            .iter()
            .enumerate()
            .map(|(i, arm)| {
                let best = if i == param.best { " (best)" } else { "" };
                (
                    format!("{} · {:?}, {} draws{best}", arm.value, arm.origin, arm.draws),
                    arm.probability,
                )
            })
            .collect();
        html.push_str(&svg::bar_chart(
            &format!("{}: arm probabilities", param.name),
            &bars,
            &format!("fedex-{}", param.name),
        ));
    }
    html.push_str("</section>");
    html
}

/// A study's page.
pub(super) fn study(run: &RunSummary, header: Option<&StudyHeader>, stored: &[StoredTrial], all: bool) -> String {
    let trials: Vec<FrozenTrial> = stored.iter().map(|t| t.trial.clone()).collect();
    let count = |state: TrialState| trials.iter().filter(|t| t.state == state).count();
    let mut html = format!(
        r#"<h1>Study {id} · {name} {status}</h1>
<p class="summary"><strong data-testid="trial-count">{n}</strong> trials: {complete} complete, {pruned} pruned, {failed} failed, {running} running · {rounds} rounds in the store · updated {updated}</p>"#,
        id = run.id,
        name = escape(&run.name),
        status = status_badge(run.status),
        n = trials.len(),
        complete = count(TrialState::Complete),
        pruned = count(TrialState::Pruned),
        failed = count(TrialState::Failed),
        running = count(TrialState::Running),
        rounds = run.rounds_committed,
        updated = escape(&run.updated_at),
    );
    let Some(header) = header else {
        html.push_str("<p>The study has not started yet.</p>");
        return html;
    };
    let directions: Vec<Direction> = header.objectives.iter().map(|o| o.direction).collect();
    let names: Vec<String> = header.objectives.iter().map(|o| o.name.clone()).collect();
    let best = charts::best_trial(&trials, &directions);
    let _ = write!(
        html,
        "<p>objectives: {}</p>",
        header
            .objectives
            .iter()
            .map(|o| format!("{} ({})", escape(&o.name), charts::direction_word(o.direction)))
            .collect::<Vec<_>>()
            .join(", ")
    );
    if let Some(best) = best {
        let _ = write!(
            html,
            r#"<p>best trial <a href="/runs/{id}?trial={n}">{n}</a>: {values} · {params}</p>"#,
            id = run.id,
            n = best.number,
            values = escape(&values_text(best, &names)),
            params = escape(&params_text(best)),
        );
    }
    html.push_str(r#"<section class="charts">"#);
    for (k, name) in names.iter().enumerate().take(3) {
        html.push_str(&svg::scatter_chart(
            &charts::history_chart(run.id, &trials, k, name, directions[k]),
            Size::PAGE,
        ));
    }
    html.push_str(&svg::line_chart(
        &charts::intermediate_chart(&trials, &names[0], best.map(|b| b.number)),
        Size::PAGE,
    ));
    html.push_str(&svg::parallel_chart(&charts::parallel_chart(
        header,
        &trials,
        &names[0],
        directions[0],
    )));
    let ranked = importance(&header.space, &trials, directions[0]);
    if ranked.is_empty() {
        html.push_str(r#"<p class="note">Parameter importance needs at least 4 complete trials whose first objective varies.</p>"#);
    } else {
        html.push_str(&svg::bar_chart(
            &format!("Parameter importance for {} (η², summing to 1)", names[0]),
            &ranked,
            "importance-chart",
        ));
    }
    if names.len() >= 2 {
        for chart in charts::pareto_charts(run.id, &trials, &names, &directions, best.map(|b| b.number)) {
            html.push_str(&svg::scatter_chart(&chart, Size::PAGE));
        }
    }
    html.push_str("</section>");
    html.push_str(&trials_table(run.id, stored, &names, header, all));
    html
}

fn values_text(trial: &FrozenTrial, names: &[String]) -> String {
    match &trial.values {
        Some(values) => names
            .iter()
            .zip(values)
            .map(|(n, v)| format!("{n} {}", num(Some(*v))))
            .collect::<Vec<_>>()
            .join(", "),
        None => "no values".into(),
    }
}

fn params_text(trial: &FrozenTrial) -> String {
    trial
        .params
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(" ")
}

/// Every trial, sortable and filterable.
fn trials_table(id: i64, stored: &[StoredTrial], names: &[String], header: &StudyHeader, all: bool) -> String {
    let shown = if all {
        stored.len()
    } else {
        stored.len().min(TRIAL_ROWS)
    };
    let more = if shown < stored.len() {
        format!(
            r#"<p class="note">the {shown} most recent of {n} trials · <a href="/studies/{id}?all=true">show all {n}</a></p>"#,
            n = stored.len()
        )
    } else {
        String::new()
    };
    let mut html = format!(
        r#"<section><h2>Trials</h2>{more}<input type="search" class="filter" data-filter="trials" placeholder="filter (state, parameter, owner)">
<table id="trials" class="sortable"><thead><tr><th data-sort>trial</th><th data-sort>state</th>"#
    );
    for name in names {
        let _ = write!(html, "<th data-sort>{}</th>", escape(name));
    }
    for p in &header.space.params {
        let _ = write!(html, "<th data-sort>{}</th>", escape(&p.name));
    }
    html.push_str(
        "<th data-sort>rounds</th><th data-sort>owner</th><th data-sort>updated</th><th data-sort>failure</th></tr></thead><tbody>",
    );
    for s in stored.iter().rev().take(shown).rev() {
        let t = &s.trial;
        let state = state_text(t);
        let _ = write!(
            html,
            r#"<tr data-testid="trial-row"><td data-value="{n}"><a href="/runs/{id}?trial={n}">{n}</a></td><td>{state}</td>"#,
            n = t.number,
        );
        for k in 0..names.len() {
            let v = t.values.as_ref().and_then(|v| v.get(k)).copied();
            html.push_str(&cell(v, &num(v)));
        }
        for p in &header.space.params {
            let v = t.params.get(&p.name);
            let text = v.map_or_else(|| "–".to_owned(), ToString::to_string);
            html.push_str(&cell(v.and_then(|v| v.as_f64()), &text));
        }
        let rounds = t.intermediate.len() as f64;
        let _ = write!(
            html,
            r#"{rounds}<td>{owner}</td><td>{updated}</td><td class="failure">{failure}</td></tr>"#,
            rounds = cell(Some(rounds), &t.intermediate.len().to_string()),
            owner = escape(s.owner.as_deref().unwrap_or("")),
            updated = escape(&s.updated_at),
            failure = escape(&failure(s).unwrap_or_default()),
        );
    }
    html.push_str("</tbody></table></section>");
    html
}

#[cfg(test)]
mod tests {
    use super::*;
    use fedtune_tuning::Objective;
    use fedtune_tuning::space::{ParamSpec, SearchSpace};

    fn study_run() -> RunSummary {
        RunSummary {
            id: 7,
            name: "digits".into(),
            kind: RunKind::Study,
            status: RunStatus::Finished,
            rounds_committed: 5,
            rounds_planned: 3,
            manifest_hash: "00".into(),
            created_at: "2025-01-01T00:00:00Z".into(),
            updated_at: "2025-01-01T00:10:00Z".into(),
            owner: None,
        }
    }

    fn stored(trial: FrozenTrial, owner: Option<&str>) -> StoredTrial {
        StoredTrial {
            trial,
            owner: owner.map(str::to_owned),
            created_at: "2025-01-01T00:00:00Z".into(),
            updated_at: "2025-01-01T00:05:00Z".into(),
        }
    }

    /// Trial 0 complete; trial 1 failed after two rounds on aggregator `eu-1`.
    fn trials() -> Vec<StoredTrial> {
        let params = BTreeMap::from([(
            "learning_rate".to_owned(),
            fedtune_tuning::space::ParamValue::Float(0.01),
        )]);
        let mut failed = FrozenTrial {
            values: None,
            state: TrialState::Failed,
            ..FrozenTrial::complete(1, params.clone(), 0.0)
        };
        failed.intermediate = BTreeMap::from([(1, vec![0.4]), (2, vec![0.5])]);
        failed.fail_reason = Some("its agents were lost <all 3>".into());
        vec![
            stored(FrozenTrial::complete(0, params, 0.8), Some("eu-1")),
            stored(failed, Some("eu-1")),
        ]
    }

    #[test]
    fn a_failed_trial_says_why_in_the_table_and_on_its_page() {
        let header = StudyHeader {
            space: SearchSpace::new(vec![
                ParamSpec::parse("learning_rate", "loguniform(1e-3, 1e-1)").unwrap(),
            ])
            .unwrap(),
            objectives: vec![Objective::new("accuracy", Direction::Maximize)],
        };
        let stored = trials();
        let html = study(&study_run(), Some(&header), &stored, false);
        assert!(html.contains("<th data-sort>failure</th>"), "{html}");
        let rows: Vec<&str> = html.split(r#"<tr data-testid="trial-row">"#).skip(1).collect();
        assert_eq!(rows.len(), 2);
        let why = "its agents were lost &lt;all 3&gt; (after 2 rounds)";
        assert!(
            rows[1].contains(&format!(r#"<td class="failure">{why}</td>"#)),
            "{}",
            rows[1]
        );
        assert!(rows[0].contains(r#"<td class="failure"></td>"#), "{}", rows[0]);

        // The trial's own page, though it committed no round the store kept.
        let view = RunView {
            run: study_run(),
            trial: 1,
            rounds: Vec::new(),
            policy: None,
            stored: Some(stored[1].clone()),
        };
        let page = run(&view, None);
        assert!(page.contains(r#"data-testid="trial-state">failed<"#), "{page}");
        assert!(
            page.contains(&format!(
                r#"<p class="error" data-testid="trial-failure">trial 1 failed: {why}</p>"#
            )),
            "{page}"
        );
        let view = RunView {
            trial: 0,
            stored: Some(stored[0].clone()),
            ..view
        };
        let page = run(&view, None);
        assert!(
            page.contains(r#"data-testid="trial-state">complete<"#) && !page.contains("trial-failure"),
            "{page}"
        );

        // A trial failed by an older fedtune, which kept no reason, points at the log.
        let mut old = stored[1].clone();
        old.trial.fail_reason = None;
        assert_eq!(
            failure(&old).as_deref(),
            Some("after 2 rounds; the store keeps no reason (see the log of aggregator eu-1)")
        );
    }

    #[test]
    fn numbers_keep_four_significant_digits() {
        assert_eq!(num(Some(0.96944)), "0.9694");
        assert_eq!(num(Some(12.3456)), "12.35");
        assert_eq!(num(Some(0.0)), "0");
        assert_eq!(num(Some(2.5e-5)), "2.500e-5");
        assert_eq!(num(None), "–");
        assert_eq!(num(Some(f64::NAN)), "–");
    }
}
