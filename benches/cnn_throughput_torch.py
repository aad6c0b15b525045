#!/usr/bin/env python3
"""PyTorch CPU training throughput of the NIID-Bench LeNet, single thread.

This is the PyTorch baseline for comparing fedtune's Burn CNN training speed.
It trains the same LeNet as ``tests/fixtures/lenet/make_fixture.py`` on
synthetic (seeded, random) MNIST-shaped data and reports samples per second.

Setup:
  * one intra-op and one inter-op thread (``torch.set_num_threads(1)``,
    ``torch.set_num_interop_threads(1)``), CPU only;
  * batch 64 (``--batch``), SGD lr 0.01 momentum 0.9, cross-entropy loss;
  * 20 warm-up steps, then ``--reps`` timed repetitions (default 5) of
    ``--steps`` optimiser steps each (default 200). A step is
    zero_grad + forward + loss + backward + optimiser step.

Output: one line per repetition, then a final JSON line

  {"framework": "pytorch", "torch_version": ..., "samples_per_second_median": ...,
   "samples_per_second": [...], "threads": 1, "batch": 64, ...}

``--json PATH`` also writes that JSON object to PATH.

Usage (from the repository root; needs ``pip install torch numpy``):

    python3 benches/cnn_throughput_torch.py
    python3 benches/cnn_throughput_torch.py --reps 3 --steps 100 --json /tmp/torch.json

Not run by ``cargo bench``; this file is only a reference measurement.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

# Thread settings must be applied before torch does any parallel work, so do it
# straight after the import.
import torch

torch.set_num_threads(1)
torch.set_num_interop_threads(1)

import sys  # noqa: E402

import torch.nn.functional as F  # noqa: E402

# The same LeNet as the committed fixture: one definition, in the fixture's script.
sys.dont_write_bytecode = True  # no __pycache__ among the fixtures
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "lenet"))
from make_fixture import LeNet  # noqa: E402

WARMUP_STEPS = 20
NUM_CLASSES = 10
IMAGE_SHAPE = (1, 28, 28)
# Number of distinct synthetic batches cycled through during training (keeps
# memory small while avoiding training on one single batch).
NUM_DATA_BATCHES = 16


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    p.add_argument("--steps", type=int, default=200, help="optimiser steps per timed repetition (default 200)")
    p.add_argument("--reps", type=int, default=5, help="timed repetitions (default 5)")
    p.add_argument("--batch", type=int, default=64, help="batch size (default 64)")
    p.add_argument("--seed", type=int, default=0, help="seed for model init and synthetic data (default 0)")
    p.add_argument("--json", type=Path, default=None, metavar="PATH", help="also write the final JSON to PATH")
    args = p.parse_args()
    for name in ("steps", "reps", "batch"):
        if getattr(args, name) < 1:
            p.error(f"--{name} must be at least 1")
    return args


def main() -> None:
    args = parse_args()
    torch.manual_seed(args.seed)

    model = LeNet()
    model.train()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)

    # Synthetic MNIST-shaped data: standard-normal images, uniform labels.
    gen = torch.Generator().manual_seed(args.seed)
    images = torch.randn((NUM_DATA_BATCHES, args.batch, *IMAGE_SHAPE), generator=gen)
    labels = torch.randint(0, NUM_CLASSES, (NUM_DATA_BATCHES, args.batch), generator=gen)

    step_counter = 0

    def train_step() -> torch.Tensor:
        nonlocal step_counter
        k = step_counter % NUM_DATA_BATCHES
        step_counter += 1
        optimizer.zero_grad(set_to_none=True)
        loss = F.cross_entropy(model(images[k]), labels[k])
        loss.backward()
        optimizer.step()
        return loss

    for _ in range(WARMUP_STEPS):
        train_step()

    rates: list[float] = []
    for rep in range(args.reps):
        start = time.perf_counter()
        for _ in range(args.steps):
            loss = train_step()
        loss_value = loss.item()  # forces completion (CPU is synchronous anyway)
        elapsed = time.perf_counter() - start
        rate = args.steps * args.batch / elapsed
        rates.append(rate)
        print(
            f"rep {rep + 1}/{args.reps}: {args.steps} steps x {args.batch} samples "
            f"in {elapsed:.3f} s = {rate:.1f} samples/s (loss {loss_value:.4f})",
            flush=True,
        )

    result = {
        "framework": "pytorch",
        "torch_version": torch.__version__,
        "samples_per_second_median": statistics.median(rates),
        "samples_per_second": rates,
        "threads": torch.get_num_threads(),
        "batch": args.batch,
        "steps": args.steps,
        "reps": args.reps,
        "warmup_steps": WARMUP_STEPS,
        "optimizer": "sgd lr=0.01 momentum=0.9",
        "machine": platform.machine(),
        "python_version": platform.python_version(),
    }
    line = json.dumps(result)
    print(line)
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(line + "\n")


if __name__ == "__main__":
    main()
