"""Fuzz: the GGUF exporter (issue 28) on drawn model shapes and damaged tokenizers / configs / heads.

A valid case (any head count, GQA group, head size, depth, FFN width, vocabulary past the tokenizer, RoPE base,
epsilon, output type) must export, and the file's metadata must give back the config the model was built with
(`config_from_gguf`, which the GGUF runtime uses) and every tensor with its shape. A damaged case (a tokenizer
llama.cpp's BPE cannot run, two EOS ids, a head that is not tied, a RoPE scaling) must raise a `ValueError` naming
the field.
"""

import json
import shutil
import tempfile
import warnings
from pathlib import Path

import gguf
import pytest
import torch
from fuzz_strategies import fuzz_settings, run_case
from hypothesis import given
from hypothesis import strategies as st
from safetensors.torch import load_file, save_file
from tiny import make_model

from illada.demo.tokenizer import train_tokenizer
from illada.gguf_export import export_gguf
from illada.gguf_runtime import config_from_gguf

pytestmark = pytest.mark.usefixtures("one_thread")

TOKENIZER = train_tokenizer(["the cat sat on the mat 12 times", "what is 3 plus 4? it is 7."] * 10, vocab_size=280)
SHAPE_KEYS = (
    "vocab_size",
    "hidden_size",
    "intermediate_size",
    "num_hidden_layers",
    "num_attention_heads",
    "num_key_value_heads",
    "head_dim",
    "max_position_embeddings",
)


@st.composite
def shapes(draw) -> dict:
    kv_heads, group, head_dim = (
        draw(st.sampled_from([1, 2, 4])),
        draw(st.sampled_from([1, 2])),
        draw(st.sampled_from([8, 16, 32])),
    )
    heads = kv_heads * group
    return dict(
        vocab_size=len(TOKENIZER) + draw(st.integers(0, 40)),
        hidden_size=heads * head_dim,
        head_dim=head_dim,
        intermediate_size=draw(st.integers(8, 96)),
        num_hidden_layers=draw(st.integers(1, 2)),
        num_attention_heads=heads,
        num_key_value_heads=kv_heads,
        max_position_embeddings=draw(st.sampled_from([64, 300, 4096])),
        rope_theta=draw(st.sampled_from([10000.0, 500000.0, 1234.5])),
        rms_norm_eps=draw(st.sampled_from([1e-5, 1e-6, 3e-4])),
    )


def save(folder: Path, overrides: dict) -> Path:
    make_model(**overrides).save_pretrained(folder)
    TOKENIZER.save_pretrained(folder)
    return folder


def export_quietly(folder: Path, out: Path, outtype: str) -> Path:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the demo tokenizer's Prepend normalizer
        return export_gguf(folder, out, outtype)


@fuzz_settings(12)
@given(overrides=shapes(), outtype=st.sampled_from(["f32", "f16", "bf16", "q8_0"]))
def test_drawn_shapes_round_trip(overrides, outtype):
    folder = Path(tempfile.mkdtemp(prefix="illada-fuzz-gguf-"))
    try:
        save(folder / "model", overrides)

        def check(out: Path) -> None:
            config = config_from_gguf(out)
            for key in SHAPE_KEYS:
                assert getattr(config, key) == overrides[key], key
            assert config.rope_parameters["rope_theta"] == pytest.approx(overrides["rope_theta"], rel=1e-7)
            assert config.rms_norm_eps == pytest.approx(overrides["rms_norm_eps"], rel=1e-6)
            state = load_file(folder / "model" / "model.safetensors")
            tensors = {t.name: tuple(int(n) for n in reversed(t.shape)) for t in gguf.GGUFReader(out).tensors}
            assert tensors["token_embd.weight"] == tuple(state["model.embed_tokens.weight"].shape)
            assert tensors["blk.0.attn_k.weight"] == tuple(state["model.layers.0.self_attn.k_proj.weight"].shape)
            assert len(tensors) == 2 + 9 * overrides["num_hidden_layers"]

        run_case(
            "gguf export shapes",
            lambda: export_quietly(folder / "model", folder / "out.gguf", outtype),
            check=check,
            describe=f"{overrides} {outtype}",
        )
    finally:
        shutil.rmtree(folder, ignore_errors=True)


DAMAGE = {
    "model.type": lambda t: t.update(model={"type": "WordLevel", "vocab": t["model"]["vocab"], "unk_token": "<pad>"}),
    "model.byte_fallback": lambda t: t["model"].update(byte_fallback=True),
    "normalizer": lambda t: t.update(normalizer={"type": "NFKC"}),
    "pre_tokenizer": lambda t: t.update(
        pre_tokenizer={"type": "Metaspace", "replacement": "_", "prepend_scheme": "always", "split": True}
    ),
    "pre_tokenizer ": lambda t: t.update(
        pre_tokenizer={"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True, "use_regex": True}
    ),
    "pre_tokenizer  ": lambda t: t.update(
        pre_tokenizer={"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": False}
    ),
}


@fuzz_settings(16)
@given(
    damage=st.sampled_from(sorted(DAMAGE) + ["eos_token_id", "lm_head.weight", "rope_type"]),
    scale=st.sampled_from([1e-7, 1e-3, 1.0]),
)
def test_damaged_exports_name_the_field(damage, scale):
    folder = Path(tempfile.mkdtemp(prefix="illada-fuzz-gguf-"))
    try:
        model_dir = save(folder / "model", dict(vocab_size=300))
        if damage in DAMAGE:
            spec = json.loads((model_dir / "tokenizer.json").read_text())
            DAMAGE[damage](spec)
            (model_dir / "tokenizer.json").write_text(json.dumps(spec))
        elif damage == "lm_head.weight":
            state = load_file(model_dir / "model.safetensors")
            state["lm_head.weight"] = state["model.embed_tokens.weight"] + scale * torch.ones(())
            save_file(state, model_dir / "model.safetensors", metadata={"format": "pt"})
        else:
            config = json.loads((model_dir / "config.json").read_text())
            if damage == "eos_token_id":
                config["eos_token_id"] = [2, 4]
            else:
                config["rope_scaling"] = {"rope_type": "yarn", "factor": 1.0 + scale}
            (model_dir / "config.json").write_text(json.dumps(config))
        run_case(
            "gguf export damage",
            lambda: export_quietly(model_dir, folder / "out.gguf", "f32"),
            bad=[damage.strip()] if damage != "rope_type" else ["rope_type", "rope_parameters"],
            describe=damage,
        )
        assert not (folder / "out.gguf").exists()
    finally:
        shutil.rmtree(folder, ignore_errors=True)
