//! What the system itself costs per round: N agents that skip training and return a
//! fixed perturbation of P parameters, with the aggregator and the agents in separate
//! processes as in a deployment, over mutual-TLS QUIC on 127.0.0.1.
//!
//! Beside it, the same bytes are moved by bare quinn streams (same TLS, same transport
//! settings, no fedtune protocol) to show how close a round gets to the transport's
//! ceiling.
//!
//! ```text
//! cargo run --release --example round_overhead -- --agents 10 --params 1000000 --rounds 10
//! ```

mod common;

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context, bail};
use clap::{Parser, ValueEnum};
use common::perturb::{model, perturbations};
use common::processes::{announce_port, load_agents, pki_files, wait_for_port};
use fedtune::agent::client::client_endpoint;
use fedtune::agent::tls::{client_config, default_transport};
use fedtune::agent::train::peak_rss_bytes;
use fedtune::aggregator::config::FederationConfig;
use fedtune::aggregator::dashboard;
use fedtune::aggregator::identity::FederationPki;
use fedtune::aggregator::metrics::Metrics;
use fedtune::aggregator::{AggregatorConfig, Hooks, run, run_stored};
use fedtune::store::SqliteStore;
use serde::{Deserialize, Serialize};

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Role {
    Bench,
    Aggregator,
    Agents,
}

#[derive(Parser, Debug)]
#[command(about = "Per-round overhead of fedtune: aggregator and agents in separate processes")]
struct Args {
    /// Number of agents.
    #[arg(long, default_value_t = 10)]
    agents: usize,
    /// Parameters per model (f32).
    #[arg(long, default_value_t = 1_000_000)]
    params: usize,
    /// Rounds to time.
    #[arg(long, default_value_t = 10)]
    rounds: u64,
    /// Use the default (internet) transport tuning instead of the loopback one.
    #[arg(long)]
    wan_tuning: bool,
    /// Commit every round and its checkpoint to a SQLite store, to measure what durability
    /// costs per round.
    #[arg(long)]
    store: bool,
    /// Measure the dashboard and `/metrics`: runs with a store alternate with runs that
    /// also serve the dashboard and metrics while a watcher polls them as an open browser
    /// tab and a Prometheus scraper would (once a second each).
    #[arg(long)]
    dashboard: bool,
    /// With `--dashboard`: how many runs each side (alternated, so drift on a noisy
    /// machine hits both).
    #[arg(long, default_value_t = 3)]
    pairs: usize,
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

#[derive(Serialize, Deserialize)]
struct AggregatorResult {
    round_seconds: Vec<f64>,
    /// Mean seconds per store commit, with `--store`.
    commit_seconds: Option<f64>,
    peak_rss_bytes: u64,
}

#[derive(Serialize)]
struct Summary {
    agents: usize,
    params: usize,
    rounds: usize,
    bytes_per_round: u64,
    median_round_seconds: f64,
    round_seconds: Vec<f64>,
    aggregator_peak_rss_bytes: u64,
    transport_round_seconds: f64,
    transport_throughput_mb_s: f64,
    round_throughput_mb_s: f64,
    fraction_of_transport_ceiling: f64,
    /// Mean seconds a round's store commit took (record + checkpoint), with `--store`.
    store_commit_seconds: Option<f64>,
    /// That, as a fraction of the median round.
    store_commit_fraction_of_round: Option<f64>,
    /// With `--dashboard`: the median round of the runs with a store only …
    dashboard_off_median_round_seconds: Option<f64>,
    /// … and of the runs that also served the dashboard and metrics, watched.
    dashboard_on_median_round_seconds: Option<f64>,
    /// `on / off - 1`.
    dashboard_overhead_fraction: Option<f64>,
    /// Requests the watcher made (version polls, page loads, metrics scrapes).
    dashboard_requests: Option<u64>,
}

fn main() -> anyhow::Result<()> {
    common::init_logging();
    let args = Args::parse();
    let runtime = tokio::runtime::Runtime::new()?;
    match args.role {
        Role::Bench => bench(&args, &runtime),
        Role::Aggregator => runtime.block_on(aggregator_role(&args)),
        Role::Agents => runtime.block_on(agents_role(&args)),
    }
}

async fn aggregator_role(args: &Args) -> anyhow::Result<()> {
    let dir = args.pki.as_deref().context("--pki")?;
    let (ca, identity) = pki_files(dir)?;
    let tuning = tuning(args.wan_tuning);
    let endpoint = fedtune::aggregator::service::bind(([127, 0, 0, 1], 0).into(), &ca, &identity, &tuning)?;
    let out = args.out.clone().context("--out")?;
    announce_port(&out, endpoint.local_addr()?.port())?;
    let config = AggregatorConfig {
        listen: endpoint.local_addr()?,
        federation: FederationConfig {
            rounds: args.rounds,
            min_agents: args.agents,
            wait_for_agents_secs: 60.0,
            round_timeout_secs: 600.0,
            final_evaluation: false,
            loopback: !args.wan_tuning,
            max_payload_bytes: (args.params as u64 * 4).max(1 << 20),
            ..FederationConfig::default()
        },
        model: model(args.params).into(),
        ..AggregatorConfig::default()
    };
    let (_stop, stopped) = tokio::sync::watch::channel(false);
    let (report, commit_seconds) = if args.store {
        let db = out.with_extension("db");
        let store = SqliteStore::open(&db)?;
        let mut hooks = Hooks::default();
        if args.dashboard {
            let metrics = Arc::new(Metrics::new());
            let options = dashboard::Options {
                metrics: Some(metrics.clone()),
                ..dashboard::Options::default()
            };
            let addr = dashboard::start(([127, 0, 0, 1], 0).into(), &db, options, stopped.clone()).await?;
            announce_port(&dashboard_file(&out), addr.port())?;
            hooks.metrics = Some(metrics);
        }
        let stored = run_stored(endpoint, config, Box::new(store), 3, hooks, stopped).await?;
        let c = stored.commits;
        (stored.report, Some(c.commit_seconds / c.commits.max(1) as f64))
    } else {
        (run(endpoint, config, Hooks::default(), stopped).await?, None)
    };
    let result = AggregatorResult {
        round_seconds: report.rounds.iter().map(|r| r.seconds).collect(),
        commit_seconds,
        peak_rss_bytes: peak_rss_bytes(),
    };
    std::fs::write(out, serde_json::to_vec(&result)?)?;
    Ok(())
}

fn tuning(wan: bool) -> fedtune::aggregator::transport::TransportTuning {
    if wan {
        fedtune::aggregator::transport::TransportTuning::default()
    } else {
        fedtune::aggregator::transport::TransportTuning::loopback()
    }
}

async fn agents_role(args: &Args) -> anyhow::Result<()> {
    let dir = args.pki.as_deref().context("--pki")?;
    let port = args.port.context("--port")?;
    let pki = load_agents(dir, args.agents)?;
    let trainers = perturbations(args.agents, args.params);
    let (_stop, stopped) = tokio::sync::watch::channel(false);
    let mut agents =
        fedtune::sim::spawn_agents(&pki, ([127, 0, 0, 1], port).into(), trainers, !args.wan_tuning, stopped)
            .map_err(anyhow::Error::msg)?;
    while let Some(exit) = agents.join_next().await {
        exit??;
    }
    Ok(())
}

fn bench(args: &Args, runtime: &tokio::runtime::Runtime) -> anyhow::Result<()> {
    let dir = std::env::temp_dir().join(format!("fedtune-overhead-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let pki = fedtune::sim::ephemeral_pki(args.agents)?;
    pki.write_to_dir(&dir.join("pki"))?;
    println!(
        "round overhead: {} agents, {} parameters ({:.1} MB per update), {} rounds, {} transport tuning{}",
        args.agents,
        args.params,
        args.params as f64 * 4e-6,
        args.rounds,
        if args.wan_tuning { "default" } else { "loopback" },
        if args.dashboard {
            format!(
                ", {0} runs with a store alternated with {0} that also serve the dashboard",
                args.pairs
            )
        } else {
            String::new()
        }
    );
    let (result, dashboard) = if args.dashboard {
        let (mut off, mut on, mut requests) = (Vec::new(), Vec::new(), 0);
        let mut last = None;
        for pair in 0..args.pairs {
            off.extend(measure(args, &dir, pair * 2, false)?.0.round_seconds);
            let (result, watched) = measure(args, &dir, pair * 2 + 1, true)?;
            on.extend(result.round_seconds.iter().copied());
            requests += watched;
            last = Some(result);
        }
        (last.context("no run")?, Some((off, on, requests)))
    } else {
        (measure(args, &dir, 0, false)?.0, None)
    };
    let _ = std::fs::remove_dir_all(&dir);

    let bytes_per_round = 2 * args.agents as u64 * 4 * args.params as u64;
    let transport = runtime.block_on(transport_round(&pki, args.agents, args.params, !args.wan_tuning))?;
    let median = common::median(&result.round_seconds);
    let summary = Summary {
        agents: args.agents,
        params: args.params,
        rounds: result.round_seconds.len(),
        bytes_per_round,
        median_round_seconds: median,
        aggregator_peak_rss_bytes: result.peak_rss_bytes,
        transport_round_seconds: transport,
        transport_throughput_mb_s: bytes_per_round as f64 / transport / 1e6,
        round_throughput_mb_s: bytes_per_round as f64 / median / 1e6,
        fraction_of_transport_ceiling: transport / median,
        store_commit_seconds: result.commit_seconds,
        store_commit_fraction_of_round: result.commit_seconds.map(|c| c / median),
        dashboard_off_median_round_seconds: dashboard.as_ref().map(|d| common::median(&d.0)),
        dashboard_on_median_round_seconds: dashboard.as_ref().map(|d| common::median(&d.1)),
        dashboard_overhead_fraction: dashboard
            .as_ref()
            .map(|d| common::median(&d.1) / common::median(&d.0) - 1.0),
        dashboard_requests: dashboard.as_ref().map(|d| d.2),
        round_seconds: result.round_seconds,
    };
    println!(
        "  median round            {:.3} s  ({:.0} MB/s of model traffic)",
        median, summary.round_throughput_mb_s
    );
    println!(
        "  bare quinn, same bytes   {:.3} s  ({:.0} MB/s)",
        summary.transport_round_seconds, summary.transport_throughput_mb_s
    );
    println!(
        "  round / transport        {:.0}% of the transport ceiling",
        100.0 * summary.fraction_of_transport_ceiling
    );
    println!(
        "  aggregator peak RSS      {:.1} MB",
        summary.aggregator_peak_rss_bytes as f64 / 1e6
    );
    if let (Some(commit), Some(fraction)) = (summary.store_commit_seconds, summary.store_commit_fraction_of_round) {
        println!(
            "  store commit per round   {:.1} ms  ({:.1}% of the median round; on the writer thread)",
            commit * 1e3,
            100.0 * fraction
        );
    }
    if let (Some(off), Some(on), Some(fraction), Some(requests)) = (
        summary.dashboard_off_median_round_seconds,
        summary.dashboard_on_median_round_seconds,
        summary.dashboard_overhead_fraction,
        summary.dashboard_requests,
    ) {
        println!("  with a store only        {off:.3} s median round");
        println!(
            "  + dashboard and metrics  {on:.3} s median round  ({:+.1}%; the watcher made {requests} requests)",
            100.0 * fraction
        );
    }
    common::write_summary(args.summary.as_deref(), &summary)
}

/// One timed run: the aggregator and the agents in their own processes (run `n` of the
/// bench, so each has its own files). With `dashboard`, the aggregator also serves the
/// dashboard and `/metrics` and this process watches them; returns the requests made.
fn measure(args: &Args, dir: &std::path::Path, n: usize, dashboard: bool) -> anyhow::Result<(AggregatorResult, u64)> {
    let out = dir.join(format!("aggregator-{n}.json"));
    let exe = std::env::current_exe()?;
    let common = |role: &str| {
        let mut c = Command::new(&exe);
        c.args([
            "--role",
            role,
            "--agents",
            &args.agents.to_string(),
            "--params",
            &args.params.to_string(),
        ])
        .args(["--rounds", &args.rounds.to_string(), "--pki"])
        .arg(dir.join("pki"));
        if args.wan_tuning {
            c.arg("--wan-tuning");
        }
        if args.store || args.dashboard {
            c.arg("--store");
        }
        c
    };
    let mut aggregator = common("aggregator");
    if dashboard {
        aggregator.arg("--dashboard");
    }
    let mut aggregator = aggregator.arg("--out").arg(&out).stdout(Stdio::null()).spawn()?;
    let port = wait_for_port(&out, &mut aggregator)?;
    let watcher = if dashboard {
        let http = wait_for_port(&dashboard_file(&out), &mut aggregator)?;
        let (stop, stopped) = std::sync::mpsc::channel::<()>();
        Some((stop, std::thread::spawn(move || watch(http, &stopped))))
    } else {
        None
    };
    let mut agents = common("agents")
        .args(["--port", &port.to_string()])
        .stdout(Stdio::null())
        .spawn()?;
    let status = aggregator.wait()?;
    let agents_status = agents.wait()?;
    let requests = match watcher {
        Some((stop, thread)) => {
            drop(stop);
            thread.join().map_err(|_| anyhow::anyhow!("the watcher panicked"))??
        }
        None => 0,
    };
    if !status.success() || !agents_status.success() {
        bail!("aggregator exited with {status}, agents with {agents_status}");
    }
    Ok((serde_json::from_slice(&std::fs::read(&out)?)?, requests))
}

/// Where the aggregator of the run writing `out` announces its dashboard's port.
fn dashboard_file(out: &std::path::Path) -> PathBuf {
    out.with_file_name(format!(
        "{}-dashboard",
        out.file_stem().map(|s| s.to_string_lossy()).unwrap_or_default()
    ))
}

/// What an open dashboard tab and a Prometheus scraper ask of the aggregator: once a
/// second the run's version, its page content when the version moved, and `/metrics`.
/// Runs until `stopped` closes; returns the requests made.
fn watch(port: u16, stopped: &std::sync::mpsc::Receiver<()>) -> anyhow::Result<u64> {
    let mut requests = 0;
    let mut seen = String::new();
    loop {
        match stopped.recv_timeout(std::time::Duration::from_secs(1)) {
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {}
            _ => return Ok(requests),
        }
        // The run exists once the aggregator committed to its store; until then 404.
        let (status, version) = http_get(port, "/api/version/1")?;
        requests += 1;
        if status == 200 && version != seen {
            let (status, page) = http_get(port, "/runs/1?fragment=1")?;
            requests += 1;
            anyhow::ensure!(status == 200 && page.contains("latest-round"), "the run page: {status}");
            seen = version;
        }
        let (status, metrics) = http_get(port, "/metrics")?;
        requests += 1;
        anyhow::ensure!(
            status == 200 && metrics.contains("fedtune_rounds_total"),
            "/metrics: {status}"
        );
    }
}

/// A plain HTTP/1.1 GET on 127.0.0.1: the status and the body.
fn http_get(port: u16, path: &str) -> anyhow::Result<(u16, String)> {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port))?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
    )?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    let status = response
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .context("no HTTP status line")?;
    let body = response.split_once("\r\n\r\n").map_or("", |(_, b)| b);
    Ok((status, body.to_owned()))
}

/// The transport's ceiling for one round: a server sends P f32s to each of N clients and
/// reads P f32s back, over bare quinn streams with the same TLS and tuning. Median of 5.
async fn transport_round(pki: &FederationPki, agents: usize, params: usize, loopback: bool) -> anyhow::Result<f64> {
    let tuning = tuning(!loopback);
    let endpoint =
        fedtune::aggregator::service::bind(([127, 0, 0, 1], 0).into(), &pki.ca_cert_pem, &pki.server, &tuning)?;
    let addr = endpoint.local_addr()?;
    let payload = bytes::Bytes::from(vec![7u8; params * 4]);
    let transport = Arc::new(default_transport(loopback));
    let mut clients = Vec::new();
    for (_, identity) in pki.agents.iter().take(agents) {
        let tls = client_config(
            &pki.ca_cert_pem,
            &identity.cert_pem,
            &identity.key_pem,
            transport.clone(),
        )?;
        clients.push(client_endpoint(tls, addr, loopback)?);
    }
    // Clients echo what they receive.
    let echo = tokio::spawn(async move {
        let mut tasks = tokio::task::JoinSet::new();
        for client in clients {
            tasks.spawn(async move {
                let connection = client.connect(addr, "localhost")?.await?;
                while let Ok((mut send, mut recv)) = connection.accept_bi().await {
                    let data = recv.read_to_end(usize::MAX).await?;
                    send.write_all(&data).await?;
                    send.finish()?;
                    let _ = send.stopped().await;
                }
                anyhow::Ok(())
            });
        }
        while tasks.join_next().await.is_some() {}
    });
    let mut connections = Vec::new();
    for _ in 0..agents {
        let incoming = endpoint.accept().await.context("endpoint closed")?;
        connections.push(incoming.await?);
    }
    let mut times = Vec::new();
    for _ in 0..5 {
        let started = Instant::now();
        let mut round = tokio::task::JoinSet::new();
        for connection in &connections {
            let (connection, payload) = (connection.clone(), payload.clone());
            round.spawn(async move {
                let (mut send, mut recv) = connection.open_bi().await?;
                send.write_chunk(payload).await?;
                send.finish()?;
                let back = recv.read_to_end(usize::MAX).await?;
                anyhow::ensure!(back.len() == params * 4, "short echo");
                anyhow::Ok(())
            });
        }
        while let Some(done) = round.join_next().await {
            done??;
        }
        times.push(started.elapsed().as_secs_f64());
    }
    for connection in &connections {
        connection.close(0u32.into(), b"done");
    }
    endpoint.close(0u32.into(), b"done");
    let _ = echo.await;
    Ok(common::median(&times))
}
