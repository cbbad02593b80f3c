"""Fuzz: VRPO's config and preference data (issue 25), through `VRPOConfig` and `build_preference_dataset` (what
`train_vrpo.py` and `VRPOTrainer` run).

Config: `beta`, `loss_type`, `loss_weights`, `label_smoothing`, `num_mc_samples`, `max_length` with hostile values
(NaN, inf, huge, negative, wrong types, unknown loss types, a weight list of the wrong length, all-zero weights,
`label_smoothing` without the `robust` loss). An oracle written here from the documented ranges says which ones a case
gets wrong; a valid config keeps its values.

Data: pairs in trl's formats (plain text, conversational, implicit prompt) with now and then a fault (a `None` or a
number or a list of non-turns as an answer, text and conversation mixed, the mask token in the text, a missing
column). A valid pair must tokenise to the rendering built here independently (tokenizer call or
`apply_chat_template` of prompt + answer), the prompt ids being their common start and each answer closed by exactly
one EOS.
"""

import math
import tempfile

from datasets import Dataset
from fuzz_strategies import fuzz_settings, is_real, run_case, weird_numbers, wrong_types
from hypothesis import assume, given
from hypothesis import strategies as st
from tiny_tokenizer import make_tiny_tokenizer

from illada.vrpo import VRPOConfig, build_preference_dataset

OUTPUT_DIR = tempfile.gettempdir()
LOSS_TYPES = ("sigmoid", "hinge", "ipo", "robust")
MAX_BETA = 1e3  # documented: DPO's beta beyond this saturates on the first step
HOSTILE = st.one_of(weird_numbers(), wrong_types())
TOKENIZER = make_tiny_tokenizer(chat_template=True)
EOS, MASK = TOKENIZER.eos_token_id, TOKENIZER.mask_token_id


# ------------------------------------------------------------------------------------------ config


@st.composite
def vrpo_kwargs(draw) -> dict:
    valid_types = st.one_of(st.lists(st.sampled_from(LOSS_TYPES), min_size=1, max_size=3), st.sampled_from(LOSS_TYPES))
    loss_type = draw(st.one_of(valid_types, valid_types, st.sampled_from([["sigmoid", "dpo"], [], "kto", ["Sigmoid"]])))

    def mostly(valid: st.SearchStrategy, hostile: st.SearchStrategy) -> st.SearchStrategy:
        # One hostile field in ~6, so that valid configs occur (`one_of` would flatten HOSTILE's many branches).
        return st.integers(0, 5).flatmap(lambda k: hostile if k == 0 else valid)

    kw = {
        "beta": draw(mostly(st.floats(0.01, 1.0), st.one_of(st.sampled_from([5.0, 1e3, 1e4, 0.0]), HOSTILE))),
        "loss_type": loss_type,
        "label_smoothing": draw(mostly(st.just(0.0), st.one_of(st.floats(0.0, 0.49), st.just(0.5), HOSTILE))),
        "num_mc_samples": draw(mostly(st.integers(1, 16), HOSTILE)),
        "max_length": draw(mostly(st.one_of(st.none(), st.integers(1, 4096)), HOSTILE)),
    }
    if draw(st.booleans()):
        count = len(loss_type) if isinstance(loss_type, list) else 1
        count += draw(st.sampled_from([0, 0, 0, 0, 0, 1, -1]))
        weight = mostly(st.floats(0.0, 2.0), st.sampled_from([math.nan, math.inf, -1.0]))
        kw["loss_weights"] = draw(st.lists(weight, min_size=max(count, 0), max_size=max(count, 0)))
    return kw


def vrpo_problems(kw: dict) -> set[str]:
    bad = set()
    types = [kw["loss_type"]] if isinstance(kw["loss_type"], str) else kw["loss_type"]
    if not types or not all(t in LOSS_TYPES for t in types):
        bad.add("loss_type")
    weights = kw.get("loss_weights")
    if weights is not None and "loss_type" not in bad:
        if len(weights) != len(types):
            bad |= {"loss_weights", "loss_type"}
        elif not all(is_real(w) and w >= 0 for w in weights) or not any(weights):
            bad.add("loss_weights")
    if not (is_real(kw["beta"]) and 0 < kw["beta"] <= MAX_BETA):
        bad.add("beta")
    smoothing = kw["label_smoothing"]
    if not (is_real(smoothing) and 0 <= smoothing < 0.5):
        bad.add("label_smoothing")
    elif smoothing != 0 and "robust" not in types:
        bad |= {"label_smoothing", "loss_type"}  # inert without the robust loss
    value = kw["num_mc_samples"]
    if not (isinstance(value, int) and not isinstance(value, bool) and value >= 1):
        bad.add("num_mc_samples")
    value = kw["max_length"]
    if value is not None and not (isinstance(value, int) and not isinstance(value, bool) and value >= 1):
        bad.add("max_length")
    return bad


@fuzz_settings(max_examples=60)
@given(kw=vrpo_kwargs())
def test_fuzz_vrpo_config(kw):
    bad = vrpo_problems(kw)

    def check(config) -> None:
        types = [kw["loss_type"]] if isinstance(kw["loss_type"], str) else kw["loss_type"]
        assert config.loss_type == types and config.beta == kw["beta"], (config.loss_type, config.beta)
        assert config.num_mc_samples == kw["num_mc_samples"] and config.max_length == kw["max_length"]

    run_case(
        "VRPO: config",
        lambda: VRPOConfig(OUTPUT_DIR, use_cpu=True, report_to="none", **kw),
        bad=bad,
        check=check,
        describe=f"VRPOConfig(**{kw!r})",
    )


# ------------------------------------------------------------------------------------------ data

WORDS = ("the", "cat", "dog", "red", "blue", "yes", "no", "3", "4")
SENTENCE = st.lists(st.sampled_from(WORDS), min_size=1, max_size=3).map(" ".join)


@st.composite
def pair(draw, kind: str) -> dict:
    if kind == "text":
        return {"prompt": draw(SENTENCE), "chosen": " " + draw(SENTENCE), "rejected": " " + draw(SENTENCE)}
    prompt = [{"role": "user", "content": draw(SENTENCE)}]
    answers = {name: [{"role": "assistant", "content": draw(SENTENCE)}] for name in ("chosen", "rejected")}
    if kind == "implicit":
        return {name: prompt + turns for name, turns in answers.items()}
    return {"prompt": prompt, **answers}


FAULTS = ("none", "null", "number", "list_of_words", "mixed", "mask_text", "missing")


@st.composite
def preference_case(draw):
    kind = draw(st.sampled_from(["text", "conversation", "implicit"]))
    rows = draw(st.lists(pair(kind), min_size=1, max_size=3))
    fault = draw(st.sampled_from(FAULTS))
    k = draw(st.integers(0, len(rows) - 1))
    name = draw(st.sampled_from(sorted(rows[k])))
    bad = {name}
    if fault == "none":
        bad = set()
    elif fault == "null":
        rows[k][name] = None
    elif fault == "number":
        rows[k][name] = 3
    elif fault == "list_of_words":
        rows[k][name] = ["the", "cat"]
    elif fault == "mixed":  # a string where the other columns are turns, or turns where they are strings
        rows[k][name] = "the cat" if isinstance(rows[k][name], list) else [{"role": "user", "content": "the"}]
        bad = set(rows[k])  # either kind may be named
    elif fault == "mask_text":
        value = rows[k][name]
        if isinstance(value, list):
            value[-1]["content"] += " <[MASK]>"
        else:
            rows[k][name] = value + " <[MASK]>"
        if kind == "implicit":  # the mask sits in the answer part of the implicit prompt's row
            bad = {name}
    else:
        for row in rows:
            row.pop(name)
        bad = {name} if name != "prompt" or kind == "implicit" else set()  # no prompt: implicit, if conversational
        if name == "prompt" and kind == "text":
            bad = set()  # plain text: trl extracts the common start as the prompt
    for row in rows:
        chosen, rejected = row.get("chosen"), row.get("rejected")
        if chosen == rejected:  # no preference stated: refused
            bad |= {"chosen", "rejected"}
        elif "prompt" not in row and isinstance(chosen, (str, list)) and isinstance(rejected, (str, list)):
            if chosen[: len(rejected)] == rejected or rejected[: len(chosen)] == chosen:
                bad |= {"chosen", "rejected"}  # the implicit prompt would leave an empty answer
    return rows, bad, kind, fault


def expected_pair(row: dict) -> dict:
    """prompt / chosen / rejected ids of a valid row, computed here: the common start of the two full renderings
    (and of the rendered prompt with its generation prompt), each answer closed by one EOS."""

    def render(turns_or_text, generation_prompt=False):
        if isinstance(turns_or_text, str):
            return TOKENIZER(turns_or_text)["input_ids"]
        return TOKENIZER.apply_chat_template(
            turns_or_text, tokenize=True, return_dict=True, add_generation_prompt=generation_prompt
        )["input_ids"]

    if "prompt" in row:
        prompt, answers = row["prompt"], {n: row[n] for n in ("chosen", "rejected")}
    else:  # implicit: the turns the two conversations share
        shared = 0
        while row["chosen"][shared] == row["rejected"][shared]:
            shared += 1
        prompt = row["chosen"][:shared]
        answers = {n: row[n][shared:] for n in ("chosen", "rejected")}
    full = {n: render(prompt + a) for n, a in answers.items()}
    prefixes = [render(prompt, generation_prompt=not isinstance(prompt, str)), *full.values()]
    start = min(len(p) for p in prefixes)
    for i in range(start):
        if len({p[i] for p in prefixes}) > 1:
            start = i
            break
    out = {"prompt_ids": full["chosen"][:start]}
    for name, ids in full.items():
        answer = ids[start:]
        while answer and answer[-1] == EOS:
            answer = answer[:-1]
        out[f"{name}_ids"] = answer + [EOS]
    return out


@fuzz_settings(max_examples=60)
@given(case=preference_case())
def test_fuzz_vrpo_data(case):
    rows, bad, kind, fault = case
    try:
        dataset = Dataset.from_list(rows)
    except Exception:  # noqa: BLE001 - pyarrow cannot hold these rows at all: not the package's input
        assume(False)

    def check(built) -> None:
        assert len(built) == len(rows)
        for k, row in enumerate(rows):
            expected = expected_pair(row)
            for name, ids in expected.items():
                assert built[k][name] == ids, f"example {k} {name}: {built[k][name]} != {ids}"
            assert built[k]["index"] == k

    run_case(
        "VRPO: preference data",
        lambda: build_preference_dataset(dataset, TOKENIZER, 64, MASK),
        bad=bad,
        check=check,
        describe=f"{kind}, {fault}: {rows!r}",
    )
