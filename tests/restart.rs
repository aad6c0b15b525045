//! Agents outlive their aggregator's restarts. `serve` stopped with Ctrl-C (SIGINT) says
//! the run was interrupted and tells its agents so: they keep running and reconnect when
//! `serve` starts again (told the federation finished, they would exit). `serve` killed
//! outright (SIGKILL) and started again resets its predecessor's connections at their next
//! keep-alive, and the agents are back within a couple of seconds, not after their 5 s idle
//! timeout.
//!
//! The reconnection time is printed; to measure it over several restarts:
//! `cargo build -p fedtune-aggregator -p fedtune-agent && cargo test -p fedtune --test restart -- --ignored --nocapture`

mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::{Processes, Serve, wait_until};

const AGENTS: usize = 3;
/// Generous for a 2 s aim; agents that wait out their 5 s idle timeout miss it.
const BACK_WITHIN: Duration = Duration::from_millis(3500);

/// A `serve` configuration that waits for one agent more than there are (so no round
/// starts and the agents stay idle), and `AGENTS` agent daemons, retrying forever.
struct Setup {
    _dir: common::Scratch,
    config: PathBuf,
    agents: Processes,
}

fn setup(name: &str) -> Setup {
    let dir = common::scratch_dir(name);
    common::init_pki(&dir, AGENTS);
    let port = common::free_udp_port();
    let config = common::serve_config(&dir, port, |toml| {
        toml.replace("min_agents = 3", &format!("min_agents = {}", AGENTS + 1))
    });
    let agents = (0..AGENTS)
        .map(|i| common::agent_process(&common::agent_config(&dir, port, i)))
        .collect();
    Setup {
        _dir: dir,
        config,
        agents: Processes(agents),
    }
}

/// Starts `serve` and waits until every agent has connected to it; when the last did.
fn serve_with_agents(config: &Path, limit: Duration) -> (Serve, Instant) {
    let serve = Serve::start(config);
    wait_until(limit, "every agent to connect", || {
        serve.seen("agent connected").len() >= AGENTS
    });
    let last = serve.seen("agent connected")[AGENTS - 1];
    (serve, last)
}

fn assert_agents_alive(agents: &mut Processes) {
    for (i, agent) in agents.0.iter_mut().enumerate() {
        assert!(
            agent.try_wait().unwrap().is_none(),
            "agent {i} exited: {:?}",
            agent.try_wait()
        );
    }
}

/// Kills `serve` with SIGKILL, starts it again at once and returns how long after the
/// restart the last agent was connected again.
fn kill_and_restart(serve: Serve, config: &Path) -> (Serve, Duration) {
    let mut serve = serve;
    serve.signal("-KILL");
    serve.wait(Duration::from_secs(10));
    drop(serve);
    let restarted = Instant::now();
    let (serve, back) = serve_with_agents(config, Duration::from_secs(30));
    (serve, back - restarted)
}

#[test]
fn serve_interrupted_with_ctrl_c_tells_agents_who_wait_and_reconnect() {
    let mut setup = setup("restart-interrupted");
    let (mut serve, _) = serve_with_agents(&setup.config, Duration::from_secs(60));
    serve.signal("-INT");
    assert!(serve.wait(Duration::from_secs(20)), "serve fails:\n{}", serve.output());
    // Agents told the federation finished exit at once; these were told it was interrupted.
    std::thread::sleep(Duration::from_millis(500));
    assert_agents_alive(&mut setup.agents);
    let output = serve.output();
    assert!(
        output.contains("Ctrl-C: interrupted"),
        "serve does not say it was interrupted:\n{output}"
    );
    assert!(
        output.contains("the federation was interrupted before its end: telling 3 connected agents to wait"),
        "{output}"
    );
    assert!(output.contains("run interrupted after 0 of 30 rounds"), "{output}");
    let (_serve, _) = serve_with_agents(&setup.config, Duration::from_secs(30));
    assert_agents_alive(&mut setup.agents);
}

#[test]
fn agents_are_back_within_seconds_of_serve_killed_and_restarted() {
    let mut setup = setup("restart-killed");
    let (serve, _) = serve_with_agents(&setup.config, Duration::from_secs(60));
    let (_serve, back) = kill_and_restart(serve, &setup.config);
    eprintln!("agents back {:.2} s after serve restarted", back.as_secs_f64());
    assert!(back < BACK_WITHIN, "the agents took {back:?} to come back");
    assert_agents_alive(&mut setup.agents);
}

/// The figure the issue asks for: how long after a SIGKILLed `serve` is started again all
/// its agents are connected, over five restarts.
#[test]
#[ignore = "a measurement: run with --ignored --nocapture"]
fn measure_reconnection_after_restarts() {
    let setup = setup("restart-measure");
    let (mut serve, _) = serve_with_agents(&setup.config, Duration::from_secs(60));
    let mut figures = Vec::new();
    for _ in 0..5 {
        // Idle for a moment, as agents between rounds are.
        std::thread::sleep(Duration::from_millis(1500));
        let (next, back) = kill_and_restart(serve, &setup.config);
        serve = next;
        eprintln!("agents back {:.2} s after serve restarted", back.as_secs_f64());
        figures.push(back.as_secs_f64());
    }
    figures.sort_by(f64::total_cmp);
    eprintln!(
        "{AGENTS} agents, 5 restarts: median {:.2} s, worst {:.2} s",
        figures[2], figures[4]
    );
}
