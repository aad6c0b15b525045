"""NIID-Bench's LeNet, written in PyTorch, federated by fedtune across 10 Python agents on
Fashion-MNIST split Dirichlet(0.5) — the split fedtune's own agents hold
(`cargo run --release --example simulation -- --dataset fashion-mnist --model cnn`).

    pip install ./python torch
    python examples/python/pytorch_fmnist.py --rounds 50 --summary fmnist.json

The aggregator is fedtune's (FedAvg, QUIC with mutual TLS on 127.0.0.1, certificates
made for the run); only `fit` and `evaluate` are Python. The model crosses as its
`state_dict`: the aggregator learns its tensors from `model.safetensors` and writes the
final model in the same names (`final.safetensors`, loadable with `load_state_dict`).
Needs Debian's `dataset-fashion-mnist` package (the IDX files under
/usr/share/datasets/fashion-mnist).
"""

import argparse
import json
import pathlib
import statistics
import sys
import tempfile
import textwrap
import time

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

import fedtune

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
import fmnist  # noqa: E402


class LeNet(nn.Module):
    """Two 5x5 convolutions (6 and 16 channels) with max-pooling, then 256-120-84-10."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 6, 5)
        self.conv2 = nn.Conv2d(6, 16, 5)
        self.fc1 = nn.Linear(16 * 4 * 4, 120)
        self.fc2 = nn.Linear(120, 84)
        self.fc3 = nn.Linear(84, 10)

    def forward(self, x):
        x = F.max_pool2d(F.relu(self.conv1(x)), 2)
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)
        x = x.flatten(1)
        return self.fc3(F.relu(self.fc2(F.relu(self.fc1(x)))))


def to_numpy(model):
    return {k: v.detach().cpu().numpy().astype(np.float32) for k, v in model.state_dict().items()}


def load(model, params):
    model.load_state_dict({k: torch.from_numpy(v) for k, v in params.items()})


def scores(model, x, y, batch=1000):
    """(mean cross-entropy, accuracy) of `model` on (x, y)."""
    model.eval()
    loss, correct = 0.0, 0
    with torch.no_grad():
        for i in range(0, len(y), batch):
            logits = model(x[i : i + batch])
            loss += F.cross_entropy(logits, y[i : i + batch], reduction="sum").item()
            correct += (logits.argmax(1) == y[i : i + batch]).sum().item()
    return loss / len(y), correct / len(y)


class TorchClient:
    """One device: its share of Fashion-MNIST and a LeNet to train on it."""

    def __init__(self, x, y, train_rows, validation_rows, seed):
        self.x, self.y = torch.from_numpy(x[train_rows]), torch.from_numpy(y[train_rows])
        self.vx, self.vy = torch.from_numpy(x[validation_rows]), torch.from_numpy(y[validation_rows])
        self.train_samples, self.validation_samples = len(self.y), len(self.vy)
        self.model = LeNet()
        self.generator = torch.Generator().manual_seed(seed)

    def fit(self, params, config, ctx):
        load(self.model, params)
        self.model.train()
        optimizer = (
            torch.optim.Adam(self.model.parameters(), lr=config["learning_rate"])
            if config["optimizer"] == "adam"
            else torch.optim.SGD(self.model.parameters(), lr=config["learning_rate"], momentum=config["momentum"])
        )
        batch, total, seen = config["batch_size"], 0.0, 0
        for _ in range(config["local_epochs"]):
            order = torch.randperm(len(self.y), generator=self.generator)
            for i in range(0, len(order), batch):
                if ctx.cancelled():
                    break
                rows = order[i : i + batch]
                optimizer.zero_grad()
                loss = F.cross_entropy(self.model(self.x[rows]), self.y[rows])
                loss.backward()
                optimizer.step()
                total, seen = total + loss.item() * len(rows), seen + len(rows)
        val_loss, accuracy = scores(self.model, self.vx, self.vy)
        metrics = {"loss": total / max(seen, 1), "val_loss": val_loss, "accuracy": accuracy}
        return to_numpy(self.model), self.train_samples, metrics

    def evaluate(self, params):
        load(self.model, params)
        loss, accuracy = scores(self.model, self.vx, self.vy)
        return loss, accuracy, self.validation_samples


AGGREGATOR = """\
[federation]
study = "pytorch-fmnist"
rounds = {rounds}
seed = {seed}
round_timeout_secs = 600
[model]
custom = {{ name = "lenet", init = "model.safetensors" }}
save = "final.safetensors"
[client]
learning_rate = {lr}
batch_size = {batch}
local_epochs = {epochs}
optimizer = "{optimizer}"
"""


def peak_rss_bytes():
    for line in pathlib.Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return 0


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--agents", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=50)
    parser.add_argument("--partition", default="dirichlet:0.5")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--local-epochs", type=int, default=2)
    parser.add_argument("--optimizer", choices=["adam", "sgd"], default="adam")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per agent (agents train concurrently)")
    parser.add_argument("--summary", help="write the final figures as JSON here")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)

    x, y = fmnist.load(train=True)
    shares = fedtune.split(y, args.agents, args.partition, args.seed)
    clients = [
        TorchClient(x, y, c["train"], c["validation"], seed=args.seed * 1000 + i)
        for i, c in enumerate(shares["clients"])
    ]
    test_x, test_y = torch.from_numpy(x[shares["test"]]), torch.from_numpy(y[shares["test"]])
    print(
        f"fedtune + PyTorch: {args.agents} Python agents, {args.rounds} rounds, Fashion-MNIST "
        f"({len(y)} rows, {len(test_y)} test), partition {args.partition}\n"
        f"LeNet ({sum(p.numel() for p in LeNet().parameters())} parameters), {args.local_epochs} local epoch(s) "
        f"of {args.optimizer} lr {args.lr} batch {args.batch_size}, fedavg; QUIC + mutual TLS on 127.0.0.1\n"
    )
    with tempfile.TemporaryDirectory() as work:
        work = pathlib.Path(work)
        fedtune.save_safetensors(to_numpy(LeNet()), str(work / "model.safetensors"))
        (work / "aggregator.toml").write_text(
            AGGREGATOR.format(
                rounds=args.rounds,
                seed=args.seed,
                lr=args.lr,
                batch=args.batch_size,
                epochs=args.local_epochs,
                optimizer=args.optimizer,
            )
        )
        started = time.monotonic()
        report = fedtune.simulate(str(work / "aggregator.toml"), clients)
        total = time.monotonic() - started
        final = LeNet()
        final.load_state_dict({k: torch.from_numpy(v) for k, v in fedtune.load_safetensors(str(work / "final.safetensors")).items()})
    test_loss, test_accuracy = scores(final, test_x, test_y)

    print("round  updates  train loss  agents acc  seconds")
    for r in report["rounds"]:
        accuracy = statistics.fmean(r["agent_accuracy"].values()) if r["agent_accuracy"] else float("nan")
        print(f"{r['round']:5d}  {r['updates']:4d}/{args.agents:<3d}  {r['train_loss']:10.4f}  {accuracy:10.4f}  {r['seconds']:7.2f}")
    round_seconds = statistics.median(r["seconds"] for r in report["rounds"])
    agents = {name: e["accuracy"] for name, e in report["final_agent_evaluation"].items()}
    print(
        textwrap.dedent(f"""
        summary
          global test accuracy      {test_accuracy:.4f} (loss {test_loss:.4f})
          per-agent accuracy        mean {statistics.fmean(agents.values()):.4f}  worst {min(agents.values()):.4f}
          median round time         {round_seconds:.2f} s
          total                     {total:.1f} s
          peak RSS (whole process)  {peak_rss_bytes() / 2**20:.0f} MiB""")
    )
    if args.summary:
        summary = {
            "final_test_accuracy": test_accuracy,
            "final_test_loss": test_loss,
            "final_agent_accuracy": agents,
            "median_round_seconds": round_seconds,
            "total_seconds": total,
            "rounds": len(report["rounds"]),
            "peak_rss_bytes": peak_rss_bytes(),
        }
        pathlib.Path(args.summary).write_text(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
