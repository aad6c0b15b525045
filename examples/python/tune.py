"""The README's Python snippet on a real objective: a one-hidden-layer network trained
with numpy on the bundled digits (data/digits.csv), its learning rate, batch size and
optimizer tuned by fedtune's "bayes+rl" with ASHA stopping weak trials, the study kept
in SQLite (run it again and it goes on; `fedtune-aggregator dashboard --db study.db`
shows it).

    pip install ./python
    python examples/python/tune.py --trials 30 --summary tune.json
"""

import argparse
import json
import pathlib

import numpy as np

import fedtune

DIGITS = pathlib.Path(__file__).resolve().parents[2] / "data" / "digits.csv"


def load_digits(seed=0):
    """(train x, train y, validation x, validation y): 80/20, features scaled to [0, 1]."""
    rows = np.loadtxt(DIGITS, delimiter=",", skiprows=1)
    x, y = rows[:, :-1] / 16.0, rows[:, -1].astype(np.int64)
    order = np.random.default_rng(seed).permutation(len(y))
    cut = int(0.8 * len(y))
    return x[order[:cut]], y[order[:cut]], x[order[cut:]], y[order[cut:]]


class Network:
    """64 -> 64 (ReLU) -> 10, trained by SGD or Adam on cross-entropy."""

    def __init__(self, rng):
        self.params = [rng.normal(0, 0.1, (64, 64)), np.zeros(64), rng.normal(0, 0.1, (64, 10)), np.zeros(10)]
        self.moments = [(np.zeros_like(p), np.zeros_like(p)) for p in self.params]
        self.steps = 0

    def forward(self, x):
        w1, b1, w2, b2 = self.params
        hidden = np.maximum(x @ w1 + b1, 0.0)
        logits = hidden @ w2 + b2
        logits -= logits.max(axis=1, keepdims=True)
        p = np.exp(logits)
        return hidden, p / p.sum(axis=1, keepdims=True)

    def step(self, x, y, lr, optimizer):
        w1, _, w2, _ = self.params
        hidden, p = self.forward(x)
        p[np.arange(len(y)), y] -= 1.0
        p /= len(y)
        dh = (p @ w2.T) * (hidden > 0)
        grads = [x.T @ dh, dh.sum(0), hidden.T @ p, p.sum(0)]
        self.steps += 1
        for i, g in enumerate(grads):
            if optimizer == "adam":
                m, v = self.moments[i]
                m[:] = 0.9 * m + 0.1 * g
                v[:] = 0.999 * v + 0.001 * g * g
                m_hat, v_hat = m / (1 - 0.9**self.steps), v / (1 - 0.999**self.steps)
                self.params[i] -= lr * m_hat / (np.sqrt(v_hat) + 1e-8)
            else:
                self.params[i] -= lr * g

    def accuracy(self, x, y):
        return float((self.forward(x)[1].argmax(axis=1) == y).mean())


def make_objective(data, epochs):
    x, y, vx, vy = data

    def train_model(config, trial):
        rng = np.random.default_rng(trial.number)
        net = Network(rng)
        accuracy = 0.0
        for epoch in range(epochs):
            # Under bayes+rl the adaptive learning rate may change after each report.
            lr = trial.params["learning_rate"]
            order = rng.permutation(len(y))
            for start in range(0, len(order), config["batch_size"]):
                rows = order[start : start + config["batch_size"]]
                net.step(x[rows], y[rows], lr, config["optimizer"])
            accuracy = net.accuracy(vx, vy)
            trial.report(epoch, accuracy)
            if trial.should_prune():
                raise fedtune.TrialPruned()
        return accuracy

    return train_model


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=30)
    parser.add_argument("--epochs", type=int, default=12)
    parser.add_argument("--strategy", default="bayes+rl", choices=["bayes+rl", "gp", "tpe", "random", "grid"])
    parser.add_argument("--storage", default="study.db")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--summary", help="write the final figures as JSON here")
    args = parser.parse_args()

    space = fedtune.SearchSpace(
        {
            "learning_rate": {"spec": "loguniform(1e-5, 1e-2)", "adaptive": True},
            "batch_size": "choice(16, 32, 64, 128)",
            "optimizer": "choice(adam, sgd)",
        }
    )
    tuner = fedtune.Tuner(
        model_fn=make_objective(load_digits(args.seed), args.epochs),
        search_space=space,
        max_trials=args.trials,
        strategy=args.strategy,
        directions=["maximize"],
        pruner="asha",
        storage=args.storage,
        seed=args.seed,
        study_name=f"digits-{args.strategy}",
    )
    best_config = tuner.run()
    trials = tuner.trials
    states = {s: sum(t.state == s for t in trials) for s in ("complete", "pruned", "failed")}
    print(f"{'trial':>5}  {'state':9} {'accuracy':>8}  params")
    for t in trials:
        shown = f"{t.value:.4f}" if t.value is not None else "-"
        print(f"{t.number:5d}  {t.state:9} {shown:>8}  {t.params}")
    best = tuner.best_trial
    print(f"\nbest trial {best.number}: validation accuracy {best.value:.4f} with {best_config}")
    print(f"{states['complete']} complete, {states['pruned']} pruned, {states['failed']} failed; study in {args.storage}")
    if args.summary:
        summary = {
            "best_value": best.value,
            "best_params": best_config,
            "trials": len(trials),
            "pruned": states["pruned"],
            "failed": states["failed"],
        }
        pathlib.Path(args.summary).write_text(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
