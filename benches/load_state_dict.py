"""Checks that a model fedtune wrote in PyTorch's layout loads into the same network
written in PyTorch, with `load_state_dict(strict=True)`, and gives the same logits.

    cargo run --release --example simulation -- --save-model /tmp/mlp-pytorch.safetensors \
        --save-layout pytorch
    # or: fedtune-aggregator serve --config config/aggregator.toml --layout pytorch
    python -m venv /tmp/torch-venv && /tmp/torch-venv/bin/pip install torch safetensors numpy
    /tmp/torch-venv/bin/python benches/load_state_dict.py /tmp/mlp-pytorch.safetensors

The file must hold the digits MLP 64-64-10 (`[model.mlp] hidden = [64]`) in PyTorch's
layout (`serve --layout pytorch`, or `[model] save_layout = "pytorch"`). It prints the
header's metadata, loads the state dict strictly (no missing or unexpected key, every
shape equal), and compares the logits on the bundled digits with the ones computed from
the file's arrays by numpy (`x @ W.T + b`, PyTorch's convention). Needs torch, so it is
not part of CI.
"""

import json
import struct
import sys
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file


class Mlp(torch.nn.Module):
    """fedtune's MLP: `layers.i` linear layers with ReLU between them."""

    def __init__(self, sizes):
        super().__init__()
        self.layers = torch.nn.ModuleList(
            torch.nn.Linear(a, b) for a, b in zip(sizes[:-1], sizes[1:])
        )

    def forward(self, x):
        for i, layer in enumerate(self.layers):
            x = layer(x)
            if i + 1 < len(self.layers):
                x = torch.relu(x)
        return x


def main(path):
    raw = Path(path).read_bytes()
    (length,) = struct.unpack("<Q", raw[:8])
    metadata = json.loads(raw[8 : 8 + length]).get("__metadata__", {})
    print("metadata", metadata)
    if metadata.get("layout") != "pytorch":
        sys.exit(f"{path} is in the {metadata.get('layout')!r} layout; write it with --layout pytorch")
    state = load_file(path)
    model = Mlp([64, 64, 10])
    model.load_state_dict(state, strict=True)
    digits = np.loadtxt(Path(__file__).parent.parent / "data" / "digits.csv", delimiter=",", skiprows=1)
    x = torch.tensor(digits[:, :-1] / 16.0, dtype=torch.float32)
    with torch.no_grad():
        logits = model(x).numpy()
    h = np.maximum(x.numpy() @ state["layers.0.weight"].numpy().T + state["layers.0.bias"].numpy(), 0)
    expected = h @ state["layers.1.weight"].numpy().T + state["layers.1.bias"].numpy()
    accuracy = float((logits.argmax(1) == digits[:, -1]).mean())
    print(f"load_state_dict(strict=True): ok; max |logit difference| {np.abs(logits - expected).max():.2e}; "
          f"accuracy on the {len(digits)} digits {accuracy:.4f}")


if __name__ == "__main__":
    main(sys.argv[1])
