"""The generation presets (`GENERATION_PRESETS`) against the official LLaDA loop, in one run on one machine.

    python bench/bench_presets.py --threads 1                      # demo model, then the random stack
    python bench/bench_presets.py --setup demo --num_prompts 96 --threads 1

Rows: the LLaDA loop (`bench/llada_baseline.py`: fixed canvas, the whole budget decoded, one token per step), then
each preset on the variable canvas: `exact` (the paper's whole blocks), `default` (stop at the answer's end),
`lossless-fast` (draft and verify, `draft_tokens` 4: 8 canvases per forward; also 7: 64 canvases), `fast`
(threshold 0.9 + prefix cache), and the paper's whole blocks with drafts (lossless against `exact`). Greedy, one token
per step unless a threshold or drafts commit more. Measured for each (see `bench_generation.py` for the counters):
forwards per answer, tokens forwarded (rows x columns of every forward: a verification forward over 4 drafts
counts every canvas), answer tokens per second of wall time, CPU seconds, and on the demo model the held-out exact match
and how many answers equal the default's token for token.

The random stack (`bench_generation.random_model`, EOS forced at 1/8 of the budget) gives cost: by default 2 layers of
iLLaDA 8B's shape (4096 wide, 14336 MLP, 32 heads, 8 key-value heads) and its vocabulary, so that a forward's time
grows with its batch as the 8B model's layers do; the last column turns the counts into the matmul FLOPs the same
forwards would cost on the whole 8B model (32 layers x 4096, vocab 155136):
projections per token forwarded (`bench_flops.forward_flops`) plus the LM head per logits position; the attention
matmuls, under 1% at these lengths, are left out. A CPU here cannot run all 32 layers in useful time.
"""

import argparse
import shlex
import sys
from functools import partial
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "bench")]
from bench_flops import forward_flops  # noqa: E402
from bench_generation import (  # noqa: E402
    PLAIN_SAMPLING,
    Result,
    baseline_answers,
    cut_answer,
    demo_accuracy,
    demo_prompts,
    forced_eos,
    measure,
    random_model,
)
from common import environment, markdown_table, write_section  # noqa: E402

from illada.configuration_illada import ILLaDAConfig  # noqa: E402
from illada.generation_config_illada import GENERATION_PRESETS  # noqa: E402
from illada.modeling_illada import ILLaDAForCausalLM  # noqa: E402

LLADA = "LLaDA loop (fixed canvas, whole budget)"
ROWS = {
    "exact (paper: whole blocks)": GENERATION_PRESETS["exact"],
    "default (stop at the answer's end)": GENERATION_PRESETS["default"],
    "lossless-fast (draft_tokens 4)": GENERATION_PRESETS["lossless-fast"],
    "lossless (draft_tokens 7)": {**GENERATION_PRESETS["lossless-fast"], "draft_tokens": 7},
    "exact + draft_tokens 4 (lossless whole blocks)": {**GENERATION_PRESETS["exact"], "draft_tokens": 4},
    "fast (threshold 0.9 + prefix cache)": GENERATION_PRESETS["fast"],
}
ILLADA_8B = ILLaDAConfig(
    vocab_size=155136,
    hidden_size=4096,
    intermediate_size=14336,
    num_hidden_layers=32,
    num_attention_heads=32,
    num_key_value_heads=8,
)


def preset_answers(model, prompts: list[torch.Tensor], preset: dict, budget: int, block: int, stops: set[int]):
    answers = []
    for prompt in prompts:
        options = {**PLAIN_SAMPLING, **preset, "max_new_tokens": budget, "block_length": block, "canvas": "variable"}
        sequences = model.generate(prompt, **options)
        answers += [cut_answer(row, stops) for row in sequences[:, prompt.shape[1] :].tolist()]
    return answers


def run_rows(model, prompts, budget: int, block: int, stops: set[int], repeats: int) -> dict[str, Result]:
    """The LLaDA loop, then every preset, on the same prompts; one warm-up call first."""
    preset_answers(model, prompts[:1], GENERATION_PRESETS["default"], block, block, stops)
    run = partial(baseline_answers, model, prompts, budget, block, budget, stops)
    results = {LLADA: measure(model, LLADA, run, repeats)}
    for label, preset in ROWS.items():
        run = partial(preset_answers, model, prompts, preset, budget, block, stops)
        results[label] = measure(model, label, run, repeats)
        print(f"  {label}: {results[label].seconds:.1f} s, {results[label].counts.forwards} forwards", flush=True)
    return results


def cost_rows(results: dict[str, Result], answers: int) -> list[list[str]]:
    """forwards per answer, tokens forwarded, answer tok/s, CPU seconds, each with its ratio to the LLaDA loop."""
    base = results[LLADA]
    rows = []
    for label, r in results.items():
        tokens = sum(len(a) for a in r.answers)
        speed, base_speed = tokens / r.seconds, sum(len(a) for a in base.answers) / base.seconds
        rows.append(
            [
                label,
                f"{r.counts.forwards / answers:.2f}",
                f"{base.counts.forwards / r.counts.forwards:.1f}x",
                f"{r.counts.tokens / 1e3:.1f}",
                f"{speed:.1f}",
                f"{speed / base_speed:.1f}x",
                f"{r.cpu_seconds:.1f} ({base.cpu_seconds / r.cpu_seconds:.1f}x)",
            ]
        )
    return rows


HEADER = [
    "setting",
    "forwards / answer",
    "fewer forwards than LLaDA loop",
    "tokens forwarded (k)",
    "answer tok/s",
    "tok/s vs LLaDA loop",
    "CPU s (vs LLaDA loop)",
]


def demo_section(args) -> str:
    from transformers import PreTrainedTokenizerFast

    model = ILLaDAForCausalLM.from_pretrained(args.model).eval()
    tokenizer = PreTrainedTokenizerFast.from_pretrained(args.model)
    examples, prompts = demo_prompts(tokenizer, args.num_prompts)
    stops = set(model.generation_config.stop_ids)
    print(f"demo model: {len(prompts)} held-out prompts", flush=True)
    results = run_rows(model, prompts, args.demo_budget, args.demo_block, stops, args.repeats)
    default = results["default (stop at the answer's end)"].answers
    exact = results["exact (paper: whole blocks)"].answers
    rows = [
        row
        + [
            f"{demo_accuracy(tokenizer, examples, r.answers, stops):.1%}",
            f"{sum(map(list.__eq__, r.answers, default))} / {sum(map(list.__eq__, r.answers, exact))}",
        ]
        for row, r in zip(cost_rows(results, len(prompts)), results.values())
    ]
    same = f"answers = default's / exact's (of {len(prompts)})"
    table = markdown_table(HEADER + ["held-out exact match", same], rows)
    return (
        f"### Demo model\n\n`{args.command}` (`illada-demo`, fp32, {len(prompts)} held-out prompts one at a time, "
        f"budget {args.demo_budget}, block {args.demo_block}, greedy; {environment()})\n\n{table}\n\n"
        + "\n".join(targets(results, examples, tokenizer, stops))
    )


def targets(results: dict[str, Result], examples, tokenizer, stops) -> list[str]:
    exact, default = results["exact (paper: whole blocks)"], results["default (stop at the answer's end)"]
    lossless, deep, fast, base = (
        results["lossless-fast (draft_tokens 4)"],
        results["lossless (draft_tokens 7)"],
        results["fast (threshold 0.9 + prefix cache)"],
        results[LLADA],
    )
    accuracy = {label: demo_accuracy(tokenizer, examples, r.answers, stops) for label, r in results.items()}
    speed = {label: sum(len(a) for a in r.answers) / r.seconds for label, r in results.items()}
    whole = results["exact + draft_tokens 4 (lossless whole blocks)"]

    def against_default(label: str, drafted: Result, digits: int) -> str:
        same = sum(map(list.__eq__, drafted.answers, default.answers))
        return (
            f"- {label} vs one token per step (the default): "
            f"{default.counts.forwards / drafted.counts.forwards:.{digits}f}x fewer forwards (target >= 2x), {same}/"
            f"{len(default.answers)} answers identical, {drafted.counts.tokens / default.counts.tokens:.1f}x the "
            "tokens forwarded."
        )

    return [
        f"- default vs paper-literal: {exact.counts.forwards / default.counts.forwards:.1f}x fewer forwards "
        f"(target >= 5x), exact match {accuracy[default.setting]:.1%} vs {accuracy[exact.setting]:.1%} (target >=).",
        against_default("lossless-fast", lossless, 1),
        against_default("`draft_tokens=7`", deep, 2),
        f"- the paper's whole blocks with `draft_tokens=4` vs without: "
        f"{exact.counts.forwards / whole.counts.forwards:.1f}x fewer forwards, "
        f"{sum(map(list.__eq__, whole.answers, exact.answers))}/{len(exact.answers)} answers identical.",
        f"- fast vs the LLaDA loop: {speed[fast.setting] / speed[base.setting]:.1f}x answer tokens/s (target >= 8x), "
        f"exact match {accuracy[fast.setting]:.1%} vs {accuracy[base.setting]:.1%} (target: within 1 point).",
    ]


def random_section(args) -> str:
    model = random_model(args)
    g = torch.Generator().manual_seed(0)
    prompts = [torch.randint(6, args.vocab, (1, args.prompt_len), generator=g) for _ in range(args.random_prompts)]
    length = args.budget // 8
    print(f"random stack: {args.layers} x {args.hidden}, answer {length} of {args.budget}", flush=True)
    with forced_eos(model, args.prompt_len + length - 1):
        results = run_rows(model, prompts, args.budget, args.block, set(model.config.eos_token_ids), args.repeats)
    rows = []
    for row, r in zip(cost_rows(results, len(prompts)), results.values()):
        estimate = r.counts.tokens * forward_flops(ILLADA_8B, 1, 0) + 2 * r.counts.logits * 4096 * 155136
        rows.append(row + [f"{estimate / len(prompts) / 1e12:.2f}"])
    params = sum(p.numel() for p in model.parameters())
    return (
        f"### Random stack (cost)\n\n`{args.command}` ({args.layers} x {args.hidden}, vocab {args.vocab}, "
        f"{params / 1e6:.0f}M parameters, fp32, {len(prompts)} prompts of {args.prompt_len} tokens, budget "
        f"{args.budget}, block {args.block}, EOS forced at answer position {length - 1}; {environment()})\n\n"
        f"{markdown_table(HEADER + ['iLLaDA-8B TFLOP / answer (from the counts)'], rows)}\n\n"
        "Drafts multiply the tokens forwarded: the FLOP column is what fewer forwards cost in compute. They pay "
        "where a forward's time hardly grows with its batch (a GPU far from saturation), not on a saturated CPU."
    )


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--setup", choices=("all", "demo", "random"), default="all")
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--no_write", action="store_true", help="Print only; leave bench/RESULTS.md alone.")
    parser.add_argument("--model", default=str(REPO / "illada-demo"))
    parser.add_argument("--num_prompts", type=int, default=96)
    parser.add_argument("--demo_budget", type=int, default=64)
    parser.add_argument("--demo_block", type=int, default=32)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--hidden", type=int, default=4096)
    parser.add_argument("--vocab", type=int, default=155136)
    parser.add_argument("--prompt_len", type=int, default=16)
    parser.add_argument("--budget", type=int, default=64)
    parser.add_argument("--block", type=int, default=32)
    parser.add_argument("--random_prompts", type=int, default=1)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    args.command = shlex.join(["python", "bench/bench_presets.py", *(sys.argv[1:] if argv is None else argv)])
    if args.threads:
        torch.set_num_threads(args.threads)
    parts = []
    if args.setup in ("all", "demo"):
        parts.append(demo_section(args))
    if args.setup in ("all", "random"):
        parts.append(random_section(args))
    body = "## Generation presets: exact, default, lossless-fast, fast\n\n" + "\n\n".join(parts)
    print(body)
    if not args.no_write:
        write_section("generation-presets", body)


if __name__ == "__main__":
    main()
