"""Training cost: packed versus padded batches, and logits at masked positions versus full logits.

    python bench/bench_training.py

Each case runs forward + backward of the masked-diffusion loss (`illada.trainer.sample_mask` and
`illada.trainer.masked_diffusion_loss`) over the same documents, in as many optimizer steps, in a child process of its
own, so that the peak resident memory (`ru_maxrss` growth from before the first step) belongs to that case alone.
Writes the `training` section of bench/RESULTS.md.

- padded: the documents in batches of `--batch_docs`, each padded to the longest of its batch (attention mask).
- packed: the documents first-fit into rows of `--row_len` tokens; a document never crosses a row, position ids
  restart at every document (the model keeps documents apart), the rest of a row is one padding segment.
- logits: the same packed batches, with the LM head at masked positions only (`logits_to_keep=<bool mask>`,
  what the trainer does) or at every position before selecting the masked ones.
"""

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from common import environment, markdown_table, write_section  # noqa: E402

from illada.configuration_illada import ILLaDAConfig  # noqa: E402
from illada.modeling_illada import ILLaDAForCausalLM  # noqa: E402
from illada.trainer import masked_diffusion_loss, sample_mask  # noqa: E402

PAD, MASK = 1, 5


def document_lengths(count: int, seed: int, low: int, high: int) -> list[int]:
    """A long-tailed mix (log-normal, median ~100 tokens), like chat/SFT examples."""
    g = torch.Generator().manual_seed(seed)
    lengths = torch.exp(torch.randn(count, generator=g) * 0.8 + 4.6).round().clamp(low, high)
    return [int(n) for n in lengths]


def padded_batches(docs: list[torch.Tensor], batch_docs: int) -> list[dict]:
    batches = []
    for i in range(0, len(docs), batch_docs):
        group = docs[i : i + batch_docs]
        width = max(len(d) for d in group)
        ids = torch.full((len(group), width), PAD)
        mask = torch.zeros(len(group), width, dtype=torch.long)
        for row, doc in enumerate(group):
            ids[row, : len(doc)], mask[row, : len(doc)] = doc, 1
        batches.append({"input_ids": ids, "attention_mask": mask, "maskable": mask.bool()})
    return batches


def packed_batches(docs: list[torch.Tensor], row_len: int, num_batches: int) -> list[dict]:
    """Rows of `row_len` tokens, split into `num_batches` batches (as many optimizer steps as padded)."""
    rows: list[list[torch.Tensor]] = []
    for doc in sorted(docs, key=len, reverse=True):  # first-fit decreasing
        target = next((r for r in rows if sum(map(len, r)) + len(doc) <= row_len), None)
        rows.append([doc]) if target is None else target.append(doc)
    rows_per_batch = -(-len(rows) // num_batches)
    batches = []
    for i in range(0, len(rows), rows_per_batch):
        ids = torch.full((len(rows[i : i + rows_per_batch]), row_len), PAD)
        positions, maskable = torch.zeros_like(ids), torch.zeros_like(ids, dtype=torch.bool)
        for r, row in enumerate(rows[i : i + rows_per_batch]):
            start = 0
            for doc in row:
                ids[r, start : start + len(doc)] = doc
                positions[r, start : start + len(doc)] = torch.arange(len(doc))
                maskable[r, start : start + len(doc)] = True
                start += len(doc)
            positions[r, start:] = torch.arange(row_len - start)  # padding: a segment of its own
        batches.append({"input_ids": ids, "position_ids": positions, "maskable": maskable})
    return batches


def train_step(model: ILLaDAForCausalLM, batch: dict, full_logits: bool, generator: torch.Generator) -> int:
    """One forward + backward; returns the number of positions the LM head ran on."""
    ids, maskable = batch["input_ids"], batch["maskable"]
    noisy, masked, t = sample_mask(ids, maskable, MASK, generator=generator)
    extra = {k: batch[k] for k in ("attention_mask", "position_ids") if k in batch}
    if full_logits:
        logits = model(noisy, **extra).logits[masked]  # [B, L, V] first, then the masked rows
    else:
        logits = model(noisy, logits_to_keep=masked, **extra).logits  # [N, V]
    t_per_token = t[:, None].expand_as(masked)[masked]
    masked_diffusion_loss(logits, ids[masked], t_per_token, maskable.sum()).backward()
    return ids.numel() if full_logits else int(masked.sum())


def run_case(args: argparse.Namespace) -> dict:
    torch.manual_seed(0)
    config = ILLaDAConfig(
        vocab_size=args.vocab,
        hidden_size=args.hidden,
        intermediate_size=args.hidden * 3,
        num_hidden_layers=args.layers,
        num_attention_heads=args.hidden // 64,
        num_key_value_heads=max(1, args.hidden // 128),
        max_position_embeddings=args.row_len,
    )
    model = ILLaDAForCausalLM(config).train()
    lengths = document_lengths(args.docs, seed=0, low=16, high=args.row_len)
    g = torch.Generator().manual_seed(1)
    docs = [torch.randint(6, args.vocab, (n,), generator=g) for n in lengths]
    layout, logits_mode = args.case.split("-")
    batches = padded_batches(docs, args.batch_docs)
    if layout == "packed":
        batches = packed_batches(docs, args.row_len, num_batches=len(batches))
    real = sum(lengths)
    computed = sum(b["input_ids"].numel() for b in batches)
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # model and data built, no step yet
    train_step(model, batches[0], logits_mode == "full", torch.Generator().manual_seed(0))  # warm-up
    model.zero_grad(set_to_none=True)
    start = time.perf_counter()
    generator = torch.Generator().manual_seed(0)
    head_positions = 0
    for batch in batches:
        head_positions += train_step(model, batch, logits_mode == "full", generator)
        model.zero_grad(set_to_none=True)
    seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {
        "case": args.case,
        "tokens": real,
        "computed": computed,
        "seconds": seconds,
        "peak_mb": max(peak - rss_before, 0) / 1024,
        "batches": len(batches),
        "logits_mb": head_positions * args.vocab * 4 / 2**20 / len(batches),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--vocab", type=int, default=32000)
    parser.add_argument("--docs", type=int, default=96, help="Documents in the length mix.")
    parser.add_argument("--row_len", type=int, default=512)
    parser.add_argument("--batch_docs", type=int, default=8, help="Documents per padded batch.")
    parser.add_argument("--case", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.case:
        print(json.dumps(run_case(args)))
        return
    flags = [f"--{k}={v}" for k, v in vars(args).items() if k != "case"]
    results = {}
    for case in ("padded-masked", "packed-masked", "packed-full"):
        out = subprocess.run(
            [sys.executable, __file__, *flags, f"--case={case}"], capture_output=True, text=True, check=True
        )
        results[case] = json.loads(out.stdout.strip().splitlines()[-1])
    base = results["padded-masked"]
    rows = [
        [
            case,
            r["batches"],
            r["tokens"],
            r["computed"],
            f"{r['tokens'] / r['computed']:.0%}",
            f"{r['tokens'] / r['seconds']:.0f}",
            f"{(r['tokens'] / r['seconds']) / (base['tokens'] / base['seconds']):.2f}x",
            f"{r['logits_mb']:.0f}",
            f"{r['peak_mb']:.0f}",
        ]
        for case, r in results.items()
    ]
    table = markdown_table(
        [
            "case",
            "batches",
            "real tokens",
            "tokens computed",
            "useful",
            "tokens/s",
            "vs padded",
            "fp32 logits per step (MB)",
            "peak RSS growth (MB)",
        ],
        rows,
    )
    command = "python bench/bench_training.py " + " ".join(flags)
    body = (
        f"## Training: packed vs padded, masked vs full logits\n\n`{command}` (forward + backward of the "
        f"masked-diffusion loss, fp32; {environment()})\n\n{table}\n\n`useful` = real tokens / tokens run "
        f"through the model; peak memory is the growth of the child process's peak resident set (`ru_maxrss`) over "
        f"the training steps, from its value once the model and data are built."
    )
    print(body)
    write_section("training", body)


if __name__ == "__main__":
    main()
