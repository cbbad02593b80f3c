"""Fuzz: damaged checkpoint folders given to `ILLaDAForCausalLM.from_pretrained` (issue 12, items 7 and 8).

A tiny model is saved by transformers in shards with its index; each case damages a copy: a shard cut at a random
byte or deleted, its header length overwritten, the index cut at a random character or replaced by random JSON, the
config's vocabulary changed. The oracle (written here) says which file or tensor a case gets wrong; `run_case`
demands either the reference weights (an undamaged or harmlessly changed folder) or a `ValueError` naming that file
or tensor.
"""

import json
import shutil

import pytest
import torch
from fuzz_strategies import fuzz_settings, run_case
from hypothesis import given
from hypothesis import strategies as st
from tiny import make_config

from illada.modeling_illada import ILLaDAForCausalLM

pytestmark = pytest.mark.usefixtures("one_thread")

AREA = "checkpoint files"
INDEX = "model.safetensors.index.json"
JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=5),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
    max_leaves=6,
)


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """(folder, reference state dict) of a tiny model saved in several shards."""
    torch.manual_seed(0)
    model = ILLaDAForCausalLM(make_config())
    folder = tmp_path_factory.mktemp("fuzz_checkpoint") / "saved"
    model.save_pretrained(folder, max_shard_size="40KB")
    assert len(list(folder.glob("model-*.safetensors"))) >= 2
    return folder, {key: tensor.clone() for key, tensor in model.state_dict().items()}


@st.composite
def damages(draw, folder) -> tuple[str, dict, set, set]:
    """(description, damage spec, bad tensor names, bad file names) for one damaged copy of `folder`."""
    shards = sorted(path.name for path in folder.glob("model-*.safetensors"))
    kind = draw(
        st.sampled_from(["cut shard", "delete shard", "header length", "cut index", "index json", "vocab_size", "none"])
    )
    shard = draw(st.sampled_from(shards))
    if kind == "cut shard":
        size = draw(st.integers(0, (folder / shard).stat().st_size - 1))
        return kind, {"shard": shard, "size": size}, set(), {shard}
    if kind == "delete shard":
        return kind, {"shard": shard}, set(), {shard}
    if kind == "header length":
        original = (folder / shard).read_bytes()[:8]
        prefix = draw(st.binary(min_size=8, max_size=8))
        return kind, {"shard": shard, "prefix": prefix}, set(), set() if prefix == original else {shard}
    if kind == "cut index":
        text = (folder / INDEX).read_text()
        length = draw(st.integers(0, len(text) - 1))
        try:  # cutting only trailing whitespace leaves the same valid index
            harmless = json.loads(text[:length]) == json.loads(text)
        except json.JSONDecodeError:
            harmless = False
        return kind, {"index": text[:length]}, set(), set() if harmless else {INDEX}
    if kind == "index json":
        return kind, {"index": json.dumps(draw(JSON_VALUES))}, set(), {INDEX}
    if kind == "vocab_size":
        vocab = draw(st.integers(8, 200).filter(lambda v: v != make_config().vocab_size))
        return kind, {"vocab_size": vocab}, {"model.embed_tokens.weight", "lm_head.weight"}, set()
    return kind, {}, set(), set()


def damage_copy(source, target, spec: dict) -> None:
    shutil.copytree(source, target)
    if "shard" in spec:
        path = target / spec["shard"]
        if "size" in spec:
            path.write_bytes(path.read_bytes()[: spec["size"]])
        elif "prefix" in spec:
            path.write_bytes(spec["prefix"] + path.read_bytes()[8:])
        else:
            path.unlink()
    if "index" in spec:
        (target / INDEX).write_text(spec["index"])
    if "vocab_size" in spec:
        config = json.loads((target / "config.json").read_text())
        (target / "config.json").write_text(json.dumps({**config, "vocab_size": spec["vocab_size"]}))


@fuzz_settings(max_examples=40)
@given(data=st.data())
def test_fuzz_damaged_checkpoint(saved, tmp_path_factory, data):
    folder, reference = saved
    kind, spec, bad, bad_files = data.draw(damages(folder))
    target = tmp_path_factory.mktemp("case") / "damaged"
    damage_copy(folder, target, spec)

    def check(model) -> None:
        state = model.state_dict()
        assert all(torch.equal(state[key], tensor) for key, tensor in reference.items()), "weights differ"

    run_case(
        AREA,
        lambda: ILLaDAForCausalLM.from_pretrained(target),
        bad=bad,
        bad_files=bad_files,
        check=check,
        describe=f"{kind}: { ({k: v for k, v in spec.items() if k != 'index'}) }",
    )


@st.composite
def tied_state_dicts(draw, reference: dict) -> tuple[str, dict]:
    """(description, state dict) whose `lm_head.weight` is the embedding itself, an equal copy, a copy changed at
    one entry (to any float, NaN included), of another shape or dtype, a meta tensor, or missing."""
    state = {key: tensor.clone() for key, tensor in reference.items()}
    embedding = state["model.embed_tokens.weight"]
    kind = draw(st.sampled_from(["shared", "copy", "changed", "shape", "dtype", "meta", "missing"]))
    if kind == "shared":
        state["lm_head.weight"] = embedding
    elif kind == "copy":
        state["lm_head.weight"] = embedding.clone()
    elif kind == "changed":
        row, column = draw(st.integers(0, embedding.shape[0] - 1)), draw(st.integers(0, embedding.shape[1] - 1))
        value = draw(st.floats(width=32).filter(lambda x: x != embedding[row, column].item()))
        state["lm_head.weight"] = embedding.clone()
        state["lm_head.weight"][row, column] = value
    elif kind == "shape":
        state["lm_head.weight"] = embedding[: draw(st.integers(1, embedding.shape[0] - 1))].clone()
    elif kind == "dtype":
        state["lm_head.weight"] = embedding.double()
    elif kind == "meta":
        state["lm_head.weight"] = embedding.to("meta")
    else:
        state.pop("lm_head.weight", None)
    return kind, state


@fuzz_settings(max_examples=40)
@given(data=st.data())
def test_fuzz_a_tied_copy_is_dropped_only_when_equal(saved, data):
    """`drop_tied_copies` (the trainers' final save under DeepSpeed): the LM head is dropped only when it equals the
    embedding exactly; every other tensor is kept as it is (the same object)."""
    from illada.checkpoints import drop_tied_copies

    _, reference = saved
    kind, state = data.draw(tied_state_dicts(reference))
    model = ILLaDAForCausalLM(make_config())

    def check(result) -> None:
        equal = kind in {"shared", "copy"}
        assert set(result) == set(state) - ({"lm_head.weight"} if equal else set()), "wrong keys dropped"
        assert all(result[key] is state[key] for key in result), "a kept tensor was changed"

    run_case("tied copies", lambda: drop_tied_copies(state, model), check=check, describe=kind)
