#!/usr/bin/env bash
# Peak resident memory of the agent daemon training the NIID-Bench LeNet on its
# Fashion-MNIST share (Dirichlet 0.5 over 10 clients), next to the size of that share.
# Runs the release binaries as a user would: `fedtune-aggregator serve` and two
# `fedtune-agent run` daemons on 127.0.0.1, 3 rounds of one local epoch.
#
#   bash benches/agent_memory.sh
#
# Needs Debian's dataset-fashion-mnist (`bash .ci/test` installs it).
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --workspace --bins -q
bin=target/release
dir=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$dir"' EXIT
"$bin/fedtune-aggregator" init --out "$dir/pki" --agents 2 >/dev/null
port=$((20000 + RANDOM % 20000))

sed -e "s/127.0.0.1:4433/127.0.0.1:$port/" \
    -e 's/^rounds = 30/rounds = 3/' \
    -e 's/^min_agents = 3 /min_agents = 2 /' \
    -e 's/^loopback = false/loopback = true/' \
    -e 's/^input = 64$/channels = 1\nheight = 28\nwidth = 28\nblocks = [{ channels = 6, kernel = 5 }, { channels = 16, kernel = 5 }]/' \
    -e 's/^hidden = \[64\]$/hidden = [120, 84]/' \
    -e 's/^\[model.mlp\]$/[model.cnn]/' \
    -e 's/^learning_rate = 0.01$/learning_rate = 0.001/' \
    -e 's/^batch_size = 32$/batch_size = 64/' \
    -e 's/^local_epochs = 2$/local_epochs = 1/' \
    config/aggregator.toml > "$dir/aggregator.toml"
grep -q '^\[model.cnn\]' "$dir/aggregator.toml"

for i in 0 1; do
  sed -e "s/127.0.0.1:4433/127.0.0.1:$port/" \
      -e "s/agent-0/agent-$i/" \
      -e "s/^client = 0/client = $i/" \
      -e 's/^loopback = false/loopback = true/' \
      -e 's|^source = .*|source = { kind = "fashion-mnist" }|' \
      -e 's|^partition = .*|partition = "dirichlet:0.5"|' \
      config/agent.toml > "$dir/agent-$i.toml"
done

"$bin/fedtune-aggregator" serve --config "$dir/aggregator.toml" > "$dir/aggregator.log" 2>&1 &
aggregator=$!
sleep 0.5
RUST_LOG=info "$bin/fedtune-agent" run --config "$dir/agent-0.toml" > "$dir/agent-0.log" 2>&1 &
agent=$!
"$bin/fedtune-agent" run --config "$dir/agent-1.toml" > "$dir/agent-1.log" 2>&1 &

# Sample agent 0 until the run ends: its peak (VmHWM) and its resident size while
# training (VmRSS).
peak_rss=0
while kill -0 "$agent" 2>/dev/null; do
  rss=$(awk '/^VmRSS:/ { print $2 }' "/proc/$agent/status" 2>/dev/null || echo 0)
  hwm=$(awk '/^VmHWM:/ { print $2 }' "/proc/$agent/status" 2>/dev/null || echo 0)
  if [ "${rss:-0}" -gt "$peak_rss" ]; then peak_rss=$rss; fi
  if [ "${hwm:-0}" -gt 0 ]; then last_hwm=$hwm; fi
  sleep 0.05
done
wait "$aggregator" || { cat "$dir/aggregator.log"; exit 1; }
plain() { sed 's/\x1b\[[0-9;]*m//g' "$1"; }
train=$(plain "$dir/agent-0.log" | grep -o 'train=[0-9]*' | head -1 | cut -d= -f2)
validation=$(plain "$dir/agent-0.log" | grep -o 'validation=[0-9]*' | head -1 | cut -d= -f2)
rows=$((train + validation))
echo "agent-0 holds $rows images ($train train, $validation validation): $((rows * 784 * 4 / 1024)) KiB of f32 pixels"
echo "agent-0 peak resident memory (VmHWM): $((last_hwm / 1024)) MiB; largest VmRSS sampled: $((peak_rss / 1024)) MiB"
echo "peak minus the data: $(((last_hwm - rows * 784 * 4 / 1024) / 1024)) MiB"
plain "$dir/aggregator.log" | grep -h "round   2" | tail -1 || true
