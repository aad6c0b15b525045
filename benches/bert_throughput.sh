#!/usr/bin/env bash
# Fine-tuning throughput of one agent on a pretrained encoder (all-MiniLM-L6-v2: batch 32,
# sequence 32, LoRA r=8 on query/value with the head trained, Adam), fedtune (Burn flex,
# the agent's training loop) against PyTorch CPU, interleaved so both see the same
# machine, each pinned to one core; and each process's peak resident memory:
#
#   pip install torch transformers peft numpy      # not needed by CI
#   bash scripts/fetch_minilm.sh target/minilm
#   bash benches/bert_throughput.sh [ROUNDS] [MODE]      # MODE: lora (default), head, full
set -euo pipefail
cd "$(dirname "$0")/.."
rounds="${1:-3}"
mode="${2:-lora}"
model="${MINILM:-target/minilm}"
python="${PYTHON:-python3}"
cargo build --release --example bert_throughput
bin="${CARGO_TARGET_DIR:-target}/release/examples/bert_throughput"
out="$(mktemp -d)"
for round in $(seq 1 "$rounds"); do
  RAYON_NUM_THREADS=1 taskset -c 0 "$bin" --pretrained "$model" \
    --mode "$mode" --summary "$out/fedtune-$round.json" >/dev/null
  taskset -c 0 "$python" benches/bert_throughput_torch.py --pretrained "$model" --mode "$mode" \
    --json "$out/torch-$round.json" >/dev/null 2>&1
  python3 - "$out/fedtune-$round.json" "$out/torch-$round.json" "$round" <<'PY'
import json, sys
f, t = (json.load(open(p)) for p in sys.argv[1:3])
fs, ts = f["samples_per_second_median"], t["samples_per_second_median"]
mib = 2 ** 20
print(f"round {sys.argv[3]}: fedtune {fs:6.1f} samples/s   pytorch {ts:6.1f} samples/s   ratio {fs / ts:.2f}   "
      f"peak RSS fedtune {f['peak_rss_bytes'] / mib:.0f} MiB ({f['peak_rss_bytes'] / f['weights_bytes']:.2f}x weights), "
      f"pytorch {t['peak_rss_bytes'] / mib:.0f} MiB")
PY
done
