"""Fuzz: `score_continuations` and `score_choices` on a tiny model (issue 12).

Random prompts and continuations (token ids, tensors or strings through a tokenizer), methods `confidence` and
`likelihood`, guidance scales (non-finite and huge included), Monte-Carlo sizes, batch sizes and generators, with
now and then a hostile value: empty choices, the mask token, ids outside the vocabulary, wrong types, pairs longer
than the model. An oracle written here says which arguments a case gets wrong.

A valid case must give finite scores, one per pair, each at most 0 (both methods sum log-probabilities with
non-negative weights); `best` is the first index of the highest score; `confidence` reveals every continuation
position exactly once. A one-token continuation is checked against an independent float64 computation from one
forward pass of the model (with guidance: `u + (s + 1)(c - u)`, `u` the forward with the prompt masked), which
both methods must match (the likelihood bound is exact for one token).
"""

import math

import pytest
import torch
from fuzz_strategies import fuzz_settings, is_int, is_real, run_case, weird_numbers, wrong_types
from hypothesis import given
from hypothesis import strategies as st
from tiny import FIRST_ORDINARY_ID, SHARP, TINY, make_model
from tiny_tokenizer import make_tiny_tokenizer

pytestmark = pytest.mark.usefixtures("one_thread")

MASK, VOCAB, MAX_POSITIONS = TINY["mask_token_id"], TINY["vocab_size"], TINY["max_position_embeddings"]
MODEL = make_model(seed=3, **SHARP)
TOKENIZER = make_tiny_tokenizer()
HOSTILE = st.one_of(weird_numbers(), wrong_types())
ORDINARY = st.integers(FIRST_ORDINARY_ID, VOCAB - 1)
OUT_OF_VOCAB = st.sampled_from([VOCAB, VOCAB + 3, 2**40, -1])
EXTREME_CFG = 1e3  # above it a clear error is as good as a correct result
TOLERANCE = 1e-4  # float32 forwards, batched versus alone


# ------------------------------------------------------------------------------------------ reference


@torch.no_grad()
def one_token_reference(prompt: list[int], token: int, cfg_scale: float) -> float:
    """log p(token | prompt, [MASK]) in float64 from one forward pass (guided when `cfg_scale > 0`)."""
    logits = MODEL(input_ids=torch.tensor([prompt + [MASK]])).logits[0, -1].double()
    if cfg_scale > 0:
        unconditional = MODEL(input_ids=torch.tensor([[MASK] * (len(prompt) + 1)])).logits[0, -1].double()
        logits = unconditional + (cfg_scale + 1) * (logits - unconditional)
    return float(logits.log_softmax(-1)[token])


def check_scores(result, prompts: list[list[int]], continuations: list[list[int]], options: dict) -> None:
    scores = result.scores
    assert scores.shape == (len(continuations),), f"scores of shape {tuple(scores.shape)}"
    assert torch.isfinite(scores).all(), f"non-finite scores {scores.tolist()}"
    assert (scores <= 1e-9).all(), f"a score above 0: {scores.tolist()}"
    cfg = options.get("cfg_scale") or 0.0
    for k, (prompt, continuation) in enumerate(zip(prompts, continuations)):
        if len(continuation) == 1:
            expected = one_token_reference(prompt, continuation[0], cfg)
            assert abs(float(scores[k]) - expected) < TOLERANCE * max(1.0, abs(expected)), (
                f"pair {k}: score {float(scores[k])}, float64 reference {expected}"
            )
    if result.reveal_order is not None:
        for k, continuation in enumerate(continuations):
            order = result.reveal_order[k].tolist()
            assert sorted(order[: len(continuation)]) == list(range(len(continuation))), f"reveal order {order}"
            assert all(p == -1 for p in order[len(continuation) :]), f"reveal order {order}"


# ------------------------------------------------------------------------------------------ cases


@st.composite
def options(draw) -> dict:
    method = draw(st.sampled_from(["confidence", "likelihood"]))
    chosen = {"method": method}
    optional = {
        "cfg_scale": st.one_of(st.none(), st.sampled_from([0.0, 0.5, 3.0])),
        "batch_size": st.integers(1, 8),
        "check_greedy": st.booleans(),
        "generator": st.integers(0, 1000).map(lambda seed: torch.Generator().manual_seed(seed)),
    }
    for name in draw(st.lists(st.sampled_from(sorted(optional)), max_size=4, unique=True)):
        chosen[name] = draw(optional[name])
    if method == "likelihood":  # a few samples: the default 128 is too slow for a fuzz loop
        chosen["mc_batch_size"] = draw(st.sampled_from([1, 2, 4]))
        chosen["mc_num"] = chosen["mc_batch_size"] * draw(st.integers(1, 3))
    return chosen


OPTION_NAMES = ("method", "cfg_scale", "batch_size", "mc_num", "mc_batch_size", "generator")


def hostile_option(draw, name: str):
    if name == "method":
        return draw(st.sampled_from(["Confidence", "ll", "", None, 1]))
    if name == "generator":
        return draw(st.sampled_from([0, "seed", torch.Generator, [torch.Generator()]]))
    if name == "batch_size":
        return draw(st.one_of(HOSTILE, st.integers(-2, 0), st.just(2**40)))
    if name in ("mc_num", "mc_batch_size"):  # a huge valid sample count would run for ever: not drawn
        return draw(st.one_of(wrong_types(), weird_numbers().filter(lambda v: not (is_int(v) and v > 0))))
    return draw(HOSTILE)


def option_problems(chosen: dict) -> set[str]:
    bad = set()
    method = chosen.get("method", "confidence")
    if not isinstance(method, str) or method not in ("confidence", "likelihood"):
        bad.add("method")
    for name in ("batch_size", "mc_num", "mc_batch_size"):
        if name in chosen and not (is_int(chosen[name]) and chosen[name] >= 1):
            bad.add(name)
    mc_num, mc_batch = chosen.get("mc_num", 128), chosen.get("mc_batch_size", 16)
    if method == "likelihood" and is_int(mc_num) and is_int(mc_batch) and mc_batch >= 1 and mc_num % mc_batch:
        bad |= {"mc_num", "mc_batch_size"}
    cfg = chosen.get("cfg_scale")
    if cfg is not None and not (is_real(cfg) and cfg >= 0):
        bad.add("cfg_scale")
    if chosen.get("generator") is not None and not isinstance(chosen["generator"], torch.Generator):
        bad.add("generator")
    return bad


PAIR_FAULTS = (
    "none",
    "empty_continuation",
    "mask_in_continuation",
    "mask_in_prompt",
    "oov_in_prompt",
    "oov_in_continuation",
    "too_long",
    "float_ids",
    "string_ids",
    "tensor_2d",
    "length_mismatch",
    "bool_ids",
    "tensor_ids",
    "empty_prompt",
)


@st.composite
def pairs_case(draw, fault: str):
    """Token-id pairs with one kind of fault; returns (prompts, continuations, the pairs' ids for the reference,
    bad names)."""
    n = draw(st.integers(1, 4))
    prompts = [draw(st.lists(ORDINARY, min_size=0 if fault == "empty_prompt" else 1, max_size=5)) for _ in range(n)]
    continuations = [draw(st.lists(ORDINARY, min_size=1, max_size=3)) for _ in range(n)]
    k = draw(st.integers(0, n - 1))
    given_prompts, given_continuations = list(prompts), list(continuations)
    bad: set[str] = set()
    if fault == "empty_continuation":
        given_continuations[k], bad = [], {f"continuations[{k}]"}
    elif fault == "mask_in_continuation":
        given_continuations[k] = continuations[k] + [MASK]
        bad = {f"continuations[{k}]"}
    elif fault == "mask_in_prompt":
        given_prompts[k] = [MASK] + prompts[k]
        bad = {f"prompts[{k}]"}
    elif fault in ("oov_in_prompt", "oov_in_continuation"):
        target = given_prompts if fault == "oov_in_prompt" else given_continuations
        target[k] = target[k] + [draw(OUT_OF_VOCAB)]
        bad = {f"prompts[{k}]", f"continuations[{k}]"}  # the pair may be named by either half
    elif fault == "too_long":
        given_prompts[k] = draw(st.sampled_from([MAX_POSITIONS, MAX_POSITIONS - 1, MAX_POSITIONS + 50])) * [7]
        if len(given_prompts[k]) + len(continuations[k]) > MAX_POSITIONS:
            bad = {f"prompts[{k}]", f"continuations[{k}]"}
    elif fault == "float_ids":
        given_continuations[k], bad = [float(t) for t in continuations[k]], {f"continuations[{k}]"}
    elif fault == "bool_ids":
        given_prompts[k], bad = [True, False], {f"prompts[{k}]"}
    elif fault == "string_ids":
        given_continuations[k], bad = "the cat", {f"continuations[{k}]"}
    elif fault == "tensor_2d":
        given_prompts[k], bad = torch.tensor([prompts[k]]), {f"prompts[{k}]"}
    elif fault == "tensor_ids":
        given_prompts[k] = torch.tensor(prompts[k], dtype=draw(st.sampled_from([torch.long, torch.int32])))
        given_continuations[k] = torch.tensor(continuations[k])
    elif fault == "length_mismatch":
        given_continuations = given_continuations + [[7]]
        bad = {"prompts", "continuations"}
    return given_prompts, given_continuations, (given_prompts, given_continuations), bad


@st.composite
def scoring_case(draw, fault: str, bad_option: str | None):
    prompts, continuations, reference, bad = draw(pairs_case(fault))
    chosen = draw(options())
    if bad_option:
        chosen[bad_option] = hostile_option(draw, bad_option)
    return prompts, continuations, reference, bad, chosen


def run_scoring_case(prompts, continuations, reference, bad: set, chosen: dict) -> None:
    bad = bad | option_problems(chosen)
    cfg = chosen.get("cfg_scale")
    ref_prompts, ref_continuations = (
        [x.tolist() if isinstance(x, torch.Tensor) else x for x in part] for part in reference
    )
    empty = {f"prompts[{k}]" for k, p in enumerate(ref_prompts) if isinstance(p, list) and len(p) == 0}
    if is_real(cfg) and cfg > 0 and empty:
        bad |= {"cfg_scale", *empty}
    doubtful = {"cfg_scale"} if is_real(cfg) and cfg > EXTREME_CFG else set()
    method = chosen.get("method", "confidence")
    rest = {k: v for k, v in chosen.items() if k != "method"}

    def check(result) -> None:
        check_scores(result, ref_prompts, ref_continuations, chosen)

    run_case(
        "scoring: score_continuations",
        lambda: MODEL.score_continuations(prompts, continuations, method, **rest),
        bad=bad,
        check=check,
        doubtful=doubtful,
        describe=f"score_continuations({prompts!r}, {continuations!r}, {method!r}, **{rest!r})",
    )


@pytest.mark.parametrize("fault", PAIR_FAULTS)
@fuzz_settings(max_examples=6)
@given(data=st.data())
def test_fuzz_score_continuations_pairs(fault, data):
    """Prompts and continuations: each kind of fault in turn, with random valid options."""
    run_scoring_case(*data.draw(scoring_case(fault, None)))


@pytest.mark.parametrize("name", OPTION_NAMES)
@fuzz_settings(max_examples=8)
@given(data=st.data())
def test_fuzz_score_continuations_options(name, data):
    """Each option in turn gets hostile values (NaN, inf, huge, negative, wrong types)."""
    run_scoring_case(*data.draw(scoring_case("none", name)))


# ------------------------------------------------------------------------------------------ score_choices


WORDS = ("the", "cat", "dog", "sat", "on", "mat", "red", "blue", "3", "4", "yes", "no", "zebra", ".")


@st.composite
def choices_case(draw):
    """A question as text or ids, with text or id choices; some empty, masked or unknown."""
    prompt_words = draw(st.lists(st.sampled_from(WORDS), max_size=5))
    prompt = " ".join(prompt_words)
    kinds = st.sampled_from(["words", "words", "words", "ids", "ids", "empty_text", "mask_text", "empty_ids"])
    choices, bad = [], set()
    for c in range(draw(st.sampled_from([2, 1, 3, 4, 2, 0]))):
        kind = draw(kinds)
        if kind == "words":
            choices.append(" ".join(draw(st.lists(st.sampled_from(WORDS), min_size=1, max_size=3))))
        elif kind == "ids":
            choices.append(draw(st.lists(ORDINARY, min_size=1, max_size=3)))
        elif kind == "empty_text":
            choices.append(draw(st.sampled_from(["", "   "])))
            bad.add(f"choices[{c}]")
        elif kind == "mask_text":
            choices.append("the <[MASK]>")
            bad.add(f"choices[{c}]")
        else:
            choices.append([])
            bad.add(f"choices[{c}]")
    if not choices:
        bad.add("choices")
    cfg = draw(st.sampled_from([None, 0.0, 1.0, None, 0.5, math.inf, math.nan, -1.0]))
    tokenizer = draw(st.sampled_from([TOKENIZER, TOKENIZER, TOKENIZER, None]))
    if tokenizer is None:
        bad |= {f"choices[{c}]" for c, choice in enumerate(choices) if isinstance(choice, str)}
        bad.add("prompt")  # a text prompt without a tokenizer
    if cfg is not None and not (math.isfinite(cfg) and cfg >= 0):
        bad.add("cfg_scale")
    if cfg and math.isfinite(cfg) and cfg > 0 and not prompt_words:
        bad |= {"cfg_scale", "prompt"}
    method = draw(st.sampled_from(["confidence", "likelihood"]))
    container = draw(st.sampled_from(["list", "list", "list", "tuple", "set", "dict"]))
    if container == "tuple":
        choices = tuple(choices)
    elif container != "list":  # no order for the answer index (issue 25): refused, whatever the candidates
        keys = [tuple(c) if isinstance(c, list) else c for c in choices]
        choices, bad = (set(keys) if container == "set" else dict.fromkeys(keys, 0)), {"choices"}
    return prompt, choices, tokenizer, cfg, method, bad


@fuzz_settings(max_examples=40)
@given(case=choices_case())
def test_fuzz_score_choices(case):
    """`score_choices` with text through the tiny tokenizer: valid questions give finite scores and `best` is the
    first argmax; empty choices, a set or dict of choices, the mask token as text, strings without a tokenizer and
    bad `cfg_scale` raise errors that name them."""
    prompt, choices, tokenizer, cfg, method, bad = case
    opts = {"cfg_scale": cfg, "mc_num": 4, "mc_batch_size": 2}

    def check(result) -> None:
        ids = [TOKENIZER(c, add_special_tokens=False)["input_ids"] if isinstance(c, str) else c for c in choices]
        prompt_ids = TOKENIZER(prompt)["input_ids"]
        check_scores(result, [prompt_ids] * len(ids), ids, opts)
        scores = result.scores.tolist()
        assert result.best == scores.index(max(scores)), f"best {result.best} for scores {scores}"

    run_case(
        "scoring: score_choices",
        lambda: MODEL.score_choices(prompt, choices, method, tokenizer=tokenizer, **opts),
        bad=bad,
        check=check,
        describe=f"score_choices({prompt!r}, {choices!r}, {method!r}, tokenizer={tokenizer is not None}, **{opts!r})",
    )
