"""Fuzz: `model.generate` on a tiny model (issue 12).

Two families of cases:

- settings: random generation settings (steps, block length, budget, canvas, temperature, threshold, remasking,
  guidance, stop ids, suppressed tokens, cache, sampling options, generator), now and then with a hostile value
  (non-finite, huge, negative, wrong type, an id outside the vocabulary, an unknown option);
- inputs: left-padded prompts with attention masks, ids outside the vocabulary in real and in padded positions,
  the mask token, wrong dtypes and shapes, empty and long inputs.

An oracle written here says which arguments a case gets wrong. A valid case must satisfy the properties of
`generate`: shape, prompt kept, no mask token and no suppressed token in an answer, only padding after the first
stop token, an answer without a stop token runs to the budget, and at temperature 0 every row equals the same
prompt generated alone (row independence); with a generator, the same seed gives the same output.
"""

import math

import pytest
import torch
from fuzz_strategies import fuzz_settings, is_int, is_real, run_case, weird_numbers, wrong_types
from hypothesis import given
from hypothesis import strategies as st
from tiny import FIRST_ORDINARY_ID, SHARP, TINY, make_model

pytestmark = pytest.mark.usefixtures("one_thread")

MASK, PAD, EOS, VOCAB = TINY["mask_token_id"], TINY["pad_token_id"], TINY["eos_token_id"], TINY["vocab_size"]
MAX_POSITIONS = TINY["max_position_embeddings"]
MODEL = make_model(seed=3, **SHARP)
HOSTILE = st.one_of(weird_numbers(), wrong_types())
ORDINARY = st.integers(FIRST_ORDINARY_ID, VOCAB - 1)
OUT_OF_VOCAB = st.sampled_from([VOCAB, VOCAB + 1, 2**31 - 1, -1, -VOCAB])
# Above these, finite values are extreme: a clear error is as good as a correct result.
EXTREME = {"temperature": 1e3, "cfg_scale": 1e3, "threshold": 1e3, "stop_token_bias['slope']": 1e6}
INT_SETTINGS = ("max_new_tokens", "block_length", "num_return_sequences")
OPTIONAL_INT_SETTINGS = ("steps", "tokens_per_step", "top_k", "cache_refresh_steps", "draft_tokens")
TOKEN_ID_SETTINGS = ("mask_token_id", "pad_token_id", "bos_token_id")
TOKEN_LIST_SETTINGS = ("eos_token_id", "stop_token_ids", "suppress_tokens")
BOOL_SETTINGS = ("return_dict_in_generate", "output_history")
UNKNOWN_OPTIONS = {"num_beams": 4, "repetition_penalty": 1.3, "temprature": 0.5, "top_a": 3, "block_len": 4}


# ------------------------------------------------------------------------------------------ properties


def left_padded(prompts: list[list[int]], pad_fill: list[int] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Left-padded ids and mask; `pad_fill[k]` is written in the k-th padded position (default: the pad id)."""
    width = max([len(p) for p in prompts], default=0)
    fill = iter(pad_fill or [])
    ids = [[next(fill, PAD) for _ in range(width - len(p))] + p for p in prompts]
    mask = [[0] * (width - len(p)) + [1] * len(p) for p in prompts]
    shape = (len(prompts), width)
    return torch.tensor(ids, dtype=torch.long).reshape(shape), torch.tensor(mask, dtype=torch.long).reshape(shape)


def effective_settings(kw: dict, width: int = 0) -> dict:
    """The settings a call ends up with: the model config's token ids where the caller gave none; the budget from
    `max_new_tokens`, or `max_length` minus the prompt `width`."""
    budget = MODEL.generation_config.max_new_tokens if kw.get("max_length") is None else kw["max_length"] - width
    eos = kw.get("eos_token_id")
    eos = [EOS] if eos is None else [eos] if is_int(eos) else list(eos)
    return {
        "pad": PAD if kw.get("pad_token_id") is None else kw["pad_token_id"],
        "mask": MASK if kw.get("mask_token_id") is None else kw["mask_token_id"],
        "stops": set(eos) | set(kw.get("stop_token_ids") or []),
        "suppressed": set(kw.get("suppress_tokens") or []),
        "budget": kw.get("max_new_tokens", budget),
        "copies": kw.get("num_return_sequences", 1),
    }


def greedy(kw: dict) -> bool:
    """Whether the call is deterministic without a generator: argmax proposals and a model-based score."""
    sampling = kw.get("do_sample") is True or (kw.get("do_sample") is None and kw.get("temperature", 0) > 0)
    return not sampling and kw.get("remasking", "low_confidence") != "random"


def check_answers(out, input_ids: torch.Tensor, kw: dict, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
    """The properties every valid result has; returns the sequences. Real prompt tokens come back as given; padded
    positions (attention mask 0) as given or as the pad id."""
    s = effective_settings(kw, input_ids.shape[1])
    sequences = out.sequences if kw.get("return_dict_in_generate") else out
    assert (
        isinstance(sequences, torch.Tensor) and not sequences.is_floating_point() and sequences.dtype != torch.bool
    ), f"sequences are {type(sequences)}"
    rows, width = input_ids.shape[0] * s["copies"], input_ids.shape[1]
    assert sequences.shape[0] == rows and width <= sequences.shape[1] <= width + s["budget"], (
        f"shape {tuple(sequences.shape)} for {rows} rows, prompt width {width}, budget {s['budget']}"
    )
    echo, given = sequences[:, :width], input_ids.repeat_interleave(s["copies"], 0)
    if attention_mask is None:
        assert torch.equal(echo, given), f"prompt changed: {given.tolist()} came back as {echo.tolist()}"
    else:
        real = attention_mask.bool().repeat_interleave(s["copies"], 0)
        assert torch.equal(echo[real], given[real]), f"prompt changed: {given.tolist()} came back as {echo.tolist()}"
        assert ((echo == given) | (echo == s["pad"]))[~real].all(), f"padding {given.tolist()} -> {echo.tolist()}"
    answers = sequences[:, width:]
    assert ((answers >= 0) & (answers < VOCAB)).all(), "answer ids outside the vocabulary"
    lengths, stopped = [], []
    for row in answers.tolist():
        stop = next((i for i, t in enumerate(row) if t in s["stops"]), None)
        body = row if stop is None else row[: stop + 1]
        assert s["mask"] not in body, f"mask token in an answer: {row}"
        assert not s["suppressed"] & set(body), f"suppressed token {sorted(s['suppressed'] & set(body))} in {row}"
        assert stop is None or all(t == s["pad"] for t in row[stop + 1 :]), f"not only padding after the stop: {row}"
        lengths.append(len(row) if stop is None else stop)
        stopped.append(stop is not None)
        if stop is None:
            assert len(row) == s["budget"], f"an answer without a stop token ended before the budget: {row}"
    if kw.get("return_dict_in_generate"):
        assert out.answer_lengths.tolist() == lengths, f"answer_lengths {out.answer_lengths.tolist()} != {lengths}"
        assert out.stopped.tolist() == stopped, f"stopped {out.stopped.tolist()} != {stopped}"
    return sequences


def check_rows_alone(
    input_ids: torch.Tensor, attention_mask: torch.Tensor | None, kw: dict, sequences: torch.Tensor
) -> None:
    """Row independence: each prompt generated alone (unpadded) gives the same answer as in the batch.

    Rows without prompt tokens are skipped: their masked positions are symmetric, so confidences tie exactly, and
    the leftmost-wins tie-break then rests on float noise (~1e-6) that differs between a batch and a single row.
    """
    width, pad = input_ids.shape[1], effective_settings(kw)["pad"]
    copies = kw.get("num_return_sequences", 1)
    if kw.get("max_length") is not None:  # the same budget for a row alone, whose prompt is narrower
        kw = {**kw, "max_new_tokens": kw["max_length"] - width}
        del kw["max_length"]
    for r in range(input_ids.shape[0]):
        real = input_ids[r] if attention_mask is None else input_ids[r][attention_mask[r].bool()]
        if real.numel() == 0:
            continue
        alone = MODEL.generate(real[None], **kw)
        alone = alone.sequences if kw.get("return_dict_in_generate") else alone
        answer = alone[0, real.numel() :].tolist()
        for copy in range(copies):
            batched = sequences[r * copies + copy, width:].tolist()
            assert batched[: len(answer)] == answer and all(t == pad for t in batched[len(answer) :]), (
                f"row {r} alone gives {answer}, in the batch {batched}"
            )


def check_drafts_lossless(
    input_ids: torch.Tensor, attention_mask: torch.Tensor | None, kw: dict, sequences: torch.Tensor
) -> None:
    """`draft_tokens` gives the answers of the same call without it (one token per step), in rows with a prompt
    (the rows of an empty prompt tie exactly; see `check_rows_alone`)."""
    plain = MODEL.generate(input_ids, attention_mask=attention_mask, **{**kw, "draft_tokens": None})
    plain = plain.sequences if kw.get("return_dict_in_generate") else plain
    copies = kw.get("num_return_sequences", 1)
    real = attention_mask.bool().any(-1) if attention_mask is not None else torch.ones(len(input_ids), dtype=bool)
    rows = real.repeat_interleave(copies)
    width = min(plain.shape[1], sequences.shape[1])
    assert torch.equal(plain[rows, :width], sequences[rows, :width]), "drafts changed the answers"


def generate_call(input_ids, attention_mask, kw: dict, seed: int | None):
    generator = None if seed is None else torch.Generator().manual_seed(seed)
    return lambda: MODEL.generate(input_ids, attention_mask=attention_mask, generator=generator, **kw)


# ------------------------------------------------------------------------------------------ settings


@st.composite
def valid_settings(draw) -> dict:
    kw: dict = {}
    block = draw(st.integers(1, 6))
    canvas = draw(st.sampled_from(["variable", "fixed"]))
    budget = block * draw(st.integers(1, 3)) if canvas == "fixed" else draw(st.integers(1, 12))
    kw.update(max_new_tokens=budget, block_length=block, canvas=canvas)
    schedule = draw(st.sampled_from(["default", "steps", "tokens_per_step"]))
    if schedule != "default":
        kw[schedule] = draw(st.integers(1, block))
    kw["remasking"] = draw(st.sampled_from(["low_confidence", "random", "margin", "entropy"]))
    if kw["remasking"] != "random" and draw(st.booleans()):
        kw["threshold"] = draw(st.floats(0.0, 1.5))
    kw["temperature"] = draw(st.sampled_from([0.0, 0.0, 0.5, 1.0, 3.0]))
    optional = {
        "cfg_scale": st.sampled_from([0.0, 0.5, 2.0]),
        "do_sample": st.sampled_from([None, False, True]),
        "top_k": st.integers(1, 10),
        "top_p": st.floats(0.05, 1.0),
        "num_return_sequences": st.integers(1, 2),
        "eos_token_id": st.one_of(st.just([]), ORDINARY, st.lists(ORDINARY, max_size=2)),
        "stop_token_ids": st.lists(ORDINARY, max_size=2),
        "suppress_tokens": st.lists(st.integers(0, VOCAB - 1).filter(lambda t: t != MASK), max_size=5),
        "decode_after_stop": st.sampled_from([None, True, False]),
        "use_cache": st.sampled_from(["none", "prefix", "dual"]),
        "stop_token_bias": st.fixed_dictionaries(
            {"token_ids": st.lists(ORDINARY, min_size=1, max_size=2), "slope": st.floats(0.1, 5.0)}
        ),
        "return_dict_in_generate": st.booleans(),
    }
    for name in draw(st.lists(st.sampled_from(sorted(optional)), max_size=4, unique=True)):
        kw[name] = draw(optional[name])
    if kw.get("use_cache") in ("prefix", "dual") and draw(st.booleans()):
        kw["cache_refresh_steps"] = draw(st.integers(1, 3))
    if draw(st.integers(0, 3)) == 0:  # lossless drafts: greedy, one token per step, a confidence score
        for name in ("steps", "tokens_per_step", "threshold", "cache_refresh_steps", "do_sample"):
            kw.pop(name, None)
        kw.update(draft_tokens=draw(st.integers(1, 5)), temperature=0.0)
        kw["remasking"] = draw(st.sampled_from(["low_confidence", "margin", "entropy"]))
    return kw


def near_miss(name: str) -> st.SearchStrategy:
    if name in TOKEN_ID_SETTINGS:
        return st.one_of(OUT_OF_VOCAB, st.just(MASK), st.just(PAD), st.just(2.0), st.just(True))
    if name in TOKEN_LIST_SETTINGS or name == "stop_token_bias":
        ids = st.lists(st.one_of(OUT_OF_VOCAB, st.just(MASK), ORDINARY), min_size=1, max_size=2)
        if name == "stop_token_bias":
            return st.fixed_dictionaries({"token_ids": ids, "slope": st.one_of(weird_numbers(), st.just(1.0))})
        return st.one_of(ids, st.just("2"), st.just([2.0]), st.just(VOCAB))
    if name == "num_return_sequences":  # a huge valid count only asks for that much memory: not drawn
        return st.integers(-2, 4)
    if name in INT_SETTINGS or name in OPTIONAL_INT_SETTINGS or name == "max_length":
        return st.one_of(st.integers(-2, 40), st.just(2**40))
    if name in ("remasking", "canvas", "use_cache"):
        return st.sampled_from(["low-confidence", "", "Fixed", True, "prefix ", None])
    if name in BOOL_SETTINGS or name == "do_sample":
        return st.sampled_from([1, 0, "True", None])
    if name == "decode_after_stop":
        return st.sampled_from([1, 0, "True", "none"])
    return st.nothing()


SETTING_NAMES = (
    "max_length",
    *INT_SETTINGS,
    *OPTIONAL_INT_SETTINGS,
    *TOKEN_ID_SETTINGS,
    *TOKEN_LIST_SETTINGS,
    *BOOL_SETTINGS,
    "temperature",
    "cfg_scale",
    "threshold",
    "top_p",
    "remasking",
    "canvas",
    "use_cache",
    "do_sample",
    "decode_after_stop",
    "stop_token_bias",
)


def corrupt(draw, kw: dict, name: str) -> None:
    if name == "num_return_sequences":
        kw[name] = draw(
            st.one_of(wrong_types(), weird_numbers().filter(lambda v: not (is_int(v) and v > 4)), near_miss(name))
        )
    elif name == "unknown":
        option = draw(st.sampled_from(sorted(UNKNOWN_OPTIONS)))
        kw[option] = UNKNOWN_OPTIONS[option]
    else:
        kw[name] = draw(st.one_of(HOSTILE, near_miss(name)))


@st.composite
def generation_case(draw, corrupt_name: str | None = None) -> tuple[list[list[int]], dict, int | None]:
    """Prompts, settings (with `corrupt_name`, else zero to two random settings, made hostile) and a seed."""
    lengths = draw(st.lists(st.integers(0 if draw(st.booleans()) else 1, 5), min_size=1, max_size=3))
    prompts = [draw(st.lists(ORDINARY, min_size=n, max_size=n)) for n in lengths]
    kw = draw(valid_settings())
    if draw(st.integers(0, 4)) == 0:  # transformers' total length instead of the answer budget
        kw["max_length"] = max(lengths) + kw.pop("max_new_tokens")
    names = [corrupt_name] if corrupt_name else draw(st.lists(st.sampled_from([*SETTING_NAMES, "unknown"]), max_size=2))
    for name in names:
        corrupt(draw, kw, name)
    seed = draw(st.one_of(st.none(), st.integers(0, 2**16)))
    return prompts, kw, seed


def positive_int(value) -> bool:
    return is_int(value) and value >= 1


def id_list(value) -> list | None:
    """The ids of an `eos_token_id`-like value, or None if it is not None, an id or a list of ids."""
    if value is None:
        return []
    if is_int(value):
        return [value] if value >= 0 else None
    if isinstance(value, (list, tuple)) and all(is_int(t) and t >= 0 for t in value):
        return list(value)
    return None


def settings_problems(kw: dict, prompts: list[list[int]]) -> set[str]:
    """The settings `kw` gets wrong for these prompts, by the documented rules (independent of the package)."""
    bad = {name for name in kw if name not in SETTING_NAMES}  # unknown options
    bad |= {name for name in INT_SETTINGS if name in kw and not positive_int(kw[name])}
    bad |= {name for name in OPTIONAL_INT_SETTINGS if kw.get(name) is not None and not positive_int(kw[name])}
    block, budget = kw.get("block_length"), kw.get("max_new_tokens")
    if kw.get("max_length") is not None:  # None: unset
        width, max_length = max(map(len, prompts)), kw["max_length"]
        if "max_new_tokens" in kw:
            bad |= {"max_length", "max_new_tokens"}
        elif not (is_int(max_length) and max_length > width):
            bad.add("max_length")
        else:
            budget = max_length - width
    if kw.get("steps") is not None and kw.get("tokens_per_step") is not None:
        bad |= {"steps", "tokens_per_step"}
    for name in ("steps", "tokens_per_step"):
        if positive_int(kw.get(name)) and positive_int(block) and kw[name] > block:
            bad |= {name, "block_length"}
    if kw.get("canvas") == "fixed" and positive_int(block) and positive_int(budget) and budget % block:
        bad |= {"max_new_tokens", "max_length", "block_length", "canvas"}
    for name, choices in (
        ("remasking", ("low_confidence", "random", "margin", "entropy")),
        ("canvas", ("variable", "fixed")),
    ):
        if name in kw and (not isinstance(kw[name], str) or kw[name] not in choices):
            bad.add(name)
    if "use_cache" in kw and not (isinstance(kw["use_cache"], str) and kw["use_cache"] in ("none", "prefix", "dual")):
        bad.add("use_cache")
    if kw.get("cache_refresh_steps") is not None and kw.get("use_cache", "none") in ("none", None, False):
        bad |= {"cache_refresh_steps", "use_cache"}
    for name in ("temperature", "cfg_scale"):
        if name in kw and not (is_real(kw[name]) and kw[name] >= 0):
            bad.add(name)
    if kw.get("threshold") is not None:
        if not (is_real(kw["threshold"]) and kw["threshold"] >= 0):
            bad.add("threshold")
        if kw.get("remasking") == "random":
            bad |= {"threshold", "remasking"}
    if kw.get("top_p") is not None and not (is_real(kw["top_p"]) and 0 < kw["top_p"] <= 1):
        bad.add("top_p")
    if "do_sample" in kw and not (kw["do_sample"] is None or isinstance(kw["do_sample"], bool)):
        bad.add("do_sample")
    bad |= {name for name in BOOL_SETTINGS if name in kw and not isinstance(kw[name], bool)}
    if kw.get("decode_after_stop") is not None and not isinstance(kw["decode_after_stop"], bool):
        bad.add("decode_after_stop")
    bad |= draft_problems(kw)
    if kw.get("output_history") is True and kw.get("return_dict_in_generate") is not True:
        bad |= {"output_history", "return_dict_in_generate"}
    bad |= token_problems(kw, prompts)
    if positive_int(budget) and max(map(len, prompts)) + budget > MAX_POSITIONS:
        bad |= {"max_new_tokens", "max_length"}
    if is_real(kw.get("cfg_scale")) and kw["cfg_scale"] > 0 and min(map(len, prompts)) == 0:
        bad.add("cfg_scale")
    return bad


def draft_problems(kw: dict) -> set[str]:
    """`draft_tokens` reproduces greedy one-token-per-step decoding: the settings that depart from it conflict."""
    if not positive_int(kw.get("draft_tokens")):
        return set()
    if kw["draft_tokens"] > 8:  # 2**(draft_tokens - 1) canvases per forward
        return {"draft_tokens"}
    names = ("steps", "tokens_per_step", "threshold", "cache_refresh_steps")
    conflicts = {name for name in names if kw.get(name) is not None}
    if kw.get("remasking") == "random":
        conflicts.add("remasking")
    temperature, do_sample = kw.get("temperature", 0), kw.get("do_sample")
    if do_sample is True or (do_sample is None and is_real(temperature) and temperature > 0):
        conflicts |= {"temperature", "do_sample"}
    return conflicts | {"draft_tokens"} if conflicts else set()


def token_problems(kw: dict, prompts: list[list[int]]) -> set[str]:
    bad = set()
    for name in TOKEN_ID_SETTINGS:
        value = kw.get(name)
        if value is not None and not (is_int(value) and value >= 0):
            bad.add(name)
        elif value is not None and value >= VOCAB and name != "bos_token_id":  # generate never reads the BOS id
            bad.add(name)
    lists = {name: id_list(kw.get(name)) for name in TOKEN_LIST_SETTINGS}
    if "stop_token_ids" in kw and kw["stop_token_ids"] is not None and is_int(kw["stop_token_ids"]):
        lists["stop_token_ids"] = None  # a list, not one id
    for name, ids in lists.items():
        if ids is None or any(t >= VOCAB for t in ids):
            bad.add(name)
    mask = MASK if kw.get("mask_token_id") is None else kw["mask_token_id"]
    pad = PAD if kw.get("pad_token_id") is None else kw["pad_token_id"]
    if is_int(mask) and pad == mask and is_int(pad):
        bad |= {"pad_token_id", "mask_token_id"}
    if is_int(mask) and any(mask in prompt for prompt in prompts):
        bad |= {"mask_token_id", "input_ids"}  # another mask id that the prompt holds
    stops = (lists["eos_token_id"] or []) + (lists["stop_token_ids"] or [])
    if kw.get("eos_token_id") is None:
        stops.append(EOS)
    if is_int(mask) and mask in stops:
        bad |= {"eos_token_id", "stop_token_ids", "mask_token_id"}
    suppressed = set(lists["suppress_tokens"] or [])
    if is_int(mask) and len(suppressed | {mask}) >= VOCAB:
        bad.add("suppress_tokens")
    bias = kw.get("stop_token_bias")
    if bias is not None:
        ids = id_list(bias.get("token_ids")) if isinstance(bias, dict) else None
        slope = bias.get("slope") if isinstance(bias, dict) else None
        if (
            not isinstance(bias, dict)
            or not set(bias) <= {"token_ids", "slope", "start", "max_bias"}
            or ids is None
            or not ids
            or any(t >= VOCAB for t in ids)
            or not (is_real(slope) and slope > 0)
        ):
            bad.add("stop_token_bias")
    return bad


def extreme(kw: dict) -> set[str]:
    found = {name for name, limit in EXTREME.items() if is_real(kw.get(name)) and kw[name] > limit}
    if is_int(kw.get("bos_token_id")) and kw["bos_token_id"] >= VOCAB:
        found.add("bos_token_id")  # not read by generate: accepting it is fine, so is refusing it
    bias = kw.get("stop_token_bias")
    if isinstance(bias, dict) and is_real(bias.get("slope")) and bias["slope"] > EXTREME["stop_token_bias['slope']"]:
        found.add("stop_token_bias")
    return found


def run_generation_case(prompts: list[list[int]], kw: dict, seed: int | None) -> None:
    input_ids, attention_mask = left_padded(prompts)
    bad = settings_problems(kw, prompts)

    def check(out) -> None:
        sequences = check_answers(out, input_ids, kw, attention_mask)
        if greedy(kw):
            check_rows_alone(input_ids, attention_mask, kw, sequences)
        if kw.get("draft_tokens") is not None:
            check_drafts_lossless(input_ids, attention_mask, kw, sequences)
        elif seed is not None:
            again = generate_call(input_ids, attention_mask, kw, seed)()
            again = again.sequences if kw.get("return_dict_in_generate") else again
            assert torch.equal(again, sequences), "the same generator seed gave a different output"

    run_case(
        "generate: settings",
        generate_call(input_ids, attention_mask, kw, seed),
        bad=bad,
        check=check,
        doubtful=extreme(kw),
        describe=f"prompts={prompts}, seed={seed}, generate(**{kw!r})",
    )


@pytest.mark.parametrize("name", [*SETTING_NAMES, "unknown"])
@fuzz_settings(max_examples=6)
@given(data=st.data())
def test_fuzz_generate_one_setting(name, data):
    """Each setting in turn gets hostile and near-miss values; the others are valid."""
    run_generation_case(*data.draw(generation_case(corrupt_name=name)))


@fuzz_settings(max_examples=80)
@given(case=generation_case())
def test_fuzz_generate_settings(case):
    """Random valid settings, some with one or two bad ones."""
    run_generation_case(*case)


@fuzz_settings(max_examples=15)
@given(
    temperature=st.sampled_from([1e308, 1e30, 1e5, 1e4, 5e-324, 1e-300]),
    suppress=st.lists(ORDINARY, min_size=1, max_size=20),
    seed=st.integers(0, 100),
)
def test_fuzz_generate_extreme_temperature(temperature, suppress, seed):
    """Issue 12 item 4: huge and tiny temperatures must never emit the mask token or a suppressed token."""
    prompts = [[7, 8, 9], [10]]
    kw = {"temperature": temperature, "suppress_tokens": suppress, "max_new_tokens": 6, "block_length": 3}
    run_generation_case(prompts, kw, seed)


@fuzz_settings(max_examples=12)
@given(
    cfg_scale=st.sampled_from([1e308, 1e30, 1e10, 1e3, 1e-300]),
    threshold=st.sampled_from([None, 0.5, 1e308]),
    remasking=st.sampled_from(["low_confidence", "margin", "entropy"]),
)
def test_fuzz_generate_extreme_guidance(cfg_scale, threshold, remasking):
    """Issue 12 item 1 for generate: a huge guidance scale overflows `u + (s + 1)(c - u)`; the answer must still
    hold no mask token (or the scale is refused by name)."""
    kw = {
        "cfg_scale": cfg_scale,
        "threshold": threshold,
        "remasking": remasking,
        "max_new_tokens": 6,
        "block_length": 3,
    }
    run_generation_case([[7, 8, 9], [10, 11]], kw, None)


# ------------------------------------------------------------------------------------------ inputs


INPUT_KW = {"max_new_tokens": 4, "block_length": 2}
INPUT_FAULTS = (
    "none",
    "oov_real",
    "mask_real",
    "oov_padding",
    "mask_padding",
    "dtype",
    "shape",
    "mask_shape",
    "mask_values",
    "right_padding",
    "list_ids",
    "no_mask_with_oov_padding",
    "empty_batch",
    "long",
    "mask_dtype",
    "dict_inputs",
)


@st.composite
def input_case(draw, fault: str):
    """Prompts as `generate` receives them, with one kind of fault; returns (input_ids, attention_mask, bad,
    doubtful, reference) where `reference` is the clean (ids, mask) a doubtful case must agree with."""
    lengths = draw(st.lists(st.integers(0, 6), min_size=1, max_size=4))
    if fault in ("oov_padding", "mask_padding", "no_mask_with_oov_padding", "right_padding"):
        lengths = [*lengths, max(lengths) + 1]  # at least one padded row
    prompts = [draw(st.lists(ORDINARY, min_size=n, max_size=n)) for n in lengths]
    ids, mask = left_padded(prompts)
    bad, doubtful, reference = set(), set(), None
    padded = (mask == 0).nonzero().tolist()
    real = (mask == 1).nonzero().tolist()
    if fault == "oov_real" and real:
        r, c = draw(st.sampled_from(real))
        ids[r, c] = draw(OUT_OF_VOCAB)
        bad = {"input_ids"}
    elif fault == "mask_real" and real:
        r, c = draw(st.sampled_from(real))
        ids[r, c] = MASK
        bad = {"input_ids"}
    elif fault in ("oov_padding", "mask_padding"):
        reference = (ids.clone(), mask)
        fill = OUT_OF_VOCAB if fault == "oov_padding" else st.just(MASK)
        for r, c in padded:
            ids[r, c] = draw(fill)
        doubtful = {"input_ids"}  # ignoring padding is right; refusing it with a clear error is acceptable
    elif fault == "no_mask_with_oov_padding":
        for r, c in padded:
            ids[r, c] = draw(OUT_OF_VOCAB)
        mask, bad = None, {"input_ids"}
    elif fault == "dtype":
        dtype = draw(
            st.sampled_from(
                [torch.float32, torch.float64, torch.bool, torch.int32, torch.int16, torch.uint8, torch.complex64]
            )
        )
        ids = ids.to(dtype)
        if dtype.is_floating_point or dtype.is_complex or dtype == torch.bool:
            bad = {"input_ids"}
    elif fault == "shape":
        ids = draw(st.sampled_from([ids[0], ids[None], ids[None, None], torch.tensor(7)]))
        mask, bad = None, {"input_ids"}
    elif fault == "mask_shape":
        mask = draw(
            st.sampled_from(
                [
                    mask[:, 1:],
                    mask[:1],
                    mask[None],
                    mask.T if mask.shape[0] != mask.shape[1] else mask[:, :0],
                    mask.flatten(),
                ]
            )
        )
        bad = {"attention_mask"} if mask.shape != ids.shape else set()
    elif fault == "mask_values" and padded:
        r, c = draw(st.sampled_from(padded))
        mask = mask.clone()
        mask[r, c] = draw(st.sampled_from([2, -1, 7]))
        bad = {"attention_mask"}
    elif fault == "right_padding":
        mask = mask.flip(-1)
        bad = {"attention_mask"} if (mask[:, :-1] > mask[:, 1:]).any() else set()
    elif fault == "list_ids":
        ids, mask, bad = ids.tolist(), None, {"input_ids"}
    elif fault == "empty_batch":
        ids, mask = ids[:0], mask[:0]
        doubtful = {"input_ids"}
    elif fault == "long":
        width = draw(
            st.sampled_from(
                [MAX_POSITIONS - INPUT_KW["max_new_tokens"], MAX_POSITIONS - 3, MAX_POSITIONS, MAX_POSITIONS + 40]
            )
        )
        ids = torch.randint(FIRST_ORDINARY_ID, VOCAB, (1, width), generator=torch.Generator().manual_seed(width))
        mask = None
        if width + INPUT_KW["max_new_tokens"] > MAX_POSITIONS:
            bad = {"input_ids", "max_new_tokens"}
    elif fault == "mask_dtype":
        dtype = draw(st.sampled_from([torch.bool, torch.int32, torch.float32]))
        reference = (ids, mask)
        mask = mask.to(dtype)
        if dtype.is_floating_point:
            doubtful = {"attention_mask"}
    elif fault == "dict_inputs":
        return {"input_ids": ids, "attention_mask": mask}, None, bad, doubtful, reference
    return ids, mask, bad, doubtful, reference


def run_input_case(ids, mask, bad: set, doubtful: set, reference, fault: str) -> None:
    kw = dict(INPUT_KW)

    def check(out) -> None:
        given_ids, given_mask = (ids["input_ids"], ids["attention_mask"]) if isinstance(ids, dict) else (ids, mask)
        if given_ids.shape[0] == 0:
            assert out.shape[0] == 0, f"an empty batch gave {tuple(out.shape)}"
            return
        clean_ids, clean_mask = reference if reference is not None else (given_ids.long(), given_mask)
        if clean_mask is not None:
            clean_mask = clean_mask.long()
        sequences = check_answers(out, given_ids.long(), kw, clean_mask)
        check_rows_alone(clean_ids, clean_mask, kw, torch.cat([clean_ids, sequences[:, clean_ids.shape[1] :]], 1))

    describe = f"fault={fault}, input_ids={ids!r}, attention_mask={mask!r}"
    run_case(
        "generate: inputs",
        lambda: MODEL.generate(ids, attention_mask=mask, **kw),
        bad=bad,
        check=check,
        doubtful=doubtful,
        describe=describe,
    )


@pytest.mark.parametrize("fault", INPUT_FAULTS)
@fuzz_settings(max_examples=8)
@given(data=st.data())
def test_fuzz_generate_inputs(fault, data):
    """Prompts, padding and masks: each kind of fault in turn (`none`: valid, randomly padded batches)."""
    run_input_case(*data.draw(input_case(fault)), fault)


HOOKS = {
    "generator": st.sampled_from([3, "seed", torch.Generator, [torch.Generator()], None]),
    "step_callback": st.sampled_from([print, "print", 3, None, lambda step, canvas, logits: None]),
    "progress": st.sampled_from([True, False, "yes", 1, None]),
}


def hook_problems(hooks: dict) -> set[str]:
    bad = set()
    if hooks.get("generator") is not None and not isinstance(hooks["generator"], torch.Generator):
        bad.add("generator")
    if hooks.get("step_callback") is not None and not callable(hooks["step_callback"]):
        bad.add("step_callback")
    if "progress" in hooks and not isinstance(hooks["progress"], bool):
        bad.add("progress")
    return bad


@fuzz_settings(max_examples=20)
@given(names=st.lists(st.sampled_from(sorted(HOOKS)), min_size=1, max_size=3, unique=True), data=st.data())
def test_fuzz_generate_hooks(names, data):
    """`generator`, `step_callback` and `progress` of the wrong type are named; valid ones change nothing at
    temperature 0."""
    hooks = {name: data.draw(HOOKS[name]) for name in names}
    if hooks.get("step_callback") is print:
        hooks["step_callback"] = lambda step, canvas, logits: None  # the same, without printing
    prompts, kw = [[7, 8, 9], [10]], {"max_new_tokens": 4, "block_length": 2}
    ids, mask = left_padded(prompts)

    def check(out) -> None:
        check_rows_alone(ids, mask, kw, check_answers(out, ids, kw, mask))

    run_case(
        "generate: settings",
        lambda: MODEL.generate(ids, attention_mask=mask, **kw, **hooks),
        bad=hook_problems(hooks),
        check=check,
        describe=f"hooks={hooks!r}",
    )


def test_fuzz_oracle_agrees_on_a_known_valid_call():
    """The oracle itself: a plain call is valid and passes every property (guards against a vacuous suite)."""
    prompts = [[7, 8], [9, 10, 11]]
    kw = {"max_new_tokens": 5, "block_length": 2}
    assert settings_problems(kw, prompts) == set()
    ids, mask = left_padded(prompts)
    sequences = check_answers(MODEL.generate(ids, attention_mask=mask, **kw), ids, kw)
    check_rows_alone(ids, mask, kw, sequences)
    assert math.isfinite(float(sequences.sum()))
