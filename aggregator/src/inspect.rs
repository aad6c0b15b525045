//! `runs`, `rounds`, `trials`, `export` and `plot` (part of the `fedtune-aggregator` binary): read a store,
//! read-only, while a run may be writing it. `--db` is a SQLite file or a `postgres://` URL.
//! They block on the store: `main` runs them off the async runtime.

use std::io::Write;
use std::path::Path;

use fedtune_aggregator::plot;
use fedtune_store::{AgentRow, RunId, RunKind, agent_rows, open_read_only};

/// `fedtune-aggregator runs`.
pub fn runs(db: &Path, json: bool) -> anyhow::Result<()> {
    let store = open_read_only(db)?;
    let runs = store.runs()?;
    let mut out = std::io::stdout().lock();
    if json {
        serde_json::to_writer_pretty(&mut out, &runs)?;
        writeln!(out)?;
        return Ok(());
    }
    writeln!(
        out,
        "{:>4}  {:<5}  {:<11}  {:>7}  {:<24}  name",
        "id", "kind", "status", "rounds", "updated"
    )?;
    for r in &runs {
        writeln!(
            out,
            "{:>4}  {:<5}  {:<11}  {:>7}  {:<24}  {}",
            r.id,
            r.kind.as_str(),
            r.status.as_str(),
            format!("{}/{}", r.rounds_committed, r.rounds_planned),
            r.updated_at,
            r.name
        )?;
    }
    Ok(())
}

/// `fedtune-aggregator rounds`.
pub fn rounds(db: &Path, run: RunId, json: bool) -> anyhow::Result<()> {
    let store = open_read_only(db)?;
    store.run(run)?;
    let rounds = store.rounds(run, None)?;
    let mut out = std::io::stdout().lock();
    if json {
        for r in &rounds {
            let mut line = serde_json::to_value(&r.record)?;
            if let Some(object) = line.as_object_mut() {
                object.insert("trial".into(), r.trial.into());
                object.insert("committed_at".into(), r.committed_at.clone().into());
                object.insert("test_accuracy".into(), r.record.test.map(|t| t.accuracy).into());
            }
            serde_json::to_writer(&mut out, &line)?;
            writeln!(out)?;
        }
        return Ok(());
    }
    writeln!(
        out,
        "{:>5}  {:>7}  {:>8}  {:>10}  {:>8}  {:>8}  {:>7}  committed",
        "round", "updates", "failures", "train loss", "fed acc", "test acc", "seconds"
    )?;
    for r in &rounds {
        let rec = &r.record;
        let test = rec
            .test
            .map_or_else(|| "-".to_owned(), |t| format!("{:.4}", t.accuracy));
        writeln!(
            out,
            "{:>5}  {:>7}  {:>8}  {:>10.4}  {:>8.4}  {:>8}  {:>7.2}  {}",
            rec.round,
            rec.updates,
            rec.failures.len(),
            rec.train_loss,
            rec.federated_accuracy,
            test,
            rec.seconds,
            r.committed_at
        )?;
    }
    Ok(())
}

/// `fedtune-aggregator trials`.
pub fn trials(db: &Path, study: RunId, json: bool) -> anyhow::Result<()> {
    let store = open_read_only(db)?;
    if store.run(study)?.kind != RunKind::Study {
        anyhow::bail!("{study} is a run, not a study (see `runs`)");
    }
    let trials = store.trials(study)?;
    let mut out = std::io::stdout().lock();
    if json {
        serde_json::to_writer_pretty(&mut out, &trials)?;
        writeln!(out)?;
        return Ok(());
    }
    writeln!(
        out,
        "{:>5}  {:<8}  {:>6}  {:<24}  {:<24}  params",
        "trial", "state", "rounds", "values", "updated"
    )?;
    for t in &trials {
        let values = t.trial.values.as_ref().map_or_else(
            || "-".to_owned(),
            |v| v.iter().map(|x| format!("{x:.4}")).collect::<Vec<_>>().join(", "),
        );
        writeln!(
            out,
            "{:>5}  {:<8}  {:>6}  {:<24}  {:<24}  {}",
            t.trial.number,
            serde_json::to_value(t.trial.state)?.as_str().unwrap_or("?"),
            t.trial.last_intermediate().map_or(0, |(step, _)| step),
            values,
            t.updated_at,
            serde_json::to_string(&t.trial.params)?
        )?;
    }
    Ok(())
}

/// `fedtune-aggregator export`: one row per cohort member and round (of every trial, for
/// a study). `kind` asks that the id be of that kind.
pub fn export(db: &Path, run: RunId, kind: Option<RunKind>, json: bool) -> anyhow::Result<()> {
    let store = open_read_only(db)?;
    let found = store.run(run)?.kind;
    if let Some(kind) = kind
        && kind != found
    {
        anyhow::bail!("{run} is a {}, not a {} (see `runs`)", found.as_str(), kind.as_str());
    }
    let rows: Vec<(String, AgentRow)> = store
        .rounds(run, None)?
        .iter()
        .flat_map(|r| {
            agent_rows(r.trial, &r.record)
                .into_iter()
                .map(|row| (r.committed_at.clone(), row))
        })
        .collect();
    let mut out = std::io::stdout().lock();
    if json {
        let rows: Vec<serde_json::Value> = rows
            .into_iter()
            .map(|(committed_at, row)| {
                let mut v = serde_json::to_value(row).unwrap_or_default();
                if let Some(o) = v.as_object_mut() {
                    o.insert("run".into(), run.into());
                    o.insert("committed_at".into(), committed_at.into());
                }
                v
            })
            .collect();
        serde_json::to_writer_pretty(&mut out, &rows)?;
        writeln!(out)?;
        return Ok(());
    }
    writeln!(out, "run,trial,round,agent,outcome,accuracy,detail,committed_at")?;
    for (committed_at, row) in rows {
        writeln!(
            out,
            "{run},{},{},{},{},{},{},{}",
            row.trial,
            row.round,
            csv_field(&row.agent),
            csv_field(&row.outcome),
            row.accuracy.map(|a| a.to_string()).unwrap_or_default(),
            csv_field(row.detail.as_deref().unwrap_or("")),
            committed_at
        )?;
    }
    Ok(())
}

/// A CSV field, quoted when it holds a comma, a quote or a line break (RFC 4180).
fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_owned()
    }
}

/// `fedtune-aggregator plot`: a run's charts (`kind` run) or a study's, as SVG and PNG in `out`.
pub fn plot(db: &Path, id: RunId, kind: RunKind, out: &Path) -> anyhow::Result<()> {
    let store = open_read_only(db)?;
    let found = store.run(id)?.kind;
    if found != kind {
        anyhow::bail!("{id} is a {}, not a {} (see `runs`)", found.as_str(), kind.as_str());
    }
    let written = match kind {
        RunKind::Run => {
            let records: Vec<_> = store.rounds(id, None)?.into_iter().map(|r| r.record).collect();
            plot::run(&records, out)?
        }
        RunKind::Study => {
            let Some(header) = store.study_header(id)? else {
                anyhow::bail!("study {id} has not started: nothing to plot");
            };
            let trials: Vec<_> = store.trials(id)?.into_iter().map(|t| t.trial).collect();
            plot::study(&header.objectives, &trials, out)?
        }
    };
    let mut stdout = std::io::stdout().lock();
    for file in &written {
        writeln!(stdout, "{}", file.display())?;
    }
    Ok(())
}
