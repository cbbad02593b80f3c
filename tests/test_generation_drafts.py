"""Stopping at the answer's end (the default) and lossless draft-and-verify decoding (`draft_tokens`, issue 27).

Identity is checked against independent computations: the naive row-by-row sampler of `reference_sampler.py`
(uncached) and the row-by-row cached sampler of `test_generation_cache.py` (cached), both one token per step.
"""

from contextlib import contextmanager

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from reference_sampler import reference_generate
from test_generation_cache import logit_offsets, reference_cached_generate
from tiny import FIRST_ORDINARY_ID, SHARP, TINY, left_pad, make_model, random_prompts

from illada.generation_config_illada import GENERATION_PRESETS

pytestmark = pytest.mark.usefixtures("one_thread")

MASK, PAD, EOS, VOCAB = TINY["mask_token_id"], TINY["pad_token_id"], TINY["eos_token_id"], TINY["vocab_size"]


def answers(sequences: torch.Tensor, width: int) -> list[list[int]]:
    """Each row's answer through its first stop token (the rest of a row is padding)."""
    return [[t for t in row[width:] if t != PAD] for row in sequences.tolist()]


# --------------------------------------------------------------------------------------------- lossless identity


@settings(max_examples=30, deadline=None, derandomize=True, database=None)
@given(
    model_seed=st.integers(0, 50),
    lengths=st.lists(st.integers(1, 6), min_size=1, max_size=3),
    block=st.integers(1, 6),
    blocks=st.integers(1, 3),
    canvas=st.sampled_from(["variable", "fixed"]),
    cache=st.sampled_from(["none", "prefix", "dual"]),
    draft_tokens=st.integers(1, 6),
    decode_after_stop=st.sampled_from([None, True, False]),
    cfg_scale=st.sampled_from([0.0, 0.0, 1.0]),
    stop=st.integers(FIRST_ORDINARY_ID, VOCAB - 1),
)
def test_drafts_give_the_tokens_of_one_token_per_step(
    model_seed, lengths, block, blocks, canvas, cache, draft_tokens, decode_after_stop, cfg_scale, stop
):
    """The property: on a random tiny model and random left-padded prompts, `draft_tokens` gives the answers of
    one-token-per-step greedy decoding, computed row by row by a naive sampler (uncached), or with the same cache,
    in at most as many forwards."""
    model = make_model(seed=model_seed, **SHARP)
    prompts = random_prompts(lengths, seed=model_seed)
    ids, mask = left_pad(prompts)
    options = dict(
        max_new_tokens=block * blocks,
        block_length=block,
        canvas=canvas,
        use_cache=cache,
        cfg_scale=cfg_scale,
        stop_token_ids=[stop],
        decode_after_stop=decode_after_stop,
        return_dict_in_generate=True,
    )
    drafted = model.generate(ids, attention_mask=mask, draft_tokens=draft_tokens, **options)
    plain = model.generate(ids, attention_mask=mask, **options)
    assert answers(drafted.sequences, ids.shape[1]) == answers(plain.sequences, ids.shape[1])
    assert drafted.nfe <= plain.nfe
    reference_options = dict(max_new_tokens=block * blocks, block_length=block, canvas=canvas, cfg_scale=cfg_scale)
    if cache == "none":
        expected, _ = reference_generate(
            model, prompts, mask_id=MASK, stop_ids=(EOS, stop), decode_after_stop=decode_after_stop, **reference_options
        )
    elif decode_after_stop or (decode_after_stop is None and canvas == "fixed"):  # the cached reference: whole blocks
        expected, _ = reference_cached_generate(
            model, prompts, mode=cache, steps=block, stop_ids=(EOS, stop), **reference_options
        )
    else:
        return
    assert answers(drafted.sequences, ids.shape[1]) == expected


@contextmanager
def confident_in_order(model, order: list[int], width: int):
    """Replaces the model's logits: answer offset `j` proposes token 10 + j, with a runner-up (token 60 + j) that
    lies farther behind the earlier `j` comes in `order`; one-token-per-step decoding commits in that order."""

    def hook(module, args, kwargs, output):
        cache = kwargs.get("kv_cache")
        first = cache.span[0] if cache is not None and cache.span is not None else 0
        keep = kwargs["logits_to_keep"]
        output.logits.fill_(-30.0)
        for i, offset in enumerate((first + keep - width).tolist()):
            output.logits[:, i, 10 + offset] = 10.0
            output.logits[:, i, 60 + offset] = 10.0 - len(order) + order.index(offset)

    handle = model.register_forward_hook(hook, with_kwargs=True)
    try:
        yield
    finally:
        handle.remove()


@pytest.mark.parametrize("cache", ["none", "prefix"])
def test_drafts_accepted_in_full_save_the_forwards_counted_by_hand(cache):
    """A model certain of every token, in a fixed order: one token per step takes 8 forwards for a block of 8;
    `draft_tokens=4` takes 3 (the block's canvas, then commits 1-4 verified together, then commits 5-7; the canvas
    with all 8 committed needs no forward)."""
    model = make_model(seed=1, **SHARP)
    prompt = torch.tensor(random_prompts([4], seed=1))
    order = [3, 0, 7, 1, 5, 2, 6, 4]
    options = dict(max_new_tokens=8, block_length=8, use_cache=cache, return_dict_in_generate=True)
    with confident_in_order(model, order, 4):
        plain = model.generate(prompt, **options)
        drafted = model.generate(prompt, draft_tokens=4, output_history=True, **options)
    assert plain.nfe == 8 and drafted.nfe == 3
    assert drafted.sequences[0, 4:].tolist() == [10 + j for j in range(8)] == plain.sequences[0, 4:].tolist()
    history = drafted.history[0, 4:].tolist()
    assert [history[j] for j in order] == [1, 1, 1, 1, 2, 2, 2, 2]  # verified by the second and third forwards


def test_drafts_report_every_forward_to_the_step_callback(sharp_model):
    ids, mask = left_pad(random_prompts([5, 2], seed=2))
    seen = []
    out = sharp_model.generate(
        ids,
        attention_mask=mask,
        max_new_tokens=8,
        block_length=4,
        draft_tokens=3,
        return_dict_in_generate=True,
        step_callback=lambda step, tokens, logits: seen.append((step, tokens.shape[0], logits.shape)),
    )
    assert [step for step, _, _ in seen] == list(range(out.nfe))
    assert all(rows == 2 and shape[0] == 2 and shape[1] == 4 for _, rows, shape in seen)


@pytest.mark.parametrize(
    "spec, names",
    [
        (dict(draft_tokens=0), "`draft_tokens` must be a positive integer"),
        (dict(draft_tokens="4"), "`draft_tokens` must be a positive integer"),
        (dict(draft_tokens=9), "`draft_tokens` (9) must be at most 8"),
        (dict(draft_tokens=4, steps=2), "`steps`"),
        (dict(draft_tokens=4, tokens_per_step=2), "`tokens_per_step`"),
        (dict(draft_tokens=4, threshold=0.9), "`threshold`"),
        (dict(draft_tokens=4, remasking="random"), "`remasking`"),
        (dict(draft_tokens=4, temperature=0.5), "`temperature / do_sample`"),
        (dict(draft_tokens=4, do_sample=True), "`temperature / do_sample`"),
        (dict(draft_tokens=4, use_cache="prefix", cache_refresh_steps=2), "`cache_refresh_steps`"),
        (dict(decode_after_stop=1), "`decode_after_stop` must be None, True or False"),
    ],
)
def test_bad_draft_settings_raise_naming_the_setting(sharp_model, spec, names):
    with pytest.raises(ValueError, match="draft_tokens|decode_after_stop") as info:
        sharp_model.generate(torch.tensor([[7, 8, 9]]), max_new_tokens=8, block_length=4, **spec)
    assert names in str(info.value)


# --------------------------------------------------------------------------------------------- stop at the end


def commits_after_a_stop(model, ids, mask, stops: set[int], **options) -> tuple[int, int]:
    """Runs `generate` with a step callback; returns (positions committed in a step after a stop token was already
    committed left of them in the same row, steps)."""
    width, seen, previous = ids.shape[1], [0], [None]

    def callback(step, tokens, logits):
        before = previous[0]
        if before is not None:
            for row_before, row_now in zip(before[:, width:].tolist(), tokens[:, width:].tolist()):
                first_stop = next((j for j, t in enumerate(row_before) if t in stops), None)
                if first_stop is not None:
                    seen[0] += sum(
                        1
                        for j in range(first_stop + 1, len(row_before))
                        if row_before[j] == MASK and row_now[j] not in (MASK, PAD)  # PAD: a finished row's end
                    )
        previous[0] = tokens.clone()

    out = model.generate(ids, attention_mask=mask, step_callback=callback, return_dict_in_generate=True, **options)
    return seen[0], out.nfe


@pytest.mark.parametrize("extra", [{}, {"draft_tokens": 3}, {"use_cache": "prefix"}, {"threshold": 0.5}])
def test_default_never_decodes_a_position_after_a_committed_stop(extra):
    """EOS is certain at answer offset 2 and, one token per step, committed first; the default then decodes only
    offsets 0 and 1 (3 forwards), whereas the paper's whole blocks (`decode_after_stop=True`) go on committing
    the 5 positions after it (8 forwards): the detector is not vacuous."""
    model = make_model(seed=5, **SHARP)
    ids, mask = left_pad(random_prompts([4, 6], seed=5))
    width = ids.shape[1]

    def offsets(rows, positions):
        out = torch.zeros(rows, len(positions), VOCAB)
        out[..., EOS] = -60.0
        out[:, positions == width + 2, EOS] = 60.0
        return out

    options = dict(max_new_tokens=16, block_length=8, **extra)
    with logit_offsets(model, offsets):
        after_default, nfe_default = commits_after_a_stop(model, ids, mask, {EOS}, **options)
        after_whole, nfe_whole = commits_after_a_stop(model, ids, mask, {EOS}, decode_after_stop=True, **options)
    assert after_default == 0
    if "threshold" not in extra and "draft_tokens" not in extra:
        assert (nfe_default, nfe_whole) == (3, 8)
    assert after_whole > 0


def test_default_fixed_canvas_still_decodes_whole_blocks_like_llada(sharp_model):
    """`decode_after_stop=None` keeps the fixed canvas token-exact with LLaDA: whole blocks, as `True`."""
    ids, mask = left_pad(random_prompts([5, 3], seed=6))
    options = dict(max_new_tokens=8, block_length=4, canvas="fixed", stop_token_ids=[11, 12, 13, 14])
    default = sharp_model.generate(ids, attention_mask=mask, **options)
    whole = sharp_model.generate(ids, attention_mask=mask, decode_after_stop=True, **options)
    assert torch.equal(default, whole)


# --------------------------------------------------------------------------------------------- presets


def test_presets_run_and_lossless_fast_equals_default(sharp_model):
    ids, mask = left_pad(random_prompts([5, 3, 6], seed=7))
    prompts = random_prompts([5, 3, 6], seed=7)
    common = dict(max_new_tokens=12, block_length=6, stop_token_ids=[20, 21, 22])
    outputs = {
        name: sharp_model.generate(ids, attention_mask=mask, return_dict_in_generate=True, **preset, **common)
        for name, preset in GENERATION_PRESETS.items()
    }
    assert torch.equal(outputs["lossless-fast"].sequences, outputs["default"].sequences)
    for name, decode_after_stop in (("exact", True), ("default", None)):
        expected, nfe = reference_generate(
            sharp_model,
            prompts,
            mask_id=MASK,
            stop_ids=(EOS, 20, 21, 22),
            decode_after_stop=decode_after_stop,
            **{k: v for k, v in common.items() if k != "stop_token_ids"},
        )
        assert answers(outputs[name].sequences, ids.shape[1]) == expected and outputs[name].nfe == nfe
    assert set(GENERATION_PRESETS) == {"exact", "default", "lossless-fast", "fast"}


def test_presets_benchmark_runs_and_counts_the_llada_loop(capsys):
    """`bench/bench_presets.py` on a tiny random stack: one row per setting; the LLaDA loop decodes the whole
    budget one token per step (16 forwards), the paper's whole blocks one block (8), the default stops at the
    forced EOS (answer position 1: 2 forwards)."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
    import bench_presets

    argv = ["--setup", "random", "--no_write", "--layers", "1", "--hidden", "64", "--vocab", "300"]
    bench_presets.main([*argv, "--budget", "16", "--block", "8", "--prompt_len", "4"])
    rows = [line.split(" | ") for line in capsys.readouterr().out.splitlines() if line.startswith("| ")][1:]
    forwards = {row[0].lstrip("| "): float(row[1]) for row in rows if not row[1].startswith("-")}
    assert len(forwards) == 1 + len(bench_presets.ROWS)
    assert forwards[bench_presets.LLADA] == 16 and forwards["exact (paper: whole blocks)"] == 8
    assert forwards["default (stop at the answer's end)"] == 2


def test_step_callback_sees_each_forwards_commits():
    """One block of 8, drafts of 2: the first forward commits nothing yet, and every later forward reports the
    canvas after the commits it verified, so the masks left drop at every report."""
    model = make_model(seed=2, **SHARP)
    prompt = torch.tensor(random_prompts([4], seed=2))
    masks = []
    with confident_in_order(model, [2, 5, 0, 7, 1, 6, 3, 4], 4):
        out = model.generate(
            prompt,
            max_new_tokens=8,
            block_length=8,
            draft_tokens=2,
            return_dict_in_generate=True,
            step_callback=lambda step, tokens, logits: masks.append(int((tokens[0, 4:] == MASK).sum())),
        )
    assert len(masks) == out.nfe and masks[0] == 8
    assert all(later < earlier for earlier, later in zip(masks, masks[1:])), masks


def test_draft_ceiling_replay_counts_forwards_by_hand_and_as_the_sampler():
    """`bench/bench_draft_ceiling.py`'s replay: on hand-made steps its counts follow from the rule (a round costs a
    forward while two or more commits are left, plus the block's first forward); on the demo model's recorded
    one-token-per-step runs, replaying `draft_tokens=4` gives the forwards the sampler itself counts."""
    import sys
    from pathlib import Path

    from transformers import PreTrainedTokenizerFast

    from illada.modeling_illada import ILLaDAForCausalLM

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
    import bench_draft_ceiling as ceiling
    from bench_generation import PLAIN_SAMPLING, demo_prompts

    # Four commits, each the next-best position of the first forward, its proposal kept.
    steps = [{"order": [2, 0, 3, 1][i:], "x0": [10, 11, 12, 13], "position": p, "token": 10 + p} for i, p in
             enumerate([2, 0, 3, 1])]  # fmt: skip
    assert ceiling.replay(steps, 1, 1) == 4  # one per step: 4 forwards for 4 commits
    assert ceiling.replay(steps, 4, 4) == 2  # the first forward, then one verification of the 3 drafts in between
    assert ceiling.replay(steps, 2, 2) == 3  # rounds of 2: forwards at 4 and 2 commits left
    steps[1]["token"] = 99  # the second commit's token changed after the first: a draft cannot carry it
    assert ceiling.replay(steps, 4, 4) == 3 and ceiling.replay(steps, None, None) == 3

    folder = Path(__file__).resolve().parents[1] / "illada-demo"
    model = ILLaDAForCausalLM.from_pretrained(folder).eval()
    _, prompts = demo_prompts(PreTrainedTokenizerFast.from_pretrained(folder), 4)
    options = {**PLAIN_SAMPLING, **GENERATION_PRESETS["default"], "max_new_tokens": 64, "block_length": 32}
    options["canvas"] = "variable"
    for prompt in prompts:
        blocks = ceiling.record_steps(model, prompt, options)
        drafted = model.generate(prompt, return_dict_in_generate=True, **{**options, "draft_tokens": 4})
        assert sum(ceiling.replay(block, 4, 4) for block in blocks) == drafted.nfe
        assert (
            sum(len(block) for block in blocks) == model.generate(prompt, return_dict_in_generate=True, **options).nfe
        )
