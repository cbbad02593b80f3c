"""Learning curves of a demo-model build: held-out exact match of every task at every saved checkpoint.

A build run with `--save_steps N` (`python -m illada.demo.build_demo_model --save_steps 750 ...`) leaves `checkpoint-*`
folders in its SFT stage folder. This script answers the same held-out questions with each of them and writes one
JSON line per checkpoint (step, training loss, exact match per task and overall), plots the curves and prints
them as a markdown table:

    python -m illada.demo.learning_curves --run runs/demo-build/stage2-sft          # the checkpoints there now
    python -m illada.demo.learning_curves --run runs/demo-build/stage2-sft --watch  # ... and each new one, until
                                                                                     # the stage's final model
    python -m illada.demo.learning_curves --run my-continued-sft --step-offset 13000  # a run that continues another
                                                                                       # (steps counted from its start)

Checkpoints already in the output file are skipped, so the command can be re-run or left watching beside the build
(one torch thread by default, so that it takes little from the training run); with `--watch` it may be started
before the build has created the stage folder, and waits for it. The questions are drawn from the held-out split
with `--seed` (default 7), not with `illada.demo.evaluate`'s seed, so the curves used to choose a recipe are measured
on other questions than the final table.
"""

import argparse
import json
import re
import sys
import time
from collections import defaultdict
from pathlib import Path

import torch

from illada.demo.data import TASKS, make_examples
from illada.demo.evaluate import generate_one
from illada.utils import check_non_negative_int
from illada.utils_illada import check_positive_int

CURVE_SEED = 7
DEFAULT_PER_TASK = 8
CURVES_FILE = "learning_curves.jsonl"
PLOT_FILE = "learning_curves.png"
POLL_S = 30


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--run", required=True, help="A training output folder holding `checkpoint-*` folders.")
    parser.add_argument(
        "--per-task",
        type=int,
        default=DEFAULT_PER_TASK,
        help=f"Held-out questions per task (default {DEFAULT_PER_TASK}).",
    )
    parser.add_argument(
        "--seed", type=int, default=CURVE_SEED, help=f"Seed of the held-out draws (default {CURVE_SEED})."
    )
    parser.add_argument("--block-length", type=int, default=32, help="Generation block length (default 32).")
    parser.add_argument("--output", default=None, help=f"JSON-lines file (default: <run>/{CURVES_FILE}).")
    parser.add_argument(
        "--plot", default=None, help=f"PNG of the curves (default: <run>/{PLOT_FILE}); 'none': no plot."
    )
    parser.add_argument(
        "--watch",
        action="store_true",
        help="Keep polling for new checkpoints (and for the folder itself, if the build has not "
        "created it yet) until the run's final model (train_results.json) exists.",
    )
    parser.add_argument("--threads", type=int, default=1, help="CPU threads of torch (default 1).")
    parser.add_argument(
        "--step-offset",
        type=int,
        default=0,
        help="Added to every checkpoint's step, for a stage that continues another (stage 3 of the "
        "build: the steps of stage 2); default 0.",
    )
    return parser


def checkpoints(run: Path) -> list[tuple[int, Path]]:
    """`(step, folder)` of the run's complete checkpoints (weights and trainer state written), by step."""
    found = []
    for folder in run.glob("checkpoint-*"):
        match = re.fullmatch(r"checkpoint-(\d+)", folder.name)
        if match and (folder / "model.safetensors").is_file() and (folder / "trainer_state.json").is_file():
            found.append((int(match.group(1)), folder))
    return sorted(found)


def training_loss(folder: Path, step: int) -> float | None:
    """Mean of the logged training losses over the last logging window before `step` (from trainer_state.json)."""
    history = json.loads((folder / "trainer_state.json").read_text()).get("log_history", [])
    losses = [entry["loss"] for entry in history if "loss" in entry and entry.get("step", 0) <= step]
    return round(sum(losses[-5:]) / len(losses[-5:]), 4) if losses else None


def measure(folder: Path, step: int, per_task: int, seed: int, block_length: int) -> dict:
    """Exact match per task and overall of the checkpoint in `folder` on the held-out questions."""
    from illada.modeling_illada import ILLaDAForCausalLM  # the repository's own code: checkpoints are ours
    from illada.utils import load_tokenizer

    model = ILLaDAForCausalLM.from_pretrained(folder).eval()
    model.generation_config.block_length = block_length
    tokenizer = load_tokenizer(folder, trust_remote_code=True)  # config.json names our own code
    examples = make_examples("heldout", per_task * len(TASKS), seed=seed)
    hits = defaultdict(list)
    start = time.perf_counter()
    with torch.no_grad():
        for example in examples:
            correct = generate_one(model, tokenizer, example)["correct"]
            hits[example.task].append(correct)
            hits["all"].append(correct)
    return {
        "step": step,
        "loss": training_loss(folder, step),
        "exact_match": {task: round(sum(v) / len(v), 4) for task, v in hits.items()},
        "questions_per_task": per_task,
        "seed": seed,
        "seconds": round(time.perf_counter() - start, 1),
    }


def plot(rows: list[dict], path: Path) -> None:
    """One line per task (thin) and the overall exact match (thick) against the training step."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = [row["step"] for row in rows]
    fig, ax = plt.subplots(figsize=(9, 5))
    for task in TASKS:
        ax.plot(steps, [row["exact_match"].get(task, float("nan")) for row in rows], lw=1, alpha=0.8, label=task)
    ax.plot(steps, [row["exact_match"]["all"] for row in rows], lw=3, color="black", label="all")
    ax.axhline(0.9, ls="--", color="grey", lw=0.8)
    ax.axhline(0.7, ls=":", color="grey", lw=0.8)
    ax.set(
        xlabel="SFT step",
        ylabel="held-out exact match",
        ylim=(-0.02, 1.02),
        title=f"Per-task learning curves ({rows[0]['questions_per_task']} held-out questions per task)",
    )
    ax.legend(fontsize=7, ncol=2, loc="lower right")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def markdown_table(rows: list[dict]) -> str:
    """The curves as a markdown table: one row per checkpoint, one column per task (exact match, %)."""
    header = ["step", "loss", "all", *TASKS]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows:
        cells = [str(row["step"]), f"{row['loss']:.3f}" if row["loss"] is not None else "-"]
        cells += [f"{row['exact_match'].get(name, float('nan')):.0%}" for name in ("all", *TASKS)]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> list[dict]:
    args = build_parser().parse_args(argv)
    check_positive_int("--per-task", args.per_task)
    check_positive_int("--threads", args.threads)
    check_positive_int("--block-length", args.block_length)
    check_non_negative_int("--step-offset", args.step_offset)
    run = Path(args.run)
    if not run.is_dir():
        if not args.watch:
            sys.exit(f"error: no training folder at {run}")
        print(f"Waiting for {run} to be created (--watch).", flush=True)
    torch.set_num_threads(args.threads)
    output = Path(args.output) if args.output else run / CURVES_FILE
    plot_path = None if args.plot == "none" else Path(args.plot) if args.plot else run / PLOT_FILE
    rows = [json.loads(line) for line in output.read_text().splitlines()] if output.is_file() else []
    while True:
        finished = (run / "train_results.json").is_file()  # read before the pass: the last pass sees every checkpoint
        done = {row["step"] for row in rows}
        for step, folder in checkpoints(run):  # none while the folder does not exist
            if step + args.step_offset in done:
                continue
            row = measure(folder, step, args.per_task, args.seed, args.block_length)
            row["step"] += args.step_offset
            rows.append(row)
            with output.open("a") as handle:
                handle.write(json.dumps(row) + "\n")
            print(
                f"step {row['step']:6d}  loss {row['loss']}  "
                + "  ".join(f"{task} {value:.0%}" for task, value in row["exact_match"].items()),
                flush=True,
            )
            rows.sort(key=lambda r: r["step"])
            if plot_path is not None:
                plot(rows, plot_path)
        if not args.watch or finished:
            if rows:
                print(markdown_table(rows))
            return rows
        time.sleep(POLL_S)


if __name__ == "__main__":
    main()
