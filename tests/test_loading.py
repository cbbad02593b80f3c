"""Strict loading: released tensor names load exactly; a missing, unexpected or mis-shaped tensor, a vocabulary
mismatch, an untied head, and empty, truncated or corrupt weight files or shard indexes raise a `ValueError` that
names the tensors or the file (issue #12, items 7 and 8)."""

import json
import os

import pytest
import torch
from tiny import make_config, released_state_dict, write_checkpoint

from illada.modeling_illada import ILLaDAForCausalLM, ILLaDAModel


def test_released_key_names_load_exactly(tmp_path):
    config = make_config()
    state = released_state_dict(config)
    write_checkpoint(tmp_path, state, config)
    model, info = ILLaDAForCausalLM.from_pretrained(tmp_path, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]
    assert model.lm_head.weight is model.model.embed_tokens.weight
    for key, tensor in state.items():
        assert torch.equal(model.state_dict()[key], tensor), key


@pytest.mark.parametrize("change", ["drop", "rename"])
def test_missing_or_renamed_tensor_fails_loudly(tmp_path, change):
    config = make_config()
    state = released_state_dict(config)
    tensor = state.pop("model.layers.1.mlp.up_proj.weight")
    if change == "rename":
        state["model.layers.1.mlp.upproj.weight"] = tensor
    write_checkpoint(tmp_path, state, config)
    with pytest.raises(ValueError, match="model.layers.1.mlp.up_proj.weight"):
        ILLaDAForCausalLM.from_pretrained(tmp_path)
    model = ILLaDAForCausalLM.from_pretrained(tmp_path, strict=False)  # the lenient path stays available
    assert isinstance(model, ILLaDAForCausalLM)


def test_wrong_shape_names_tensor_and_both_shapes_before_loading(tmp_path):
    config = make_config()
    state = released_state_dict(config)
    state["model.layers.0.mlp.up_proj.weight"] = torch.randn(60, 32)
    write_checkpoint(tmp_path, state, config)
    expected = r"`model.layers.0.mlp.up_proj.weight` checkpoint \(60, 32\) vs model \(64, 32\)"
    for model_class in (ILLaDAForCausalLM, ILLaDAModel):  # the backbone reads the same names without `model.`
        with pytest.raises(ValueError, match=expected):
            model_class.from_pretrained(tmp_path)


@pytest.mark.parametrize("with_head", [True, False])
def test_vocabulary_mismatch_names_both_sizes(tmp_path, with_head):
    config = make_config()
    state = released_state_dict(config)
    state["model.embed_tokens.weight"] = torch.randn(100, 32)
    if with_head:
        state["lm_head.weight"] = state["model.embed_tokens.weight"].clone()
    else:
        del state["lm_head.weight"]
    write_checkpoint(tmp_path, state, config)
    with pytest.raises(ValueError, match=r"vocabulary has 100 rows, the config's `vocab_size` is 97"):
        ILLaDAForCausalLM.from_pretrained(tmp_path)
    model = ILLaDAForCausalLM.from_pretrained(tmp_path, vocab_size=100)  # a config override is honoured
    assert torch.equal(model.lm_head.weight, state["model.embed_tokens.weight"])


def test_wrong_shape_in_hub_cache_is_named(tmp_path):
    """A Hub checkpoint (here an offline cache) fails inside transformers; the error still names the tensor."""
    config = make_config()
    state = released_state_dict(config)
    state["model.norm.weight"] = torch.ones(31)
    snapshot = tmp_path / "cache" / "models--someone--illada" / "snapshots" / "abc123"
    write_checkpoint(snapshot, state, config)
    (tmp_path / "cache" / "models--someone--illada" / "refs").mkdir()
    (tmp_path / "cache" / "models--someone--illada" / "refs" / "main").write_text("abc123")
    with pytest.raises(ValueError, match=r"`model.norm.weight` checkpoint \(31,\) vs model \(32,\)"):
        ILLaDAForCausalLM.from_pretrained("someone/illada", cache_dir=tmp_path / "cache", local_files_only=True)


def test_untied_head_is_an_error_unless_lenient(tmp_path):
    config = make_config()
    state = released_state_dict(config)
    state["lm_head.weight"] = torch.randn(97, 32)
    write_checkpoint(tmp_path, state, config)
    with pytest.raises(
        ValueError, match=r"`lm_head.weight` differs from its `model.embed_tokens.weight`.*strict=False"
    ):
        ILLaDAForCausalLM.from_pretrained(tmp_path)
    model = ILLaDAForCausalLM.from_pretrained(tmp_path, strict=False)  # what transformers 5.23 does: load untied
    assert model.lm_head.weight is not model.model.embed_tokens.weight
    assert torch.equal(model.lm_head.weight, state["lm_head.weight"])


@pytest.fixture
def sharded(tmp_path):
    """A tiny model saved by transformers in several shards with its index."""
    folder = tmp_path / "sharded"
    make_model_for_shards().save_pretrained(folder, max_shard_size="40KB")
    shards = sorted(folder.glob("model-*.safetensors"))
    assert len(shards) >= 2 and (folder / "model.safetensors.index.json").is_file()
    return folder


def make_model_for_shards() -> ILLaDAForCausalLM:
    torch.manual_seed(0)
    return ILLaDAForCausalLM(make_config())


def test_sharded_checkpoint_loads(sharded):
    reference = make_model_for_shards()
    model = ILLaDAForCausalLM.from_pretrained(sharded)
    for key, tensor in reference.state_dict().items():
        assert torch.equal(model.state_dict()[key], tensor), key


def _truncate(path):
    path.write_bytes(path.read_bytes()[:-64])


def _index(path, text):
    path.with_name("model.safetensors.index.json").write_text(text)


SHARD_DAMAGE = {
    "empty shard": (lambda shard: shard.write_bytes(b""), "is empty"),
    "truncated shard": (_truncate, "is not a readable safetensors file"),
    "garbage shard": (lambda shard: shard.write_bytes(os.urandom(500)), "is not a readable safetensors file"),
    "missing shard": (lambda shard: shard.unlink(), "lists the shard `model-00002"),
    "index not json": (lambda shard: _index(shard, '{"weight_map": {'), "index.json` is not a JSON object"),
    "index empty": (lambda shard: _index(shard, ""), "index.json` is not a JSON object"),
    "index a list": (lambda shard: _index(shard, "[]"), "index.json` is not a JSON object"),
    "no weight_map": (lambda shard: _index(shard, '{"metadata": {}}'), "has no `weight_map` object"),
    "weight_map a list": (lambda shard: _index(shard, '{"weight_map": [1]}'), "has no `weight_map` object"),
}


@pytest.mark.parametrize("damage", SHARD_DAMAGE)
def test_damaged_shards_or_index_name_the_file(sharded, damage):
    shard = sorted(sharded.glob("model-*.safetensors"))[1]
    corrupt, message = SHARD_DAMAGE[damage]
    corrupt(shard)
    named = "model.safetensors.index.json" if "index" in damage or "weight_map" in damage else shard.name
    with pytest.raises(ValueError, match=message) as error:
        ILLaDAForCausalLM.from_pretrained(sharded)
    assert named in str(error.value)


def test_index_pointing_to_the_wrong_shard_is_named(sharded):
    index = sharded / "model.safetensors.index.json"
    content = json.loads(index.read_text())
    first = sorted(sharded.glob("model-*.safetensors"))[0].name
    key = next(k for k, shard in content["weight_map"].items() if shard != first)
    content["weight_map"][key] = first
    index.write_text(json.dumps(content))
    with pytest.raises(ValueError, match=f"places tensors \\['{key}'\\] in `{first}`"):
        ILLaDAForCausalLM.from_pretrained(sharded)


@pytest.mark.parametrize("damage", ["empty", "truncated", "garbage"])
def test_damaged_single_file_is_named(tmp_path, damage):
    config = make_config()
    write_checkpoint(tmp_path, released_state_dict(config), config)
    path = tmp_path / "model.safetensors"
    {
        "empty": lambda: path.write_bytes(b""),
        "truncated": lambda: _truncate(path),
        "garbage": lambda: path.write_bytes(os.urandom(500)),
    }[damage]()
    with pytest.raises(ValueError, match="model.safetensors` .*(empty|not a readable safetensors file)"):
        ILLaDAForCausalLM.from_pretrained(tmp_path)


@pytest.mark.parametrize("strict", [True, False])
def test_damaged_config_json_is_named(tmp_path, strict):
    """Fuzz finding F1: an empty config.json gave transformers' `OSError`; the model class raises `ValueError`."""
    config = make_config()
    write_checkpoint(tmp_path, released_state_dict(config), config)
    (tmp_path / "config.json").write_bytes(b"")
    with pytest.raises(ValueError, match="config.json` is not valid JSON"):
        ILLaDAForCausalLM.from_pretrained(tmp_path, strict=strict)
