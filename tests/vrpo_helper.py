"""A tiny VRPO run shared by the tests and the 2-process comparison.

`python -m torch.distributed.run --standalone --nproc_per_node 2 tests/vrpo_helper.py OUT PER_DEVICE ACCUM`
trains a few steps and writes the logged losses to `OUT/losses.json` and the final weights to `OUT/final/`
(rank 0 writes).
"""

import json
import sys
from pathlib import Path

sys.path[:0] = [str(Path(__file__).resolve().parent), str(Path(__file__).resolve().parents[1])]

from datasets import Dataset  # noqa: E402
from tiny import make_model  # noqa: E402
from tiny_tokenizer import make_tiny_tokenizer  # noqa: E402

from illada.vrpo import VRPOConfig, VRPOTrainer  # noqa: E402

WORDS = ("cat", "dog", "red", "blue", "big", "small", "yes", "no")


def preference_rows(num_examples: int = 16, conversational: bool = True) -> Dataset:
    """Pairs with prompts and answers of varying lengths (so rows carry different padding)."""
    rows = []
    for i in range(num_examples):
        prompt = "count " + " ".join(str((i + k) % 50) for k in range(1 + i % 3))
        chosen = " ".join(WORDS[(i + k) % 8] for k in range(1 + i % 2))
        rejected = " ".join(WORDS[(i + 3 + k) % 8] for k in range(1 + (i + 1) % 3))
        if conversational:
            rows.append(
                {
                    "prompt": [{"role": "user", "content": prompt}],
                    "chosen": [{"role": "assistant", "content": chosen}],
                    "rejected": [{"role": "assistant", "content": rejected}],
                }
            )
        else:
            rows.append({"prompt": prompt, "chosen": " " + chosen, "rejected": " " + rejected})
    return Dataset.from_list(rows)


def make_trainer(
    output_dir: str, per_device: int = 4, accumulation: int = 1, max_steps: int = 2, model=None, **overrides
) -> VRPOTrainer:
    """A trainer on `preference_rows()` with a large learning rate, so that a few steps move the weights."""
    settings = dict(
        max_steps=max_steps,
        per_device_train_batch_size=per_device,
        gradient_accumulation_steps=accumulation,
        learning_rate=1e-2,
        beta=0.5,
        num_mc_samples=4,
        use_cpu=True,
        report_to="none",
        logging_steps=1,
        save_strategy="no",
        disable_tqdm=True,
        max_grad_norm=0.0,
        seed=3,
    )
    args = VRPOConfig(output_dir, **{**settings, **overrides})
    return VRPOTrainer(
        make_model(seed=1) if model is None else model,
        args=args,
        train_dataset=preference_rows(),
        processing_class=make_tiny_tokenizer(chat_template=True),
    )


def logged_losses(trainer: VRPOTrainer) -> list[float]:
    return [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]


if __name__ == "__main__":
    out, per_device, accumulation = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    trainer = make_trainer(out, per_device, accumulation, max_steps=3)
    trainer.train()
    if trainer.is_world_process_zero():
        trainer.model.save_pretrained(Path(out) / "final")
        (Path(out) / "losses.json").write_text(json.dumps(logged_losses(trainer)))
