//! Scale: a thousand lightweight agents on one aggregator over mutual-TLS QUIC on
//! 127.0.0.1. The agents skip training (no Burn) and answer every task with a fixed
//! perturbation of P parameters; each has its own certificate, its own QUIC endpoint and
//! UDP socket, and its own connection.
//!
//! Each configuration — P = 10^4 at cohorts of 100 and of all 1,000, then P = 10^6 at a
//! cohort of 100 — runs in a fresh aggregator process, so the peak RSS it reports is that
//! aggregator's alone, with the agents as tokio tasks in one other process.
//!
//! ```text
//! cargo run --release --example scale -- --summary scale.json
//! cargo run --release --example scale -- --agents 50 --cohort 10,50 --big-params 100000 --rounds 3
//! ```
//!
//! Aims: aggregator peak RSS under 1 GB; every agent registered within 60 s of its process
//! starting; no stalled round (one that lost a cohort member, ran into its deadline, or
//! took more than 10x the median round and over a second).

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context, bail};
use clap::{Parser, ValueEnum};
use common::perturb::{model, perturbations};
use common::processes::{announce_port, load_agents, pki_files, wait_for_port};
use fedtune::agent::train::peak_rss_bytes;
use fedtune::aggregator::config::FederationConfig;
use fedtune::aggregator::transport::TransportTuning;
use fedtune::aggregator::{AggregatorConfig, Hooks, run};
use serde::{Deserialize, Serialize};

/// How long a round may wait for its cohort before it closes without the stragglers.
const ROUND_TIMEOUT_SECS: f64 = 120.0;
/// How long the aggregator waits for every agent to register.
const WAIT_FOR_AGENTS_SECS: f64 = 180.0;
/// How long the agents may take to leave once the aggregator has finished.
const AGENTS_EXIT_TIMEOUT: Duration = Duration::from_secs(60);
/// A round this many times the median (and over [`STALL_FLOOR_SECS`]) counts as stalled.
const STALL_FACTOR: f64 = 10.0;
/// Rounds shorter than this never count as stalled by time: on a 10 ms round, a hiccup of
/// the scheduler is no stall.
const STALL_FLOOR_SECS: f64 = 1.0;
/// File descriptors the agents' process needs beyond one UDP socket per agent (runtime,
/// stdio, the PKI files being read).
const SPARE_FILES: u64 = 256;

/// The issue's aim for the aggregator's peak RSS.
const AIM_RSS_BYTES: u64 = 1_000_000_000;
/// The issue's aim for every agent to have registered.
const AIM_HANDSHAKE_SECONDS: f64 = 60.0;

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Role {
    Bench,
    Aggregator,
    Agents,
}

#[derive(Parser, Debug)]
#[command(about = "Many lightweight agents on one aggregator: memory, handshakes, round times")]
struct Args {
    /// Number of agents.
    #[arg(long, default_value_t = 1000)]
    agents: usize,
    /// Parameters per model (f32) for the cohort configurations.
    #[arg(long, default_value_t = 10_000)]
    params: usize,
    /// Cohort sizes to run, one configuration each (repeat the flag or list them).
    #[arg(long, value_delimiter = ',', default_value = "100,1000")]
    cohort: Vec<usize>,
    /// Rounds per configuration.
    #[arg(long, default_value_t = 5)]
    rounds: u64,
    /// Parameters of the last configuration, run at the first `--cohort`.
    #[arg(long, default_value_t = 1_000_000)]
    big_params: usize,
    /// Skip the `--big-params` configuration.
    #[arg(long)]
    no_big: bool,
    /// Write the figures as JSON here.
    #[arg(long)]
    summary: Option<PathBuf>,
    #[arg(long, value_enum, default_value_t = Role::Bench, hide = true)]
    role: Role,
    #[arg(long, hide = true)]
    pki: Option<PathBuf>,
    #[arg(long, hide = true)]
    port: Option<u16>,
    #[arg(long, hide = true)]
    out: Option<PathBuf>,
}

/// One federation to measure.
#[derive(Debug, Clone, Copy)]
struct Configuration {
    cohort: usize,
    params: usize,
}

/// What an aggregator process reports back.
#[derive(Serialize, Deserialize)]
struct AggregatorResult {
    /// When the first agent had registered, in Unix seconds.
    first_registered_at: f64,
    /// When every agent had registered (the first round's first task), in Unix seconds.
    all_registered_at: f64,
    rounds: Vec<RoundOutcome>,
    peak_rss_bytes: u64,
}

#[derive(Serialize, Deserialize)]
struct RoundOutcome {
    seconds: f64,
    /// Agents asked.
    asked: usize,
    updates: usize,
    failures: usize,
}

/// What the agents' process reports back.
#[derive(Serialize, Deserialize)]
struct AgentsResult {
    peak_rss_bytes: u64,
}

#[derive(Serialize)]
struct Summary {
    agents: usize,
    /// The highest of the configurations' aggregator peaks.
    aggregator_peak_rss_bytes: u64,
    /// The slowest of the configurations' handshakes.
    handshake_seconds: f64,
    /// The first configuration's.
    median_round_seconds: f64,
    /// The first configuration's.
    cohort: usize,
    configurations: Vec<ConfigurationSummary>,
    aims: Aims,
}

#[derive(Serialize)]
struct ConfigurationSummary {
    cohort: usize,
    params: usize,
    rounds: usize,
    median_round_seconds: f64,
    max_round_seconds: f64,
    stalled_rounds: usize,
    aggregator_peak_rss_bytes: u64,
    /// From the agents' process starting to the last agent registered.
    handshake_seconds: f64,
    /// From the agents' process starting to the first agent registered.
    first_handshake_seconds: f64,
    agents_peak_rss_bytes: u64,
    round_seconds: Vec<f64>,
}

#[derive(Serialize)]
struct Aims {
    aggregator_rss_under_1_gb: bool,
    handshakes_under_60_s: bool,
    no_stalled_rounds: bool,
}

fn main() -> anyhow::Result<()> {
    common::init_logging();
    let args = Args::parse();
    match args.role {
        Role::Bench => bench(&args),
        Role::Aggregator => tokio::runtime::Runtime::new()?.block_on(aggregator_role(&args)),
        Role::Agents => tokio::runtime::Runtime::new()?.block_on(agents_role(&args)),
    }
}

fn configurations(args: &Args) -> anyhow::Result<Vec<Configuration>> {
    let Some(&first) = args.cohort.first() else {
        bail!("--cohort needs at least one size");
    };
    let mut runs: Vec<Configuration> = args
        .cohort
        .iter()
        .map(|&cohort| Configuration {
            cohort,
            params: args.params,
        })
        .collect();
    if !args.no_big {
        runs.push(Configuration {
            cohort: first,
            params: args.big_params,
        });
    }
    for run in &runs {
        cohort_setting(run.cohort, args.agents)?;
        if run.params == 0 {
            bail!("a model needs at least one parameter");
        }
    }
    Ok(runs)
}

/// `federation.cohort` for a cohort of `cohort` out of `agents`: it reads values up to 1
/// as a fraction and larger ones as a count, so a count of 1 cannot be said (except as
/// "all" of one agent).
fn cohort_setting(cohort: usize, agents: usize) -> anyhow::Result<f64> {
    if cohort == agents {
        Ok(1.0)
    } else if (2..agents).contains(&cohort) {
        Ok(cohort as f64)
    } else {
        bail!("a cohort must be between 2 and the number of agents ({agents}), got {cohort}")
    }
}

fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

async fn aggregator_role(args: &Args) -> anyhow::Result<()> {
    let dir = args.pki.as_deref().context("--pki")?;
    let out = args.out.clone().context("--out")?;
    let cohort = *args.cohort.first().context("--cohort")?;
    let (ca, identity) = pki_files(dir)?;
    let endpoint =
        fedtune::aggregator::service::bind(([127, 0, 0, 1], 0).into(), &ca, &identity, &TransportTuning::loopback())?;
    let config = AggregatorConfig {
        listen: endpoint.local_addr()?,
        federation: FederationConfig {
            rounds: args.rounds,
            min_agents: args.agents,
            // Room for an agent's new connection while its old one is still closing.
            max_agents: 2 * args.agents,
            wait_for_agents_secs: WAIT_FOR_AGENTS_SECS,
            cohort: cohort_setting(cohort, args.agents)?,
            round_timeout_secs: ROUND_TIMEOUT_SECS,
            final_evaluation: false,
            loopback: true,
            max_payload_bytes: (args.params as u64 * 4).max(1 << 20),
            ..FederationConfig::default()
        },
        model: model(args.params).into(),
        ..AggregatorConfig::default()
    };
    let first_registered = Arc::new(Mutex::new(None::<f64>));
    let all_registered = Arc::new(Mutex::new(None::<f64>));
    let hooks = Hooks {
        on_waiting: Some(Box::new({
            let first = first_registered.clone();
            move |connected, _| {
                let mut first = first.lock().unwrap_or_else(|p| p.into_inner());
                if connected > 0 && first.is_none() {
                    *first = Some(unix_now());
                }
            }
        })),
        // The wait for agents ends where the first round's clock starts.
        on_round: Some(Box::new({
            let all = all_registered.clone();
            move |record| {
                let mut all = all.lock().unwrap_or_else(|p| p.into_inner());
                if all.is_none() {
                    *all = Some(unix_now() - record.seconds);
                }
            }
        })),
        ..Hooks::default()
    };
    announce_port(&out, endpoint.local_addr()?.port())?;
    let (_stop, stopped) = tokio::sync::watch::channel(false);
    let report = run(endpoint, config, hooks, stopped).await?;
    let all_registered_at = all_registered
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .context("no round ran")?;
    let first_registered_at = first_registered
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .unwrap_or(all_registered_at);
    let result = AggregatorResult {
        first_registered_at,
        all_registered_at,
        rounds: report
            .rounds
            .iter()
            .map(|r| RoundOutcome {
                seconds: r.seconds,
                asked: r.cohort.len(),
                updates: r.updates,
                failures: r.failures.len(),
            })
            .collect(),
        peak_rss_bytes: peak_rss_bytes(),
    };
    std::fs::write(out, serde_json::to_vec(&result)?)?;
    Ok(())
}

async fn agents_role(args: &Args) -> anyhow::Result<()> {
    ensure_open_files(args.agents as u64 + SPARE_FILES)?;
    let dir = args.pki.as_deref().context("--pki")?;
    let port = args.port.context("--port")?;
    let out = args.out.clone().context("--out")?;
    let pki = load_agents(dir, args.agents)?;
    let trainers = perturbations(args.agents, args.params);
    let (_stop, stopped) = tokio::sync::watch::channel(false);
    let mut agents = fedtune::sim::spawn_agents(&pki, ([127, 0, 0, 1], port).into(), trainers, true, stopped)
        .map_err(anyhow::Error::msg)?;
    let (mut failed, mut first_error) = (0, None::<anyhow::Error>);
    while let Some(exit) = agents.join_next().await {
        let error = match exit {
            Ok(Ok(_)) => continue,
            Ok(Err(e)) => e.into(),
            Err(e) => e.into(),
        };
        failed += 1;
        first_error.get_or_insert(error);
    }
    if let Some(e) = first_error {
        bail!("{failed} of {} agents failed; the first: {e:#}", args.agents);
    }
    let result = AgentsResult {
        peak_rss_bytes: peak_rss_bytes(),
    };
    std::fs::write(out, serde_json::to_vec(&result)?)?;
    Ok(())
}

/// This process's (soft, hard) limits on open files, from `/proc/self/limits`.
fn open_file_limits() -> anyhow::Result<(u64, u64)> {
    let limits = std::fs::read_to_string("/proc/self/limits").context("reading /proc/self/limits")?;
    let line = limits
        .lines()
        .find_map(|l| l.strip_prefix("Max open files"))
        .context("no open-files line in /proc/self/limits")?;
    let value = |v: Option<&str>| match v {
        Some("unlimited") => Ok(u64::MAX),
        Some(v) => v.parse::<u64>().context("an open-files limit that is not a number"),
        None => bail!("a truncated open-files line in /proc/self/limits"),
    };
    let mut fields = line.split_whitespace();
    Ok((value(fields.next())?, value(fields.next())?))
}

/// Makes sure this process (and the children it starts from now on) may open `needed`
/// files, raising the soft limit to the hard one when it is short. The workspace forbids
/// `unsafe`, so `setrlimit` is out of reach; util-linux's `prlimit` sets it from outside.
fn ensure_open_files(needed: u64) -> anyhow::Result<()> {
    let (soft, hard) = open_file_limits()?;
    if soft >= needed {
        return Ok(());
    }
    if hard >= needed {
        let pid = std::process::id().to_string();
        let raised = Command::new("prlimit")
            .args(["--pid", &pid, &format!("--nofile={hard}:{hard}")])
            .status();
        if let Err(e) = &raised {
            tracing::warn!("cannot run prlimit to raise the open-files limit: {e}");
        }
    }
    let (soft, hard) = open_file_limits()?;
    if soft < needed {
        bail!(
            "{needed} open files are needed (one UDP socket per agent), but the limit is {soft} \
             (hard limit {hard}); raise it first, e.g. `ulimit -n {needed}`"
        );
    }
    Ok(())
}

/// A scratch directory removed when dropped.
struct Scratch(PathBuf);

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn bench(args: &Args) -> anyhow::Result<()> {
    let runs = configurations(args)?;
    ensure_open_files(args.agents as u64 + SPARE_FILES)?;
    let scratch = Scratch(std::env::temp_dir().join(format!("fedtune-scale-{}", std::process::id())));
    let _ = std::fs::remove_dir_all(&scratch.0);
    let pki_dir = scratch.0.join("pki");
    let started = Instant::now();
    fedtune::sim::ephemeral_pki(args.agents)?.write_to_dir(&pki_dir)?;
    println!(
        "scale: {} agents, each with its own certificate and QUIC connection, {} rounds per configuration \
         (PKI generated in {:.1} s)",
        args.agents,
        args.rounds,
        started.elapsed().as_secs_f64()
    );
    let mut summaries = Vec::new();
    for (i, run) in runs.iter().enumerate() {
        println!(
            "\nconfiguration {}/{}: cohort {} of {}, {} parameters ({:.2} MB per update)",
            i + 1,
            runs.len(),
            run.cohort,
            args.agents,
            run.params,
            run.params as f64 * 4e-6
        );
        let summary = measure(args, *run, &pki_dir, &scratch.0.join(format!("run-{i}")))?;
        print_configuration(&summary, args.agents);
        summaries.push(summary);
    }
    let aggregator_peak_rss_bytes = summaries.iter().map(|s| s.aggregator_peak_rss_bytes).max().unwrap_or(0);
    let handshake_seconds = summaries.iter().map(|s| s.handshake_seconds).fold(0.0, f64::max);
    let aims = Aims {
        aggregator_rss_under_1_gb: aggregator_peak_rss_bytes < AIM_RSS_BYTES,
        handshakes_under_60_s: handshake_seconds < AIM_HANDSHAKE_SECONDS,
        no_stalled_rounds: summaries.iter().all(|s| s.stalled_rounds == 0),
    };
    let verdict = |met: bool| if met { "met" } else { "MISSED" };
    println!("\naims");
    println!(
        "  aggregator peak RSS < 1 GB    {:>9.1} MB  {}",
        aggregator_peak_rss_bytes as f64 / 1e6,
        verdict(aims.aggregator_rss_under_1_gb)
    );
    println!(
        "  all handshakes < 60 s         {handshake_seconds:>9.2} s   {}",
        verdict(aims.handshakes_under_60_s)
    );
    println!(
        "  no stalled round              {:>9}     {}",
        summaries.iter().map(|s| s.stalled_rounds).sum::<usize>(),
        verdict(aims.no_stalled_rounds)
    );
    let first = summaries.first().context("no configuration ran")?;
    let summary = Summary {
        agents: args.agents,
        aggregator_peak_rss_bytes,
        handshake_seconds,
        median_round_seconds: first.median_round_seconds,
        cohort: first.cohort,
        configurations: summaries,
        aims,
    };
    common::write_summary(args.summary.as_deref(), &summary)
}

/// Runs `run` with a fresh aggregator process and a fresh agents' process, `dir` holding
/// their results.
fn measure(args: &Args, run: Configuration, pki: &Path, dir: &Path) -> anyhow::Result<ConfigurationSummary> {
    std::fs::create_dir_all(dir)?;
    let exe = std::env::current_exe()?;
    let role = |role: &str, out: &Path| {
        let mut command = Command::new(&exe);
        command
            .args(["--role", role, "--agents", &args.agents.to_string()])
            .args([
                "--params",
                &run.params.to_string(),
                "--rounds",
                &args.rounds.to_string(),
            ])
            .args(["--cohort", &run.cohort.to_string()])
            .arg("--pki")
            .arg(pki)
            .arg("--out")
            .arg(out)
            .stdout(Stdio::null());
        command
    };
    let aggregator_out = dir.join("aggregator.json");
    let agents_out = dir.join("agents.json");
    let mut aggregator = role("aggregator", &aggregator_out).spawn()?;
    let port = wait_for_port(&aggregator_out, &mut aggregator)?;
    let launched_at = unix_now();
    let mut agents = match role("agents", &agents_out).args(["--port", &port.to_string()]).spawn() {
        Ok(agents) => agents,
        Err(e) => {
            let _ = aggregator.kill();
            return Err(e.into());
        }
    };
    wait_for_both(&mut aggregator, &mut agents)?;
    let aggregator: AggregatorResult = serde_json::from_slice(&std::fs::read(&aggregator_out)?)?;
    let agents: AgentsResult = serde_json::from_slice(&std::fs::read(&agents_out)?)?;

    let round_seconds: Vec<f64> = aggregator.rounds.iter().map(|r| r.seconds).collect();
    let median = common::median(&round_seconds);
    let expected = FederationConfig {
        cohort: cohort_setting(run.cohort, args.agents)?,
        ..FederationConfig::default()
    }
    .cohort_size(args.agents);
    let stalled = |r: &RoundOutcome| {
        r.asked < expected
            || r.updates < r.asked
            || r.failures > 0
            || r.seconds >= ROUND_TIMEOUT_SECS
            || (r.seconds > STALL_FACTOR * median && r.seconds > STALL_FLOOR_SECS)
    };
    println!("  round  asked  updates  failures  seconds");
    for (i, r) in aggregator.rounds.iter().enumerate() {
        println!(
            "  {i:>5}  {:>5}  {:>7}  {:>8}  {:>7.3}{}",
            r.asked,
            r.updates,
            r.failures,
            r.seconds,
            if stalled(r) { "  stalled" } else { "" }
        );
    }
    Ok(ConfigurationSummary {
        cohort: run.cohort,
        params: run.params,
        rounds: aggregator.rounds.len(),
        median_round_seconds: median,
        max_round_seconds: round_seconds.iter().copied().fold(0.0, f64::max),
        stalled_rounds: aggregator.rounds.iter().filter(|r| stalled(r)).count(),
        aggregator_peak_rss_bytes: aggregator.peak_rss_bytes,
        handshake_seconds: aggregator.all_registered_at - launched_at,
        first_handshake_seconds: aggregator.first_registered_at - launched_at,
        agents_peak_rss_bytes: agents.peak_rss_bytes,
        round_seconds,
    })
}

fn print_configuration(s: &ConfigurationSummary, agents: usize) {
    println!(
        "  handshakes       all {agents} registered {:.2} s after their process started (the first after {:.2} s)",
        s.handshake_seconds, s.first_handshake_seconds
    );
    println!(
        "  rounds           median {:.3} s, max {:.3} s, {} stalled",
        s.median_round_seconds, s.max_round_seconds, s.stalled_rounds
    );
    println!(
        "  peak RSS         aggregator {:.1} MB, agents' process {:.1} MB",
        s.aggregator_peak_rss_bytes as f64 / 1e6,
        s.agents_peak_rss_bytes as f64 / 1e6
    );
}

/// Waits for the aggregator to finish its federation and then for the agents to leave.
/// Whichever process fails first takes the other down, so a broken run ends at once
/// rather than when the aggregator gives up waiting for agents.
fn wait_for_both(aggregator: &mut Child, agents: &mut Child) -> anyhow::Result<()> {
    let stop = |child: &mut Child| {
        let _ = child.kill();
        let _ = child.wait();
    };
    loop {
        if let Some(status) = aggregator.try_wait()? {
            if !status.success() {
                stop(agents);
                bail!("the aggregator exited with {status}");
            }
            break;
        }
        if let Some(status) = agents.try_wait()?
            && !status.success()
        {
            stop(aggregator);
            bail!("the agents' process exited with {status}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let left = Instant::now();
    let status = loop {
        if let Some(status) = agents.try_wait()? {
            break status;
        }
        if left.elapsed() > AGENTS_EXIT_TIMEOUT {
            stop(agents);
            bail!("the agents did not leave within {AGENTS_EXIT_TIMEOUT:?} of the federation's end");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    if !status.success() {
        bail!("the agents' process exited with {status}");
    }
    Ok(())
}
