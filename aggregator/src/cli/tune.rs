//! `fedtune-aggregator tune`: ask/tell over JSON lines for an objective run outside
//! fedtune, trials written on stdout and results read from stdin.

use std::path::PathBuf;

use anyhow::Context;
use fedtune_tuning::spec::parse_space_toml;
use fedtune_tuning::{Direction, Journal, Objective, PrunerConfig, SamplerKind, Study, ask_tell, load_objectives};

/// The arguments of `tune`.
#[derive(clap::Args)]
pub struct Args {
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

/// Runs the study until it holds `--trials` trials.
pub fn run(args: Args) -> anyhow::Result<()> {
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
        (chosen.space.clone(), Some(chosen.direction))
    } else {
        if args.objective.is_some() {
            anyhow::bail!("--objective picks from a JSON spec; {} is TOML", args.space.display());
        }
        let text =
            std::fs::read_to_string(&args.space).with_context(|| format!("cannot read {}", args.space.display()))?;
        let space = parse_space_toml(&text).with_context(|| args.space.display().to_string())?;
        (space, toml_direction(&args.space, &text)?)
    };
    let directions: Vec<Direction> = if args.directions.is_empty() {
        let Some(direction) = direction else {
            anyhow::bail!(
                "{} does not say whether to minimize or maximize: write `direction = \"maximize\"` (or \"minimize\") \
                 at its top, or pass --directions",
                args.space.display()
            );
        };
        vec![direction]
    } else {
        args.directions
            .iter()
            .map(|d| {
                d.parse::<Direction>()
                    .map_err(|_| anyhow::anyhow!("--directions: `{}` is not minimize or maximize", d.trim()))
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
        // A resumed study's sampler goes on from the trials it holds; seeded as on the
        // first day, it would propose that day's trials again.
        let held = study.trials().len() as u64;
        study = study.with_sampler(args.sampler.build_resumed(args.seed, held, None, None));
    }
    let stdin = std::io::stdin().lock();
    let stdout = std::io::stdout().lock();
    let ended = ask_tell::run(&mut study, args.trials, args.parallel, stdin, stdout)?;
    if !ended.unfinished.is_empty() {
        let numbers: Vec<String> = ended.unfinished.iter().map(u64::to_string).collect();
        eprintln!(
            "input ended with trial(s) {} still running: marked failed{}",
            numbers.join(", "),
            if args.storage.is_some() {
                "; run the same command again to go on with new trials"
            } else {
                ""
            }
        );
    }
    Ok(())
}

/// The `direction` the TOML space file `path` holding `text` gives at its top, if any.
fn toml_direction(path: &std::path::Path, text: &str) -> anyhow::Result<Option<Direction>> {
    let doc: toml::Table = toml::from_str(text).with_context(|| format!("{} is not TOML", path.display()))?;
    let Some(value) = doc.get("direction") else {
        return Ok(None);
    };
    match value.as_str().map(str::parse::<Direction>) {
        Some(Ok(direction)) => Ok(Some(direction)),
        _ => anyhow::bail!(
            "{}: `direction` is {value}; expected \"minimize\" or \"maximize\"",
            path.display()
        ),
    }
}
