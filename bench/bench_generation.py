"""Generation cost against the official LLaDA sampling loop, on the demo model and on a larger random model.

    python bench/bench_generation.py                        # both setups; writes two sections of bench/RESULTS.md
    python bench/bench_generation.py --setup random         # the 8 x 1024, vocab 155136 random model only
    python bench/bench_generation.py --setup demo --model illada-demo --num_prompts 64
    python bench/bench_generation.py --setup random --tokens_per_step 1   # the official one token per step (slow)

Every setting runs on the same model and the same prompts, in the same process, as the baseline
(`bench/llada_baseline.py`, which runs `tests/reference_sampler.llada_generate`, the one restatement of the
official loop: full canvas, logits of every position, float64 noise over all of them when sampling (none at
temperature 0, as in the official `add_gumbel_noise`), fixed length, no cache). Our settings: canvas `fixed` /
`variable` x `threshold` none / 0.9 / 0.8 / 0.7 x `use_cache` none / prefix / dual, greedy (temperature 0).
Measured for each:

- **seconds** of wall time for all prompts, and **speed-up** = baseline seconds / setting seconds;
- **forwards** per prompt (nfe), **tokens forwarded** through the model and **logits positions** (rows of the LM
  head) in thousands: hardware-independent, counted by hooks on the model and its LM head;
- **answer tok/s**: answer tokens (through the first stop token) per second;
- **peak MiB**: how far the process's peak resident memory rises above its size at the start of the setting
  (the model weights are not counted). Linux only: freed memory is returned with `malloc_trim`, the peak (VmHWM)
  is reset through `/proc/self/clear_refs` before each setting and read from `/proc/self/status` after it;
- **demo model**: held-out exact match (the `illada.demo.data` held-out split; the generated answer text, cut before the
  first stop token, equals the reference answer after `strip()`), prompts one at a time (the baseline takes no
  padding mask), one token per step unless a threshold commits more;
- **random model**: equal-length random prompts; every answer is forced to 1/8 of the budget by a forward hook
  that adds +1e4 to the EOS logit at answer position `budget / 8 - 1` and -1e4 at every other position (the hook
  offsets positions by the span of a cached forward; it also gives the mask token -1e4, as a trained model never
  proposes it and the baseline does not ban it), so that our samplers can stop after the first block while
  the baseline decodes its whole canvas. Accuracy means nothing there: the column says whether each answer equals
  the baseline's (cut after EOS).

On a machine shared with other jobs the seconds are noisy; the ratios and the counts are what carry over.
"""

import argparse
import ctypes
import gc
import os
import shlex
import sys
import time
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "bench")]
from common import environment, markdown_table, write_section  # noqa: E402
from llada_baseline import llada_generate  # noqa: E402

from illada.configuration_illada import ILLaDAConfig  # noqa: E402
from illada.modeling_illada import ILLaDAForCausalLM  # noqa: E402

# iLLaDA's ids 0-5 are special (bos, pad, eos, two chat markers, mask): random prompts use ordinary tokens only.
FIRST_ORDINARY_ID = 6
# EOS logit offset of the random-model answer-length hook: far beyond any logit of a randomly initialised model.
FORCE = 1e4
# Answer length of the random-model setup as a fraction of the budget (the "1/8 of the budget" target).
ANSWER_FRACTION = 8
PROC_STATUS, PROC_CLEAR_REFS = Path("/proc/self/status"), Path("/proc/self/clear_refs")
# Whatever the model's generation_config.json says: greedy low-confidence remasking like the baseline.
PLAIN_SAMPLING = dict(
    steps=None,
    temperature=0.0,
    remasking="low_confidence",
    cfg_scale=0.0,
    suppress_tokens=None,
    stop_token_bias=None,
    cache_refresh_steps=None,
)
RESET_PEAK_RSS = "5"  # written to clear_refs: resets VmHWM to the current resident size (Linux >= 4.0)


@dataclass(frozen=True)
class Setting:
    """One sampler configuration; `None` canvas means the LLaDA baseline."""

    canvas: str | None
    threshold: float | None = None
    cache: str = "none"
    decode_after_stop: bool = True

    @property
    def label(self) -> str:
        if self.canvas is None:
            return "LLaDA baseline (fixed, full logits, no cache)"
        skip = "" if self.decode_after_stop else ", skip after stop"
        return f"{self.canvas}, threshold {self.threshold or '-'}, cache {self.cache}{skip}"


@dataclass
class Counts:
    forwards: int = 0
    tokens: int = 0
    logits: int = 0


@dataclass
class Result:
    setting: Setting
    seconds: float
    cpu_seconds: float
    counts: Counts
    peak_mib: float | None
    answers: list[list[int]] = field(repr=False)


# --------------------------------------------------------------------------------------------- measuring


@contextmanager
def counting(model: ILLaDAForCausalLM):
    """Counts forwards, input tokens (rows x columns) and LM-head rows of every call of `model`."""
    counts = Counts()

    def on_forward(module, args, kwargs):
        ids = kwargs["input_ids"] if "input_ids" in kwargs else args[0]
        counts.forwards += 1
        counts.tokens += ids.numel()

    def on_head(module, args, output):
        counts.logits += output.shape[:-1].numel()

    handles = [
        model.register_forward_pre_hook(on_forward, with_kwargs=True),
        model.lm_head.register_forward_hook(on_head),
    ]
    try:
        yield counts
    finally:
        for handle in handles:
            handle.remove()


def _status_kib(name: str) -> int:
    line = next(line for line in PROC_STATUS.read_text().splitlines() if line.startswith(name + ":"))
    return int(line.split()[1])


def reset_peak_memory() -> int | None:
    """Returns freed memory to the OS, resets the peak resident size, returns the current one (KiB), or `None`
    where `/proc/self/clear_refs` is not available."""
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
        PROC_CLEAR_REFS.write_text(RESET_PEAK_RSS)
        return _status_kib("VmRSS")
    except OSError:
        return None


def measure(model: ILLaDAForCausalLM, setting: Setting, run: Callable[[], list[list[int]]], repeats: int) -> Result:
    """Runs `run` (which returns the answers) once under the counters and the memory peak, then `repeats - 1` more
    times for the best wall and CPU times. CPU time (all threads of this process) is far less sensitive than wall
    time to other jobs on a shared machine."""
    start_kib = reset_peak_memory()
    with counting(model) as counts:
        begin, cpu_begin = time.perf_counter(), time.process_time()
        answers = run()
        seconds, cpu_seconds = time.perf_counter() - begin, time.process_time() - cpu_begin
    peak = None if start_kib is None else (_status_kib("VmHWM") - start_kib) / 1024
    for _ in range(repeats - 1):
        begin, cpu_begin = time.perf_counter(), time.process_time()
        run()
        seconds = min(seconds, time.perf_counter() - begin)
        cpu_seconds = min(cpu_seconds, time.process_time() - cpu_begin)
    return Result(setting, seconds, cpu_seconds, counts, peak, answers)


# --------------------------------------------------------------------------------------------- samplers


def cut_answer(tokens: list[int], stop_ids: set[int]) -> list[int]:
    """The answer through its first stop token (the whole row if there is none)."""
    end = next((i + 1 for i, t in enumerate(tokens) if t in stop_ids), len(tokens))
    return tokens[:end]


def baseline_answers(
    model, prompts: list[torch.Tensor], budget: int, block: int, steps: int, stop_ids: set[int]
) -> list[list[int]]:
    """The official loop on each batch of equal-length prompts; answers cut after the first stop token."""
    answers = []
    for prompt in prompts:
        canvas, _ = llada_generate(
            model,
            prompt,
            model.config.mask_token_id,
            gen_length=budget,
            block_length=block,
            steps=steps,
            temperature=0.0,
        )
        answers += [cut_answer(row, stop_ids) for row in canvas[:, prompt.shape[1] :].tolist()]
    return answers


def our_answers(
    model,
    prompts: list[torch.Tensor],
    setting: Setting,
    budget: int,
    block: int,
    tokens_per_step: int,
    stop_ids: set[int],
) -> list[list[int]]:
    answers = []
    for prompt in prompts:
        sequences = model.generate(
            prompt,
            max_new_tokens=budget,
            block_length=block,
            tokens_per_step=tokens_per_step,
            canvas=setting.canvas,
            threshold=setting.threshold,
            use_cache=setting.cache,
            decode_after_stop=setting.decode_after_stop,
            **PLAIN_SAMPLING,
        )
        answers += [cut_answer(row, stop_ids) for row in sequences[:, prompt.shape[1] :].tolist()]
    return answers


def settings_grid(args, skip_default: str) -> list[Setting]:
    thresholds = [None if t == "none" else float(t) for t in args.thresholds.split(",")]
    skips = [{"yes": True, "no": False}[value] for value in (args.decode_after_stop or skip_default).split(",")]
    return [
        Setting(canvas, threshold, cache, whole)
        for whole in skips
        for canvas in args.canvases.split(",")
        for threshold in thresholds
        for cache in args.caches.split(",")
    ]


def run_settings(
    model,
    prompts,
    settings: list[Setting],
    budget: int,
    block: int,
    tokens_per_step: int,
    stop_ids: set[int],
    repeats: int,
) -> list[Result]:
    """The baseline first, then every setting; prints one line per setting as it finishes. One warm-up call
    first, so that no setting pays for the kernels' one-time initialisation."""
    model.generate(
        prompts[0], max_new_tokens=block, block_length=block, tokens_per_step=block, use_cache="dual", **PLAIN_SAMPLING
    )
    run = partial(baseline_answers, model, prompts, budget, block, budget // tokens_per_step, stop_ids)
    results = [measure(model, Setting(None), run, repeats)]
    baseline = results[0]
    print(f"  {baseline.setting.label}: {baseline.seconds:.1f} s, {baseline.counts.forwards} forwards", flush=True)
    for setting in settings:
        run = partial(our_answers, model, prompts, setting, budget, block, tokens_per_step, stop_ids)
        results.append(measure(model, setting, run, repeats))
        print(f"  {setting.label}: {results[-1].seconds:.1f} s, {results[-1].counts.forwards} forwards", flush=True)
    return results


# --------------------------------------------------------------------------------------------- reporting


def result_rows(results: list[Result], num_prompts: int, quality: Callable[[Result], str]) -> list[list[object]]:
    baseline = results[0]
    rows = []
    for r in results:
        answer_tokens = sum(len(a) for a in r.answers)
        rows.append(
            [
                r.setting.label,
                f"{r.seconds:.2f}",
                f"{baseline.seconds / r.seconds:.1f}x",
                f"{r.cpu_seconds:.2f}",
                f"{baseline.cpu_seconds / r.cpu_seconds:.1f}x",
                f"{r.counts.forwards / num_prompts:.1f}",
                f"{r.counts.tokens / 1e3:.1f}",
                f"{r.counts.logits / 1e3:.1f}",
                f"{answer_tokens / r.seconds:.1f}",
                "n/a" if r.peak_mib is None else f"{r.peak_mib:.0f}",
                quality(r),
            ]
        )
    return rows


HEADER = [
    "setting",
    "seconds",
    "speed-up",
    "CPU seconds",
    "CPU speed-up",
    "forwards / prompt",
    "tokens forwarded (k)",
    "logits positions (k)",
    "answer tok/s",
    "peak MiB",
]


def find(results: list[Result], canvas: str, threshold: float | None, cache: str, skip: bool = False) -> Result | None:
    return next((r for r in results if r.setting == Setting(canvas, threshold, cache, not skip)), None)


# --------------------------------------------------------------------------------------------- demo model


def demo_prompts(tokenizer, num_prompts: int):
    from illada.demo.data import make_examples

    examples = make_examples("heldout", num_prompts)
    prompts = [
        tokenizer.apply_chat_template(
            [{"role": "user", "content": e.prompt}], add_generation_prompt=True, return_tensors="pt", return_dict=True
        )["input_ids"]
        for e in examples
    ]
    return examples, prompts


def demo_accuracy(tokenizer, examples, answers: list[list[int]], stop_ids: set[int]) -> float:
    correct = 0
    for example, answer in zip(examples, answers):
        text = tokenizer.decode([t for t in answer if t not in stop_ids], skip_special_tokens=True)
        correct += text.strip() == example.response.strip()
    return correct / len(examples)


def demo_targets(results: list[Result], accuracy: dict) -> list[str]:
    lines, baseline = [], results[0]
    for canvas, skip in (("variable", False), ("fixed", False), ("variable", True), ("fixed", True)):
        fast, slow = find(results, canvas, 0.9, "prefix", skip), find(results, canvas, None, "none")
        if fast is None or slow is None:
            continue
        lines.append(
            f"- {canvas}, threshold 0.9 + prefix cache{' + skip after stop' if skip else ''}: "
            f"{slow.counts.forwards / fast.counts.forwards:.1f}x fewer "
            f"forward passes than one token per step (target >= 5x), {baseline.seconds / fast.seconds:.1f}x less "
            f"wall time ({baseline.cpu_seconds / fast.cpu_seconds:.1f}x less CPU time) than the baseline (target "
            f">= 5x); held-out accuracy {accuracy[fast.setting]:.1%} vs "
            f"{accuracy[slow.setting]:.1%} one token per step and {accuracy[baseline.setting]:.1%} for the baseline "
            f"(target: within 1 point)."
        )
    return lines


def run_demo(args) -> str:
    from transformers import PreTrainedTokenizerFast  # not AutoTokenizer: it would ask about the folder's code files

    path = Path(args.model)
    model = ILLaDAForCausalLM.from_pretrained(path).eval()
    tokenizer = PreTrainedTokenizerFast.from_pretrained(path)
    examples, prompts = demo_prompts(tokenizer, args.num_prompts)
    stop_ids = set(model.generation_config.stop_ids)
    print(f"demo model {path}: {len(prompts)} held-out prompts", flush=True)
    grid = settings_grid(args, "yes,no")
    results = run_settings(model, prompts, grid, args.demo_budget, args.demo_block, 1, stop_ids, args.repeats)
    accuracy = {r.setting: demo_accuracy(tokenizer, examples, r.answers, stop_ids) for r in results}
    rows = result_rows(results, len(prompts), lambda r: f"{accuracy[r.setting]:.1%}")
    params = sum(p.numel() for p in model.parameters())
    where = os.path.relpath(path.resolve(), REPO)
    return (
        f"## Generation on the demo model\n\n`{args.command}` (model `{where}`, {params / 1e6:.1f}M parameters, "
        f"fp32, {len(prompts)} held-out prompts one at a time, budget {args.demo_budget}, block {args.demo_block}, "
        f"one token per step unless a threshold commits more, greedy; {environment()})\n\n"
        f"{markdown_table(HEADER + ['held-out exact match'], rows)}\n\n"
        + "\n".join(demo_targets(results, accuracy))
        + "\n\n"
        + MEASURE_NOTE
    )


# --------------------------------------------------------------------------------------------- random model


def random_model(args) -> ILLaDAForCausalLM:
    heads = max(1, args.hidden // 128)
    config = ILLaDAConfig(
        vocab_size=args.vocab,
        hidden_size=args.hidden,
        intermediate_size=args.hidden * 7 // 2,
        num_hidden_layers=args.layers,
        num_attention_heads=heads,
        num_key_value_heads=max(1, heads // 4),
        max_position_embeddings=args.prompt_len + args.budget,
    )
    torch.manual_seed(0)
    return ILLaDAForCausalLM(config).eval()


@contextmanager
def forced_eos(model: ILLaDAForCausalLM, column: int):
    """EOS logit +FORCE at canvas column `column`, -FORCE at every other column (prompts are unpadded); the mask
    logit -FORCE everywhere: a trained model never proposes the mask, but a random one with tied embeddings often
    does, and the baseline (like the official loop) does not ban it."""
    eos, mask = model.config.eos_token_ids[0], model.config.mask_token_id

    def hook(module, args, kwargs, output):
        ids = kwargs["input_ids"] if "input_ids" in kwargs else args[0]
        cache = kwargs.get("kv_cache")
        first = cache.span[0] if cache is not None and cache.span is not None else 0
        keep = kwargs.get("logits_to_keep", 0)
        columns = first + (torch.arange(ids.shape[1]) if isinstance(keep, int) else keep.cpu())
        bias = torch.where(columns == column, FORCE, -FORCE).to(output.logits)
        output.logits[..., eos] += bias
        output.logits[..., mask] -= FORCE

    handle = model.register_forward_hook(hook, with_kwargs=True)
    try:
        yield
    finally:
        handle.remove()


def random_targets(results: list[Result], answer_length: int) -> list[str]:
    """The variable-mode target; "equal output" is an answer of the same forced length (the fixed canvas, which
    sees what the baseline sees, must also give the baseline's tokens)."""
    baseline, lines = results[0], []
    for canvas in ("variable", "fixed"):
        ours = find(results, canvas, None, "none")
        if ours is None:
            continue
        same = sum(a == b for a, b in zip(ours.answers, baseline.answers))
        lengths = all(len(a) == answer_length for a in ours.answers + baseline.answers)
        lines.append(
            f"- {canvas} canvas, answer of 1/8 of the budget: {baseline.seconds / ours.seconds:.1f}x less wall time "
            f"and {baseline.cpu_seconds / ours.cpu_seconds:.1f}x less CPU time than the baseline (target for "
            f"variable: >= 4x); every answer {'is' if lengths else 'is NOT'} {answer_length} tokens long; "
            f"{same}/{len(ours.answers)} token-identical to the baseline's."
        )
    return lines


def run_random(args) -> str:
    if args.budget % ANSWER_FRACTION or args.budget % args.block or args.block % args.tokens_per_step:
        raise ValueError(
            f"`--budget` ({args.budget}) must be a multiple of {ANSWER_FRACTION} and of `--block` "
            f"({args.block}), and `--block` a multiple of `--tokens_per_step` ({args.tokens_per_step})."
        )
    model = random_model(args)
    g = torch.Generator().manual_seed(0)
    prompts = [torch.randint(FIRST_ORDINARY_ID, args.vocab, (args.batch, args.prompt_len), generator=g)]
    answer_length = args.budget // ANSWER_FRACTION
    print(f"random model: {args.layers} x {args.hidden}, vocab {args.vocab}, answer {answer_length}", flush=True)
    with forced_eos(model, args.prompt_len + answer_length - 1):
        results = run_settings(
            model,
            prompts,
            settings_grid(args, "yes"),
            args.budget,
            args.block,
            args.tokens_per_step,
            set(model.config.eos_token_ids),
            args.repeats,
        )
    baseline = results[0].answers
    rows = result_rows(
        results, args.batch, lambda r: f"{sum(a == b for a, b in zip(r.answers, baseline))}/{len(baseline)}"
    )
    params = sum(p.numel() for p in model.parameters())
    return (
        f"## Generation cost on a larger random model\n\n`{args.command}` ({params / 1e6:.0f}M parameters, GQA "
        f"{model.config.num_attention_heads}/{model.config.num_key_value_heads} heads, fp32, batch {args.batch}, "
        f"prompt {args.prompt_len}, budget {args.budget}, block {args.block}, {args.tokens_per_step} token(s) per "
        f"step, EOS forced at answer position {answer_length - 1}; {environment()})\n\n"
        f"{markdown_table(HEADER + ['answer equals baseline'], rows)}\n\n"
        + "\n".join(random_targets(results, answer_length))
        + "\n\nThe variable canvas shows the model only the current block of masks, not the whole budget, so a random "
        "model proposes other tokens than on the baseline's canvas: equal output means an answer of the same length "
        "here. A random model is never confident, so thresholds commit nothing beyond the schedule (the forwards "
        "equal those without a threshold).\n\n" + MEASURE_NOTE
    )


MEASURE_NOTE = (
    "Counts are exact and hardware-independent. Seconds come from 2 CPU cores shared with other jobs (training "
    "runs and tests during this measurement): wall times vary by several times between identical settings, so "
    "read the counts and CPU-time ratios first (CPU seconds: all threads of the process, `time.process_time`). "
    "Peak MiB: rise of the process's "
    "peak resident memory (VmHWM, reset through /proc/self/clear_refs after malloc_trim) over its size at the start "
    "of the setting, weights excluded. Speed-up = baseline seconds / setting seconds."
)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--setup", choices=("all", "demo", "random"), default="all")
    parser.add_argument("--canvases", default="fixed,variable", help="Comma-separated canvas modes.")
    parser.add_argument("--thresholds", default="none,0.9,0.8,0.7", help="Comma-separated; 'none' for no threshold.")
    parser.add_argument("--caches", default="none,prefix,dual", help="Comma-separated `use_cache` values.")
    parser.add_argument(
        "--decode_after_stop",
        default=None,
        help="Comma-separated `decode_after_stop` values, yes (whole blocks) / no (skip after stop) (default: both "
        "on the demo model; yes on the random model, whose forced EOS ends the block, so that skipping changes "
        "nothing).",
    )
    parser.add_argument("--repeats", type=int, default=1, help="Runs per setting; the best wall time is kept.")
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch threads (default: torch's choice). On a machine busy with other jobs, 1 avoids "
        "OpenMP threads spinning against them, which makes wall times erratic.",
    )
    parser.add_argument("--no_write", action="store_true", help="Print only; leave bench/RESULTS.md alone.")
    demo = parser.add_argument_group("demo model")
    demo.add_argument("--model", default=str(REPO / "illada-demo"), help="Folder of the demo model and tokenizer.")
    demo.add_argument("--num_prompts", type=int, default=64, help="Held-out prompts (illada.demo.data held-out split).")
    demo.add_argument("--demo_budget", type=int, default=64, help="max_new_tokens on the demo task.")
    demo.add_argument("--demo_block", type=int, default=32, help="block_length on the demo task.")
    rand = parser.add_argument_group("random model")
    rand.add_argument("--layers", type=int, default=8)
    rand.add_argument("--hidden", type=int, default=1024)
    rand.add_argument("--vocab", type=int, default=155136)
    rand.add_argument("--prompt_len", type=int, default=64)
    rand.add_argument("--budget", type=int, default=256)
    rand.add_argument("--block", type=int, default=32)
    rand.add_argument("--batch", type=int, default=1)
    rand.add_argument(
        "--tokens_per_step",
        type=int,
        default=4,
        help="Tokens committed per step, baseline and ours (the official default is 1: ~4x the time).",
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    args.command = shlex.join(["python", "bench/bench_generation.py", *(sys.argv[1:] if argv is None else argv)])
    if args.threads:
        torch.set_num_threads(args.threads)
    sections = []
    if args.setup in ("all", "random"):
        sections.append(("generation-random", run_random(args)))
    if args.setup in ("all", "demo"):
        if (Path(args.model) / "model.safetensors").exists():
            sections.append(("generation-demo", run_demo(args)))
        elif args.setup == "demo":
            raise ValueError(
                f"`--model` {args.model} holds no model.safetensors: build it with "
                f"`python -m illada.demo.build_demo_model` or pass another folder."
            )
        else:
            print(f"Skipping the demo model: {args.model} holds no model.safetensors.")
    for name, body in sections:
        print(body, end="\n\n")
        if not args.no_write:
            write_section(name, body)


if __name__ == "__main__":
    main()
