"""Measures the demo model on the held-out split: generation exact match, answer length, forward passes, and
multiple-choice accuracy with confidence scoring versus likelihood scoring.

Run from the repository root (offline; about 2.5 minutes on one CPU thread for the shipped model):

    python -m illada.demo.evaluate                               # illada-demo/, writes illada-demo/eval_results.json
    python -m illada.demo.evaluate --model my-demo --trust-remote-code --output none  # another folder, print only
    python -m illada.demo.evaluate --help

Every question comes from `illada.demo.data.make_examples("heldout", ...)`: problems (and, for facts, wordings) that
training never saw. The model is loaded like any Hub model (`AutoModelForCausalLM`, `trust_remote_code=True`)
and generates with its own `generation_config.json` (variable-length, EOS-terminated), one question at a time,
so that the forward-pass count is the one of a single answer. An answer is right when its text, cut at the first
stop token and stripped of surrounding spaces, equals the reference. Multiple-choice items put each reference
among `NUM_CHOICES - 1` near misses (`illada.demo.data.make_multiple_choice`); every candidate is scored as its tokens
followed by EOS, by the paper's confidence scoring and by the Monte-Carlo likelihood bound.
"""

import argparse
import json
import sys
import time
from collections import defaultdict
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from illada.demo.data import TASKS, Example, make_examples, make_multiple_choice
from illada.demo.loading import add_model_arguments, check_model_folder, encode, load_model
from illada.utils_illada import check_positive_int

RESULTS_FILE = "eval_results.json"
# Seed of the held-out draws; the demo's built-in questions use the default seed, so these differ from them.
EVAL_SEED = 99
DEFAULT_PER_TASK = 25  # x 12 tasks = 300 questions: one question is 4 points of a task, 0.3 of the total
SCORING_METHODS = ("confidence", "likelihood")
LIKELIHOOD_SAMPLES = 64  # Monte-Carlo samples per multi-token candidate


@dataclass
class TaskResult:
    """Held-out figures of one task (or of all tasks together)."""

    questions: int = 0
    exact_match: float = 0.0
    mean_answer_tokens: float = 0.0
    stopped_at_eos: float = 0.0
    forward_passes_per_answer: float = 0.0
    mc_accuracy: dict[str, float] = field(default_factory=dict)


def build_parser() -> argparse.ArgumentParser:
    """The command-line options (see the module docstring)."""
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_model_arguments(parser)
    parser.add_argument(
        "--per-task",
        type=int,
        default=DEFAULT_PER_TASK,
        help=f"Held-out questions per task (default {DEFAULT_PER_TASK}).",
    )
    parser.add_argument("--seed", type=int, default=EVAL_SEED, help="Seed of the held-out draws.")
    parser.add_argument(
        "--output",
        default=None,
        help=f"JSON file of the results (default: <model>/{RESULTS_FILE}); 'none' prints only.",
    )
    parser.add_argument("--threads", type=int, default=1, help="CPU threads of torch (default 1).")
    parser.add_argument("--no-mc", action="store_true", help="Skip the multiple-choice scoring.")
    return parser


def check_arguments(args: argparse.Namespace) -> None:
    """Raises `ValueError` for a non-positive count or a folder without a model, before anything is loaded."""
    check_positive_int("--per-task", args.per_task)
    check_positive_int("--threads", args.threads)
    check_model_folder(args.model)


def generate_one(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, example: Example) -> dict:
    """Answers one question with the model's generation config; returns correctness, length, stop and nfe."""
    input_ids = encode(tokenizer, [{"role": "user", "content": example.prompt}])
    out = model.generate(input_ids, return_dict_in_generate=True)
    length = int(out.answer_lengths[0])
    answer_ids = out.sequences[0, input_ids.shape[1] : input_ids.shape[1] + length].tolist()
    text = tokenizer.decode(answer_ids, skip_special_tokens=True).strip()
    return {
        "correct": text == example.response.strip(),
        "tokens": length,
        "stopped": bool(out.stopped[0]),
        "nfe": int(out.nfe),
        "answer": text,
    }


def multiple_choice(
    model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, examples: list[Example], seed: int
) -> dict[str, list[bool]]:
    """Per method, whether each held-out item's gold candidate scores highest."""
    items = make_multiple_choice(examples, seed=seed)
    eos = model.config.eos_token_ids[0]
    prompts = [encode(tokenizer, [{"role": "user", "content": item.prompt}])[0].tolist() for item in items]
    choices = [[tokenizer(c, add_special_tokens=False)["input_ids"] + [eos] for c in item.choices] for item in items]
    results = {}
    for method in SCORING_METHODS:
        options = {"mc_num": LIKELIHOOD_SAMPLES, "generator": torch.Generator().manual_seed(seed)}
        scored = model.score_choices_batch(
            prompts, choices, method=method, **(options if method == "likelihood" else {})
        )
        results[method] = [out.best == item.gold for out, item in zip(scored, items)]
    return results


def summarise(rows: list[dict], mc: dict[str, list[bool]], examples: list[Example]) -> dict[str, TaskResult]:
    """Per-task and overall (`"all"`) figures."""
    groups = defaultdict(list)
    for index, example in enumerate(examples):
        groups[example.task].append(index)
    groups["all"] = list(range(len(examples)))  # last, as the table's total row

    def mean(values: list) -> float:
        return round(sum(values) / len(values), 4)

    return {
        name: TaskResult(
            questions=len(indices),
            exact_match=mean([rows[i]["correct"] for i in indices]),
            mean_answer_tokens=mean([rows[i]["tokens"] for i in indices]),
            stopped_at_eos=mean([rows[i]["stopped"] for i in indices]),
            forward_passes_per_answer=mean([rows[i]["nfe"] for i in indices]),
            mc_accuracy={method: mean([hits[i] for i in indices]) for method, hits in mc.items()},
        )
        for name, indices in groups.items()
    }


def print_table(summary: dict[str, TaskResult], budget: int) -> None:
    """The figures as a markdown table (the one in docs/demo.md)."""
    methods = list(summary["all"].mc_accuracy)
    header = ["task", "n", "exact match", "answer tokens", "stopped", "forward passes"] + [f"MC {m}" for m in methods]
    print("| " + " | ".join(header) + " |\n|" + "---|" * len(header))
    for name, result in summary.items():
        cells = [
            name,
            result.questions,
            f"{result.exact_match:.1%}",
            f"{result.mean_answer_tokens:.1f} / {budget}",
            f"{result.stopped_at_eos:.0%}",
            f"{result.forward_passes_per_answer:.1f}",
        ]
        cells += [f"{result.mc_accuracy[m]:.1%}" for m in methods]
        print("| " + " | ".join(str(c) for c in cells) + " |")


def evaluate(
    model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, per_task: int, seed: int, with_mc: bool = True
) -> dict:
    """Runs the whole evaluation; returns the JSON-ready results."""
    examples = make_examples("heldout", per_task * len(TASKS), seed=seed)
    start = time.perf_counter()
    with torch.no_grad():
        rows = [generate_one(model, tokenizer, example) for example in examples]
    generation_s = time.perf_counter() - start
    mc = multiple_choice(model, tokenizer, examples, seed) if with_mc else {}
    summary = summarise(rows, mc, examples)
    settings = model.generation_config
    return {
        "split": "heldout",
        "seed": seed,
        "questions": len(examples),
        "generation": {
            name: getattr(settings, name)
            for name in ("canvas", "max_new_tokens", "block_length", "steps", "threshold", "temperature")
        },
        "likelihood_samples": LIKELIHOOD_SAMPLES,
        "summary": {name: asdict(result) for name, result in summary.items()},
        "seconds": {"generation": round(generation_s, 1), "total": round(time.perf_counter() - start, 1)},
        "wrong_examples": [
            {"prompt": e.prompt, "reference": e.response, "answer": r["answer"]}
            for e, r in zip(examples, rows)
            if not r["correct"]
        ][:20],
    }


def main(argv: list[str] | None = None) -> dict:
    args = build_parser().parse_args(argv)
    try:
        check_arguments(args)
    except ValueError as error:
        sys.exit(f"error: {error}")
    torch.set_num_threads(args.threads)
    try:
        model, tokenizer = load_model(args.model, trust_remote_code=args.trust_remote_code)
    except ValueError as error:
        sys.exit(f"error: {error}")
    results = evaluate(model, tokenizer, args.per_task, args.seed, with_mc=not args.no_mc)
    results["command"] = " ".join(["python -m illada.demo.evaluate", *(argv if argv is not None else sys.argv[1:])])
    print_table({k: TaskResult(**v) for k, v in results["summary"].items()}, results["generation"]["max_new_tokens"])
    output = Path(args.model) / RESULTS_FILE if args.output is None else args.output
    if str(output) != "none":
        Path(output).write_text(json.dumps(results, indent=2) + "\n")
        print(f"Results written to {output}")
    return results


if __name__ == "__main__":
    main()
