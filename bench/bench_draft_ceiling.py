"""How many forwards lossless draft and verify can save, at most, on the demo model's answers.

    python bench/bench_draft_ceiling.py --threads 1

Runs the default preset (one token per step, nothing decoded after a committed EOS) greedily on the held-out demo
prompts and records, at every step, the proposals (argmax tokens), their remasking scores and the position the step
commits. Each block is then replayed under a rule saying how far one verification forward can move from the forward
a round starts at (the drafted tokens are always that forward's proposals, as in `draft_tokens`):

- `draft_tokens=d` (the sampler's tree, 2**(d-1) canvases per forward): the next commits are among the `d`
  best-scored undecided positions, with the proposed tokens;
- `any d positions`: up to `d` commits anywhere in the block, with the proposed tokens: a bound for every tree of
  depth `d` that drafts one forward's proposals, however many canvases it verifies;
- `any positions`: the same without a depth limit.

A round costs one forward while two or more commits are left in the block (the last commit needs no verification),
and each block's first forward counts. The replay of `draft_tokens=4` is compared with the sampler's own forward
count on every prompt, which checks the replay.
"""

import argparse
import math
import shlex
import sys
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "bench")]
from bench_generation import PLAIN_SAMPLING, demo_prompts  # noqa: E402
from common import environment, markdown_table, write_section  # noqa: E402

from illada.generation_config_illada import GENERATION_PRESETS  # noqa: E402
from illada.modeling_illada import ILLaDAForCausalLM  # noqa: E402
from illada.sampler_illada import remasking_confidence, undecided_positions  # noqa: E402


def record_steps(model, prompt: torch.Tensor, options: dict) -> list[list[dict]]:
    """The steps of one greedy default-preset answer, grouped by block: per step the positions by score (undecided
    ones only), the proposals, and the committed position and token."""
    config = model.generation_config
    prompt_width, block = prompt.shape[1], options["block_length"]
    stops = torch.tensor(sorted(config.stop_ids))
    before = torch.cat([prompt[0], torch.full((options["max_new_tokens"],), config.mask_token_id)])
    blocks: dict[int, list[dict]] = {}

    def callback(step: int, tokens: torch.Tensor, logits: torch.Tensor) -> None:
        nonlocal before
        after = tokens[0]
        start = next(
            s
            for s in range(prompt_width, before.numel(), block)
            if undecided_positions(before[s : s + block], config.mask_token_id, stops).any()
        )
        span = before[start : start + block]
        x0 = logits[0].argmax(-1)
        scores = remasking_confidence(logits[0][None], x0[None], "low_confidence", None)[0]
        undecided = undecided_positions(span, config.mask_token_id, stops)
        order = scores.masked_fill(~undecided, -math.inf).argsort(descending=True, stable=True)
        (position,) = (after[start : start + block] != span).nonzero().squeeze(-1).tolist()
        step = {"order": order[: int(undecided.sum())].tolist(), "x0": x0.tolist(), "position": position}
        blocks.setdefault(start, []).append({**step, "token": int(after[start + position])})
        before = torch.cat([after, before[after.numel() :]])

    model.generate(prompt, step_callback=callback, **options)
    return list(blocks.values())


def replay(block: list[dict], depth: int | None, among: int | None) -> int:
    """Forwards for one block when a round confirms up to `depth` commits, each among the `among` best-scored
    positions of the round's first forward and with its proposed token (`None`: no limit)."""
    forwards, t = 1, 0
    while t < len(block):
        start, moved = block[t], 1  # the round's first commit is that forward's own choice
        while t + moved < len(block) and (depth is None or moved < depth):
            step = block[t + moved]
            if step["position"] not in start["order"][:among]:
                break
            if step["token"] != start["x0"][step["position"]]:
                break
            moved += 1
        forwards += len(block) - t >= 2
        t += moved
    return forwards


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=str(REPO / "illada-demo"))
    parser.add_argument("--num_prompts", type=int, default=96)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--no_write", action="store_true", help="Print only; leave bench/RESULTS.md alone.")
    args = parser.parse_args(argv)
    command = shlex.join(["python", "bench/bench_draft_ceiling.py", *(sys.argv[1:] if argv is None else argv)])
    if args.threads:
        torch.set_num_threads(args.threads)
    from transformers import PreTrainedTokenizerFast

    model = ILLaDAForCausalLM.from_pretrained(args.model).eval()
    _, prompts = demo_prompts(PreTrainedTokenizerFast.from_pretrained(args.model), args.num_prompts)
    options = {**PLAIN_SAMPLING, **GENERATION_PRESETS["default"], "max_new_tokens": 64, "block_length": 32}
    answers = [record_steps(model, prompt, {**options, "canvas": "variable"}) for prompt in prompts]
    drafted = {**options, "canvas": "variable", "draft_tokens": 4, "return_dict_in_generate": True}
    measured = [int(model.generate(prompt, **drafted).nfe) for prompt in prompts]
    replayed = [sum(replay(block, 4, 4) for block in answer) for answer in answers]
    one_step = sum(sum(len(block) for block in answer) for answer in answers) / len(answers)

    def row(label: str, canvases: str, depth: int | None, among: int | None) -> list[str]:
        forwards = sum(replay(block, depth, among) for answer in answers for block in answer) / len(answers)
        return [label, canvases, f"{forwards:.2f}", f"{one_step / forwards:.2f}x"]

    rows = [row("one token per step (default)", "1", 1, 1)]
    rows += [row(f"`draft_tokens={d}`", str(2 ** (d - 1)), d, d) for d in range(2, 9)]
    rows += [row(f"any {d} positions", "-", d, None) for d in (4, 6, 8)]
    rows += [row("any positions", "-", None, None)]
    table = markdown_table(["rule", "canvases / forward", "forwards / answer", "fewer than one per step"], rows)
    agree = sum(map(int.__eq__, measured, replayed))
    body = (
        "## Lossless drafts: how far the forwards can fall\n\n"
        f"`{command}` (`illada-demo`, {len(prompts)} held-out prompts, default preset, budget 64, block 32, "
        f"greedy; {environment()})\n\n{table}\n\n"
        f"The replay of `draft_tokens=4` equals the sampler's measured forwards on {agree} of {len(prompts)} prompts "
        f"({sum(replayed) / len(prompts):.2f} vs {sum(measured) / len(prompts):.2f} per answer; a prompt can differ "
        "where scores tie within the sampler's 1e-6 and it picks the leftmost). The answers take "
        f"{one_step:.2f} commits on average, so no lossless scheme can go below 2 forwards (the first, then one "
        "verification); what keeps even unlimited drafts above that is the drafted tokens: a proposal changes once "
        "a neighbour is committed, and the drafts carry the round's first proposals. The rows need not fall with "
        "the depth: the sampler walks each round as far as its drafts confirm, and a longer round can end where the "
        "next one confirms less."
    )
    print(body)
    if not args.no_write:
        write_section("draft-ceiling", body)


if __name__ == "__main__":
    main()
