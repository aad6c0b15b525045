//! `fedtune-aggregator`: create a federation's certificates, serve one, or run an
//! ask/tell study over JSON lines.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context;
use clap::{Parser, Subcommand};
use fedtune_aggregator::identity::{generate, issue_agent, load_ca_certificate, validate_agent_id};
use fedtune_aggregator::metrics::Metrics;
use fedtune_aggregator::progress::Progress;
use fedtune_aggregator::tune::{TuneConfig, TuneEvent, TuneHooks, tune};
use fedtune_aggregator::{AggregatorConfig, Hooks, dashboard, run, run_stored, service, tune_stored};
use fedtune_store::{self as store, RunKind, RunStatus, Storage};
use fedtune_tuning::spec::load_space_toml;
use fedtune_tuning::{
    Direction, Journal, Objective, PrunerConfig, SamplerKind, Study, TrialState, ask_tell, load_objectives,
};
use tracing_subscriber::EnvFilter;

mod inspect;

#[derive(Parser)]
#[command(name = "fedtune-aggregator", version, about = "fedtune aggregator service")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

/// What `privacy` is asked.
#[derive(Subcommand, Debug)]
enum PrivacyQuestion {
    /// ε at δ after `steps` rounds at a noise multiplier and sampling rate.
    Epsilon {
        /// σ: the noise's standard deviation over the clipping norm.
        #[arg(long)]
        noise_multiplier: f64,
        /// q: the chance an agent is in a round (cohort / agents).
        #[arg(long)]
        sample_rate: f64,
        /// Rounds.
        #[arg(long)]
        steps: u64,
        /// δ.
        #[arg(long)]
        delta: f64,
        /// One JSON object instead of text.
        #[arg(long)]
        json: bool,
    },
    /// The smallest noise multiplier (to Opacus's 0.01 tolerance in ε) that keeps ε at
    /// most `--epsilon` after `steps` rounds.
    Noise {
        /// The ε budget.
        #[arg(long)]
        epsilon: f64,
        /// δ.
        #[arg(long)]
        delta: f64,
        /// q: the chance an agent is in a round (cohort / agents).
        #[arg(long)]
        sample_rate: f64,
        /// Rounds.
        #[arg(long)]
        steps: u64,
        /// One JSON object instead of text.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
enum Command {
    /// Create a federation CA, a server certificate and agent certificates.
    Init {
        /// Directory to write the PKI into (must not already hold one).
        #[arg(long)]
        out: PathBuf,
        /// Number of agent certificates (ids `agent-0` … `agent-{N-1}`).
        #[arg(long, default_value_t = 3)]
        agents: usize,
        /// Names the server certificate is valid for.
        #[arg(long = "server-name", default_values_t = ["localhost".to_string(), "127.0.0.1".to_string()])]
        server_names: Vec<String>,
    },
    /// Issue one more agent certificate from an existing federation CA.
    Issue {
        /// Directory made by `init`.
        #[arg(long)]
        pki: PathBuf,
        /// Agent id (the certificate's common name).
        #[arg(long)]
        agent: String,
    },
    /// Revoke an agent's certificate: append its SHA-256 fingerprint to `<pki>/revoked.txt`
    /// (name that file in `[pki] revoked`; a running aggregator refuses the agent at its
    /// next handshake).
    Revoke {
        /// Directory made by `init`.
        #[arg(long)]
        pki: PathBuf,
        /// Agent id (its certificate is `<pki>/agents/<id>.pem`).
        #[arg(long)]
        agent: String,
    },
    /// Serve a federation as the configuration says.
    Serve {
        /// TOML configuration (see config/aggregator.toml).
        #[arg(long)]
        config: PathBuf,
    },
    /// Ask/tell over JSON lines for an objective run outside fedtune: writes trials on
    /// stdout, reads results on stdin (see the README).
    Tune(TuneArgs),
    /// List the runs and studies in a store (works while a run is live).
    Runs {
        /// The store (`[state] db`): a SQLite file or a `postgres://` URL.
        #[arg(long)]
        db: PathBuf,
        /// A JSON array instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Show a run's committed rounds.
    Rounds {
        /// The store.
        #[arg(long)]
        db: PathBuf,
        /// The run's id (see `runs`).
        #[arg(long)]
        run: i64,
        /// One JSON object per round and line instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Show a study's trials.
    Trials {
        /// The store.
        #[arg(long)]
        db: PathBuf,
        /// The study's id (see `runs`).
        #[arg(long)]
        study: i64,
        /// A JSON array instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Serve the web dashboard over a store, read-only (a finished run, or one that
    /// another process is running).
    Dashboard {
        /// The store: a SQLite file or a `postgres://` URL.
        #[arg(long)]
        db: PathBuf,
        /// Address to serve HTTP on; other than loopback needs a token.
        #[arg(long, default_value = "127.0.0.1:8080")]
        listen: std::net::SocketAddr,
        /// Bearer token every request must carry (also read from
        /// FEDTUNE_DASHBOARD_TOKEN).
        #[arg(long, env = "FEDTUNE_DASHBOARD_TOKEN", hide_env_values = true)]
        token: Option<String>,
    },
    /// Export the per-agent rows (one per cohort member and round) of a run, or of every
    /// trial of a study.
    Export {
        /// The store.
        #[arg(long)]
        db: PathBuf,
        /// The run's id (see `runs`).
        #[arg(long, conflicts_with = "study", required_unless_present = "study")]
        run: Option<i64>,
        /// The study's id (see `runs`).
        #[arg(long)]
        study: Option<i64>,
        /// `csv` or `json`.
        #[arg(long)]
        format: ExportFormat,
    },
    /// Print the test accuracy and loss of a weights file (a fedtune run's final model,
    /// or one exported from PyTorch) on a dataset's test split.
    Evaluate {
        /// A TOML file with a `[model]` table (a model file, or an aggregator's
        /// configuration).
        #[arg(long)]
        model: PathBuf,
        /// The weights: `.safetensors`, `.pt` / `.pth` or `.bpk`.
        #[arg(long)]
        weights: PathBuf,
        /// The file's layout: auto (Burn's for files Burn or fedtune wrote, PyTorch's
        /// otherwise), pytorch or burn.
        #[arg(long, default_value = "auto")]
        layout: String,
        /// A key rewrite `PATTERN=REPLACEMENT` (a regular expression) applied to the file's
        /// tensor names before they are matched to the model's; repeatable.
        #[arg(long = "remap")]
        remap: Vec<String>,
        /// `digits`, `fashion-mnist`, `wordnet` or `csv:PATH`.
        #[arg(long)]
        dataset: fedtune_aggregator::evaluate::TestSet,
        /// One JSON object instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Plan a differentially private run: ε after some rounds at a noise multiplier, or
    /// the noise multiplier an ε budget needs (the RDP accountant of the sampled Gaussian
    /// mechanism, as Opacus computes it).
    Privacy {
        #[command(subcommand)]
        question: PrivacyQuestion,
    },
    /// Write a run's charts (accuracy, loss, fairness by round) or a study's (optimisation
    /// history, intermediate values, Pareto front) as SVG and PNG files.
    Plot {
        /// The store.
        #[arg(long)]
        db: PathBuf,
        /// The run's id (see `runs`).
        #[arg(long, conflicts_with = "study", required_unless_present = "study")]
        run: Option<i64>,
        /// The study's id (see `runs`).
        #[arg(long)]
        study: Option<i64>,
        /// Directory to write into (made when missing; files in it are replaced).
        #[arg(long)]
        out: PathBuf,
    },
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum ExportFormat {
    Csv,
    Json,
}

#[derive(clap::Args)]
struct TuneArgs {
    /// Search space: a JSON objective spec (`.json`) or a TOML file with `[params]`.
    #[arg(long)]
    space: PathBuf,
    /// The objective to use from a JSON spec holding several.
    #[arg(long)]
    objective: Option<String>,
    /// Sampler: grid, random, tpe or gp.
    #[arg(long, default_value = "tpe")]
    sampler: SamplerKind,
    /// Pruner for intermediate reports: none, median or asha.
    #[arg(long, default_value = "none")]
    pruner: PrunerConfig,
    /// Seed of the sampler.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Trials the study should hold at the end (counting a resumed study's).
    #[arg(long, default_value_t = 20)]
    trials: usize,
    /// Keep the study in this JSON-lines journal and resume it if the file exists.
    #[arg(long)]
    storage: Option<PathBuf>,
    /// Trials kept open at once.
    #[arg(long, default_value_t = 1)]
    parallel: usize,
    /// One direction per objective (`minimize`, `maximize`), comma-separated, for
    /// results told as `values`; defaults to the spec's direction.
    #[arg(long, value_delimiter = ',')]
    directions: Vec<String>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")))
        .with_writer(std::io::stderr)
        .init();
    match Cli::parse().command {
        Command::Init {
            out,
            agents,
            server_names,
        } => {
            let ids: Vec<String> = (0..agents).map(|i| format!("agent-{i}")).collect();
            let pki = generate(&ids, &server_names)?;
            pki.write_to_dir(&out)?;
            println!("wrote CA, server and {agents} agent certificates to {}", out.display());
        }
        Command::Issue { pki, agent } => {
            validate_agent_id(&agent)?;
            let ca_cert = load_ca_certificate(&pki.join("ca.pem"))?;
            let ca_key = std::fs::read_to_string(pki.join("ca.key"))
                .with_context(|| format!("reading {}", pki.join("ca.key").display()))?;
            let identity = issue_agent(&ca_cert, &ca_key, &agent)?;
            let dir = pki.join("agents");
            std::fs::create_dir_all(&dir)?;
            identity.write_to(&dir.join(format!("{agent}.pem")), &dir.join(format!("{agent}.key")))?;
            println!("issued {agent} in {}", dir.display());
        }
        Command::Revoke { pki, agent } => {
            use rustls::pki_types::pem::PemObject as _;
            validate_agent_id(&agent)?;
            let cert = pki.join("agents").join(format!("{agent}.pem"));
            let pem = std::fs::read_to_string(&cert).with_context(|| format!("reading {}", cert.display()))?;
            let der = rustls::pki_types::CertificateDer::pem_slice_iter(pem.as_bytes())
                .next()
                .with_context(|| format!("{} holds no certificate", cert.display()))?
                .with_context(|| format!("{} holds no readable certificate", cert.display()))?;
            let entry = fedtune_aggregator::revocation::fingerprint(&der);
            let list = pki.join("revoked.txt");
            let existing = std::fs::read_to_string(&list).unwrap_or_default();
            if existing
                .lines()
                .any(|l| l.split('#').next().unwrap_or("").trim() == entry)
            {
                println!("{agent} is already revoked in {}", list.display());
            } else {
                use std::io::Write;
                let mut file = std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(&list)
                    .with_context(|| format!("writing {}", list.display()))?;
                writeln!(file, "{entry}  # {agent}")?;
                println!("revoked {agent} ({entry}) in {}", list.display());
            }
        }
        Command::Serve { config } => serve(config).await?,
        Command::Tune(args) => ask_tell(args)?,
        // The store's clients block (PostgreSQL's on a runtime of its own): off this one.
        Command::Runs { db, json } => blocking(move || inspect::runs(&db, json)).await?,
        Command::Rounds { db, run, json } => blocking(move || inspect::rounds(&db, run, json)).await?,
        Command::Trials { db, study, json } => blocking(move || inspect::trials(&db, study, json)).await?,
        Command::Dashboard { db, listen, token } => {
            let (_stop, shutdown) = tokio::sync::watch::channel(false);
            let options = dashboard::Options { token, metrics: None };
            let addr = dashboard::start(listen, &db, options, shutdown).await?;
            println!("dashboard on http://{addr} over {}", store::display_location(&db));
            let signal = stop_signal().await;
            println!("{signal}: dashboard stopped");
        }
        Command::Export { db, run, study, format } => {
            let json = matches!(format, ExportFormat::Json);
            match (run, study) {
                (Some(run), _) => blocking(move || inspect::export(&db, run, None, json)).await?,
                (None, Some(study)) => {
                    blocking(move || inspect::export(&db, study, Some(RunKind::Study), json)).await?;
                }
                (None, None) => anyhow::bail!("give --run or --study"),
            }
        }
        Command::Evaluate {
            model,
            weights,
            layout,
            remap,
            dataset,
            json,
        } => blocking(move || evaluate_command(&model, weights, &layout, &remap, &dataset, json)).await?,
        Command::Privacy { question } => {
            let (spent, json) = match question {
                PrivacyQuestion::Epsilon {
                    noise_multiplier,
                    sample_rate,
                    steps,
                    delta,
                    json,
                } => (
                    fedtune_federation::privacy::epsilon(noise_multiplier, sample_rate, steps, delta)?,
                    json,
                ),
                PrivacyQuestion::Noise {
                    epsilon,
                    delta,
                    sample_rate,
                    steps,
                    json,
                } => (
                    fedtune_federation::privacy::noise_multiplier(epsilon, delta, sample_rate, steps)?,
                    json,
                ),
            };
            if json {
                println!("{}", serde_json::to_string(&spent)?);
            } else {
                println!(
                    "ε = {:.5} at δ = {} after {} rounds, noise multiplier σ = {:.4}, sampling rate q = {} (RDP order {})",
                    spent.epsilon, spent.delta, spent.steps, spent.noise_multiplier, spent.sample_rate, spent.order
                );
            }
        }
        Command::Plot { db, run, study, out } => {
            let (id, kind) = match (run, study) {
                (Some(run), _) => (run, RunKind::Run),
                (None, Some(study)) => (study, RunKind::Study),
                (None, None) => anyhow::bail!("give --run or --study"),
            };
            blocking(move || inspect::plot(&db, id, kind, &out)).await?;
        }
    }
    Ok(())
}

/// `evaluate`: a weights file's accuracy and loss on a test split.
fn evaluate_command(
    model: &Path,
    weights: PathBuf,
    layout: &str,
    remap: &[String],
    dataset: &fedtune_aggregator::evaluate::TestSet,
    json: bool,
) -> anyhow::Result<()> {
    use fedtune_aggregator::evaluate::{evaluate_weights, load_model_toml};
    use fedtune_models::weights::{Layout, WeightsSource};
    let layout = match layout {
        "auto" => Layout::Auto,
        "pytorch" => Layout::Pytorch,
        "burn" => Layout::Burn,
        other => anyhow::bail!("--layout {other}: use auto, pytorch or burn"),
    };
    let mut source = WeightsSource::new(weights).layout(layout);
    for rule in remap {
        let (pattern, replacement) = rule
            .split_once('=')
            .with_context(|| format!("--remap {rule}: write it as PATTERN=REPLACEMENT"))?;
        source = source.remap(pattern, replacement);
    }
    let spec = load_model_toml(model)?;
    let report = evaluate_weights(&spec, &source, dataset)?;
    if json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        println!(
            "{} ({} parameters) from {}\n{} test samples of {}: accuracy {:.4}, loss {:.4}",
            report.model,
            report.parameters,
            report.weights.display(),
            report.samples,
            report.dataset,
            report.accuracy,
            report.loss
        );
    }
    Ok(())
}

/// Runs `work` on a blocking thread.
async fn blocking(work: impl FnOnce() -> anyhow::Result<()> + Send + 'static) -> anyhow::Result<()> {
    tokio::task::spawn_blocking(work).await?
}

/// Starts `[dashboard]` over the store at `db` when the configuration asks for it, with
/// the metrics the run is to update.
async fn start_dashboard(
    config: &AggregatorConfig,
    db: &Path,
    shutdown: tokio::sync::watch::Receiver<bool>,
) -> anyhow::Result<Option<Arc<Metrics>>> {
    let Some(listen) = config.dashboard.listen else {
        return Ok(None);
    };
    let metrics = Arc::new(Metrics::new());
    let options = dashboard::Options {
        token: config.dashboard.token.clone(),
        metrics: Some(metrics.clone()),
    };
    let addr = dashboard::start(listen, db, options, shutdown).await?;
    println!("dashboard on http://{addr} (metrics on http://{addr}/metrics)");
    Ok(Some(metrics))
}

/// Opens the store `[state] db` names, off the async runtime.
async fn open_store(db: &Path) -> anyhow::Result<Box<dyn Storage>> {
    let db = db.to_owned();
    Ok(tokio::task::spawn_blocking(move || store::open(&db)).await??)
}

fn ask_tell(args: TuneArgs) -> anyhow::Result<()> {
    let (space, direction) = if args.space.extension().is_some_and(|e| e == "json") {
        let objectives = load_objectives(&args.space)?;
        let names = || {
            objectives
                .iter()
                .map(|o| o.name.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        };
        let chosen = match &args.objective {
            Some(name) => objectives
                .iter()
                .find(|o| &o.name == name)
                .with_context(|| format!("no objective `{name}` in {}; it has {}", args.space.display(), names()))?,
            None if objectives.len() == 1 => &objectives[0],
            None => anyhow::bail!(
                "{} holds {} objectives ({}); pick one with --objective",
                args.space.display(),
                objectives.len(),
                names()
            ),
        };
        (chosen.space.clone(), chosen.direction)
    } else {
        if args.objective.is_some() {
            anyhow::bail!("--objective picks from a JSON spec; {} is TOML", args.space.display());
        }
        (load_space_toml(&args.space)?, Direction::Minimize)
    };
    let directions: Vec<Direction> = if args.directions.is_empty() {
        vec![direction]
    } else {
        args.directions
            .iter()
            .map(|d| match d.trim() {
                "minimize" | "minimise" => Ok(Direction::Minimize),
                "maximize" | "maximise" => Ok(Direction::Maximize),
                other => anyhow::bail!("--directions: `{other}` is not minimize or maximize"),
            })
            .collect::<anyhow::Result<_>>()?
    };
    if args.sampler.adapts_within_trials() {
        anyhow::bail!("bayes+rl adapts parameters inside federated trials; here use tpe, gp, random or grid");
    }
    let objectives = directions
        .iter()
        .enumerate()
        .map(|(i, d)| Objective::new(format!("objective_{i}"), *d))
        .collect();
    let mut study = Study::new(space, objectives, args.sampler.build(args.seed), args.pruner.build())?;
    if let Some(path) = &args.storage {
        study = study.with_storage(Box::new(Journal::new(path)))?;
    }
    let stdin = std::io::stdin().lock();
    let stdout = std::io::stdout().lock();
    ask_tell::run(&mut study, args.trials, args.parallel, stdin, stdout)?;
    Ok(())
}

async fn serve(path: PathBuf) -> anyhow::Result<()> {
    let mut config = AggregatorConfig::load(&path)?;
    // The starting weights are read once, off the runtime, before anything is bound.
    let config =
        tokio::task::spawn_blocking(move || service::load_initial_model(&mut config).map(|()| config)).await??;
    if let Some(init) = &config.model.init {
        println!(
            "global model starts from {} ({} parameters)",
            init.path.display(),
            config.model.manifest().numel()
        );
    }
    // A study's space file is read and checked before anything is bound.
    let study = match &config.tuning {
        Some(tuning) => Some(tuning.study(config.federation.rounds)?),
        None => None,
    };
    let endpoint = service::bind_from_config(&config)?;
    tracing::info!("serving on {}", endpoint.local_addr()?);
    let (stop, shutdown) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        let signal = stop_signal().await;
        tracing::info!("{signal}: finishing the current step and telling agents to stop");
        let _ = stop.send(true);
    });
    let report_path = config.report.clone();
    let model_path = config.model.save_path(report_path.as_deref());
    let model_spec = config.model.spec.clone();
    if let Some(study) = study {
        return serve_study(endpoint, config, study, shutdown, report_path).await;
    }
    // Each round is printed as it commits (stdout is line-buffered), so the log of a
    // killed run shows where it was.
    // Test hook: hold the driver this long after each committed round, so a crash test
    // can kill the process between rounds at a moment it chooses.
    let hold = std::env::var("FEDTUNE_TEST_HOLD_AFTER_COMMIT_MS")
        .ok()
        .and_then(|ms| ms.parse().ok())
        .map(std::time::Duration::from_millis);
    let progress = Progress::stdout(config.federation.rounds, "round");
    let on_round = progress.clone();
    let on_waiting = progress.clone();
    let mut hooks = Hooks {
        on_round: Some(Box::new(move |r| {
            on_round.line(&format!(
                "round {:>3}  updates {:>3}  failures {:>2}  train loss {:.4}  federated accuracy {:.4}  {:.2}s",
                r.round,
                r.updates,
                r.failures.len(),
                r.train_loss,
                r.federated_accuracy,
                r.seconds
            ));
            on_round.advance(r.round + 1, &format!("federated accuracy {:.4}", r.federated_accuracy));
            if let Some(hold) = hold {
                std::thread::sleep(hold);
            }
        })),
        on_waiting: Some(Box::new(move |connected, needed| on_waiting.waiting(connected, needed))),
        ..Hooks::default()
    };
    let (report, json) = match config.state.db.clone() {
        Some(db) => {
            let store = open_store(&db).await?;
            hooks.metrics = start_dashboard(&config, &db, shutdown.clone()).await?;
            let location = store::display_location(&db);
            let rounds = config.federation.rounds;
            let keep = config.state.keep_checkpoints;
            let stored = run_stored(endpoint, config, store, keep, hooks, shutdown).await?;
            let committed = stored.report.rounds.len();
            match stored.status {
                RunStatus::Finished => println!("run {}: finished, {committed} rounds in {location}", stored.run),
                status => println!(
                    "run {}: {} after {committed} of {rounds} rounds (in {location}); serve again with the same configuration to resume",
                    stored.run,
                    status.as_str(),
                ),
            }
            let json = serde_json::to_vec_pretty(&stored)?;
            (stored.report, json)
        }
        None => {
            let report = run(endpoint, config, hooks, shutdown).await?;
            let json = serde_json::to_vec_pretty(&report)?;
            (report, json)
        }
    };
    progress.finish();
    // A run stopped before its first round has no model of its own to write.
    if let Some(path) = model_path.filter(|_| !report.global.is_empty()) {
        let spec = model_spec.clone();
        let global = report.global.clone();
        let written = path.clone();
        let files = tokio::task::spawn_blocking(move || service::save_model(&spec, &global, &written))
            .await?
            .with_context(|| format!("writing the final model to {}", path.display()))?;
        for file in files {
            println!("final model written to {}", file.display());
        }
    }
    if !report.final_agent_evaluation.is_empty() {
        let accs: Vec<f64> = report.final_agent_evaluation.values().map(|e| e.accuracy).collect();
        let mean = accs.iter().sum::<f64>() / accs.len() as f64;
        let worst = accs.iter().copied().fold(f64::INFINITY, f64::min);
        println!("final model on agents' validation splits: mean accuracy {mean:.4}, worst {worst:.4}");
    }
    if let Some(path) = report_path {
        std::fs::write(&path, json).with_context(|| format!("writing report {}", path.display()))?;
        println!("report written to {}", path.display());
    }
    Ok(())
}

/// Waits for Ctrl-C or (on Unix) SIGTERM; names the one that came.
async fn stop_signal() -> &'static str {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        if let Ok(mut term) = signal(SignalKind::terminate()) {
            return tokio::select! {
                _ = ctrl_c() => "Ctrl-C",
                _ = term.recv() => "SIGTERM",
            };
        }
    }
    ctrl_c().await;
    "Ctrl-C"
}

/// Resolves on Ctrl-C; never, when the handler cannot be installed.
async fn ctrl_c() {
    if tokio::signal::ctrl_c().await.is_err() {
        std::future::pending::<()>().await;
    }
}

/// `serve` with a `[tuning]` section: a federated study, one line per finished trial.
async fn serve_study(
    endpoint: quinn::Endpoint,
    config: AggregatorConfig,
    study: TuneConfig,
    shutdown: tokio::sync::watch::Receiver<bool>,
    report_path: Option<PathBuf>,
) -> anyhow::Result<()> {
    println!(
        "study: {} trials of up to {} rounds, sampler {}, pruner {}",
        study.trials,
        study.rounds,
        study.sampler,
        study.pruner.name()
    );
    // Rounds and trials are printed as they commit (stdout is line-buffered), above a
    // bar of finished trials when stdout is a terminal.
    let progress = Progress::stdout(study.trials as u64, "trial");
    let on_event = progress.clone();
    let mut finished = 0;
    let mut hooks = TuneHooks {
        evaluator: None,
        on_event: Some(Box::new(move |event: &TuneEvent| match event {
            TuneEvent::Round {
                number, round, values, ..
            } => {
                on_event.line(&format!("trial {number:>3}  round {round:>3}  values {values:?}"));
                on_event.advance(finished, &format!("trial {number} at round {round}"));
            }
            TuneEvent::TrialFinished(t) => {
                finished += 1;
                on_event.line(&format!(
                    "trial {:>3}  {:<8}  values {:?}  rounds {:>3}  params {}",
                    t.number,
                    format!("{:?}", t.state).to_lowercase(),
                    t.values,
                    t.rounds,
                    serde_json::to_string(&t.params).unwrap_or_default()
                ));
                on_event.advance(finished, "");
            }
            TuneEvent::TrialStarted { number, .. } => on_event.advance(finished, &format!("trial {number} started")),
        })),
        metrics: None,
    };
    let (report, json) = match config.state.db.clone() {
        Some(db) => {
            if study.storage.is_some() {
                tracing::warn!("[state] db keeps the study; [tuning] storage (the JSON-lines journal) is not used");
            }
            let store = open_store(&db).await?;
            hooks.metrics = start_dashboard(&config, &db, shutdown.clone()).await?;
            let location = store::display_location(&db);
            let keep = config.state.keep_checkpoints;
            let stored = tune_stored(endpoint, config, study, store, keep, hooks, shutdown).await?;
            let done = stored
                .report
                .trials
                .iter()
                .filter(|t| t.state != TrialState::Running)
                .count();
            match stored.status {
                RunStatus::Finished => println!("study {}: finished, {done} trials in {location}", stored.study),
                status => println!(
                    "study {}: {} with {done} trials done (in {location}); serve again with the same configuration to resume",
                    stored.study,
                    status.as_str(),
                ),
            }
            let json = serde_json::to_vec_pretty(&stored)?;
            (stored.report, json)
        }
        None => {
            let report = tune(endpoint, config, study, hooks, shutdown).await?;
            let json = serde_json::to_vec_pretty(&report)?;
            (report, json)
        }
    };
    progress.finish();
    match report.best_trial() {
        Some(best) => {
            println!(
                "best trial {}: values {:?}, params {}",
                best.number,
                best.values,
                serde_json::to_string(&best.params)?
            );
            if let Some(model) = &best.model {
                println!("best trial's final model written to {}", model.display());
            }
        }
        None => println!("no trial completed"),
    }
    println!(
        "rounds spent {}, Pareto front {:?}",
        report.rounds_spent, report.pareto_front
    );
    if let Some(path) = report_path {
        std::fs::write(&path, json).with_context(|| format!("writing report {}", path.display()))?;
        println!("report written to {}", path.display());
    }
    Ok(())
}
