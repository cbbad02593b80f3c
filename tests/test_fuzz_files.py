"""Fuzz: malformed files of every kind the package reads, and lm-eval model args (issue 12).

A tiny checkpoint is saved once (single-file and sharded, with its generation config and tokenizer); each case
copies it, damages one file (truncated at a random byte, empty, not UTF-8, not a JSON object, a hostile value in a
field, corrupt safetensors header bytes, a tensor of the wrong shape, a missing, extra or untied tensor, a broken
shard index or shard) and loads it. A damaged file must raise `ValueError`/`TypeError` naming the file (or the
offending field / tensor); an intact or validly edited file must load with its values and give the saved model's
logits. lm-eval model args are parsed from an argument string as lm-eval does (`seed=abc`, `cfg_scale=inf`,
`max_new_tokens=0`, ...); valid ones must score a request to a finite log-likelihood. A task's generation kwargs
(`max_gen_toks=0`, `temperature=inf`, a bad `until`, ...) are named; valid ones give texts cut before every stop.
"""

import atexit
import json
import math
import shutil
import tempfile
from pathlib import Path

import pytest
import torch
from fuzz_strategies import fuzz_settings, is_int, is_real, run_case
from hypothesis import given
from hypothesis import strategies as st
from lm_eval.api.instance import Instance
from safetensors.torch import load_file, save_file
from tiny import TINY, make_model
from tiny_tokenizer import make_tiny_tokenizer

from illada.generation_config_illada import ILLaDAGenerationConfig
from illada.lm_eval_model import ILLaDAEvalHarness
from illada.modeling_illada import ILLaDAForCausalLM

pytestmark = pytest.mark.usefixtures("one_thread")

MODEL = make_model(seed=1)
TOKENIZER = make_tiny_tokenizer()
SAVED_GENERATION = {"block_length": 4, "steps": 2, "max_new_tokens": 8}
PROBE = torch.tensor([[7, 8, 5, 9, 5]])
ROOT = Path(tempfile.mkdtemp(prefix="illada-fuzz-files-"))
atexit.register(shutil.rmtree, ROOT, ignore_errors=True)


def save_checkpoint(folder: Path, **save_options) -> Path:
    MODEL.generation_config = ILLaDAGenerationConfig(**SAVED_GENERATION)
    MODEL.save_pretrained(folder, **save_options)
    TOKENIZER.save_pretrained(folder)
    return folder


SINGLE = save_checkpoint(ROOT / "single")
SHARDED = save_checkpoint(ROOT / "sharded", max_shard_size="40KB")
SHARDS = sorted(p.name for p in SHARDED.glob("model-*.safetensors"))
with torch.no_grad():
    REFERENCE_LOGITS = MODEL(input_ids=PROBE).logits
assert len(SHARDS) > 1, "the tiny checkpoint should be sharded"


def fresh_copy(source: Path) -> Path:
    target = Path(tempfile.mkdtemp(dir=ROOT))
    shutil.copytree(source, target, dirs_exist_ok=True)
    return target


def load(folder: Path):
    return ILLaDAForCausalLM.from_pretrained(folder)


def same_model(model) -> None:
    """The loaded model computes the saved model's logits."""
    with torch.no_grad():
        logits = model(input_ids=PROBE).logits
    assert torch.allclose(logits, REFERENCE_LOGITS, atol=1e-5), "the loaded model differs from the saved one"


# ------------------------------------------------------------------------------------------ damage


@st.composite
def damaged_bytes(draw, content: bytes) -> tuple[bytes, str]:
    """Bytes that no reader can accept: empty, truncated, not UTF-8 / corrupt at the start."""
    kind = draw(st.sampled_from(["empty", "truncated", "garbage_start"]))
    if kind == "empty":
        return b"", kind
    if kind == "truncated":  # at least one non-blank byte cut off
        return content[: draw(st.integers(1, len(content.rstrip()) - 1))], kind
    return b"\xff\xfe\x00\x13" + content[4:], kind


HOSTILE_JSON = st.sampled_from(["abc", -3, None, [], {}, 0, 1e400, -1e400, "1", True])
CONFIG_FIELDS = (
    "hidden_size",
    "vocab_size",
    "num_attention_heads",
    "num_hidden_layers",
    "rms_norm_eps",
    "initializer_range",
    "mask_token_id",
    "eos_token_id",
    "max_position_embeddings",
    "intermediate_size",
)
GENERATION_FIELDS = (
    "block_length",
    "steps",
    "max_new_tokens",
    "temperature",
    "remasking",
    "threshold",
    "cfg_scale",
    "suppress_tokens",
    "canvas",
)


SHAPE_FIELDS = ("hidden_size", "vocab_size", "num_attention_heads", "num_hidden_layers", "intermediate_size")


def config_value_problem(field: str, value) -> bool:
    """Whether `value` is invalid for `field` of config.json, the other fields being the tiny config's."""
    saved = json.loads((SINGLE / "config.json").read_text())
    if field in SHAPE_FIELDS:  # any other value breaks the config's rules or the weights' shapes
        return not (is_int(value) and value == saved[field])
    if field == "max_position_embeddings":
        return not (is_int(value) and value >= 1)
    if field == "rms_norm_eps":
        return not (is_real(value) and value > 0)
    if field == "initializer_range":
        return not (is_real(value) and value >= 0)
    if field == "mask_token_id":
        return not (
            is_int(value)
            and 0 <= value < TINY["vocab_size"]
            and value not in (TINY["pad_token_id"], TINY["eos_token_id"])
        )
    ids = [] if value is None else [value] if is_int(value) else value if isinstance(value, list) else None
    return ids is None or not all(is_int(t) and 0 <= t < TINY["vocab_size"] and t != TINY["mask_token_id"] for t in ids)


@st.composite
def config_case(draw):
    """(edit(folder), bad names, bad files, description, field): config.json damaged or with one field changed."""
    content = (SINGLE / "config.json").read_bytes()
    if draw(st.booleans()):
        damaged, kind = draw(damaged_bytes(content))
        return (lambda folder: (folder / "config.json").write_bytes(damaged)), set(), {"config.json"}, kind, None
    field = draw(st.sampled_from(CONFIG_FIELDS))
    value = draw(st.one_of(HOSTILE_JSON, st.sampled_from([1e-6, 0.05, 3, 97, 2, 32])))

    def edit(folder: Path) -> None:
        config = json.loads(content)
        config[field] = value
        (folder / "config.json").write_text(json.dumps(config))

    # A size change makes the weights' shapes wrong: an error naming the field or a tensor is right.
    bad = {field} if config_value_problem(field, value) else set()
    files = {"config.json", "model.embed_tokens", "model.layers.", "lm_head"} if bad else set()
    return edit, bad, files, f"{field}={value!r}", field


@fuzz_settings(max_examples=40)
@given(case=config_case())
def test_fuzz_config_json(case):
    edit, bad, files, what, field = case
    folder = fresh_copy(SINGLE)
    edit(folder)

    def check(model) -> None:
        saved = json.loads((folder / "config.json").read_text())
        if field == "eos_token_id":
            assert model.config.eos_token_ids == (
                [] if saved[field] is None else [saved[field]] if is_int(saved[field]) else saved[field]
            )
        elif field is not None:
            assert getattr(model.config, field) == saved[field], f"{field}: {getattr(model.config, field)!r}"
        if field != "rms_norm_eps":
            same_model(model)

    doubtful = {"initializer_range"} if field == "initializer_range" and not bad else set()
    run_case(
        "files: config.json",
        lambda: load(folder),
        bad=bad,
        bad_files=files,
        check=check,
        doubtful=doubtful,
        describe=f"config.json {what}",
    )


@st.composite
def generation_case(draw):
    content = (SINGLE / "generation_config.json").read_bytes()
    kind = draw(
        st.sampled_from(["damaged", "field", "field", "unknown_key", "foreign_key", "not_an_object", "deleted"])
    )
    if kind == "not_an_object":
        text = draw(st.sampled_from(["[1, 2]", '"steps"', "3", "[]"]))
        return (
            (lambda folder: (folder / "generation_config.json").write_text(text)),
            set(),
            {"generation_config.json"},
            f"content {text}",
            None,
        )
    if kind == "foreign_key":  # another tool's key (issue 25): loading survives, our settings stay the file's
        field = draw(st.sampled_from(["foo", "chat_format", "my_tool_version", "attn_temperature_tuning"]))

        def add_foreign(folder: Path) -> None:
            settings = json.loads(content)
            (folder / "generation_config.json").write_text(json.dumps({**settings, field: 3}))

        return add_foreign, set(), set(), f"foreign {field}=3", {"steps": SAVED_GENERATION["steps"]}
    if kind == "damaged":
        damaged, what = draw(damaged_bytes(content))
        return (
            (lambda folder: (folder / "generation_config.json").write_bytes(damaged)),
            set(),
            {"generation_config.json"},
            what,
            None,
        )
    if kind == "deleted":
        return (lambda folder: (folder / "generation_config.json").unlink()), set(), set(), "deleted", {}
    if kind == "unknown_key":
        field, value = draw(st.sampled_from(["blok_length", "block_lenght", "stpes", "top_a", "remasknig"])), 3
    else:
        field = draw(st.sampled_from(GENERATION_FIELDS))
        value = draw(st.one_of(HOSTILE_JSON, st.sampled_from([1, 2, 4, 0.5, "random", "fixed", [7, 8]])))

    def edit(folder: Path) -> None:
        settings = json.loads(content)
        settings[field] = value
        (folder / "generation_config.json").write_text(json.dumps(settings))

    bad = generation_problem(field, value)
    return edit, bad, {"generation_config.json"} if bad else set(), f"{field}={value!r}", {field: value}


def generation_problem(field: str, value) -> set[str]:
    """The names an error may give for `field=value` in the saved generation config (block 4, steps 2, budget 8)."""
    if field not in GENERATION_FIELDS:
        return {field}
    if value is None:  # JSON null: the setting is unset, so its default applies
        return set()
    if field in ("block_length", "steps", "max_new_tokens"):
        if not (is_int(value) and value >= 1):
            return {field}
        settings = {**SAVED_GENERATION, field: value}
        return {"steps", "block_length"} if settings["steps"] > settings["block_length"] else set()
    if field in ("temperature", "cfg_scale", "threshold"):
        return set() if (value is None and field == "threshold") or is_real(value) and 0 <= value <= 1e3 else {field}
    if field == "remasking":
        return set() if value in ("low_confidence", "random", "margin", "entropy") else {field}
    if field == "canvas":
        return set() if value in ("variable", "fixed") else {field}
    allowed = set(range(TINY["vocab_size"])) - {TINY["mask_token_id"]}
    return (
        set()
        if value is None or isinstance(value, list) and all(is_int(t) and t in allowed for t in value)
        else {field}
    )


@fuzz_settings(max_examples=30)
@given(case=generation_case())
def test_fuzz_generation_config_json(case):
    """Item 3: a damaged generation_config.json must not silently become the defaults."""
    edit, bad, files, what, expected = case
    folder = fresh_copy(SINGLE)
    edit(folder)

    def check(model) -> None:
        settings = model.generation_config
        if expected == {}:  # deleted: the defaults built from the model config
            assert settings.block_length == ILLaDAGenerationConfig().block_length
            return
        defaults = ILLaDAGenerationConfig()
        for name, value in {**SAVED_GENERATION, **expected}.items():
            value = getattr(defaults, name) if value is None else value
            assert getattr(settings, name) == value, f"{name}: {getattr(settings, name)!r} != {value!r}"
        same_model(model)

    run_case(
        "files: generation_config.json",
        lambda: load(folder),
        bad=bad,
        bad_files=files,
        check=check,
        describe=f"generation_config.json {what}",
    )


# ------------------------------------------------------------------------------------------ weights


@st.composite
def weights_case(draw):
    """(edit(folder), bad tensor names, bad files, description, valid-but-different expected)."""
    state = load_file(SINGLE / "model.safetensors")
    names = sorted(state)
    kind = draw(st.sampled_from(["damaged", "header", "wrong_shape", "missing", "extra", "untied", "bf16"]))
    weights = "model.safetensors"
    if kind == "damaged":
        damaged, what = draw(damaged_bytes((SINGLE / weights).read_bytes()))
        return (lambda f: (f / weights).write_bytes(damaged)), set(), {weights}, what
    if kind == "header":
        content = bytearray((SINGLE / weights).read_bytes())
        header_end = 8 + int.from_bytes(content[:8], "little")
        at = draw(st.integers(0, header_end - 1))
        content[at] = draw(st.sampled_from([0x00, 0xFF, ord("{"), ord('"')]))
        if content == (SINGLE / weights).read_bytes():
            return (lambda f: None), set(), set(), "header unchanged"

        def write(f: Path) -> None:
            (f / weights).write_bytes(bytes(content))

        # A changed byte may leave a valid header (in the metadata, or a tensor renamed): then the model must load
        # intact, or an error must name the file or a tensor.
        return write, "header", {weights, "model.", "lm_head"}, f"header byte {at} of {header_end}"
    name = draw(st.sampled_from(names))
    edited = dict(state)
    if kind == "wrong_shape":
        tensor = state[name]
        edited[name] = torch.zeros(*[n + draw(st.sampled_from([1, -1])) if n > 1 else n + 1 for n in tensor.shape])
        bad = {name}
    elif kind == "missing":
        del edited[name]
        bad = {name}
    elif kind == "extra":
        name = draw(st.sampled_from(["model.layers.7.mlp.up_proj.weight", "model.rotary_emb.extra", "score.weight"]))
        edited[name], bad = torch.zeros(3), {name}
    elif kind == "untied":
        edited["lm_head.weight"], bad = state["model.embed_tokens.weight"] + 0.5, {"lm_head.weight"}
    else:
        edited, bad = {key: value.to(torch.bfloat16) for key, value in state.items()}, set()

    def write(f: Path) -> None:
        save_file({k: v.contiguous() for k, v in edited.items()}, f / weights, metadata={"format": "pt"})

    return write, set(), bad, f"{kind} {name}"  # tensors are named like files: plainly, or quoted in a list


@fuzz_settings(max_examples=30)
@given(case=weights_case())
def test_fuzz_model_safetensors(case):
    """Items 7 and 8: damaged, wrong-shape, missing, extra and untied tensors name the file or the tensors."""
    edit, bad, files, what = case
    doubtful = set()
    if bad == "header":
        bad, files, doubtful = set(), set(), files
    folder = fresh_copy(SINGLE)
    edit(folder)

    def check(model) -> None:
        if what.startswith("bf16"):
            with torch.no_grad():
                logits = model(input_ids=PROBE).logits
            assert torch.allclose(logits, REFERENCE_LOGITS, atol=0.1), "bf16 weights give other logits"
        else:
            same_model(model)

    run_case(
        "files: model.safetensors",
        lambda: load(folder),
        bad=bad,
        bad_files=files,
        check=check,
        doubtful_files=doubtful,
        describe=f"model.safetensors {what}",
    )


INDEX = "model.safetensors.index.json"


@st.composite
def sharded_case(draw):
    index_content = (SHARDED / INDEX).read_bytes()
    kind = draw(
        st.sampled_from(
            [
                "index_damaged",
                "no_weight_map",
                "missing_shard",
                "moved_tensor",
                "shard_damaged",
                "shard_deleted",
                "intact",
            ]
        )
    )
    if kind == "intact":
        return (lambda f: None), set(), set(), kind
    if kind == "index_damaged":
        damaged, what = draw(damaged_bytes(index_content))
        return (lambda f: (f / INDEX).write_bytes(damaged)), set(), {INDEX}, f"index {what}"
    index = json.loads(index_content)
    shard = draw(st.sampled_from(SHARDS))
    if kind == "no_weight_map":
        index.pop("weight_map")
        index["weight_map"] = draw(st.sampled_from([None, [], "x", {}]))
    elif kind == "missing_shard":
        tensor = draw(st.sampled_from(sorted(index["weight_map"])))
        index["weight_map"][tensor] = "model-00009-of-00009.safetensors"
        shard = "model-00009-of-00009.safetensors"
    elif kind == "moved_tensor":
        tensor = draw(st.sampled_from(sorted(index["weight_map"])))
        others = [s for s in SHARDS if s != index["weight_map"][tensor]]
        index["weight_map"][tensor] = shard = draw(st.sampled_from(others))
    if kind in ("no_weight_map", "missing_shard", "moved_tensor"):
        return (lambda f: (f / INDEX).write_text(json.dumps(index))), set(), {INDEX, shard}, f"{kind} {shard}"
    if kind == "shard_deleted":
        return (lambda f: (f / shard).unlink()), set(), {shard}, f"{kind} {shard}"
    damaged, what = draw(damaged_bytes((SHARDED / shard).read_bytes()))
    return (lambda f: (f / shard).write_bytes(damaged)), set(), {shard}, f"{shard} {what}"


@fuzz_settings(max_examples=25)
@given(case=sharded_case())
def test_fuzz_sharded_checkpoint(case):
    """Item 8: a broken shard index or shard names the file."""
    edit, bad, files, what = case
    folder = fresh_copy(SHARDED)
    edit(folder)
    run_case("files: shards and index", lambda: load(folder), bad=bad, bad_files=files, check=same_model, describe=what)


# ------------------------------------------------------------------------------------------ tokenizer, lm-eval


@fuzz_settings(max_examples=16)
@given(name=st.sampled_from(["tokenizer.json", "tokenizer_config.json"]), data=st.data())
def test_fuzz_tokenizer_files(name, data):
    """Tokenizer files read by the lm-eval model (`tokenizer=<folder>`): damaged ones name the file."""
    folder = fresh_copy(SINGLE)
    damaged, kind = data.draw(damaged_bytes((folder / name).read_bytes()))
    (folder / name).write_bytes(damaged)
    run_case(
        "files: tokenizer",
        lambda: ILLaDAEvalHarness(pretrained=MODEL, tokenizer=str(folder), device="cpu"),
        bad_files={name},
        describe=f"{name} {kind}",
    )


LLEVAL_ARGS = {
    "method": st.sampled_from(["confidence", "likelihood", "Likelihood", "ll"]),
    "seed": st.sampled_from(["0", "42", "abc", "1.5", "-1", str(2**70), str(2**64 - 1)]),
    "cfg_scale": st.sampled_from(["0", "0.5", "inf", "nan", "-1", "abc", "1e308"]),
    "max_new_tokens": st.sampled_from(["0", "1", "16", "-4", "abc", "2.5"]),
    "max_length": st.sampled_from(["0", "64", "-1", "abc"]),
    "batch_size": st.sampled_from(["1", "4", "0", "auto", "-2", "x"]),
    "mc_num": st.sampled_from(["4", "8", "0", "3", "abc"]),
    "mc_batch_size": st.sampled_from(["2", "4", "0", "x"]),
    "block_length": st.sampled_from(["4", "0", "abc", "-1"]),
    "steps": st.sampled_from(["2", "0", "100", "x"]),
    "temperature": st.sampled_from(["0", "0.7", "inf", "-1", "hot", "1e308"]),
    "dtype": st.sampled_from(["float32", "auto", "float8", "fp32"]),
    "foo": st.just("1"),
}


def lm_eval_problems(args: dict) -> tuple[set[str], set[str], set[str]]:
    """(bad names, bad spellings of unknown names, doubtful) for parsed model args `args`."""
    bad, unknown, doubtful = set(), set(), set()
    if "method" in args and args["method"] not in ("confidence", "likelihood"):
        bad.add("method")
    for name in ("max_new_tokens", "max_length", "batch_size", "mc_num", "mc_batch_size", "block_length", "steps"):
        if name in args and not (is_int(args[name]) and args[name] >= 1):
            bad.add(name)
    if "seed" in args and not (is_int(args["seed"]) and -(2**63) <= args["seed"] < 2**64):
        bad.add("seed")  # torch's generator seeds
    for name in ("cfg_scale", "temperature"):
        if name in args:
            if not (is_real(args[name]) and args[name] >= 0):
                bad.add(name)
            elif args[name] > 1e3:
                doubtful.add(name)
    if args.get("dtype") not in (None, "auto", "float32", "bfloat16", "float16"):
        bad.add("dtype")
    block = args.get("block_length", MODEL.generation_config.block_length)
    if is_int(args.get("steps")) and is_int(block) and block >= 1 and args["steps"] > block:
        bad |= {"steps", "block_length"}
    mc_num, mc_batch = args.get("mc_num", 128), args.get("mc_batch_size", 16)
    if (
        args.get("method") == "likelihood"
        and is_int(mc_num)
        and is_int(mc_batch)
        and mc_batch >= 1
        and mc_num >= 1
        and mc_num % mc_batch
    ):
        bad |= {"mc_num", "mc_batch_size"}
    if "foo" in args:
        bad.add("foo")
        unknown.add("'foo'")
    return bad, unknown, doubtful


@fuzz_settings(max_examples=40)
@given(chosen=st.lists(st.sampled_from(sorted(LLEVAL_ARGS)), min_size=1, max_size=3, unique=True), data=st.data())
def test_fuzz_lm_eval_model_args(chosen, data):
    """Items 5 and 11: model args parsed from `--model_args` (strings) are checked by name; valid ones score."""
    from lm_eval.utils import simple_parse_args_string

    values = {name: data.draw(LLEVAL_ARGS[name]) for name in chosen}
    if values.get("method") == "likelihood":  # keep the default 128 samples out of a fuzz loop
        values.setdefault("mc_num", "4")
        values.setdefault("mc_batch_size", "2")
    arg_string = ",".join(f"{k}={v}" for k, v in values.items())
    parsed = simple_parse_args_string(arg_string)
    bad, unknown, doubtful = lm_eval_problems(parsed)

    def call():
        harness = ILLaDAEvalHarness.create_from_arg_string(
            arg_string, {"pretrained": MODEL, "tokenizer": TOKENIZER, "device": "cpu"}
        )
        request = Instance("loglikelihood", doc={}, arguments=("the cat sat", " on the mat"), idx=0)
        return harness, harness.loglikelihood([request], disable_tqdm=True)

    def check(result) -> None:
        harness, [(score, _)] = result
        assert math.isfinite(score) and score <= 1e-9, f"log-likelihood {score}"
        for name in ("max_new_tokens", "max_length"):
            if name in parsed:
                assert getattr(harness, name) == parsed[name], f"{name}: {getattr(harness, name)} != {parsed[name]}"

    run_case(
        "lm-eval model args",
        call,
        bad=bad,
        bad_files=unknown,
        doubtful=doubtful,
        check=check,
        describe=f"--model_args {arg_string}",
    )


GEN_KWARGS = {
    "until": st.sampled_from(["\n", ["."], [".", "cat"], [], 3, [3], None]),
    "max_gen_toks": st.sampled_from([1, 6, 0, -1, "abc", 2.5]),
    "temperature": st.sampled_from([0.0, 0.5, 1e308, -1.0, "hot", math.inf, math.nan]),
    "do_sample": st.sampled_from([True, False, "yes"]),
    "top_a": st.just(3),
    # lm-eval's own tasks set these (issue 25): neutral values are accepted, others refused by name.
    "num_beams": st.sampled_from([1, 1, 4]),
    "repetition_penalty": st.sampled_from([1.0, 1.0, 1.3]),
    "max_length": st.sampled_from([40, 12, 2, 0, "x"]),
}
CONTEXTS = ("the cat sat", "")


def gen_kwargs_problems(kwargs: dict, context: str) -> tuple[set[str], set[str], set[str]]:
    """(bad names, bad spellings of unknown names, doubtful) for a request's generation kwargs."""
    bad, unknown, doubtful = set(), set(), set()
    until = kwargs.get("until")
    if (
        "until" in kwargs
        and until is not None
        and not isinstance(until, str)
        and not (isinstance(until, list) and all(isinstance(s, str) for s in until))
    ):
        bad.add("until")
    if "max_gen_toks" in kwargs and not (is_int(kwargs["max_gen_toks"]) and kwargs["max_gen_toks"] >= 1):
        bad.add("max_gen_toks")
    if "temperature" in kwargs:
        if not (is_real(kwargs["temperature"]) and kwargs["temperature"] >= 0):
            bad.add("temperature")
        elif kwargs["temperature"] > 1e3:
            doubtful.add("temperature")
    if "do_sample" in kwargs and not isinstance(kwargs["do_sample"], bool):
        bad.add("do_sample")
    if "top_a" in kwargs:
        bad.add("top_a")
        unknown.add("'top_a'")
    for name, neutral in (("num_beams", 1), ("repetition_penalty", 1.0)):
        if name in kwargs and kwargs[name] != neutral:
            bad.add(name)
    length = kwargs.get("max_length")
    if "max_length" in kwargs and not (is_int(length) and length >= 1):
        bad.add("max_length")
    elif "max_length" in kwargs and "max_gen_toks" not in kwargs and length <= len(TOKENIZER(context)["input_ids"]):
        bad.add("max_length")  # no room for an answer after the prompt
    return bad, unknown, doubtful


GEN_MODEL = make_model(seed=2, vocab_size=len(TOKENIZER))
GEN_HARNESS = ILLaDAEvalHarness(pretrained=GEN_MODEL, tokenizer=TOKENIZER, device="cpu", seed=0)


@fuzz_settings(max_examples=30)
@given(chosen=st.lists(st.sampled_from(sorted(GEN_KWARGS)), max_size=3, unique=True), data=st.data())
def test_fuzz_lm_eval_generation_kwargs(chosen, data):
    """Item 5 for tasks: `generate_until` with hostile generation kwargs (`max_gen_toks=0`, `temperature=inf`, a
    bad `until`, unknown names) names them; valid ones give one text per request, cut before every stop string."""
    kwargs = {name: data.draw(GEN_KWARGS[name]) for name in chosen}
    context = data.draw(st.sampled_from(CONTEXTS))
    bad, unknown, doubtful = gen_kwargs_problems(kwargs, context)
    bad |= doubtful if bad else set()  # an invalid case may be refused for its extreme value first
    request = Instance("generate_until", doc={}, arguments=(context, dict(kwargs)), idx=0)

    def check(texts) -> None:
        until = kwargs.get("until")
        stops = [until] if isinstance(until, str) else until or []
        assert isinstance(texts, list) and len(texts) == 1 and isinstance(texts[0], str), f"got {texts!r}"
        assert not any(stop in texts[0] for stop in stops), f"{texts[0]!r} holds a stop string of {stops}"
        budget = kwargs.get("max_gen_toks", GEN_MODEL.generation_config.max_new_tokens)
        if "max_length" in kwargs and "max_gen_toks" not in kwargs:
            budget = kwargs["max_length"] - len(TOKENIZER(context)["input_ids"])
        assert len(TOKENIZER(texts[0], add_special_tokens=False)["input_ids"]) <= budget, f"{texts[0]!r} > {budget}"

    run_case(
        "lm-eval generation kwargs",
        lambda: GEN_HARNESS.generate_until([request], disable_tqdm=True),
        bad=bad,
        bad_files=unknown,
        doubtful=doubtful,
        check=check,
        describe=f"context={context!r}, gen_kwargs={kwargs!r}",
    )
