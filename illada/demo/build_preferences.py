"""Builds a preference set for the demo model from its TRAINING split, offline: the gold answer is preferred to the
model's own wrong answers and to near misses.

Run from the repository root (about 0.5 s per question on one CPU thread for the shipped model):

    python -m illada.demo.build_preferences --output outputs/preferences.jsonl
    python -m illada.demo.build_preferences --help

For each question of `illada.demo.data.make_examples("train", ...)` (never a held-out problem), the model answers with
its own generation config, as `illada.demo.evaluate` does. A wrong answer gives the pair (gold, own answer); every
question also gives `--near-misses` pairs (gold, near miss), the near misses being the task's perturbations of
the gold answer (an off-by-one sum, two swapped items, another capital: `illada.demo.data.make_multiple_choice`). Rows
are trl's conversational preference format: `prompt` (a user turn), `chosen` and `rejected` (an assistant turn
each), plus `task` and `kind` (`own` or `near_miss`). A summary (training-split exact match, pair counts) is
written next to the output as `<output>.summary.json`.

`--split heldout --near-misses-only` builds pairs of held-out problems without running the model, to watch the
reward accuracy on unseen problems while training (`train_vrpo.py --eval_files ...`), never to train on.
"""

import argparse
import json
import random
import sys
import time
from pathlib import Path

import torch

from illada.demo.data import SPLITS, TASKS, Example, make_examples, make_multiple_choice
from illada.demo.evaluate import generate_one
from illada.demo.loading import add_model_arguments, check_model_folder, load_model
from illada.utils import check_non_negative_int
from illada.utils_illada import check_positive_int

# Seed of the training-split draws; differs from the demo build's (DEMO_SEED), so the questions are a fresh sample
# of the training problems, not the exact SFT rows.
PREFERENCE_SEED = 7
DEFAULT_QUESTIONS = 240  # 20 per task
DEFAULT_NEAR_MISSES = 1


def build_parser() -> argparse.ArgumentParser:
    """The command-line options (see the module docstring)."""
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_model_arguments(parser)
    parser.add_argument("--output", required=True, help="The .jsonl file to write.")
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="Replace `--output` (and its summary) if it exists; without it an existing file is refused.",
    )
    parser.add_argument(
        "--questions",
        type=int,
        default=DEFAULT_QUESTIONS,
        help=f"Training-split questions, spread over the tasks (default {DEFAULT_QUESTIONS}).",
    )
    parser.add_argument(
        "--near-misses",
        type=int,
        default=DEFAULT_NEAR_MISSES,
        help=f"Near-miss pairs per question (default {DEFAULT_NEAR_MISSES}).",
    )
    parser.add_argument(
        "--split",
        default="train",
        choices=SPLITS,
        help="Split of the questions (default train; `heldout` only to monitor training).",
    )
    parser.add_argument(
        "--near-misses-only",
        action="store_true",
        help="No generation: only (gold, near miss) pairs, without loading a model.",
    )
    parser.add_argument("--seed", type=int, default=PREFERENCE_SEED, help="Seed of the questions and near misses.")
    parser.add_argument("--threads", type=int, default=1, help="CPU threads of torch (default 1).")
    parser.add_argument(
        "--block-length",
        type=int,
        default=None,
        help="Generate with blocks of this many tokens (default: the model's generation config). The "
        "demo build sets it to the block length the exported model will generate with.",
    )
    return parser


def check_arguments(args: argparse.Namespace) -> None:
    """Raises `ValueError` for a bad count, a folder without a model or an output that exists (without
    `--overwrite`), before anything is loaded."""
    check_positive_int("--questions", args.questions)
    check_non_negative_int("--near-misses", args.near_misses)
    check_positive_int("--threads", args.threads)
    check_positive_int("--block-length", args.block_length, allow_none=True)
    if not args.near_misses_only:
        check_model_folder(args.model)
    output = Path(args.output)
    existing = [str(path) for path in (output, Path(f"{output}.summary.json")) if path.exists()]
    if existing and not args.overwrite:
        raise ValueError(
            f"{' and '.join(existing)} already exist(s): pass --overwrite to replace, or choose another --output."
        )
    if output.is_dir():
        raise ValueError(f"--output {args.output!r} is a folder: name the .jsonl file to write.")


def preference_row(example: Example, rejected: str, kind: str) -> dict:
    """One trl conversational preference row."""
    return {
        "prompt": [{"role": "user", "content": example.prompt}],
        "chosen": [{"role": "assistant", "content": example.response}],
        "rejected": [{"role": "assistant", "content": rejected}],
        "task": example.task,
        "kind": kind,
    }


def near_misses(example: Example, count: int, rng: random.Random) -> list[str]:
    """`count` distinct near misses of the gold answer (the multiple-choice distractors of the task)."""
    if count == 0:
        return []
    item = make_multiple_choice([example], seed=rng.randrange(2**31), num_choices=count + 1)[0]
    return [choice for i, choice in enumerate(item.choices) if i != item.gold]


def build_pairs(examples: list[Example], answers: list[str], num_near_misses: int, seed: int) -> list[dict]:
    """Pairs (gold, own wrong answer) and (gold, near miss), question by question."""
    rng = random.Random(f"{seed}:near-misses")
    rows = []
    for example, answer in zip(examples, answers):
        if answer != example.response.strip():
            rows.append(preference_row(example, answer, "own"))
        rows.extend(preference_row(example, wrong, "near_miss") for wrong in near_misses(example, num_near_misses, rng))
    return rows


def main(argv: list[str] | None = None) -> list[dict]:
    args = build_parser().parse_args(argv)
    try:
        check_arguments(args)
    except ValueError as error:
        sys.exit(f"error: {error}")
    torch.set_num_threads(args.threads)
    examples = make_examples(args.split, args.questions, seed=args.seed)
    start = time.perf_counter()
    answers = [e.response.strip() for e in examples]  # near misses only: no model needed
    if not args.near_misses_only:
        try:
            model, tokenizer = load_model(args.model, trust_remote_code=args.trust_remote_code)
        except ValueError as error:
            sys.exit(f"error: {error}")
        if args.block_length is not None:
            model.generation_config.block_length = args.block_length
        with torch.no_grad():
            answers = [generate_one(model, tokenizer, example)["answer"] for example in examples]
    rows = build_pairs(examples, answers, args.near_misses, args.seed)
    output = Path(args.output)
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text("".join(json.dumps(row) + "\n" for row in rows))
    correct = sum(a == e.response.strip() for a, e in zip(answers, examples))
    exact_match = None if args.near_misses_only else round(correct / len(examples), 4)
    summary = {
        "split": args.split,
        "questions": len(examples),
        "exact_match": exact_match,
        "pairs": len(rows),
        "own_wrong_answers": sum(r["kind"] == "own" for r in rows),
        "near_misses": sum(r["kind"] == "near_miss" for r in rows),
        "tasks": sorted(TASKS),
        "generation_s": round(time.perf_counter() - start, 1),
        "command": "python -m illada.demo.build_preferences " + " ".join(argv if argv is not None else sys.argv[1:]),
    }
    Path(f"{output}.summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(json.dumps(summary, indent=2))
    return rows


if __name__ == "__main__":
    main()
