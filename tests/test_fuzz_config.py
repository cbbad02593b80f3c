"""Fuzz: `ILLaDAConfig` keyword arguments (issue 12).

Random sizes, head counts, token ids and floats, with now and then a hostile value (NaN, inf, negative, huge,
bool, a wrong type). An oracle written here from the documented rules says which arguments a case gets wrong;
a valid config must keep its values, round-trip through its dict, and build a model whose logits are finite.
"""

import pytest
import torch
from fuzz_strategies import fuzz_settings, is_int, is_real, run_case, weird_numbers, wrong_types
from hypothesis import given
from hypothesis import strategies as st

from illada.configuration_illada import ILLaDAConfig
from illada.modeling_illada import ILLaDAForCausalLM

pytestmark = pytest.mark.usefixtures("one_thread")

AREA = "config kwargs"
SIZE_NAMES = (
    "vocab_size",
    "hidden_size",
    "intermediate_size",
    "num_hidden_layers",
    "num_attention_heads",
    "num_key_value_heads",
    "max_position_embeddings",
)
# Largest sizes for which a valid case also builds a model and runs a forward.
BUILDABLE = {
    "vocab_size": 256,
    "hidden_size": 128,
    "intermediate_size": 256,
    "num_hidden_layers": 3,
    "max_position_embeddings": 4096,
}
FIXED = {"hidden_act": "silu", "attention_bias": False, "mlp_bias": False, "tie_word_embeddings": True}
HOSTILE = st.one_of(weird_numbers(), wrong_types())


@st.composite
def valid_config_kwargs(draw) -> dict:
    """A config that follows every rule: small sizes, distinct special tokens."""
    heads = draw(st.sampled_from([1, 2, 4]))
    vocab = draw(st.integers(8, 64))
    mask, pad, bos, eos = draw(st.lists(st.integers(0, vocab - 1), min_size=4, max_size=4, unique=True))
    return {
        "vocab_size": vocab,
        "hidden_size": heads * draw(st.sampled_from([2, 4, 8])),
        "num_attention_heads": heads,
        "num_key_value_heads": draw(st.sampled_from([None, *(k for k in (1, 2, 4) if heads % k == 0)])),
        "intermediate_size": draw(st.integers(1, 48)),
        "num_hidden_layers": draw(st.integers(1, 2)),
        "max_position_embeddings": draw(st.integers(1, 64)),
        "rms_norm_eps": draw(st.floats(1e-8, 1e-2)),
        "attention_dropout": draw(st.floats(0.0, 0.9)),
        "initializer_range": draw(st.floats(0.0, 1.0)),
        "rope_theta": draw(st.floats(1.0, 1e6)),
        "mask_token_id": mask,
        "pad_token_id": draw(st.sampled_from([pad, None])),
        "bos_token_id": draw(st.sampled_from([bos, None])),
        "eos_token_id": draw(st.sampled_from([eos, [eos], [eos, bos], [], None])),
    }


def near_misses(name: str, kw: dict) -> st.SearchStrategy:
    """Values that break one rule while looking plausible (an id just outside the vocabulary, a non-divisor)."""
    vocab = kw["vocab_size"]
    if name.endswith("token_id"):
        return st.sampled_from([vocab, -1, kw["mask_token_id"], vocab + 10**6, 2.0, "2", True, [vocab], [-1]])
    if name in ("hidden_size", "num_attention_heads", "num_key_value_heads", "head_dim"):
        return st.integers(0, 9)
    return HOSTILE


ARGUMENTS = (
    *SIZE_NAMES,
    "head_dim",
    "rms_norm_eps",
    "attention_dropout",
    "initializer_range",
    "rope_theta",
    "mask_token_id",
    "pad_token_id",
    "bos_token_id",
    "eos_token_id",
    *FIXED,
)


def replacement(draw, name: str, kw: dict):
    if name in FIXED:
        return draw(st.sampled_from(["gelu", True, False, None, "silu", 0, 1.0]))
    return draw(st.one_of(HOSTILE, near_misses(name, kw)))


@st.composite
def config_kwargs(draw, corrupt: str | None = None) -> dict:
    """A valid config with `corrupt` (else zero to two random arguments) replaced by hostile or near-miss values."""
    kw = draw(valid_config_kwargs())
    names = [corrupt] if corrupt else draw(st.lists(st.sampled_from(ARGUMENTS), max_size=2))
    for name in names:
        kw[name] = replacement(draw, name, kw)
    if (
        draw(st.integers(0, 7)) == 0
        and "head_dim" not in kw
        and positive_int(kw["hidden_size"])
        and positive_int(kw["num_attention_heads"])
    ):
        kw["head_dim"] = kw["hidden_size"] // kw["num_attention_heads"]  # the derived value, given explicitly
    return kw


def positive_int(value) -> bool:
    return is_int(value) and value >= 1


def config_problems(kw: dict) -> set[str]:
    """The arguments `kw` gets wrong, by the documented rules (independent of the package's checks)."""
    bad = {name for name in SIZE_NAMES if not positive_int(kw[name])}
    if kw["num_key_value_heads"] is None:
        bad.discard("num_key_value_heads")  # None means one key/value head per query head
    heads, hidden = kw["num_attention_heads"], kw["hidden_size"]
    kv = heads if kw["num_key_value_heads"] is None else kw["num_key_value_heads"]
    if positive_int(heads) and positive_int(hidden):
        if hidden % heads:
            bad |= {"hidden_size", "num_attention_heads"}
        elif (hidden // heads) % 2:
            bad |= {"hidden_size", "num_attention_heads", "head_dim"}
        if (
            "head_dim" in kw
            and kw["head_dim"] is not None
            and (not positive_int(kw["head_dim"]) or kw["head_dim"] != hidden // heads)
        ):
            bad.add("head_dim")
        if positive_int(kv) and heads % kv:
            bad |= {"num_attention_heads", "num_key_value_heads"}
    elif "head_dim" in kw and kw["head_dim"] is not None and not positive_int(kw["head_dim"]):
        bad.add("head_dim")
    if not (is_real(kw["rms_norm_eps"]) and kw["rms_norm_eps"] > 0):
        bad.add("rms_norm_eps")
    if not (is_real(kw["attention_dropout"]) and 0 <= kw["attention_dropout"] < 1):
        bad.add("attention_dropout")
    if not (is_real(kw["initializer_range"]) and kw["initializer_range"] >= 0):
        bad.add("initializer_range")
    if not (is_real(kw["rope_theta"]) and kw["rope_theta"] > 0):
        bad.add("rope_theta")
    bad |= {name for name, allowed in FIXED.items() if name in kw and kw[name] != allowed}
    return bad | token_problems(kw)


def token_problems(kw: dict) -> set[str]:
    vocab, mask, pad, eos = kw["vocab_size"], kw["mask_token_id"], kw["pad_token_id"], kw["eos_token_id"]
    in_vocab = (lambda t: is_int(t) and 0 <= t < vocab) if positive_int(vocab) else (lambda t: is_int(t) and t >= 0)
    bad = set()
    if not in_vocab(mask):
        bad.add("mask_token_id")
    for name in ("pad_token_id", "bos_token_id"):
        if kw[name] is not None and not in_vocab(kw[name]):
            bad.add(name)
    eos_list = [] if eos is None else eos if isinstance(eos, list) else [eos]
    if not all(in_vocab(t) for t in eos_list):
        bad.add("eos_token_id")
    if is_int(mask) and pad == mask and is_int(pad):
        bad |= {"pad_token_id", "mask_token_id"}
    if is_int(mask) and any(is_int(t) and t == mask for t in eos_list):
        bad |= {"eos_token_id", "mask_token_id"}
    return bad


def check_valid_config(kw: dict):
    def check(config: ILLaDAConfig) -> None:
        for name, value in kw.items():
            if name == "rope_theta":
                assert config.rope_parameters["rope_theta"] == value
            elif name == "num_key_value_heads" and value is None:
                assert config.num_key_value_heads == kw["num_attention_heads"]
            else:
                assert getattr(config, name) == value, name
        assert config.head_dim == kw["hidden_size"] // kw["num_attention_heads"]
        again = ILLaDAConfig.from_dict(config.to_dict())
        assert again.to_dict() == config.to_dict()
        if all(kw[name] <= limit for name, limit in BUILDABLE.items()):
            torch.manual_seed(0)
            model = ILLaDAForCausalLM._from_config(config, attn_implementation="sdpa").eval()
            length = min(5, kw["max_position_embeddings"])
            ids = torch.randint(0, kw["vocab_size"], (2, length))
            with torch.no_grad():
                logits = model(input_ids=ids).logits
            assert logits.shape == (2, length, kw["vocab_size"])
            assert torch.isfinite(logits).all(), "non-finite logits from a valid config"

    return check


def extreme(kw: dict) -> set[str]:
    """Legal but extreme floats: refusing them with a clear error is fine; accepting them must still give finite
    logits."""
    limits = {"rms_norm_eps": 1.0, "initializer_range": 10.0, "rope_theta": 1e12}
    return {name for name, limit in limits.items() if is_real(kw[name]) and abs(kw[name]) > limit}


def run_config_case(kw: dict) -> None:
    run_case(
        AREA,
        lambda: ILLaDAConfig(**kw),
        bad=config_problems(kw),
        check=check_valid_config(kw),
        describe=f"ILLaDAConfig(**{kw!r})",
        doubtful=extreme(kw),
    )


@pytest.mark.parametrize("name", ARGUMENTS)
@fuzz_settings(max_examples=10)
@given(data=st.data())
def test_fuzz_config_one_argument(name, data):
    """Each argument in turn gets hostile and near-miss values; the others are valid."""
    run_config_case(data.draw(config_kwargs(corrupt=name)))


@fuzz_settings(max_examples=60)
@given(kw=config_kwargs())
def test_fuzz_config_kwargs(kw):
    """Random valid configs, some with one or two bad arguments."""
    run_config_case(kw)


# ------------------------------------------------------------------------------------------------ RoPE scaling

# The keys each supported `rope_type` requires besides `rope_type` and `rope_theta`, and those it may have
# (written from the documented rules, independently of `configuration_illada._ROPE_KEYS`); yarn and llama3 take
# `original_max_position_embeddings` from `max_position_embeddings` when it is missing.
ROPE_REQUIRED = {
    "default": set(),
    "linear": {"factor"},
    "dynamic": {"factor"},
    "yarn": {"factor"},
    "llama3": {"factor", "low_freq_factor", "high_freq_factor"},
}
ORIGINAL = "original_max_position_embeddings"
ROPE_OPTIONAL = {
    "yarn": {ORIGINAL, "attention_factor", "beta_fast", "beta_slow", "mscale", "mscale_all_dim", "truncate"},
    "llama3": {ORIGINAL},
}
POSITIVE_REALS = ("attention_factor", "beta_fast", "beta_slow", "mscale", "mscale_all_dim")


@st.composite
def rope_parameters(draw) -> dict:
    """A valid `rope_parameters` dict of a supported type, then now and then one value or key broken."""
    rope_type = draw(st.sampled_from(sorted(ROPE_REQUIRED)))
    params = {"rope_type": rope_type}
    if "factor" in ROPE_REQUIRED[rope_type]:
        params["factor"] = draw(st.floats(1.0, 8.0))
    if ORIGINAL in ROPE_OPTIONAL.get(rope_type, ()) and draw(st.booleans()):
        params[ORIGINAL] = draw(st.integers(1, 64))
    if rope_type == "llama3":
        params["low_freq_factor"] = draw(st.floats(0.5, 2.0))
        params["high_freq_factor"] = params["low_freq_factor"] + draw(st.floats(0.5, 4.0))
    if rope_type == "yarn" and draw(st.booleans()):
        params["beta_fast"], params["beta_slow"] = draw(st.floats(8.0, 64.0)), draw(st.floats(0.5, 2.0))
    fault = draw(st.sampled_from([None, None, "type", "drop", "extra", "value"]))
    if fault == "type":
        params["rope_type"] = draw(st.sampled_from(["longrope", "proportional", "axial", "Linear", "", 3, None, [1]]))
    elif fault == "drop" and len(params) > 1:
        params.pop(draw(st.sampled_from(sorted(set(params) - {"rope_type"}))))
    elif fault == "extra":
        params[draw(st.sampled_from(["partial_rotary_factor", "low_freq_factor", "bogus", "beta_fast"]))] = 1.0
    elif fault == "value" and len(params) > 1:
        params[draw(st.sampled_from(sorted(set(params) - {"rope_type"})))] = draw(HOSTILE)
    return params


def rope_is_valid(params: dict) -> bool:
    rope_type = params.get("rope_type")
    if not isinstance(rope_type, str) or rope_type not in ROPE_REQUIRED:
        return False
    required, optional = ROPE_REQUIRED[rope_type], ROPE_OPTIONAL.get(rope_type, set())
    if set(params) - {"rope_type"} != required | (set(params) & optional) or not required <= set(params):
        return False
    factor_ok = "factor" not in params or (is_real(params["factor"]) and params["factor"] >= 1)
    original = params.get(ORIGINAL, 1)
    positive = all(is_real(params[k]) and params[k] > 0 for k in (*POSITIVE_REALS, "low_freq_factor") if k in params)
    ordered = rope_type != "llama3" or (
        is_real(params["high_freq_factor"]) and positive and params["high_freq_factor"] > params["low_freq_factor"]
    )
    return factor_ok and positive_int(original) and positive and ordered


def rope_problems(params: dict, kw: dict) -> set[str]:
    """The arguments a `rope_parameters` case gets wrong: the dict itself, or `rope_theta` / the head width where
    the scaling cannot use them (YaRN divides by log(rope_theta), dynamic NTK by head_dim - 2)."""
    if not rope_is_valid(params):
        return {"rope_parameters"}
    bad = set()
    if params["rope_type"] == "yarn" and is_real(kw["rope_theta"]) and kw["rope_theta"] <= 1:
        bad.add("rope_theta")
    heads, hidden = kw["num_attention_heads"], kw["hidden_size"]
    if params["rope_type"] == "dynamic" and positive_int(heads) and positive_int(hidden) and hidden // heads <= 2:
        bad |= {"head_dim", "hidden_size", "num_attention_heads", "rope_type"}
    return bad


@fuzz_settings(max_examples=60)
@given(data=st.data())
def test_fuzz_config_rope_parameters(data):
    """Scaled RoPE of every supported type, valid or with one fault: a valid one builds a model with finite logits
    and survives the dict round trip; a faulty one is a `ValueError`/`TypeError` naming `rope_parameters`."""
    kw = data.draw(valid_config_kwargs())
    params = data.draw(st.one_of(rope_parameters(), rope_parameters(), rope_parameters(), HOSTILE))  # or a non-dict
    kw["rope_parameters"] = params
    given_params = dict(params) if isinstance(params, dict) else params
    others = {k: v for k, v in kw.items() if k != "rope_parameters"}
    if isinstance(params, dict):
        bad = config_problems(others) | rope_problems(given_params, kw)
    else:  # None is the plain RoPE of the release
        bad = config_problems(others) | ({"rope_parameters"} if params is not None else set())
    check = check_valid_config(others)

    def check_rope(config: ILLaDAConfig) -> None:
        assert (given_params or {}).items() <= config.rope_parameters.items()
        assert config.rope_parameters["rope_theta"] == kw["rope_theta"]
        check(config)

    run_case(
        AREA,
        lambda: ILLaDAConfig(**kw),
        bad=bad,
        check=check_rope,
        describe=f"ILLaDAConfig(**{kw!r})",
        doubtful=extreme(kw),
    )
