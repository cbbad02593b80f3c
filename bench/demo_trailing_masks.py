"""Experiment: SFT on the demo tasks without the cue that tells the model where an answer ends.

    python bench/demo_trailing_masks.py --output runs/trailing-masks            # 1,500 steps from illada-demo/
    python -m demo.evaluate --model runs/trailing-masks --trust-remote-code --output none --no-mc
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
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from demo.build_demo_model import BuildArguments  # noqa: E402
from demo.data import make_examples  # noqa: E402
from demo.loading import SHIPPED_MODEL_DIR, encode, load_model  # noqa: E402

EPS = 1e-3  # smallest masking rate, as train_sft.py's


def example_ids(tokenizer, prompt: str, response: str) -> list[int]:
    """The chat-rendered prompt (with the assistant marker), the response and one EOS."""
    ids = encode(tokenizer, [{"role": "user", "content": prompt}])[0].tolist()
    return ids + tokenizer(response, add_special_tokens=False).input_ids + [tokenizer.eos_token_id]


def trailing_mask_batch(rows: list[list[int]], trailing: list[int], mask_id: int,
                        pad_id: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
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


def diffusion_loss(model, input_ids: torch.Tensor, attention_mask: torch.Tensor, is_example: torch.Tensor,
                   mask_id: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """Masked-diffusion loss over the example tokens (see the module docstring)."""
    t = torch.rand(len(input_ids), 1, generator=generator) * (1 - EPS) + EPS
    masked = (torch.rand(input_ids.shape, generator=generator) < t) & is_example
    noisy = torch.where(masked, torch.full_like(input_ids, mask_id), input_ids)
    logits = model(input_ids=noisy, attention_mask=attention_mask).logits.float()
    token_loss = torch.nn.functional.cross_entropy(logits.transpose(1, 2), input_ids, reduction="none")
    return (token_loss * masked / t).sum() / is_example.sum()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=str(SHIPPED_MODEL_DIR))
    parser.add_argument("--trust-remote-code", action="store_true", help="Needed for any folder but illada-demo/.")
    parser.add_argument("--output", required=True, help="Folder of the fine-tuned model.")
    parser.add_argument("--steps", type=int, default=1500)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--max-trailing", type=int, default=31, help="Most masks after an example (default 31: "
                        "the generation block of 32 minus the EOS).")
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
    rows = [example_ids(tokenizer, e.prompt, e.response) for e in examples]
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.learning_rate, weight_decay=0.1)
    start = time.perf_counter()
    for step in range(args.steps):
        if step < args.warmup_steps:
            lr = args.learning_rate * (step + 1) / args.warmup_steps
        else:  # linear decay to min_lr
            done = (step - args.warmup_steps) / max(1, args.steps - args.warmup_steps)
            lr = args.min_lr + (args.learning_rate - args.min_lr) * (1 - done)
        for group in optimizer.param_groups:
            group["lr"] = lr
        batch = rows[step * args.batch_size : (step + 1) * args.batch_size]
        trailing = [rng.randint(0, args.max_trailing) for _ in batch]
        tensors = trailing_mask_batch(batch, trailing, tokenizer.mask_token_id, tokenizer.pad_token_id)
        loss = diffusion_loss(model, *tensors, tokenizer.mask_token_id)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad()
        if step % 100 == 0 or step == args.steps - 1:
            print(f"step {step}: loss {loss.item():.3f}, lr {lr:.2e}, {time.perf_counter() - start:.0f} s", flush=True)
    model.save_pretrained(args.output)
    tokenizer.save_pretrained(args.output)
    print(f"Model written to {args.output}")


if __name__ == "__main__":
    main()
