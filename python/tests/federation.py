"""A small federation for the tests: a real `fedtune-aggregator serve` on 127.0.0.1 and
agents whose training is numpy (softmax regression on Gaussian blobs, skewed by agent)."""

import json
import pathlib
import socket
import subprocess
import textwrap

import numpy as np

import fedtune

FEATURES = 4
CLASSES = 3
CENTRES = np.array([[2.0, 0.0, 0.0, 1.0], [-1.0, 2.0, 0.0, -1.0], [0.0, -2.0, 2.0, 0.0]])


def blobs(rng, n, weights):
    """`n` points from the three blobs, labels drawn with `weights`."""
    labels = rng.choice(CLASSES, size=n, p=weights)
    x = CENTRES[labels] + rng.normal(scale=0.9, size=(n, FEATURES))
    return x.astype(np.float32), labels


def softmax_loss(w, b, x, y):
    logits = x @ w.T + b
    logits -= logits.max(axis=1, keepdims=True)
    p = np.exp(logits)
    p /= p.sum(axis=1, keepdims=True)
    loss = -np.log(p[np.arange(len(y)), y] + 1e-12).mean()
    return loss, p


class NumpyClient:
    """One device: its own data, a `fit` and an `evaluate` as `fedtune.Agent` calls them."""

    def __init__(self, seed, weights):
        rng = np.random.default_rng(seed)
        self.x, self.y = blobs(rng, 240, weights)
        self.vx, self.vy = blobs(rng, 60, weights)
        self.rng = rng
        self.rounds = []

    def fit(self, params, config, ctx):
        w, b = params["linear.weight"].copy(), params["linear.bias"].copy()
        lr, batch = config["learning_rate"], config["batch_size"]
        for _ in range(config["local_epochs"]):
            order = self.rng.permutation(len(self.y))
            for start in range(0, len(order), batch):
                if ctx.cancelled():
                    break
                idx = order[start : start + batch]
                _, p = softmax_loss(w, b, self.x[idx], self.y[idx])
                p[np.arange(len(idx)), self.y[idx]] -= 1.0
                w -= lr * (p.T @ self.x[idx]) / len(idx)
                b -= lr * p.mean(axis=0)
        self.rounds.append(ctx.round)
        loss, _ = softmax_loss(w, b, self.x, self.y)
        val_loss, accuracy = self.score(w, b)
        metrics = {"loss": float(loss), "val_loss": val_loss, "accuracy": accuracy}
        return {"linear.weight": w.astype(np.float32), "linear.bias": b.astype(np.float32)}, len(self.y), metrics

    def score(self, w, b):
        loss, p = softmax_loss(w, b, self.vx, self.vy)
        return float(loss), float((p.argmax(axis=1) == self.vy).mean())

    def evaluate(self, params):
        loss, accuracy = self.score(params["linear.weight"], params["linear.bias"])
        return loss, accuracy, len(self.vy)


SKEWS = [[0.7, 0.2, 0.1], [0.1, 0.7, 0.2], [0.2, 0.1, 0.7]]


def free_udp_port():
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def write_federation(aggregator_bin, root: pathlib.Path, agents=3, rounds=6, secure=True, freeze=(), noise_multiplier=0.0):
    """Certificates, the starting model, the aggregator's and agents' TOML; returns the
    aggregator's configuration path and the agents'."""
    subprocess.run([aggregator_bin, "init", "--out", str(root / "pki"), "--agents", str(agents)], check=True,
                   stdout=subprocess.DEVNULL)
    rng = np.random.default_rng(0)
    fedtune.save_safetensors(
        {
            "linear.weight": (0.01 * rng.normal(size=(CLASSES, FEATURES))).astype(np.float32),
            "linear.bias": np.zeros(CLASSES, dtype=np.float32),
        },
        str(root / "model.safetensors"),
    )
    port = free_udp_port()
    (root / "aggregator.toml").write_text(textwrap.dedent(f"""\
        listen = "127.0.0.1:{port}"
        report = "report.json"
        [pki]
        ca_cert = "pki/ca.pem"
        cert = "pki/server.pem"
        key = "pki/server.key"
        [federation]
        study = "python-agents"
        rounds = {rounds}
        min_agents = {agents}
        wait_for_agents_secs = 60
        round_timeout_secs = 60
        min_updates = 1
        loopback = true
        [model]
        custom = {{ name = "softmax", init = "model.safetensors" }}
        save = "final.safetensors"
        freeze = {json.dumps(list(freeze))}
        [secure_aggregation]
        enabled = {str(secure).lower()}
        clip = 4.0
        [privacy]
        noise_multiplier = {noise_multiplier}
        clip = 1.0
        noise = "{"distributed" if secure else "central"}"
        [client]
        learning_rate = 0.1
        batch_size = 16
        local_epochs = 1
        optimizer = "sgd"
        """))
    configs = []
    for i in range(agents):
        path = root / f"agent-{i}.toml"
        path.write_text(textwrap.dedent(f"""\
            name = "agent-{i}"
            aggregator = "127.0.0.1:{port}"
            loopback = true
            [pki]
            ca_cert = "pki/ca.pem"
            cert = "pki/agents/agent-{i}.pem"
            key = "pki/agents/agent-{i}.key"
            [reconnect]
            initial_ms = 100
            max_ms = 500
            max_attempts = 100
            """))
        configs.append(path)
    return root / "aggregator.toml", configs
