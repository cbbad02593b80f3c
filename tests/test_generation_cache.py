"""Generation with the prefix / dual key-value cache (`use_cache`): exact when refreshed every step, agreement with a
naive row-by-row cached sampler, compute saved (tokens forwarded, counted by a hook, against hand formulas),
valid outputs and stopping, and errors."""

import json
import math
from contextlib import contextmanager

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from tiny import FIRST_ORDINARY_ID, SHARP, TINY, left_pad, make_model, random_prompts

from illada.generation_config_illada import ILLaDAGenerationConfig
from illada.modeling_illada import DiffusionKVCache

MASK, PAD, EOS, VOCAB = TINY["mask_token_id"], TINY["pad_token_id"], TINY["eos_token_id"], TINY["vocab_size"]
MODES = ("prefix", "dual")

pytestmark = pytest.mark.usefixtures("one_thread")


@contextmanager
def count_forwards(model):
    """Records `(rows, tokens)` of the input of every forward of `model`."""
    calls = []

    def hook(module, args, kwargs):
        calls.append(tuple((kwargs["input_ids"] if "input_ids" in kwargs else args[0]).shape))

    handle = model.register_forward_pre_hook(hook, with_kwargs=True)
    try:
        yield calls
    finally:
        handle.remove()


@contextmanager
def logit_offsets(model, offset_fn):
    """Adds `offset_fn(rows, canvas_positions)` `(rows, len(positions), vocab)` to the model's output logits; the
    canvas positions account for a cached span forward (`kv_cache.span`)."""

    def hook(module, args, kwargs, output):
        ids = kwargs["input_ids"] if "input_ids" in kwargs else args[0]
        cache = kwargs.get("kv_cache")
        first = cache.span[0] if cache is not None and cache.span is not None else 0
        keep = kwargs.get("logits_to_keep", 0)
        positions = first + (torch.arange(ids.shape[1]) if isinstance(keep, int) else keep)
        output.logits += offset_fn(ids.shape[0], positions)

    handle = model.register_forward_hook(hook, with_kwargs=True)
    try:
        yield
    finally:
        handle.remove()


# --------------------------------------------------------------------------------------------- naive reference


def _reference_logits(
    model, canvas: list[int], caches: dict, key, refresh: bool, span: tuple[int, int], dual: bool
) -> torch.Tensor:
    """float64 logits `(span length, vocab)` of one row alone: a full forward that refills its own cache, or a
    forward over `span_start:` (prefix) / `span` (dual) reading the rest from that cache."""
    start, end = span
    with torch.no_grad():
        if refresh:
            caches[key] = DiffusionKVCache()
            return model(torch.tensor([canvas]), kv_cache=caches[key]).logits[0, start:end].double()
        cache = caches[key]
        cache.span = (start, end if dual else len(canvas))
        tokens = torch.tensor([canvas[cache.span[0] : cache.span[1]]])
        return model(tokens, kv_cache=cache).logits[0, : end - start].double()


def reference_cached_generate(
    model,
    prompts: list[list[int]],
    *,
    mode: str,
    max_new_tokens: int,
    block_length: int,
    steps: int,
    canvas: str,
    refresh_steps: int | None = None,
    threshold: float | None = None,
    cfg_scale: float = 0.0,
    stop_ids: tuple[int, ...] = (EOS,),
) -> tuple[list[list[int]], int]:
    """Greedy low-confidence sampling with Fast-dLLM's cache, one row at a time (no padding, no batching), its own
    cache per row (and per guidance branch), selection by sorting Python lists. Returns answers and steps."""
    rows = [list(p) + [MASK] * max_new_tokens for p in prompts]
    finished, caches, nfe, end = [False] * len(rows), {}, 0, 0
    for start in range(0, max_new_tokens, block_length):
        end = min(start + block_length, max_new_tokens)
        n = end - start
        num_steps = min(steps, n)
        schedule = [n // num_steps + (1 if s < n % num_steps else 0) for s in range(num_steps)]
        for step in range(num_steps):
            active = [
                r
                for r in range(len(rows))
                if not finished[r] and MASK in rows[r][len(prompts[r]) + start : len(prompts[r]) + end]
            ]
            if not active:
                break
            refresh = step == 0 or (refresh_steps is not None and step % refresh_steps == 0)
            for r in active:
                p = len(prompts[r])
                visible = rows[r][: p + (end if canvas == "variable" else max_new_tokens)]
                span = (p + start, p + end)
                logits = _reference_logits(model, visible, caches, (r, "c"), refresh, span, mode == "dual")
                if cfg_scale > 0:
                    unconditional = [MASK] * p + visible[p:]
                    u = _reference_logits(model, unconditional, caches, (r, "u"), refresh, span, mode == "dual")
                    logits = u + (cfg_scale + 1) * (logits - u)
                proposals = {}
                for j in range(n):
                    if rows[r][p + start + j] == MASK:
                        scores = logits[j].clone()
                        scores[MASK] = -math.inf
                        token = int(scores.argmax())
                        proposals[j] = (token, float(torch.softmax(scores, 0)[token]))
                k = schedule[step]
                if threshold is not None:
                    k = max(k, sum(1 for _, c in proposals.values() if c >= threshold))
                for j in sorted(proposals, key=lambda j: (-proposals[j][1], j))[: min(k, len(proposals))]:
                    rows[r][p + start + j] = proposals[j][0]
            nfe += 1
        for r, prompt in enumerate(prompts):
            finished[r] |= any(t in stop_ids for t in rows[r][len(prompt) + start : len(prompt) + end])
        if all(finished):
            break
    answers = []
    for r, prompt in enumerate(prompts):
        answer = rows[r][len(prompt) : len(prompt) + end]
        cut = next((j for j, t in enumerate(answer) if t in stop_ids), None)
        answers.append(answer if cut is None else answer[: cut + 1])
    return answers, nfe


def answers_match(sequences: torch.Tensor, prompt_width: int, expected: list[list[int]]) -> None:
    for row, answer in zip(sequences.tolist(), expected):
        got = row[prompt_width:]
        assert got[: len(answer)] == answer
        assert all(t == PAD for t in got[len(answer) :])


# --------------------------------------------------------------------------------------------- exactness


EXACT_CASES = {
    "fixed": dict(canvas="fixed"),
    "variable": dict(canvas="variable", max_new_tokens=14),
    "threshold": dict(canvas="fixed", threshold=0.2),
    "cfg": dict(canvas="fixed", cfg_scale=1.0),
    "sampled": dict(canvas="variable", temperature=1.0, remasking="margin"),
}


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("case", EXACT_CASES)
def test_refreshed_every_step_equals_uncached_exactly(sharp_model, mode, case):
    ids, mask = left_pad(random_prompts([5, 2, 4], seed=1))
    options = (
        dict(
            max_new_tokens=16,
            block_length=4,
            steps=3,
            stop_token_ids=[9],
            return_dict_in_generate=True,
            output_history=True,
        )
        | EXACT_CASES[case]
    )
    uncached = sharp_model.generate(ids, attention_mask=mask, generator=torch.Generator().manual_seed(5), **options)
    cached = sharp_model.generate(
        ids,
        attention_mask=mask,
        generator=torch.Generator().manual_seed(5),
        use_cache=mode,
        cache_refresh_steps=1,
        **options,
    )
    assert torch.equal(cached.sequences, uncached.sequences)
    assert torch.equal(cached.history, uncached.history)
    assert cached.nfe == uncached.nfe


REFERENCE_CASES = {
    "fixed": dict(canvas="fixed", max_new_tokens=12, block_length=4, steps=4),
    "variable-short-last-block": dict(canvas="variable", max_new_tokens=10, block_length=4, steps=3),
    "threshold": dict(canvas="fixed", max_new_tokens=12, block_length=6, steps=6, threshold=0.3),
    "refresh-every-2": dict(canvas="fixed", max_new_tokens=12, block_length=6, steps=6, refresh_steps=2),
    "cfg": dict(canvas="fixed", max_new_tokens=8, block_length=4, steps=4, cfg_scale=1.0),
    "cfg-threshold": dict(canvas="fixed", max_new_tokens=12, block_length=6, steps=6, cfg_scale=1.0, threshold=0.3),
}


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("case", REFERENCE_CASES)
def test_batched_cached_generate_matches_naive_row_by_row_reference(sharp_model, mode, case):
    """Batching, left padding, rows leaving a block early (threshold), CFG's doubled batch and periodic refreshes
    are bookkeeping around the cache: each row must decode as it would alone with its own cache."""
    options = dict(REFERENCE_CASES[case])
    prompts = random_prompts([6, 3, 5], seed=2)
    stop = 11
    expected, nfe = reference_cached_generate(sharp_model, prompts, mode=mode, stop_ids=(EOS, stop), **options)
    refresh = options.pop("refresh_steps", None)
    ids, mask = left_pad(prompts)
    out = sharp_model.generate(
        ids,
        attention_mask=mask,
        use_cache=mode,
        cache_refresh_steps=refresh,
        stop_token_ids=[stop],
        return_dict_in_generate=True,
        **options,
    )
    answers_match(out.sequences, ids.shape[1], expected)
    assert out.nfe == nfe


def test_stale_cache_changes_the_output(sharp_model):
    """The cache is an approximation (bidirectional attention): without refreshes the output differs from the
    uncached one for this sharp random model, so the exactness tests above are not vacuous."""
    ids, mask = left_pad(random_prompts([5, 2, 4], seed=1))
    options = dict(max_new_tokens=16, block_length=8, steps=8, canvas="fixed", eos_token_id=[])
    uncached = sharp_model.generate(ids, attention_mask=mask, **options)
    for mode in MODES:
        assert not torch.equal(sharp_model.generate(ids, attention_mask=mask, use_cache=mode, **options), uncached)


# --------------------------------------------------------------------------------------------- compute saved


def expected_tokens_forwarded(
    mode: str, batch: int, prompt: int, budget: int, block: int, steps: int, canvas: str
) -> int:
    """Hand count of the tokens the model runs on: a refresh forwards the visible canvas; a cached step forwards
    the block and everything right of it (prefix) or the block alone (dual)."""
    total = 0
    for start in range(0, budget, block):
        visible = prompt + (start + block if canvas == "variable" else budget)
        if mode == "none":
            total += steps * visible
        elif mode == "prefix":
            total += visible + (steps - 1) * (visible - prompt - start)
        else:
            total += visible + (steps - 1) * block
    return batch * total


@pytest.mark.parametrize("canvas", ["fixed", "variable"])
def test_cache_forwards_fewer_tokens_as_counted_by_hand(sharp_model, canvas):
    ids = torch.tensor(random_prompts([7, 7], seed=4))
    options = dict(max_new_tokens=24, block_length=8, steps=4, canvas=canvas, eos_token_id=[])
    forwarded, logits_rows = {}, {}
    for mode in ("none", *MODES):
        head = []
        handle = sharp_model.lm_head.register_forward_hook(
            lambda m, args, out, head=head: head.append(tuple(args[0].shape))
        )
        try:
            with count_forwards(sharp_model) as calls:
                sharp_model.generate(ids, use_cache=mode, **options)
        finally:
            handle.remove()
        forwarded[mode] = sum(rows * tokens for rows, tokens in calls)
        logits_rows[mode] = head
        assert forwarded[mode] == expected_tokens_forwarded(mode, 2, 7, 24, 8, 4, canvas)
        assert head == [(2, 8, TINY["hidden_size"])] * 12  # logits for the active block only, every step
    assert forwarded["dual"] <= forwarded["prefix"] < forwarded["none"]
    if canvas == "fixed":
        assert forwarded["dual"] < forwarded["prefix"]


def test_rows_leaving_the_block_narrow_the_cache(sharp_model):
    """With threshold decoding some rows finish a block early: later cached steps forward only the others."""
    ids, mask = left_pad(random_prompts([6, 3, 5, 4], seed=6))
    with count_forwards(sharp_model) as calls:
        out = sharp_model.generate(
            ids,
            attention_mask=mask,
            max_new_tokens=16,
            block_length=8,
            steps=8,
            threshold=0.3,
            canvas="fixed",
            eos_token_id=[],
            use_cache="dual",
            return_dict_in_generate=True,
        )
    assert {rows for rows, _ in calls} > {4}  # some steps ran on fewer rows
    assert not (out.sequences == MASK).any()


# --------------------------------------------------------------------------------------------- outputs


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("canvas", ["variable", "fixed"])
def test_cached_generation_stops_after_the_block_with_eos(mode, canvas):
    """EOS is made the clear winner at answer position 6 (second block of 4) and banned elsewhere."""
    model = make_model(seed=4, **SHARP)
    prompt = random_prompts([5], seed=4)[0]
    target = 5 + 6

    def offsets(rows, positions):
        out = torch.zeros(rows, len(positions), VOCAB)
        out[..., EOS] = -50.0
        out[:, positions == target, EOS] = 50.0
        return out

    with logit_offsets(model, offsets), count_forwards(model) as calls:
        out = model.generate(
            torch.tensor([prompt]),
            max_new_tokens=16,
            block_length=4,
            steps=2,
            canvas=canvas,
            use_cache=mode,
            return_dict_in_generate=True,
        )
    answer = out.sequences[0, 5:].tolist()
    assert out.nfe == len(calls) == 4  # two blocks of two steps, then stop
    assert len(answer) == 7 and answer[-1] == EOS and EOS not in answer[:-1] and MASK not in answer
    assert out.sequences[0, :5].tolist() == prompt


@pytest.mark.parametrize("cache", ["none", "prefix"])
def test_default_leaves_the_block_once_the_answer_before_the_stop_is_decoded(cache):
    """EOS is the clear winner at answer position 2 of a block of 8 and banned elsewhere: one token per step, the
    block takes 3 steps by default (EOS first, then the two positions before it), 8 with `decode_after_stop=True`."""
    model = make_model(seed=4, **SHARP)
    prompt = torch.tensor(random_prompts([5], seed=4))

    def offsets(rows, positions):
        out = torch.zeros(rows, len(positions), VOCAB)
        out[..., EOS] = -50.0
        out[:, positions == 5 + 2, EOS] = 50.0
        return out

    options = dict(
        max_new_tokens=16, block_length=8, use_cache=cache, return_dict_in_generate=True, output_history=True
    )
    with logit_offsets(model, offsets):
        whole = model.generate(prompt, decode_after_stop=True, **options)
        skipped = model.generate(prompt, **options)
    assert (whole.nfe, skipped.nfe) == (8, 3)
    for out in (whole, skipped):
        answer = out.sequences[0, 5:].tolist()
        assert len(answer) == 3 and answer[-1] == EOS and MASK not in answer
    assert skipped.history[0, 5:].tolist() == [1, 2, 0] or skipped.history[0, 5:].tolist() == [2, 1, 0]


@settings(max_examples=15, deadline=None)
@given(
    lengths=st.lists(st.integers(1, 6), min_size=1, max_size=3),
    block=st.integers(1, 5),
    blocks=st.integers(1, 3),
    steps_fraction=st.floats(0.01, 1.0),
    canvas=st.sampled_from(["variable", "fixed"]),
    mode=st.sampled_from(MODES),
    threshold=st.sampled_from([None, 0.5]),
    refresh=st.sampled_from([None, 2]),
    decode_after_stop=st.sampled_from([None, True, False]),
    seed=st.integers(0, 1000),
)
def test_cached_generation_invariants(
    sharp_model, lengths, block, blocks, steps_fraction, canvas, mode, threshold, refresh, decode_after_stop, seed
):
    prompts = random_prompts(lengths, seed=seed)
    budget, steps = block * blocks, max(1, round(steps_fraction * block))
    stops = [EOS, FIRST_ORDINARY_ID + seed % (VOCAB - FIRST_ORDINARY_ID)]
    ids, mask = left_pad(prompts)
    out = sharp_model.generate(
        ids,
        attention_mask=mask,
        max_new_tokens=budget,
        block_length=block,
        steps=steps,
        canvas=canvas,
        stop_token_ids=stops,
        use_cache=mode,
        cache_refresh_steps=refresh,
        threshold=threshold,
        decode_after_stop=decode_after_stop,
        return_dict_in_generate=True,
    )
    width = ids.shape[1]
    assert torch.equal(out.sequences[:, :width], ids)  # prompt unchanged
    assert not (out.sequences == MASK).any()
    assert width < out.sequences.shape[1] <= width + budget and out.nfe <= blocks * steps
    for row in out.sequences[:, width:].tolist():
        first = next((j for j, t in enumerate(row) if t in stops), None)
        if first is not None:
            assert all(t == PAD for t in row[first + 1 :])


# --------------------------------------------------------------------------------------------- settings


@pytest.mark.parametrize(
    "spec, message",
    [
        (dict(use_cache="full"), "`use_cache` must be one of"),
        (dict(use_cache=True), "autoregressive `use_cache=True`"),
        (dict(use_cache="prefix", cache_refresh_steps=0), "`cache_refresh_steps` must be a positive integer"),
        (dict(use_cache="dual", cache_refresh_steps=1.5), "`cache_refresh_steps` must be a positive integer"),
        (dict(cache_refresh_steps=2), "`cache_refresh_steps=2` needs a cache"),
        (dict(use_cache="none", cache_refresh_steps=1), "needs a cache"),
        (dict(decode_after_stop="yes"), "`decode_after_stop` must be None, True or False"),
    ],
)
def test_bad_cache_settings_raise_before_any_forward(sharp_model, spec, message):
    ids, mask = left_pad(random_prompts([4, 2], seed=8))
    with count_forwards(sharp_model) as calls, pytest.raises(ValueError) as info:
        sharp_model.generate(ids, attention_mask=mask, max_new_tokens=8, **spec)
    assert message in str(info.value) and calls == []


def test_flash_attention_with_padding_is_rejected_before_any_forward():
    model = make_model(seed=1)
    model.config._attn_implementation = "flash_attention_2"  # only read by the check; nothing runs
    ids, mask = left_pad(random_prompts([4, 2], seed=8))
    with count_forwards(model) as calls, pytest.raises(ValueError, match="needs `sdpa` or `eager` attention"):
        model.generate(ids, attention_mask=mask, max_new_tokens=8, use_cache="prefix")
    assert calls == []


def test_cache_off_runs_uncached(sharp_model):
    ids = torch.tensor(random_prompts([4], seed=9))
    with count_forwards(sharp_model) as calls:
        sharp_model.generate(
            ids, max_new_tokens=8, block_length=4, steps=2, canvas="fixed", use_cache="none", eos_token_id=[]
        )
    assert calls == [(1, 12)] * 4


@pytest.mark.parametrize("off", [None, False])
def test_use_cache_is_a_string_only(sharp_model, off):
    """`use_cache` has one type: None / False (the autoregressive spellings) name `"none"` in the error."""
    ids = torch.tensor(random_prompts([4], seed=9))
    with count_forwards(sharp_model) as calls, pytest.raises(ValueError, match="must be one of .*'none'"):
        sharp_model.generate(ids, max_new_tokens=8, block_length=4, steps=2, use_cache=off)
    assert calls == []


def test_cache_settings_round_trip_and_stock_flag_is_dropped(tmp_path):
    config = ILLaDAGenerationConfig(use_cache="dual", cache_refresh_steps=4)
    loaded = ILLaDAGenerationConfig.from_dict(json.loads(config.to_json_string()))
    assert (loaded.use_cache, loaded.cache_refresh_steps) == ("dual", 4)
    (tmp_path / "generation_config.json").write_text(json.dumps({"eos_token_id": 2, "use_cache": True}))
    stock = ILLaDAGenerationConfig.from_pretrained(tmp_path)  # an autoregressive file's flag is not a cache mode
    assert stock.use_cache == "none" and stock.eos_token_id == 2


# --------------------------------------------------------------------------------------------- benchmark


def test_generation_benchmark_forces_the_answer_length_and_counts_work():
    """The benchmark's random-model setup: the EOS hook (which must see cached spans) gives every sampler an answer
    of budget / 8 tokens, the fixed canvas reproduces the baseline's answer, and the hook counts match hand counts."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "bench" / "bench_generation.py"
    spec = importlib.util.spec_from_file_location("bench_generation", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    args = bench.parse_args(
        [
            "--setup",
            "random",
            "--layers",
            "1",
            "--hidden",
            "64",
            "--vocab",
            "300",
            "--prompt_len",
            "5",
            "--budget",
            "32",
            "--block",
            "4",
            "--tokens_per_step",
            "2",
            "--batch",
            "2",
            "--thresholds",
            "none",
            "--caches",
            "none,prefix,dual",
            "--no_write",
        ]
    )
    model = bench.random_model(args)
    prompts = [torch.randint(FIRST_ORDINARY_ID, 300, (2, 5), generator=torch.Generator().manual_seed(0))]
    with bench.forced_eos(model, 5 + 32 // 8 - 1):
        results = bench.run_settings(model, prompts, bench.settings_grid(args, "yes"), 32, 4, 2, {EOS}, repeats=1)
    baseline = results[0]
    assert baseline.counts.forwards == 16 and baseline.counts.tokens == baseline.counts.logits == 16 * 2 * 37
    for result in results:
        assert all(len(answer) == 4 and answer[-1] == EOS for answer in result.answers)
    by_setting = {(r.setting.canvas, r.setting.cache): r for r in results[1:]}
    assert by_setting["fixed", "none"].answers == baseline.answers
    for (canvas, cache), result in by_setting.items():
        assert result.counts.forwards == 2  # one block of two steps, then EOS stops both rows
        visible = 5 + (4 if canvas == "variable" else 32)
        second_step = {"none": visible, "prefix": visible - 5, "dual": 4}[cache]  # refresh, then a cached step
        assert result.counts.tokens == 2 * (visible + second_step)
        assert result.counts.logits == 2 * 2 * 4
