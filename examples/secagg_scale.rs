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
//! - **aggregator**: its folding of the N masked inputs and unmasking of the sum (one
//!   ChaCha20 stream per agent for the self masks, plus the pairwise masks of dropouts);
//! - **round time**: whole rounds over loopback QUIC (median), the aggregator and all N
//!   agents in this process, agents that skip training and send a fixed update. Every
//!   agent's masking shares this machine's cores, so a secure round here pays N agents'
//!   masking one after another, which on devices runs in parallel;
//! - **devices**: a secure round with each agent on its own device, composed of measured
//!   parts: the plain round, plus one agent's key exchange and masking (agents work in
//!   parallel), plus the aggregator's unmasking.
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
    /// The aggregator's folding of the masked inputs and unmasking of their sum.
    aggregator_unmasking_seconds: f64,
    /// A round with the agents on their own devices, from measured parts: the plain
    /// round, plus one agent's key exchange and masking, plus the aggregator's unmasking.
    device_round_seconds: Option<f64>,
    /// That over the plain round.
    device_round_vs_plain: Option<f64>,
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

/// One round's cryptographic work, measured on the protocol's state machines.
struct Costs {
    /// One agent's key exchange (median seconds).
    agent_keys: f64,
    /// One agent's masking (median seconds).
    agent_mask: f64,
    /// The aggregator's folding of the N masked inputs and unmasking of their sum.
    aggregator: f64,
}

/// Times `sampled` agents' key exchange and masking, and the aggregator's folding and
/// unmasking, in a round of `n` agents on the graph `secure` gives.
fn round_costs(n: usize, params: usize, secure: &SecureAggregationConfig, sampled: usize) -> anyhow::Result<Costs> {
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
    let mut inputs = Vec::with_capacity(n);
    for (i, client) in clients.iter_mut().enumerate().take(sampled) {
        let started = Instant::now();
        client.receive_shares(&server.shares_for(i as u32))?;
        keys.push(sealing[i] + started.elapsed());
        let started = Instant::now();
        inputs.push(client.mask(&update, 100)?);
        masking.push(started.elapsed());
    }
    // The other agents mask too (untimed, on every core), so the aggregator has a whole
    // round to unmask.
    let incoming: Vec<_> = (sampled..n).map(|i| server.shares_for(i as u32)).collect();
    let rest = &mut clients[sampled..];
    let threads = std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get);
    let chunk = rest.len().div_ceil(threads).max(1);
    let masked: Vec<Vec<u32>> = std::thread::scope(|scope| {
        let workers: Vec<_> = rest
            .chunks_mut(chunk)
            .zip(incoming.chunks(chunk))
            .map(|(clients, shares)| {
                let update = &update;
                scope.spawn(move || {
                    clients
                        .iter_mut()
                        .zip(shares)
                        .map(|(client, shares)| {
                            client.receive_shares(shares)?;
                            client.mask(update, 100)
                        })
                        .collect::<Result<Vec<_>, _>>()
                })
            })
            .collect();
        workers
            .into_iter()
            .map(|w| w.join().expect("masking thread"))
            .collect::<Result<Vec<Vec<Vec<u32>>>, _>>()
            .map(|parts| parts.into_iter().flatten().collect())
    })?;
    inputs.extend(masked);
    let started = Instant::now();
    for (i, input) in inputs.iter().enumerate() {
        server.add_masked(i as u32, input, 100)?;
    }
    let survivors = server.close_inputs()?;
    let mut aggregator = started.elapsed();
    for (i, client) in clients.iter_mut().enumerate() {
        let reveals = client.reveal(&survivors)?;
        let started = Instant::now();
        server.add_reveal(i as u32, reveals)?;
        aggregator += started.elapsed();
    }
    let started = Instant::now();
    std::hint::black_box(server.finish()?);
    aggregator += started.elapsed();
    Ok(Costs {
        agent_keys: median(&mut keys),
        agent_mask: median(&mut masking),
        aggregator: aggregator.as_secs_f64(),
    })
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
        "{:>5} {:<9} {:>6} {:>5} {:>10} {:>10} {:>10} {:>9} {:>7} {:>10} {:>7}",
        "N",
        "graph",
        "degree",
        "t",
        "agent key",
        "agent mask",
        "aggregator",
        "round s",
        "×plain",
        "devices s",
        "×plain"
    );
    let mut settings = Vec::new();
    for &n in &args.agents {
        let plain = if args.no_rounds {
            None
        } else {
            Some(round_seconds(n, &args, None).await?)
        };
        let none = Costs {
            agent_keys: 0.0,
            agent_mask: 0.0,
            aggregator: 0.0,
        };
        let setting = settings_row(n, "plain", 0, 0, &none, plain, plain);
        print_row(&setting);
        settings.push(setting);
        for (graph, degree) in [("complete", Some(0)), ("secagg+", None)] {
            let secure = secure_config(degree);
            let sparse = secure.degree_for(n);
            if graph == "secagg+" && sparse.is_none() {
                println!("{n:>5} secagg+   (the complete graph at this size)");
                continue;
            }
            let costs = round_costs(n, args.params, &secure, args.sampled.min(n))?;
            let round = if args.no_rounds {
                None
            } else {
                Some(round_seconds(n, &args, Some(secure)).await?)
            };
            let degree = sparse.map_or(n - 1, |d| d as usize);
            let setting = settings_row(n, graph, degree, secure.threshold_for(n), &costs, round, plain);
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
    costs: &Costs,
    round: Option<f64>,
    plain: Option<f64>,
) -> Setting {
    let device = plain.map(|p| p + costs.agent_keys + costs.agent_mask + costs.aggregator);
    Setting {
        agents,
        graph: graph.into(),
        degree,
        threshold,
        agent_key_exchange_seconds: costs.agent_keys,
        agent_masking_seconds: costs.agent_mask,
        aggregator_unmasking_seconds: costs.aggregator,
        round_seconds: round,
        round_vs_plain: round.zip(plain).map(|(r, p)| r / p),
        device_round_seconds: device,
        device_round_vs_plain: device.zip(plain).map(|(d, p)| d / p),
    }
}

fn print_row(s: &Setting) {
    let opt = |x: Option<f64>, digits: usize| x.map_or_else(|| "-".into(), |v| format!("{v:.digits$}"));
    let secure = (s.graph != "plain").then_some(());
    println!(
        "{:>5} {:<9} {:>6} {:>5} {:>10} {:>10} {:>10} {:>9} {:>7} {:>10} {:>7}",
        s.agents,
        s.graph,
        opt(secure.map(|()| s.degree as f64), 0),
        opt(secure.map(|()| s.threshold as f64), 0),
        opt(secure.map(|()| s.agent_key_exchange_seconds), 4),
        opt(secure.map(|()| s.agent_masking_seconds), 4),
        opt(secure.map(|()| s.aggregator_unmasking_seconds), 4),
        opt(s.round_seconds, 3),
        opt(s.round_vs_plain, 2),
        opt(secure.and(s.device_round_seconds), 3),
        opt(secure.and(s.device_round_vs_plain), 2)
    );
}
