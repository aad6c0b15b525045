"""Checks that a model fedtune wrote as a Hugging Face folder (`final.hf/`, beside a run's
final model when `[model] pretrained` named its source) loads with transformers'
`BertForSequenceClassification.from_pretrained`, and that Hugging Face's class
probabilities on some texts equal those `fedtune-aggregator predict --json` printed for
the same texts (to 1e-4) — exactly so for a model with BERT's pooler; a mean-pooling
model (sentence-transformers') has no pooler for Hugging Face's class to use, which the
loading report shows.

    pip install torch transformers numpy          # not needed by CI
    fedtune-aggregator predict --model model.toml --weights final.safetensors --input texts.jsonl --json > fedtune.jsonl
    python3 benches/hf_from_pretrained.py final.hf texts.jsonl fedtune.jsonl
"""

import json
import sys

import torch
from transformers import AutoTokenizer, BertForSequenceClassification


def main():
    folder, texts_path, fedtune_path = sys.argv[1:4]
    model, info = BertForSequenceClassification.from_pretrained(
        folder, output_loading_info=True, attn_implementation="eager"
    )
    model.eval()
    print(f"loaded {folder}: {sum(p.numel() for p in model.parameters())} parameters, classes {model.config.id2label}")
    for kind in ("missing_keys", "unexpected_keys", "mismatched_keys"):
        print(f"  {kind}: {info[kind] or 'none'}")
    tokenizer = AutoTokenizer.from_pretrained(folder)
    texts = [json.loads(line)["text"] for line in open(texts_path) if line.strip()]
    theirs = [json.loads(line) for line in open(fedtune_path) if line.strip()]
    max_len = int(sys.argv[4]) if len(sys.argv) > 4 else 128
    batch = tokenizer(texts, padding="max_length", truncation=True, max_length=max_len, return_tensors="pt")
    with torch.no_grad():
        probabilities = torch.softmax(model(**batch).logits, dim=-1).tolist()
    worst = max(abs(a - b) for ours, row in zip(probabilities, theirs) for a, b in zip(ours, row["probabilities"]))
    agree = sum(model.config.id2label[max(range(len(p)), key=p.__getitem__)] == row["label"]
                for p, row in zip(probabilities, theirs))
    print(f"{len(texts)} texts: largest probability difference {worst:.2e}, same label on {agree}")
    sys.exit(0 if worst < 1e-4 or info["missing_keys"] else 1)


if __name__ == "__main__":
    main()
