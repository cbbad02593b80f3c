"""Trains the tiny model a few steps with `DiffusionSFTTrainer`; the 1-process / 2-process comparison runs it.

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

from illada.trainer import DiffusionSFTConfig, DiffusionSFTTrainer  # noqa: E402

WINDOW = 24

# Two Python processes importing torch, transformers and trl take ~10-15 s on the 2-core CI machine.
TORCHRUN_TIMEOUT_S = 300


def run_on_two_processes(helper: Path, out: Path) -> tuple[list[float], dict]:
    """Runs `helper OUT 1 2` (1 row per process, 2 accumulation steps) under `torchrun --nproc_per_node 2` (gloo,
    one thread each); returns the losses it logged (`OUT/losses.json`) and its final weights (`OUT/final/`)."""
    import os
    import subprocess

    from safetensors.torch import load_file

    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        "2",
        str(helper),
        str(out),
        "1",
        "2",
    ]
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=TORCHRUN_TIMEOUT_S)
    assert result.returncode == 0, result.stderr[-4000:]
    return json.loads((out / "losses.json").read_text()), load_file(out / "final" / "model.safetensors")


def sft_examples(num_examples: int = 48) -> Dataset:
    """Conversations of varying length and prompt share, so micro-batches hold different token counts."""
    return Dataset.from_list(
        [
            {
                "messages": [
                    {"role": "user", "content": " ".join(str((i + k) % 50) for k in range(1 + i % 5))},
                    {"role": "assistant", "content": " ".join(["cat"] * (1 + i % 4))},
                ]
            }
            for i in range(num_examples)
        ]
    )


def make_trainer(
    output_dir: str, per_device: int, accumulation: int, max_steps: int = 4, model=None, callbacks=None, **overrides
) -> DiffusionSFTTrainer:
    """A trainer on `sft_examples()`: whole examples packed best-fit into rows padded to the window length, with
    response-only masking (rows then hold different numbers of maskable tokens)."""
    settings = dict(
        max_steps=max_steps,
        per_device_train_batch_size=per_device,
        gradient_accumulation_steps=accumulation,
        learning_rate=1e-2,
        min_lr=1e-3,
        warmup_steps=1,
        completion_only_loss=True,
        packing_strategy="bfd",
        max_length=WINDOW,
        pad_to_multiple_of=WINDOW,
        use_cpu=True,
        report_to="none",
        logging_steps=1,
        save_strategy="no",
        disable_tqdm=True,
        max_grad_norm=0.0,
        seed=3,
    )
    args = DiffusionSFTConfig(output_dir, **{**settings, **overrides})
    return DiffusionSFTTrainer(
        model=make_model(seed=1) if model is None else model,
        args=args,
        train_dataset=sft_examples(),
        processing_class=make_tiny_tokenizer(),
        callbacks=callbacks,
    )


def train(output_dir: str, per_device: int, accumulation: int, **kwargs) -> DiffusionSFTTrainer:
    trainer = make_trainer(output_dir, per_device, accumulation, **kwargs)
    trainer.train()
    return trainer


def logged_losses(trainer: DiffusionSFTTrainer) -> list[float]:
    return [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]


if __name__ == "__main__":
    out, per_device, accumulation = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    trainer = train(out, per_device, accumulation)
    if trainer.is_world_process_zero():
        trainer.model.save_pretrained(Path(out) / "final")
        (Path(out) / "losses.json").write_text(json.dumps(logged_losses(trainer)))
    trainer.end()  # destroys the process group before the process exits, as the command lines do
