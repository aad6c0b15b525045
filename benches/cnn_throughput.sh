#!/usr/bin/env bash
# LeNet training throughput, fedtune (Burn flex, the agent's training loop) against
# PyTorch CPU, interleaved so both see the same machine, each pinned to one core:
#
#   pip install torch numpy      # not needed by CI
#   bash benches/cnn_throughput.sh [ROUNDS]
#
# Prints each run's median samples/s and the ratio fedtune / PyTorch per round.
set -euo pipefail
cd "$(dirname "$0")/.."
rounds="${1:-3}"
cargo build --release --example cnn_throughput
out="$(mktemp -d)"
for round in $(seq 1 "$rounds"); do
  RAYON_NUM_THREADS=1 taskset -c 0 target/release/examples/cnn_throughput \
    --reps 3 --steps 200 --summary "$out/fedtune-$round.json" >/dev/null
  taskset -c 0 python3 benches/cnn_throughput_torch.py --reps 3 --steps 200 \
    --json "$out/torch-$round.json" >/dev/null
  python3 - "$out/fedtune-$round.json" "$out/torch-$round.json" "$round" <<'PY'
import json, sys
f, t = (json.load(open(p))["samples_per_second_median"] for p in sys.argv[1:3])
print(f"round {sys.argv[3]}: fedtune {f:8.0f} samples/s   pytorch {t:8.0f} samples/s   ratio {f / t:.2f}")
PY
done
