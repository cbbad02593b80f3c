"""Experiment: SFT on the demo tasks without the cue that tells the model where an answer ends.

    python bench/demo_trailing_masks.py --output runs/trailing-masks            # 1,500 steps from illada-demo/
    python -m illada.demo.evaluate --model runs/trailing-masks --trust-remote-code --output none --no-mc
    python bench/demo_stop_probe.py --model runs/trailing-masks --trust-remote-code --no-write

The package's SFT (the paper's) streams `prompt + response + EOS` examples one after another into each window, so
the answer's EOS is followed by the next example's `<bos><|user|>`; `bench/demo_stop_probe.py` shows the demo model
reads the end of an answer from those tokens. Here each row holds one example followed by k ~ U{0, ..., max_k}
mask tokens that are input only (no loss), as the generation canvas has masks after the answer; everything else is
the masked-diffusion loss of `train_sft.py` (t ~ U(eps, 1) per row, every example token maskable, 1/t weight,
summed and divided by the example tokens of the batch). Not part of the recipe: a measurement (README, demo
section).
"""

import argparse
import random
import sys
import time
from functools import partial
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from illada.data import tokenize_example  # noqa: E402
from illada.demo.build_demo_model import BuildArguments  # noqa: E402
from illada.demo.data import make_examples  # noqa: E402
from illada.demo.loading import SHIPPED_MODEL_DIR, load_model  # noqa: E402
from illada.trainer import diffusion_lr_lambda, masked_diffusion_loss, sample_mask  # noqa: E402


def trailing_mask_batch(
    rows: list[list[int]], trailing: list[int], mask_id: int, pad_id: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Right-padded rows, each example followed by `trailing[i]` masks: `(input_ids, attention_mask, is_example)`,
    where `is_example` marks the example's own tokens (the only ones that can be masked and carry loss)."""
    length = max(len(row) + extra for row, extra in zip(rows, trailing))
    input_ids = torch.full((len(rows), length), pad_id)
    attention_mask = torch.zeros(len(rows), length, dtype=torch.long)
    is_example = torch.zeros(len(rows), length, dtype=torch.bool)
    for i, (row, extra) in enumerate(zip(rows, trailing)):
        input_ids[i, : len(row)] = torch.tensor(row)
        input_ids[i, len(row) : len(row) + extra] = mask_id
        attention_mask[i, : len(row) + extra] = 1
        is_example[i, : len(row)] = True
    return input_ids, attention_mask, is_example


def diffusion_loss(
    model,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    is_example: torch.Tensor,
    mask_id: int,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Masked-diffusion loss over the example tokens: `train_sft.py`'s forward process and loss (see the module
    docstring), normalised by the example tokens of the batch."""
    noisy, masked, t = sample_mask(input_ids, is_example, mask_id, generator=generator)
    logits = model(input_ids=noisy, attention_mask=attention_mask).logits
    return masked_diffusion_loss(
        logits[masked], input_ids[masked], t[:, None].expand_as(masked)[masked], is_example.sum()
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=str(SHIPPED_MODEL_DIR))
    parser.add_argument("--trust-remote-code", action="store_true", help="Needed for any folder but illada-demo/.")
    parser.add_argument("--output", required=True, help="Folder of the fine-tuned model.")
    parser.add_argument("--steps", type=int, default=1500)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument(
        "--max-trailing",
        type=int,
        default=31,
        help="Most masks after an example (default 31: the generation block of 32 minus the EOS).",
    )
    parser.add_argument("--learning-rate", type=float, default=1e-3)
    parser.add_argument("--min-lr", type=float, default=3e-5)
    parser.add_argument("--warmup-steps", type=int, default=50)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    torch.manual_seed(args.seed)
    rng = random.Random(args.seed)
    model, tokenizer = load_model(args.model, trust_remote_code=args.trust_remote_code)
    model.train()
    # the shipped recipe's task mix, drawn with a seed the build does not use
    examples = make_examples("train", args.steps * args.batch_size, seed=11, tasks=BuildArguments().weighted_tasks())
    # prompt + response + EOS exactly as train_sft.py tokenises a prompt/response row
    rows = [
        tokenize_example({"prompt": e.prompt, "response": e.response}, index, tokenizer, "prompt-response", "text")[
            "input_ids"
        ]
        for index, e in enumerate(examples)
    ]
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.learning_rate, weight_decay=0.1)
    # train_sft.py's schedule: linear warmup, then a linear decay to min_lr over all later steps
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer,
        partial(
            diffusion_lr_lambda,
            warmup_steps=args.warmup_steps,
            total_steps=args.steps,
            decay_fraction=1.0,
            min_lr_ratio=args.min_lr / args.learning_rate,
            decay="linear",
        ),
    )
    start = time.perf_counter()
    for step in range(args.steps):
        lr = scheduler.get_last_lr()[0]
        batch = rows[step * args.batch_size : (step + 1) * args.batch_size]
        trailing = [rng.randint(0, args.max_trailing) for _ in batch]
        tensors = trailing_mask_batch(batch, trailing, tokenizer.mask_token_id, tokenizer.pad_token_id)
        loss = diffusion_loss(model, *tensors, tokenizer.mask_token_id)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad()
        if step % 100 == 0 or step == args.steps - 1:
            print(f"step {step}: loss {loss.item():.3f}, lr {lr:.2e}, {time.perf_counter() - start:.0f} s", flush=True)
    model.save_pretrained(args.output)
    tokenizer.save_pretrained(args.output)
    print(f"Model written to {args.output}")


if __name__ == "__main__":
    main()
