"""Trains the tiny model a few steps with `MaskedDiffusionTrainer`; the 1-process / 2-process comparison runs it.

`python -m torch.distributed.run --standalone --nproc_per_node 2 tests/ddp_train_helper.py OUT PER_DEVICE ACCUM`
writes the logged losses to `OUT/losses.json` and the final weights to `OUT/final/` (rank 0 writes).
"""

import json
import sys
from pathlib import Path

sys.path[:0] = [str(Path(__file__).resolve().parent), str(Path(__file__).resolve().parents[1])]

from datasets import Dataset  # noqa: E402

from tiny import make_model  # noqa: E402
from tiny_tokenizer import make_tiny_tokenizer  # noqa: E402
from train_sft import (  # noqa: E402
    DataArguments,
    DiffusionDataCollator,
    DiffusionTrainingArguments,
    MaskedDiffusionTrainer,
    build_dataset,
)

WINDOW = 24


def sft_rows(num_examples: int = 48) -> Dataset:
    """Packed SFT rows of varying length and prompt share, so micro-batches hold different token counts."""
    raw = Dataset.from_list([
        {"prompt": " ".join(str((i + k) % 50) for k in range(1 + i % 5)), "response": " ".join(["cat"] * (1 + i % 4))}
        for i in range(num_examples)
    ])
    return build_dataset(raw, make_tiny_tokenizer(), DataArguments(max_seq_length=WINDOW, packing="packed"))


def make_trainer(
    output_dir: str, per_device: int, accumulation: int, max_steps: int = 4, model=None, callbacks=None, **overrides
) -> MaskedDiffusionTrainer:
    """A trainer on `sft_rows()` with response-only masking and rows padded to the window length."""
    settings = dict(
        max_steps=max_steps, per_device_train_batch_size=per_device, gradient_accumulation_steps=accumulation,
        learning_rate=1e-2, min_lr=1e-3, warmup_steps=1, mask_scope="response_only", use_cpu=True, report_to="none",
        logging_steps=1, save_strategy="no", disable_tqdm=True, max_grad_norm=0.0, seed=3,
    )
    args = DiffusionTrainingArguments(output_dir, **{**settings, **overrides})
    tokenizer = make_tiny_tokenizer()
    return MaskedDiffusionTrainer(
        model=make_model(seed=1) if model is None else model, args=args, train_dataset=sft_rows(),
        processing_class=tokenizer, callbacks=callbacks,
        data_collator=DiffusionDataCollator(tokenizer.pad_token_id, args.mask_scope, pad_to_multiple_of=WINDOW),
    )


def train(output_dir: str, per_device: int, accumulation: int, **kwargs) -> MaskedDiffusionTrainer:
    trainer = make_trainer(output_dir, per_device, accumulation, **kwargs)
    trainer.train()
    return trainer


def logged_losses(trainer: MaskedDiffusionTrainer) -> list[float]:
    return [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]


if __name__ == "__main__":
    out, per_device, accumulation = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    trainer = train(out, per_device, accumulation)
    if trainer.is_world_process_zero():
        trainer.model.save_pretrained(Path(out) / "final")
        (Path(out) / "losses.json").write_text(json.dumps(logged_losses(trainer)))
