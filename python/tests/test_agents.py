"""Python agents in a real federation: three numpy agents with secure aggregation, over
QUIC and mutual TLS to a real `fedtune-aggregator serve`."""

import json
import pathlib
import signal
import subprocess
import sys
import textwrap
import threading
import time

import numpy as np
import pytest

import fedtune
from federation import SKEWS, NumpyClient, blobs, softmax_loss, write_federation

HERE = pathlib.Path(__file__).resolve().parent


def serve(aggregator_bin, config):
    return subprocess.Popen(
        [aggregator_bin, "serve", "--config", str(config)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def run_agents(agents):
    results = [None] * len(agents)
    errors = []

    def run(i, agent):
        try:
            results[i] = agent.run()
        except Exception as e:  # surfaced by the test
            errors.append(e)

    threads = [threading.Thread(target=run, args=(i, a)) for i, a in enumerate(agents)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=180)
    assert not errors, errors
    return results


def test_three_python_agents_federate_a_model_under_secure_aggregation(tmp_path, aggregator_bin):
    config, agent_configs = write_federation(aggregator_bin, tmp_path, rounds=6, secure=True)
    server = serve(aggregator_bin, config)
    clients = [NumpyClient(seed=i, weights=SKEWS[i]) for i in range(3)]
    agents = [
        fedtune.Agent(str(c), fit=client.fit, evaluate=client.evaluate, train_samples=240, validation_samples=60)
        for c, client in zip(agent_configs, clients)
    ]
    exits = run_agents(agents)
    out, err = server.communicate(timeout=120)
    assert server.returncode == 0, err
    assert all("federation" in e or "done" in e or e for e in exits)
    assert all(client.rounds == list(range(6)) for client in clients), [c.rounds for c in clients]

    report = json.loads((tmp_path / "report.json").read_text())
    rounds = report["rounds"]
    assert len(rounds) == 6
    assert all(r["secure"] and r["applied"] and r["updates"] == 3 for r in rounds)

    # The final model is written as the starting file was: same names and shapes.
    final = fedtune.load_safetensors(str(tmp_path / "final.safetensors"))
    assert {k: v.shape for k, v in final.items()} == {"linear.weight": (3, 4), "linear.bias": (3,)}
    x, y = blobs(np.random.default_rng(99), 600, [1 / 3, 1 / 3, 1 / 3])
    _, p = softmax_loss(final["linear.weight"], final["linear.bias"], x, y)
    assert (p.argmax(axis=1) == y).mean() > 0.9


def test_python_agents_add_distributed_dp_noise_under_secure_aggregation(tmp_path, aggregator_bin):
    config, _ = write_federation(aggregator_bin, tmp_path, rounds=3, secure=True, noise_multiplier=0.8)
    def clients():
        made = [NumpyClient(seed=i, weights=SKEWS[i]) for i in range(3)]
        for c in made:
            c.train_samples, c.validation_samples = 240, 60
        return made

    report = fedtune.simulate(str(config), clients())
    rounds = report["rounds"]
    assert all(r["secure"] and r["updates"] == 3 for r in rounds)
    epsilons = [r["epsilon"] for r in rounds]
    assert all(e is not None and e > 0 for e in epsilons), epsilons
    assert epsilons == sorted(epsilons) and epsilons[0] < epsilons[-1]
    # The noise is real: the same federation without it ends on another model.
    quiet, _ = write_federation(aggregator_bin, tmp_path / "quiet", rounds=3, secure=True)
    again = fedtune.simulate(str(quiet), clients())
    assert all(r.get("epsilon") is None and r["updates"] == 3 for r in again["rounds"])
    assert not np.allclose(report["model"]["linear.weight"], again["model"]["linear.weight"], atol=1e-3)


def test_a_fit_returning_a_wrong_shape_is_declined_and_the_round_goes_on(tmp_path, aggregator_bin):
    config, agent_configs = write_federation(aggregator_bin, tmp_path, rounds=3, secure=False)
    server = serve(aggregator_bin, config)
    clients = [NumpyClient(seed=i, weights=SKEWS[i]) for i in range(3)]

    def wrong_fit(params, config, ctx):
        new, n, metrics = clients[0].fit(params, config, ctx)
        if ctx.round == 1:
            new["linear.weight"] = new["linear.weight"][:, :2]
        if ctx.round == 2:
            new["linear.bias"] = new["linear.bias"].astype(np.float64)
        return new, n, metrics

    fits = [wrong_fit, clients[1].fit, clients[2].fit]
    agents = [
        fedtune.Agent(str(c), fit=fit, evaluate=client.evaluate, train_samples=240)
        for c, fit, client in zip(agent_configs, fits, clients)
    ]
    run_agents(agents)
    _, err = server.communicate(timeout=120)
    assert server.returncode == 0, err
    rounds = json.loads((tmp_path / "report.json").read_text())["rounds"]
    assert [r["updates"] for r in rounds] == [3, 2, 2]
    reasons = [f["reason"]["detail"] for r in rounds for f in r["failures"]]
    assert all(f["reason"]["kind"] == "declined" for r in rounds for f in r["failures"])
    assert any("tensor `linear.weight` has shape [3, 2]; the model's is [3, 4]" in r for r in reasons), reasons
    assert any("tensor `linear.bias` is float64, not a float32 numpy array" in r for r in reasons), reasons


def test_an_agent_config_that_does_not_parse_is_a_value_error(tmp_path):
    bad = tmp_path / "agent.toml"
    bad.write_text('name = "a"\naggregator = "not an address"\n')
    with pytest.raises(ValueError, match="agent.toml"):
        fedtune.Agent(str(bad), fit=lambda p, c, x: None)


def test_simulate_runs_a_federation_of_python_agents_in_this_process(tmp_path, aggregator_bin):
    config, _ = write_federation(aggregator_bin, tmp_path, agents=3, rounds=4, secure=False)
    clients = [NumpyClient(seed=10 + i, weights=SKEWS[i % 3]) for i in range(4)]
    for c in clients:
        c.train_samples, c.validation_samples = len(c.y), len(c.vy)
    report = fedtune.simulate(str(config), clients, rounds=5)
    assert len(report["rounds"]) == 5
    assert [r["updates"] for r in report["rounds"]] == [4] * 5
    assert set(report["final_agent_evaluation"]) == {f"agent-{i}" for i in range(4)}
    assert report["final_accuracy"] > 0.85
    model = report["model"]
    assert {k: v.shape for k, v in model.items()} == {"linear.weight": (3, 4), "linear.bias": (3,)}
    final = fedtune.load_safetensors(str(tmp_path / "final.safetensors"))
    assert all(np.array_equal(final[k], model[k]) for k in model)
    assert all(c.rounds == list(range(5)) for c in clients)


def test_frozen_tensors_stay_out_of_fit_and_travel_in_the_context(tmp_path, aggregator_bin):
    config, _ = write_federation(aggregator_bin, tmp_path, agents=2, rounds=2, secure=False, freeze=["linear.bias"])
    seen = []

    class Frozen(NumpyClient):
        def fit(self, params, config, ctx):
            seen.append((sorted(params), sorted(ctx.frozen)))
            w = params["linear.weight"] + 0.5
            return {"linear.weight": w}, len(self.y), {"loss": 1.0}

    start = fedtune.load_safetensors(str(tmp_path / "model.safetensors"))
    report = fedtune.simulate(str(config), [Frozen(0, SKEWS[0]), Frozen(1, SKEWS[1])])
    assert seen and all(s == (["linear.weight"], ["linear.bias"]) for s in seen)
    assert np.array_equal(report["model"]["linear.bias"], start["linear.bias"])
    assert np.allclose(report["model"]["linear.weight"], start["linear.weight"] + 1.0)


def test_simulate_refuses_agents_without_fit(tmp_path, aggregator_bin):
    config, _ = write_federation(aggregator_bin, tmp_path, agents=1, rounds=1, secure=False)
    with pytest.raises(ValueError, match=r"agents\[0\] has no callable `fit`"):
        fedtune.simulate(str(config), [{"evaluate": None}])


def test_ctrl_c_stops_a_python_agent_cleanly(tmp_path, aggregator_bin):
    config, agent_configs = write_federation(aggregator_bin, tmp_path, agents=1, rounds=100000, secure=False)
    server = serve(aggregator_bin, config)
    script = textwrap.dedent(
        f"""
        import sys, time
        sys.path.insert(0, {str(HERE)!r})
        import fedtune
        from federation import NumpyClient
        client = NumpyClient(0, [0.4, 0.3, 0.3])
        def fit(params, config, ctx):
            time.sleep(0.05)
            print("round", ctx.round, flush=True)
            return client.fit(params, config, ctx)
        fedtune.Agent({str(agent_configs[0])!r}, fit=fit, evaluate=client.evaluate, train_samples=240).run()
        """
    )
    agent = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert agent.stdout.readline().startswith("round 0")
        time.sleep(0.5)
        agent.send_signal(signal.SIGINT)
        _, err = agent.communicate(timeout=30)
        assert agent.returncode != 0
        assert "KeyboardInterrupt" in err
        assert "stopped" in err
    finally:
        agent.kill()
        server.kill()
        server.communicate()



def test_split_gives_the_shares_fedtunes_agents_hold():
    labels = np.repeat(np.arange(10), 100)
    shares = fedtune.split(labels, clients=5, partition="dirichlet:0.5", seed=3)
    rows = np.concatenate([shares["test"]] + [np.concatenate([c["train"], c["validation"]]) for c in shares["clients"]])
    assert sorted(rows.tolist()) == list(range(1000)), "every row exactly once"
    assert len(shares["test"]) == 200
    again = fedtune.split(labels, clients=5, partition="dirichlet:0.5", seed=3)
    assert all(np.array_equal(a["train"], b["train"]) for a, b in zip(shares["clients"], again["clients"]))
    # Dirichlet(0.5) skews the labels: some client's most common class is well over a tenth.
    top = [np.bincount(labels[c["train"]], minlength=10).max() / len(c["train"]) for c in shares["clients"]]
    assert max(top) > 0.25
    with pytest.raises(ValueError, match="dirichlet:0"):
        fedtune.split(labels, clients=5, partition="dirichlet:0")
