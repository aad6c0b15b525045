"""The federation of examples/python/pytorch_fmnist.py run by Flower instead of fedtune.

    python3 -m venv /tmp/bench && /tmp/bench/bin/pip install ./python torch "flwr[simulation]"
    /tmp/bench/bin/python benches/flower_pytorch.py --rounds 20 --summary flower.json

Everything but the federation is the fedtune example's, imported from it: NIID-Bench's
LeNet, `TorchClient` (its training loop and validation), Fashion-MNIST from Debian's
`dataset-fashion-mnist` package, the shares of `fedtune.split(labels, 10,
"dirichlet:0.5", seed)`, Adam lr 1e-3, batch 32, 2 local epochs, one torch thread per
client, and the same initial model. Each client resumes its shuffling generator (kept in
Flower's node state) as fedtune's long-lived agent objects do, so both draw the same
minibatches. Flower's current APIs run it: a `ClientApp` with `@train` and `@evaluate`,
a `ServerApp` whose main runs the message-based `FedAvg` (weighted by sample counts, all
10 clients every round, each round train then evaluate on the clients' validation rows:
the work fedtune's agents do in a round), in `flwr.simulation.run_simulation` (Ray
backend; deprecated in favour of `flwr run`, which needs a packaged app but runs the
same simulation engine). Each client takes one CPU from Ray, so as many train at once as
there are cores, as fedtune's agents share the cores in one process. The global test
accuracy is measured at the end on `split["test"]` rows, as the fedtune example does.

A round's time runs from sending the training messages to aggregating the evaluation
replies; its `agents acc` is the clients' mean validation accuracy of the model the round
produced (the fedtune example prints that of the model a round starts from, so its row r,
counted from 0, is this script's row r, counted from 1). Memory, three figures:
  * server peak RSS: VmHWM of this (driver) process, which runs the ServerApp, Flower's
    in-memory SuperLink and Ray's driver, and holds Fashion-MNIST for the test rows;
  * client peak RSS: the largest VmHWM of the Ray worker processes that ran clients (each
    reply carries its process's VmHWM);
  * total peak PSS: the largest sum, sampled once a second, of the proportional set size
    of this process and all its descendants (Ray's GCS, raylet, agents and workers),
    to compare with the single process of the fedtune example.
"""

import argparse
import functools
import json
import logging
import os
import pathlib
import statistics
import sys
import textwrap
import threading
import time

# A benchmark reports to no one: no Flower telemetry, no Ray usage statistics.
os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent / "examples" / "python"))

import flwr  # noqa: E402
import torch  # noqa: E402
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict  # noqa: E402
from flwr.clientapp import ClientApp  # noqa: E402
from flwr.serverapp import ServerApp  # noqa: E402
from flwr.serverapp.strategy import FedAvg  # noqa: E402
from flwr.simulation import run_simulation  # noqa: E402

import fedtune  # noqa: E402
import fmnist  # noqa: E402
from pytorch_fmnist import LeNet, TorchClient, peak_rss_bytes, scores  # noqa: E402

AGENTS = 10
PARTITION = "dirichlet:0.5"
THREADS = 1
TRAIN_CONFIG = {"learning_rate": 1e-3, "batch_size": 32, "local_epochs": 2, "optimizer": "adam"}


# --- data and model, as the fedtune example has them ---------------------------------


@functools.cache
def dataset(seed):
    """Fashion-MNIST's training file and the fedtune example's split of it, once per process."""
    x, y = fmnist.load(train=True)
    return x, y, fedtune.split(y, AGENTS, PARTITION, seed)


def initial_model(seed):
    """The fedtune example's initial LeNet: after `torch.manual_seed(seed)` it builds one
    LeNet per agent and one to count parameters before the one it federates."""
    torch.manual_seed(seed)
    for _ in range(AGENTS + 1):
        LeNet()
    return LeNet()


# --- the ClientApp (runs in Ray's worker processes) ------------------------------------


class NoDeadline:
    """The `ctx` that `TorchClient.fit` polls: Flower sets no deadline within a round."""

    @staticmethod
    def cancelled():
        return False


def torch_client(context, seed):
    """The fedtune example's client for this node's share, its shuffling resumed."""
    torch.set_num_threads(THREADS)
    partition = context.node_config["partition-id"]
    x, y, split = dataset(seed)
    share = split["clients"][partition]
    client = TorchClient(x, y, share["train"], share["validation"], seed=seed * 1000 + partition)
    if "shuffle" in context.state:
        state = bytearray(context.state["shuffle"]["state"])
        client.generator.set_state(torch.frombuffer(state, dtype=torch.uint8))
    return client


def received(message):
    """The global model in `message` as the fedtune example's clients take it."""
    return {name: array.numpy() for name, array in message.content["arrays"].items()}


def reply(message, context, metrics, arrays=None):
    """The reply: `metrics` (with the weight, `num-examples`), the arrays if any, and who
    answered: the partition, and the process with its peak RSS."""
    process = {"partition": context.node_config["partition-id"], "pid": os.getpid(), "peak-rss": peak_rss_bytes()}
    content = RecordDict({"metrics": MetricRecord(metrics), "client": ConfigRecord(process)})
    if arrays is not None:
        content["arrays"] = ArrayRecord({name: Array(value) for name, value in arrays.items()})
    return Message(content, reply_to=message)


client_app = ClientApp()


@client_app.train()
def train(message, context):
    config = message.content["config"]
    client = torch_client(context, config["seed"])
    params, samples, metrics = client.fit(received(message), dict(config), NoDeadline())
    context.state["shuffle"] = ConfigRecord({"state": client.generator.get_state().numpy().tobytes()})
    return reply(message, context, {**metrics, "num-examples": samples}, arrays=params)


@client_app.evaluate()
def evaluate(message, context):
    client = torch_client(context, message.content["config"]["seed"])
    loss, accuracy, samples = client.evaluate(received(message))
    return reply(message, context, {"loss": loss, "accuracy": accuracy, "num-examples": samples})


# --- the ServerApp (runs in this process) ----------------------------------------------


class RecordingFedAvg(FedAvg):
    """Flower's FedAvg over all the clients, noting what the report needs: each round's
    figures and wall time, the clients' last validation accuracy, their processes' peak RSS."""

    def __init__(self):
        super().__init__(min_train_nodes=AGENTS, min_evaluate_nodes=AGENTS, min_available_nodes=AGENTS)
        self.rounds = []
        self.agent_accuracy = {}
        self.client_peak_rss = {}

    def configure_train(self, server_round, arrays, config, grid):
        self.rounds.append({"round": server_round, "started": time.monotonic()})
        return super().configure_train(server_round, arrays, config, grid)

    def aggregate_train(self, server_round, replies):
        answered = self._answered(replies)
        arrays, metrics = super().aggregate_train(server_round, replies)
        self.rounds[-1].update(updates=len(answered), train_loss=metrics["loss"] if metrics else float("nan"))
        return arrays, metrics

    def aggregate_evaluate(self, server_round, replies):
        answered = self._answered(replies)
        self.agent_accuracy = {m.content["client"]["partition"]: m.content["metrics"]["accuracy"] for m in answered}
        metrics = super().aggregate_evaluate(server_round, replies)
        record = self.rounds[-1]
        record["agents_accuracy"] = statistics.fmean(self.agent_accuracy.values()) if answered else float("nan")
        record["seconds"] = time.monotonic() - record.pop("started")
        return metrics

    def _answered(self, replies):
        """The replies without errors, their processes' peak RSS noted."""
        answered = [m for m in replies if not m.has_error()]
        for m in answered:
            pid, rss = m.content["client"]["pid"], m.content["client"]["peak-rss"]
            self.client_peak_rss[pid] = max(rss, self.client_peak_rss.get(pid, 0))
        return answered


def server_app(strategy, rounds, seed, outcome):
    """A ServerApp running `strategy` for `rounds` rounds; the final arrays go to `outcome`."""
    app = ServerApp()

    @app.main()
    def main(grid, context):
        result = strategy.start(
            grid=grid,
            initial_arrays=ArrayRecord(initial_model(seed).state_dict()),
            num_rounds=rounds,
            train_config=ConfigRecord({**TRAIN_CONFIG, "seed": seed}),
            evaluate_config=ConfigRecord({"seed": seed}),
        )
        outcome["arrays"] = result.arrays

    return app


# --- memory of the whole process tree --------------------------------------------------


def process_tree(root):
    """`root` and all its descendants' pids."""
    children = {}
    for stat in pathlib.Path("/proc").glob("[0-9]*/stat"):
        try:
            ppid = int(stat.read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(ppid, []).append(int(stat.parent.name))
    tree, pending = [], [root]
    while pending:
        pid = pending.pop()
        tree.append(pid)
        pending.extend(children.get(pid, []))
    return tree


def pss_bytes(pid):
    try:
        for line in pathlib.Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


class TreeMemory(threading.Thread):
    """Samples the PSS summed over this process and its descendants once a second;
    `peak` is the largest sum seen."""

    def __init__(self):
        super().__init__(daemon=True)
        self.peak = 0
        self.done = threading.Event()

    def run(self):
        while not self.done.wait(1.0):
            self.peak = max(self.peak, sum(pss_bytes(pid) for pid in process_tree(os.getpid())))

    def stop(self):
        self.done.set()
        self.join()


# --- the run and its report ------------------------------------------------------------


def report(args, strategy, test, total, memory):
    test_loss, test_accuracy = test
    print("round  updates  train loss  agents acc  seconds")
    for r in strategy.rounds:
        print(
            f"{r['round']:5d}  {r['updates']:4d}/{AGENTS:<3d}  {r['train_loss']:10.4f}  "
            f"{r['agents_accuracy']:10.4f}  {r['seconds']:7.2f}"
        )
    summary = {
        "final_test_accuracy": test_accuracy,
        "final_test_loss": test_loss,
        "final_agent_accuracy": {f"client-{i}": a for i, a in sorted(strategy.agent_accuracy.items())},
        "median_round_seconds": statistics.median(r["seconds"] for r in strategy.rounds),
        "total_seconds": total,
        "rounds": len(strategy.rounds),
        "server_peak_rss_bytes": peak_rss_bytes(),
        "client_peak_rss_bytes": max(strategy.client_peak_rss.values()),
        "client_processes": len(strategy.client_peak_rss),
        "total_peak_pss_bytes": memory.peak,
        "flwr_version": flwr.__version__,
    }
    agents = strategy.agent_accuracy.values()
    mib = 2**20
    print(
        textwrap.dedent(f"""
        summary
          global test accuracy      {test_accuracy:.4f} (loss {test_loss:.4f})
          per-agent accuracy        mean {statistics.fmean(agents):.4f}  worst {min(agents):.4f}
          median round time         {summary['median_round_seconds']:.2f} s
          total                     {total:.1f} s
          server peak RSS           {summary['server_peak_rss_bytes'] / mib:.0f} MiB (driver process)
          client peak RSS           {summary['client_peak_rss_bytes'] / mib:.0f} MiB (largest of {summary['client_processes']} Ray workers)
          total peak PSS            {memory.peak / mib:.0f} MiB (driver, Ray's daemons and workers)""")
    )
    if args.summary:
        pathlib.Path(args.summary).write_text(json.dumps(summary, indent=2))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=50)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--summary", help="write the final figures as JSON here")
    args = parser.parse_args()
    torch.set_num_threads(THREADS)
    logging.getLogger("flwr").setLevel(logging.WARNING)

    x, y, split = dataset(args.seed)
    test_x, test_y = torch.from_numpy(x[split["test"]]), torch.from_numpy(y[split["test"]])
    print(
        f"Flower {flwr.__version__} + PyTorch: {AGENTS} clients, {args.rounds} rounds, Fashion-MNIST "
        f"({len(y)} rows, {len(test_y)} test), partition {PARTITION}\n"
        f"LeNet, {TRAIN_CONFIG['local_epochs']} local epoch(s) of {TRAIN_CONFIG['optimizer']} "
        f"lr {TRAIN_CONFIG['learning_rate']} batch {TRAIN_CONFIG['batch_size']}, FedAvg; "
        f"run_simulation, Ray backend, 1 CPU per client\n"
    )
    strategy, outcome, memory = RecordingFedAvg(), {}, TreeMemory()
    memory.start()
    started = time.monotonic()
    run_simulation(
        server_app=server_app(strategy, args.rounds, args.seed, outcome),
        client_app=client_app,
        num_supernodes=AGENTS,
        backend_config={"client_resources": {"num_cpus": 1, "num_gpus": 0.0}},
    )
    total = time.monotonic() - started
    memory.stop()
    final = LeNet()
    final.load_state_dict(outcome["arrays"].to_torch_state_dict())
    report(args, strategy, scores(final, test_x, test_y), total, memory)


if __name__ == "__main__":
    # Ray's workers must find the ClientApp in a module they can import: run as
    # `flower_pytorch`, not `__main__`, so they import it (and keep each process's data
    # cache) rather than get its functions pickled by value with every message.
    import flower_pytorch

    flower_pytorch.main()
