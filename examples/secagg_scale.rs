//! What secure aggregation costs as the cohort grows: at N agents and P parameters, the
//! complete graph of the original protocol (every agent masks against every other)
//! against SecAgg+'s sparse graph (each agent masks against 2⌈1.5 · log₂ N⌉ neighbours),
//! beside a plain round, in one run.
//!
//! Two figures per setting:
//! - **per-agent masking**: one agent's cryptographic work in a round, measured on the
//!   protocol's state machines (median of a few agents): the key exchange (share
//!   sealing, opening, pairwise key agreement) and the masking itself (one ChaCha20
//!   stream of P words per neighbour, plus the self mask);
//! - **round time**: whole rounds over loopback QUIC (median), the aggregator and all N
//!   agents in this process, agents that skip training and send a fixed update. Every
//!   agent's masking shares this machine's cores, so a secure round here pays N agents'
//!   masking one after another, which on devices runs in parallel.
//!
//! ```text
//! cargo run --release --example secagg_scale -- --summary secagg.json
//! cargo run --release --example secagg_scale -- --agents 10,50 --params 100000
//! ```

mod common;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use clap::Parser;
use common::perturb::{model, perturbations};
use fedtune::aggregator::config::{FederationConfig, SecureAggregationConfig};
use fedtune::aggregator::{AggregatorConfig, Hooks};
use fedtune::protocol::secagg::{ClientRound, RoundContext, ServerRound};
use serde::Serialize;

#[derive(Parser, Debug)]
#[command(about = "Secure aggregation at scale: complete graph vs SecAgg+ vs a plain round")]
struct Args {
    /// Cohort sizes to measure.
    #[arg(long, value_delimiter = ',', default_value = "10,50,100,200")]
    agents: Vec<usize>,
    /// Parameters per update (f32).
    #[arg(long, default_value_t = 1_000_000)]
    params: usize,
    /// Rounds timed per setting.
    #[arg(long, default_value_t = 3)]
    rounds: u64,
    /// Agents whose masking is timed per setting (the median is reported).
    #[arg(long, default_value_t = 3)]
    sampled: usize,
    /// Skip the whole rounds over QUIC (masking figures only).
    #[arg(long)]
    no_rounds: bool,
    /// Write the figures as JSON here.
    #[arg(long)]
    summary: Option<PathBuf>,
}

/// One graph at one cohort size.
#[derive(Serialize)]
struct Setting {
    agents: usize,
    /// `plain`, `complete` or `secagg+`.
    graph: String,
    /// Neighbours per agent (N − 1 on the complete graph; 0 for plain rounds).
    degree: usize,
    /// Shares needed per neighbourhood.
    threshold: usize,
    /// One agent's key exchange (median seconds).
    agent_key_exchange_seconds: f64,
    /// One agent's masking of its update (median seconds).
    agent_masking_seconds: f64,
    /// Median whole round over loopback QUIC.
    round_seconds: Option<f64>,
    /// `round_seconds` over the plain round's at the same N.
    round_vs_plain: Option<f64>,
}

#[derive(Serialize)]
struct Summary {
    params: usize,
    rounds: u64,
    settings: Vec<Setting>,
}

fn secure_config(degree: Option<u32>) -> SecureAggregationConfig {
    SecureAggregationConfig {
        enabled: true,
        degree,
        // The complete graph at N = 200 masks 200 streams of P words per agent, all on
        // this machine: give each step time.
        step_timeout_secs: 1_800.0,
        ..SecureAggregationConfig::default()
    }
}

/// Times `sampled` agents' key exchange and masking in a round of `n` agents on the
/// graph `secure` gives; returns the medians (seconds).
fn agent_costs(
    n: usize,
    params: usize,
    secure: &SecureAggregationConfig,
    sampled: usize,
) -> anyhow::Result<(f64, f64)> {
    let mut rng = rand::rng();
    let context = RoundContext {
        study: "secagg-scale".into(),
        trial: 0,
        round: 0,
    };
    let threshold = secure.threshold_for(n) as u32;
    let mut server = ServerRound::new(context.clone(), n as u32, threshold, 1.0, params, 100 * n as u64)?;
    if let Some(degree) = secure.degree_for(n) {
        server = server.with_degree(degree)?;
    }
    let mut clients = Vec::with_capacity(n);
    for i in 0..n as u32 {
        let (client, keys) = ClientRound::new(context.clone(), server.params_for(i), &mut rng)?;
        server.add_keys(i, keys)?;
        clients.push(client);
    }
    let roster = server.roster()?;
    let mut sealing = Vec::new();
    for (i, client) in clients.iter_mut().enumerate() {
        let started = Instant::now();
        let shares = client.share_keys(&roster, &mut rng)?;
        if i < sampled {
            sealing.push(started.elapsed());
        }
        server.add_shares(i as u32, shares)?;
    }
    server.close_shares()?;
    let update = vec![1e-3f32; params];
    let (mut keys, mut masking) = (Vec::new(), Vec::new());
    for (i, client) in clients.iter_mut().take(sampled).enumerate() {
        let started = Instant::now();
        client.receive_shares(&server.shares_for(i as u32))?;
        keys.push(sealing[i] + started.elapsed());
        let started = Instant::now();
        let masked = client.mask(&update, 100)?;
        masking.push(started.elapsed());
        std::hint::black_box(masked);
    }
    Ok((median(&mut keys), median(&mut masking)))
}

fn median(xs: &mut [Duration]) -> f64 {
    xs.sort();
    xs.get(xs.len() / 2).map_or(f64::NAN, Duration::as_secs_f64)
}

/// Median round over loopback QUIC with `n` perturbation agents.
async fn round_seconds(n: usize, args: &Args, secure: Option<SecureAggregationConfig>) -> anyhow::Result<f64> {
    let config = AggregatorConfig {
        federation: FederationConfig {
            rounds: args.rounds,
            min_agents: n,
            wait_for_agents_secs: 120.0,
            round_timeout_secs: 3_600.0,
            loopback: true,
            final_evaluation: false,
            ..FederationConfig::default()
        },
        model: model(args.params).into(),
        secure_aggregation: secure.unwrap_or_default(),
        ..AggregatorConfig::default()
    };
    let report = fedtune::sim::run_local(config, perturbations(n, args.params), Hooks::default())
        .await
        .map_err(anyhow::Error::msg)?;
    if let Some(round) = report.rounds.iter().find(|r| !r.applied || r.updates != n) {
        anyhow::bail!(
            "round {} with {n} agents: {} updates, applied {}: {:?}",
            round.round,
            round.updates,
            round.applied,
            round.failures
        );
    }
    let mut seconds: Vec<f64> = report.rounds.iter().map(|r| r.seconds).collect();
    seconds.sort_by(f64::total_cmp);
    Ok(seconds[seconds.len() / 2])
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    common::init_logging();
    let args = Args::parse();
    println!(
        "secure aggregation at scale: P = {} parameters, {} rounds per setting, every agent in this process\n",
        args.params, args.rounds
    );
    println!(
        "{:>5} {:<9} {:>7} {:>9} {:>14} {:>12} {:>10} {:>9}",
        "N", "graph", "degree", "threshold", "agent keys s", "agent mask s", "round s", "vs plain"
    );
    let mut settings = Vec::new();
    for &n in &args.agents {
        let plain = if args.no_rounds {
            None
        } else {
            Some(round_seconds(n, &args, None).await?)
        };
        let setting = settings_row(n, "plain", 0, 0, (0.0, 0.0), plain, plain);
        print_row(&setting);
        settings.push(setting);
        for (graph, degree) in [("complete", Some(0)), ("secagg+", None)] {
            let secure = secure_config(degree);
            let sparse = secure.degree_for(n);
            if graph == "secagg+" && sparse.is_none() {
                println!("{n:>5} secagg+   (the complete graph at this size)");
                continue;
            }
            let costs = agent_costs(n, args.params, &secure, args.sampled.min(n))?;
            let round = if args.no_rounds {
                None
            } else {
                Some(round_seconds(n, &args, Some(secure)).await?)
            };
            let degree = sparse.map_or(n - 1, |d| d as usize);
            let setting = settings_row(n, graph, degree, secure.threshold_for(n), costs, round, plain);
            print_row(&setting);
            settings.push(setting);
        }
    }
    common::write_summary(
        args.summary.as_deref(),
        &Summary {
            params: args.params,
            rounds: args.rounds,
            settings,
        },
    )
}

fn settings_row(
    agents: usize,
    graph: &str,
    degree: usize,
    threshold: usize,
    (keys, masking): (f64, f64),
    round: Option<f64>,
    plain: Option<f64>,
) -> Setting {
    Setting {
        agents,
        graph: graph.into(),
        degree,
        threshold,
        agent_key_exchange_seconds: keys,
        agent_masking_seconds: masking,
        round_seconds: round,
        round_vs_plain: round.zip(plain).map(|(r, p)| r / p),
    }
}

fn print_row(s: &Setting) {
    let opt = |x: Option<f64>, digits: usize| x.map_or_else(|| "-".into(), |v| format!("{v:.digits$}"));
    let secure = (s.graph != "plain").then_some(());
    println!(
        "{:>5} {:<9} {:>7} {:>9} {:>14} {:>12} {:>10} {:>9}",
        s.agents,
        s.graph,
        opt(secure.map(|()| s.degree as f64), 0),
        opt(secure.map(|()| s.threshold as f64), 0),
        opt(secure.map(|()| s.agent_key_exchange_seconds), 4),
        opt(secure.map(|()| s.agent_masking_seconds), 4),
        opt(s.round_seconds, 3),
        opt(s.round_vs_plain, 2)
    );
}
