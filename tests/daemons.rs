//! The two daemons as separate OS processes: `fedtune-aggregator init` + `serve`, and
//! three `fedtune-agent run`, for three rounds on loopback.

mod common;

use fedtune::protocol::ModelSpec;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

fn wait(child: &mut Child, limit: Duration) -> std::process::ExitStatus {
    let started = Instant::now();
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        if started.elapsed() > limit {
            let _ = child.kill();
            panic!("process did not exit within {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// What `serve` printed and the JSON report it wrote.
struct Served {
    stdout: String,
    report: serde_json::Value,
    /// The final model `serve` wrote next to the report, read back.
    model: Option<Vec<f32>>,
    /// The layout that model's header names.
    layout: Option<String>,
    /// The scratch directory: the configuration, and the store (`fedtune.db`).
    dir: common::Scratch,
}

/// Runs `fedtune-aggregator serve` and three `fedtune-agent run` as processes, with
/// `edit` applied to the aggregator's TOML; returns once all have exited.
fn serve_with_three_agents(name: &str, spec: ModelSpec, edit: impl Fn(String) -> String) -> Served {
    let dir = common::scratch_dir(name);
    let pki = dir.join("pki");
    let status = Command::new(common::binary("fedtune-aggregator"))
        .args(["init", "--out"])
        .arg(&pki)
        .args(["--agents", "3"])
        .status()
        .unwrap();
    assert!(status.success());
    // A second init must not overwrite the federation's CA.
    let again = Command::new(common::binary("fedtune-aggregator"))
        .args(["init", "--out"])
        .arg(&pki)
        .stderr(Stdio::null())
        .status()
        .unwrap();
    assert!(!again.success());

    let port = common::free_udp_port();
    let data = common::repo().join("data");
    let report = dir.join("report.json");
    let aggregator_toml = std::fs::read_to_string(common::repo().join("config/aggregator.toml"))
        .unwrap()
        .replace("127.0.0.1:4433", &format!("127.0.0.1:{port}"))
        .replace("rounds = 30", "rounds = 3")
        .replace("wait_for_agents_secs = 120", "wait_for_agents_secs = 60")
        .replace("aggregator-report.json", report.to_str().unwrap());
    std::fs::write(dir.join("aggregator.toml"), edit(aggregator_toml)).unwrap();
    let mut aggregator = Command::new(common::binary("fedtune-aggregator"))
        .args(["serve", "--config"])
        .arg(dir.join("aggregator.toml"))
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();

    let mut agents: Vec<Child> = (0..3)
        .map(|i| {
            let toml = std::fs::read_to_string(common::repo().join("config/agent.toml"))
                .unwrap()
                .replace("127.0.0.1:4433", &format!("127.0.0.1:{port}"))
                .replace("agent-0", &format!("agent-{i}"))
                .replace("client = 0", &format!("client = {i}"))
                .replace("../data", data.to_str().unwrap());
            let path = dir.join(format!("agent-{i}.toml"));
            std::fs::write(&path, toml).unwrap();
            Command::new(common::binary("fedtune-agent"))
                .args(["run", "--config"])
                .arg(&path)
                .env("RUST_LOG", "warn")
                .spawn()
                .unwrap()
        })
        .collect();

    let status = wait(&mut aggregator, Duration::from_secs(120));
    let mut stdout = String::new();
    std::io::Read::read_to_string(&mut aggregator.stdout.take().unwrap(), &mut stdout).unwrap();
    assert!(status.success(), "aggregator failed: {stdout}");
    for agent in &mut agents {
        assert!(
            wait(agent, Duration::from_secs(30)).success(),
            "agents exit cleanly when told to stop"
        );
    }

    let report: serde_json::Value = serde_json::from_slice(&std::fs::read(&report).unwrap()).unwrap();
    // The final model, written next to the report, read back into the configured model.
    let model_file = dir.join("report.safetensors");
    let model = model_file.exists().then(|| {
        let source = fedtune::agent::weights::WeightsSource::new(&model_file);
        fedtune::agent::weights::import(&spec, &source, &fedtune::agent::model::default_device()).unwrap()
    });
    let layout = model_file.exists().then(|| {
        let bytes = std::fs::read(&model_file).unwrap();
        let len = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
        let header: serde_json::Value = serde_json::from_slice(&bytes[8..8 + len]).unwrap();
        header["__metadata__"]["layout"].as_str().unwrap_or_default().to_owned()
    });
    Served {
        stdout,
        report,
        model,
        layout,
        dir,
    }
}

#[test]
fn aggregator_and_three_agents_run_as_separate_processes() {
    let Served {
        stdout,
        report,
        model,
        layout,
        ..
    } = serve_with_three_agents("daemons", fedtune::sim::digits_mlp(), |toml| toml);
    assert_eq!(layout.as_deref(), Some("burn"), "Burn's layout by default");
    let rounds = report["rounds"].as_array().unwrap();
    assert_eq!(rounds.len(), 3);
    let model = model.expect("serve writes the final model next to its report");
    assert_eq!(model.len(), 64 * 64 + 64 + 64 * 10 + 10);
    assert!(stdout.contains("final model written to"), "{stdout}");
    for round in rounds {
        assert_eq!(round["updates"], 3, "{round}");
    }
    let last = rounds[2]["federated_accuracy"].as_f64().unwrap();
    let first = rounds[0]["federated_accuracy"].as_f64().unwrap();
    assert!(last > first, "federated accuracy {first} -> {last}");
    assert_eq!(report["final_agent_evaluation"].as_object().unwrap().len(), 3);
    assert!(stdout.contains("round   2"), "{stdout}");
}

#[test]
fn the_daemons_run_rounds_under_secure_aggregation() {
    // Also: the final model written in PyTorch's layout, read back by what its header says.
    let Served {
        stdout,
        report,
        model,
        layout,
        ..
    } = serve_with_three_agents("daemons-secure", fedtune::sim::digits_mlp(), |toml| {
        toml.replace(
            "enabled = false                      # needs a strategy",
            "enabled = true # needs a strategy",
        )
        .replace("[model]\n", "[model]\nsave_layout = \"pytorch\"\n")
    });
    assert_eq!(model.map(|m| m.len()), Some(64 * 64 + 64 + 64 * 10 + 10), "{stdout}");
    assert_eq!(layout.as_deref(), Some("pytorch"));
    let rounds = report["rounds"].as_array().unwrap();
    assert_eq!(rounds.len(), 3, "{stdout}");
    for round in rounds {
        assert_eq!(round["updates"], 3, "{round}");
        assert_eq!(round["applied"], true, "{round}");
    }
    let last = rounds[2]["federated_accuracy"].as_f64().unwrap();
    let first = rounds[0]["federated_accuracy"].as_f64().unwrap();
    assert!(last > first, "federated accuracy {first} -> {last}");
}

#[test]
fn serve_stopped_before_its_first_round_exits_cleanly_and_writes_no_model() {
    let dir = common::scratch_dir("daemons-stopped");
    let pki = common::init_pki(&dir, 1);
    let report = dir.join("report.json");
    let toml = std::fs::read_to_string(common::repo().join("config/aggregator.toml"))
        .unwrap()
        .replace("127.0.0.1:4433", &format!("127.0.0.1:{}", common::free_udp_port()))
        .replace("pki/", &format!("{}/", pki.display()))
        .replace("aggregator-report.json", report.to_str().unwrap())
        .replace("db = \"fedtune.db\"", "# no store");
    let path = dir.join("aggregator.toml");
    std::fs::write(&path, toml).unwrap();
    let mut aggregator = Command::new(common::binary("fedtune-aggregator"))
        .args(["serve", "--config"])
        .arg(&path)
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // No agent ever comes: stop it while it waits for them.
    std::thread::sleep(Duration::from_millis(1500));
    let term = Command::new("kill")
        .args(["-TERM", &aggregator.id().to_string()])
        .status()
        .unwrap();
    assert!(term.success());
    let status = wait(&mut aggregator, Duration::from_secs(30));
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut aggregator.stderr.take().unwrap(), &mut stderr).unwrap();
    assert!(status.success(), "{stderr}");
    assert!(report.exists(), "the report of the stopped run is written");
    assert!(
        !dir.join("report.safetensors").exists(),
        "no round ran: no model is written"
    );
}

#[test]
fn serve_refuses_a_robust_rule_under_secure_aggregation() {
    let dir = common::scratch_dir("daemons-refuse");
    let toml = std::fs::read_to_string(common::repo().join("config/aggregator.toml"))
        .unwrap()
        .replace("name = \"fedavg\"", "name = \"median\"")
        .replace(
            "enabled = false                      # needs a strategy",
            "enabled = true # needs a strategy",
        );
    let path = dir.join("aggregator.toml");
    std::fs::write(&path, toml).unwrap();
    let output = Command::new(common::binary("fedtune-aggregator"))
        .args(["serve", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success());
    assert!(
        stderr.contains("`median` cannot be combined with secure aggregation") && stderr.contains("individual update"),
        "{stderr}"
    );
}

#[test]
fn the_service_runs_a_study_from_its_tuning_section() {
    let space = common::repo().join("presets/vision.toml");
    // The vision preset targets the CNN: here one 3×3 block over the 8×8 digits.
    let cnn = ModelSpec::Cnn(fedtune::protocol::CnnSpec {
        channels: 1,
        height: 8,
        width: 8,
        blocks: vec![fedtune::protocol::ConvBlock {
            channels: 8,
            kernel: 3,
            padding: 1,
            pool: 2,
            batch_norm: false,
        }],
        hidden: vec![64],
        classes: 10,
        norm_stats: Default::default(),
    });
    let Served {
        stdout, report, model, ..
    } = serve_with_three_agents("daemons-study", cnn.clone(), |toml| {
        let toml = toml.replace(
            "[model.mlp]\ninput = 64\nhidden = [64]\nclasses = 10\n",
            "[model.cnn]\nchannels = 1\nheight = 8\nwidth = 8\nhidden = [64]\nclasses = 10\n\
             blocks = [{ channels = 8, kernel = 3, padding = 1, pool = 2 }]\n",
        );
        assert!(
            toml.contains("[model.cnn]"),
            "config/aggregator.toml's model section moved"
        );
        format!(
            "{toml}\n[tuning]\nspace = {space:?}\nsampler = \"bayes+rl\"\ntrials = 3\nrounds = 2\n\
             objectives = [\"accuracy\", \"bytes\"]\npruner = {{ name = \"asha\", min_resource = 1 }}\n",
            space = space.to_str().unwrap()
        )
    });
    let trials = report["trials"].as_array().unwrap();
    assert_eq!(trials.len(), 3, "{stdout}");
    for t in trials {
        assert!(t["params"]["learning_rate"].is_f64(), "{t}");
        assert!(t["params"]["freeze"].is_string(), "{t}");
        assert!(["complete", "pruned"].contains(&t["state"].as_str().unwrap()), "{t}");
    }
    assert_eq!(trials[0]["state"], "complete", "the first trial at each rung continues");
    assert!(report["best"].is_u64(), "{report}");
    // The best trial's final model is next to the report, as the plain CNN (merged if the
    // trial had LoRA adapters).
    let best = &trials[report["best"].as_u64().unwrap() as usize];
    assert!(
        best["model"].as_str().unwrap().ends_with("report.safetensors"),
        "{best}"
    );
    assert_eq!(model.expect("the best model is written").len(), cnn.manifest().numel());
    assert!(stdout.contains("best trial's final model written to"), "{stdout}");
    assert!(stdout.contains("trial   0"), "{stdout}");
    assert!(stdout.contains("best trial"), "{stdout}");
}

#[test]
fn a_failed_trial_says_why_in_the_serve_output_and_in_trials() {
    // The baseline (the config's fedavg without noise) runs. Each value of the space fits
    // the model alone, so serve starts; but the sampler's trial draws the median with DP
    // noise, which cannot go together: that trial fails before it starts.
    let space_dir = common::scratch_dir("failed-trial-space");
    let space = space_dir.join("space.toml");
    std::fs::write(
        &space,
        "[params]\nlearning_rate = \"loguniform(1e-3, 1e-1)\"\n\
         strategy = { spec = \"choice(median)\", scope = \"server\" }\n\
         noise_multiplier = { spec = \"uniform(0.5, 1.0)\", scope = \"server\" }\n",
    )
    .unwrap();
    let Served {
        stdout, report, dir, ..
    } = serve_with_three_agents("failed-trial", fedtune::sim::digits_mlp(), |toml| {
        assert!(
            toml.contains("db = \"fedtune.db\""),
            "config/aggregator.toml keeps a store"
        );
        format!(
            "{toml}\n[tuning]\nspace = {space:?}\nsampler = \"random\"\ntrials = 2\nrounds = 2\n\
             baseline_first = true\n"
        )
    });
    let reason = "privacy needs a strategy that averages";
    let trials = report["trials"].as_array().unwrap();
    assert_eq!(trials.len(), 2, "{report}");
    assert_eq!(trials[0]["state"], "complete", "{report}");
    assert_eq!(trials[1]["state"], "failed", "{report}");
    assert!(trials[1]["fail_reason"].as_str().unwrap().contains(reason), "{report}");

    // serve lists the failed trial as it fails, with its reason.
    let line = stdout
        .lines()
        .find(|l| l.starts_with("trial   1") && l.contains("failed"))
        .unwrap_or_else(|| panic!("no line for the failed trial:\n{stdout}"));
    assert!(line.contains("reason: ") && line.contains(reason), "{line}");

    // So does `trials`, read from the store: in its table and its JSON.
    let db = dir.join("fedtune.db");
    let trials_cli = |json: bool| {
        let mut command = Command::new(common::binary("fedtune-aggregator"));
        command.args(["trials", "--study", "1", "--db"]).arg(&db);
        if json {
            command.arg("--json");
        }
        let out = command.output().unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8(out.stdout).unwrap()
    };
    let table = trials_cli(false);
    assert_eq!(table.lines().count(), 3, "one line per trial:\n{table}");
    let row = table.lines().nth(2).unwrap();
    assert!(
        row.contains("failed") && row.contains("reason: ") && row.contains(reason),
        "{table}"
    );
    assert!(!table.lines().nth(1).unwrap().contains("reason"), "{table}");
    let listed: serde_json::Value = serde_json::from_str(&trials_cli(true)).unwrap();
    assert_eq!(listed[1]["state"], "failed", "{listed}");
    assert!(listed[1]["fail_reason"].as_str().unwrap().contains(reason), "{listed}");
    assert!(listed[0].get("fail_reason").is_none(), "{listed}");
}

#[test]
fn the_ask_tell_command_speaks_json_lines() {
    use std::io::{BufRead, BufReader, Write};
    let mut child = Command::new(common::binary("fedtune-aggregator"))
        .args(["tune", "--space"])
        .arg(common::repo().join("data/hpo/objectives_public.json"))
        .args([
            "--objective",
            "branin",
            "--sampler",
            "tpe",
            "--seed",
            "1",
            "--trials",
            "4",
            "--parallel",
            "2",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut next = || -> serde_json::Value { serde_json::from_str(&lines.next().unwrap().unwrap()).unwrap() };
    // The first line says which way is better (branin is minimised) and how far the session goes.
    let header = next();
    assert_eq!(
        header["study"]["directions"],
        serde_json::json!(["minimize"]),
        "{header}"
    );
    assert_eq!(header["study"]["trials"], 4, "{header}");
    // Two trials open at once; tell each (the first badly, to see an error line), then the rest.
    let first = next();
    let second = next();
    assert_eq!((first["trial"].as_u64(), second["trial"].as_u64()), (Some(0), Some(1)));
    assert!(
        first["params"]["x1"].is_f64() && first["params"]["x2"].is_f64(),
        "{first}"
    );
    writeln!(stdin, "{{\"trial\": 0, \"value\": \"oops\"}}").unwrap();
    stdin.flush().unwrap();
    assert!(next()["error"].as_str().unwrap().contains("not a result line"));
    let mut told = 0;
    let mut open = vec![0u64, 1];
    while let Some(trial) = open.pop() {
        writeln!(stdin, "{{\"trial\": {trial}, \"value\": {}}}", 10.0 - trial as f64).unwrap();
        stdin.flush().unwrap();
        told += 1;
        if told <= 2 {
            let asked = next();
            open.insert(0, asked["trial"].as_u64().unwrap());
        }
    }
    let done = next();
    assert_eq!(done["done"], true, "{done}");
    assert_eq!(done["trials"], 4);
    assert_eq!(
        done["best"]["trial"], 3,
        "the lowest value was told for trial 3: {done}"
    );
    drop(stdin);
    assert!(wait(&mut child, Duration::from_secs(10)).success());
}

#[test]
fn the_ask_tell_command_resumes_a_study_from_its_journal() {
    use std::io::{BufRead, BufReader, Write};
    let dir = common::scratch_dir("ask-tell-journal");
    let journal = dir.join("study.jsonl");
    // Tells every trial `value = trial number`, so trial 0 is always the best.
    let session = |trials: &str| -> Vec<serde_json::Value> {
        let mut child = Command::new(common::binary("fedtune-aggregator"))
            .args(["tune", "--space"])
            .arg(common::repo().join("presets/vision.toml"))
            .args([
                "--directions",
                "minimize",
                "--sampler",
                "random",
                "--trials",
                trials,
                "--storage",
            ])
            .arg(&journal)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut stdin = child.stdin.take().unwrap();
        let mut out = Vec::new();
        for line in BufReader::new(child.stdout.take().unwrap()).lines() {
            let line: serde_json::Value = serde_json::from_str(&line.unwrap()).unwrap();
            if let Some(trial) = line["trial"].as_u64().filter(|_| line.get("params").is_some()) {
                writeln!(stdin, "{{\"trial\": {trial}, \"value\": {trial}}}").unwrap();
                stdin.flush().unwrap();
            }
            out.push(line);
        }
        assert!(wait(&mut child, Duration::from_secs(10)).success());
        out
    };
    let first = session("2");
    assert_eq!(first.len(), 4, "{first:?}");
    let second = session("4");
    assert_eq!(second[0]["study"]["held"], 2, "{:?}", second[0]);
    let asked: Vec<u64> = second.iter().filter_map(|l| l["trial"].as_u64()).collect();
    assert_eq!(asked, vec![2, 3], "the resumed study goes on from trial 2");
    let done = second.last().unwrap();
    assert_eq!(done["trials"], 4);
    assert_eq!(
        done["best"]["trial"], 0,
        "the best trial of the first session is kept: {done}"
    );
}

/// The operator's report: tell trial 0, close stdin with trial 1 open, run the same
/// command again; the resumed study's next trial must not be trial 0 again.
#[test]
fn a_resumed_ask_tell_study_does_not_repeat_the_first_sessions_trials() {
    use std::io::{BufRead, BufReader, Write};
    for sampler in ["tpe", "random", "gp"] {
        let dir = common::scratch_dir(&format!("ask-tell-resume-{sampler}"));
        let journal = dir.join("st.jsonl");
        // Tells the first trial it is asked, then closes its input.
        let session = || -> (Vec<serde_json::Value>, String) {
            let mut child = Command::new(common::binary("fedtune-aggregator"))
                .args(["tune", "--space"])
                .arg(common::repo().join("data/hpo/objectives_public.json"))
                .args([
                    "--objective",
                    "branin",
                    "--sampler",
                    sampler,
                    "--seed",
                    "0",
                    "--trials",
                    "5",
                ])
                .arg("--storage")
                .arg(&journal)
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap();
            let mut stdin = Some(child.stdin.take().unwrap());
            let mut out = Vec::new();
            for line in BufReader::new(child.stdout.take().unwrap()).lines() {
                let line: serde_json::Value = serde_json::from_str(&line.unwrap()).unwrap();
                if line.get("params").is_some() {
                    let first = !out.iter().any(|l: &serde_json::Value| l.get("params").is_some());
                    if first && let Some(input) = stdin.as_mut() {
                        writeln!(input, "{{\"trial\": {}, \"value\": 1.0}}", line["trial"]).unwrap();
                        input.flush().unwrap();
                    } else {
                        stdin = None; // the second trial asked: close input with it open
                    }
                }
                out.push(line);
            }
            let output = child.wait_with_output().unwrap();
            assert!(
                output.status.success(),
                "{sampler}: EOF with a trial open ends the study cleanly"
            );
            (out, String::from_utf8_lossy(&output.stderr).into_owned())
        };
        let (first, stderr) = session();
        let asked = |lines: &[serde_json::Value]| -> Vec<serde_json::Value> {
            lines.iter().filter(|l| l.get("params").is_some()).cloned().collect()
        };
        let first_asked = asked(&first);
        assert_eq!(first_asked.len(), 2, "{sampler}: {first:?}");
        assert_eq!(
            first.last().unwrap()["unfinished"],
            serde_json::json!([1]),
            "{sampler}: {first:?}"
        );
        assert!(stderr.contains("marked failed"), "{sampler}: {stderr}");
        let (second, _) = session();
        let second_asked = asked(&second);
        assert_eq!(second_asked[0]["trial"], 2, "{sampler}: {second:?}");
        for earlier in &first_asked {
            assert_ne!(
                second_asked[0]["params"], earlier["params"],
                "{sampler}: the resumed study proposed trial {}'s parameters again",
                earlier["trial"]
            );
        }
    }
}

#[test]
fn tune_refuses_a_toml_space_that_does_not_say_which_way_is_better() {
    let output = Command::new(common::binary("fedtune-aggregator"))
        .args(["tune", "--space"])
        .arg(common::repo().join("presets/vision.toml"))
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("does not say whether to minimize or maximize") && stderr.contains("--directions"),
        "{stderr}"
    );
    assert!(output.stdout.is_empty(), "no trial is asked");
}

/// `config/aggregator.toml`'s `[tuning]` block, uncommented as shipped (only shorter),
/// runs a study in which no trial fails.
#[test]
fn the_shipped_tuning_example_runs_as_shipped() {
    let preset = common::repo().join("presets");
    let Served { stdout, report, .. } =
        serve_with_three_agents("daemons-shipped-study", fedtune::sim::digits_mlp(), |toml| {
            let mut out = String::new();
            let mut in_tuning = false;
            for line in toml.lines() {
                if line == "# [tuning]" {
                    in_tuning = true;
                } else if line.trim().is_empty() {
                    in_tuning = false;
                }
                let line = if in_tuning {
                    line.strip_prefix("# ").unwrap_or(line)
                } else {
                    line
                };
                out.push_str(line);
                out.push('\n');
            }
            assert!(
                out.contains("\n[tuning]\n"),
                "config/aggregator.toml's [tuning] block moved"
            );
            out.replace("\"../presets/", &format!("\"{}/", preset.display()))
                .replace("trials = 20", "trials = 3")
        });
    let trials = report["trials"].as_array().unwrap();
    assert_eq!(trials.len(), 3, "{stdout}");
    for t in trials {
        assert_ne!(t["state"], "failed", "{t}\n{stdout}");
    }
}
