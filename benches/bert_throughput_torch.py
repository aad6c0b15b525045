"""PyTorch's side of `benches/bert_throughput.sh`: one process fine-tuning a pretrained
Hugging Face encoder on CPU as a fedtune agent does in `examples/bert_throughput.rs`:
batch 32, sequences of 32 seeded token ids without padding ([CLS] … [SEP]), mean pooling
over the tokens, a linear head of 10 classes, Adam, and either LoRA r=8 (alpha 16) on the
attention's query and value with the head trained (peft), the head alone, or everything.
Dropout is on (train mode), as in fedtune's agents.

    pip install torch transformers peft numpy      # not needed by CI
    python3 benches/bert_throughput_torch.py --pretrained target/minilm --mode lora --json out.json
"""

import argparse
import json
import resource
import statistics
import time

import torch
from transformers import BertModel


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--pretrained", required=True)
    parser.add_argument("--mode", default="lora", choices=["lora", "head", "full"])
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--seq", type=int, default=32)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    encoder = BertModel.from_pretrained(args.pretrained, attn_implementation="eager", add_pooling_layer=False)
    head = torch.nn.Linear(encoder.config.hidden_size, 10)
    if args.mode == "lora":
        from peft import LoraConfig, get_peft_model

        encoder = get_peft_model(encoder, LoraConfig(r=8, lora_alpha=16, lora_dropout=0.0, target_modules=["query", "value"]))
    elif args.mode == "head":
        for p in encoder.parameters():
            p.requires_grad_(False)
    encoder.train()
    params = [p for p in encoder.parameters() if p.requires_grad] + list(head.parameters())
    optimizer = torch.optim.Adam(params, lr=1e-4)

    samples = args.steps * args.batch
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(1000, 20000, (samples, args.seq), generator=generator)
    ids[:, 0], ids[:, -1] = 101, 102
    labels = torch.randint(0, 10, (samples,), generator=generator)
    mask = torch.ones(args.batch, args.seq, dtype=torch.long)

    def run():
        for step in range(args.steps):
            rows = slice(step * args.batch, (step + 1) * args.batch)
            hidden = encoder(input_ids=ids[rows], attention_mask=mask).last_hidden_state
            loss = torch.nn.functional.cross_entropy(head(hidden.mean(1)), labels[rows])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()

    run()
    rates = []
    for rep in range(args.reps):
        started = time.perf_counter()
        run()
        rates.append(samples / (time.perf_counter() - started))
        print(f"  repetition {rep}: {rates[-1]:.1f} samples/s")
    weights = 4 * sum(p.numel() for p in encoder.parameters())
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    summary = {
        "framework": "pytorch",
        "version": torch.__version__,
        "mode": args.mode,
        "threads": args.threads,
        "batch": args.batch,
        "seq": args.seq,
        "steps": args.steps,
        "samples_per_second": rates,
        "samples_per_second_median": statistics.median(rates),
        "weights_bytes": weights,
        "peak_rss_bytes": peak,
    }
    print(f"median {summary['samples_per_second_median']:.1f} samples/s, peak RSS {peak / 2**20:.0f} MiB")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(summary, f)


if __name__ == "__main__":
    main()
