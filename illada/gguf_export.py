"""Export an iLLaDA checkpoint to GGUF for llama.cpp's diffusion runtime (its `llada` architecture).

    python -m illada.gguf_export MODEL_DIR OUT.gguf --outtype f32|f16|bf16|q8_0

Every hyperparameter llama.cpp's `llada` loader reads is taken from the model's own config (never a default):
context length, width, depth, FFN width, query and key/value head counts, head size, RoPE base and dimension, the
RMSNorm epsilon and the vocabulary size. The head is tied, so `output.weight` is not written and llama.cpp reuses
`token_embd.weight`. llama.cpp's `llada` RoPE rotates adjacent pairs (its "normal" RoPE) where iLLaDA, like Llama
in transformers, rotates the two halves of a head, so the rows of `q_proj` and `k_proj` are permuted per head; the
attention scores are unchanged. The tokenizer (byte-level BPE: tokens, token types, merges, pre-tokenizer), the
special ids (BOS, EOS, pad, mask), the chat template and `diffusion.shift_logits = false` complete the file.

What GGUF cannot carry is refused with a `ValueError` naming the field: a head that is not tied to the embeddings,
a RoPE scaling, a tokenizer that is not byte-level BPE or whose pre-tokenizer has no llama.cpp equivalent, more
than one EOS id. One tokenizer difference is carried with a warning: a `Prepend(" ")` normalizer (the demo
model's), which llama.cpp's BPE does not apply; token ids given to llama.cpp directly are unaffected. See
docs/llama_cpp.md.
"""

from __future__ import annotations

import argparse
import json
import sys
import warnings
from collections.abc import Iterator
from pathlib import Path

import gguf
import numpy as np
import torch
from safetensors import safe_open

from illada.configuration_illada import ILLaDAConfig
from illada.utils import load_tokenizer
from illada.utils_illada import as_id_list

ARCH = gguf.MODEL_ARCH.LLADA
OUTTYPES = {
    "f32": (gguf.GGMLQuantizationType.F32, gguf.LlamaFileType.ALL_F32),
    "f16": (gguf.GGMLQuantizationType.F16, gguf.LlamaFileType.MOSTLY_F16),
    "bf16": (gguf.GGMLQuantizationType.BF16, gguf.LlamaFileType.MOSTLY_BF16),
    "q8_0": (gguf.GGMLQuantizationType.Q8_0, gguf.LlamaFileType.MOSTLY_Q8_0),
}
# Checkpoint tensor of each GGUF tensor; `{bid}` is the layer index.
GLOBAL_TENSORS = {"token_embd.weight": "model.embed_tokens.weight", "output_norm.weight": "model.norm.weight"}
LAYER_TENSORS = {
    "blk.{bid}.attn_norm.weight": "model.layers.{bid}.input_layernorm.weight",
    "blk.{bid}.attn_q.weight": "model.layers.{bid}.self_attn.q_proj.weight",
    "blk.{bid}.attn_k.weight": "model.layers.{bid}.self_attn.k_proj.weight",
    "blk.{bid}.attn_v.weight": "model.layers.{bid}.self_attn.v_proj.weight",
    "blk.{bid}.attn_output.weight": "model.layers.{bid}.self_attn.o_proj.weight",
    "blk.{bid}.ffn_norm.weight": "model.layers.{bid}.post_attention_layernorm.weight",
    "blk.{bid}.ffn_gate.weight": "model.layers.{bid}.mlp.gate_proj.weight",
    "blk.{bid}.ffn_up.weight": "model.layers.{bid}.mlp.up_proj.weight",
    "blk.{bid}.ffn_down.weight": "model.layers.{bid}.mlp.down_proj.weight",
}
HEAD = "lm_head.weight"
# The demo tokenizer isolates each digit before the byte-level split; see `pre_tokenizer_name`.
DIGIT_SPLIT = " ?\\d"
DIGITS = set("0123456789")


def gguf_tensor_names(num_layers: int) -> dict[str, str]:
    """GGUF tensor name -> checkpoint tensor name, for a model of `num_layers` layers."""
    names = dict(GLOBAL_TENSORS)
    for bid in range(num_layers):
        names.update({k.format(bid=bid): v.format(bid=bid) for k, v in LAYER_TENSORS.items()})
    return names


def read_checkpoint(folder: Path) -> dict[str, torch.Tensor]:
    """All tensors of the checkpoint's safetensors file(s), in float32."""
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        files = sorted(set(json.loads(index.read_text())["weight_map"].values()))
    elif (folder / "model.safetensors").is_file():
        files = ["model.safetensors"]
    else:
        raise ValueError(f"MODEL_DIR {str(folder)!r} holds no model.safetensors (or model.safetensors.index.json).")
    state = {}
    for name in files:
        with safe_open(folder / name, framework="pt") as handle:
            state.update({key: handle.get_tensor(key).float() for key in handle.keys()})  # noqa: SIM118
    return state


def check_tied_head(state: dict[str, torch.Tensor]) -> None:
    """llama.cpp uses `token_embd.weight` as the head when `output.weight` is absent; refuse a different head."""
    head = state.get(HEAD)
    if head is not None and not torch.equal(head, state["model.embed_tokens.weight"]):
        difference = (head - state["model.embed_tokens.weight"]).abs().max().item()
        raise ValueError(
            f"`{HEAD}` differs from `model.embed_tokens.weight` (max |difference| {difference:.3g}) although the "
            "config ties them (`tie_word_embeddings=True`): the GGUF file would silently use the embeddings as the "
            "head. Tie the head (copy the embeddings into it) or fix the checkpoint."
        )


def rope_pairs_permutation(weight: torch.Tensor, num_heads: int) -> torch.Tensor:
    """Rows of a q/k projection `(num_heads * head_dim, in)` reordered per head from rotate-half order (pairs
    `(i, i + head_dim/2)`) to adjacent pairs `(2i, 2i + 1)`, the order of llama.cpp's normal RoPE."""
    rows, columns = weight.shape
    half = rows // num_heads // 2
    return weight.reshape(num_heads, 2, half, columns).transpose(1, 2).reshape(rows, columns)


def gguf_tensors(config: ILLaDAConfig, state: dict[str, torch.Tensor]) -> Iterator[tuple[str, np.ndarray]]:
    """(GGUF name, float32 array) of every tensor the `llada` loader reads, q/k rows permuted for its RoPE."""
    missing = [key for key in gguf_tensor_names(config.num_hidden_layers).values() if key not in state]
    if missing:
        raise ValueError(f"The checkpoint lacks {len(missing)} tensor(s) the export needs: {missing[:8]}.")
    heads = {"attn_q": config.num_attention_heads, "attn_k": config.num_key_value_heads}
    for name, key in gguf_tensor_names(config.num_hidden_layers).items():
        tensor = state[key]
        kind = name.split(".")[-2]
        if kind in heads:
            tensor = rope_pairs_permutation(tensor, heads[kind])
        yield name, tensor.numpy()


def tensor_type(array: np.ndarray, outtype: str) -> gguf.GGMLQuantizationType:
    """The GGML type of a tensor: vectors (norm weights) stay F32; Q8_0 needs rows that are whole blocks of 32,
    other matrices fall back to F16 (as llama.cpp's own converter does)."""
    qtype = OUTTYPES[outtype][0]
    if array.ndim == 1:
        return gguf.GGMLQuantizationType.F32
    block = gguf.GGML_QUANT_SIZES[qtype][0]
    if array.shape[-1] % block:
        return gguf.GGMLQuantizationType.F16
    return qtype


def add_hyperparameters(writer: gguf.GGUFWriter, config: ILLaDAConfig) -> None:
    """Every `llada.*` key llama.cpp's loader reads, from the config."""
    rope = config.rope_parameters
    if rope.get("rope_type", "default") != "default":
        raise ValueError(
            f"`rope_parameters.rope_type` {rope['rope_type']!r}: the `llada` loader reads no RoPE scaling."
        )
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_block_count(config.num_hidden_layers)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_head_count(config.num_attention_heads)
    writer.add_head_count_kv(config.num_key_value_heads)
    writer.add_key_length(config.head_dim)
    writer.add_value_length(config.head_dim)
    writer.add_rope_dimension_count(config.head_dim)
    writer.add_rope_freq_base(float(rope["rope_theta"]))
    writer.add_layer_norm_rms_eps(float(config.rms_norm_eps))
    writer.add_vocab_size(config.vocab_size)
    writer.add_causal_attention(False)
    writer.add_diffusion_shift_logits(False)


def special_ids(config: ILLaDAConfig) -> dict[str, int]:
    """BOS, EOS, pad and mask ids from the config; GGUF holds one EOS id."""
    eos = as_id_list(config.eos_token_id)
    if len(eos) != 1:
        raise ValueError(
            f"`eos_token_id` {config.eos_token_id!r}: GGUF carries exactly one EOS id (`tokenizer.ggml.eos_token_id`)."
        )
    ids = {"bos": config.bos_token_id, "eos": eos[0], "pad": config.pad_token_id, "mask": config.mask_token_id}
    for name, value in ids.items():
        if value is None:
            raise ValueError(f"`{name}_token_id` is not set in the config; the GGUF tokenizer needs it.")
    return ids


def pre_tokenizer_name(spec: dict | None, merges: list[tuple[str, str]]) -> str:
    """llama.cpp's name of a byte-level pre-tokenizer. `ByteLevel` with the GPT-2 regex is `gpt-2`. A digit split
    (`Split(" ?\\d", isolated)`) before it is `gpt-2` too when no merge joins two digits: GPT-2's regex keeps a digit
    run in one piece, and BPE can only re-join the digits through such a merge."""
    steps = spec.get("pretokenizers", []) if spec and spec.get("type") == "Sequence" else [spec]
    *splits, last = steps
    byte_level = last is not None and last.get("type") == "ByteLevel" and last.get("use_regex", True)
    if not byte_level or last.get("add_prefix_space", False):
        raise ValueError(
            f"`pre_tokenizer` {json.dumps(spec)}: llama.cpp's BPE needs a final ByteLevel pre-tokenizer with the GPT-2 "
            "regex (`use_regex=true`, `add_prefix_space=false`)."
        )
    for split in splits:
        digit_split = split.get("type") == "Split" and split.get("pattern") == {"Regex": DIGIT_SPLIT}
        if not (digit_split and split.get("behavior") == "Isolated" and not split.get("invert")):
            raise ValueError(f"`pre_tokenizer` step {json.dumps(split)} has no llama.cpp equivalent.")
        joined = [pair for pair in merges if pair[0][-1] in DIGITS and pair[1][0] in DIGITS]
        if joined:
            raise ValueError(
                f"`pre_tokenizer` splits digits but merges {joined[:3]} join them: no llama.cpp equivalent."
            )
    return "gpt-2"


def check_bpe_model(spec: dict) -> None:
    """Byte-level BPE without byte fallback, subword prefixes or suffixes: what llama.cpp's `gpt2` model runs."""
    if spec.get("type") != "BPE":
        raise ValueError(f"`model.type` {spec.get('type')!r}: llama.cpp's GGUF tokenizer here is byte-level BPE only.")
    for field in ("byte_fallback", "continuing_subword_prefix", "end_of_word_suffix", "dropout"):
        if spec.get(field):
            raise ValueError(f"`model.{field}` {spec[field]!r}: llama.cpp's byte-level BPE has no such option.")


def check_normalizer(spec: dict | None) -> None:
    """No normalizer, or `Prepend(" ")` (carried with a warning: llama.cpp's BPE does not prepend)."""
    if spec is None:
        return
    if spec == {"type": "Prepend", "prepend": " "}:
        warnings.warn(
            "The tokenizer's `normalizer` Prepend(' ') has no GGUF equivalent: llama.cpp tokenizes text without the "
            "leading space (token ids given to llama.cpp directly are unaffected; see docs/llama_cpp.md).",
            stacklevel=3,
        )
        return
    raise ValueError(f"`normalizer` {json.dumps(spec)}: llama.cpp's byte-level BPE applies no normalizer.")


def vocabulary(tokenizer, vocab_size: int) -> tuple[list[str], list[int]]:
    """Tokens and token types for ids `0..vocab_size-1`: special added tokens CONTROL, other added tokens
    USER_DEFINED, ids the tokenizer lacks `[PAD{id}]` UNUSED (the embedding rows past the tokenizer)."""
    by_id = {i: token for token, i in tokenizer.get_vocab().items()}
    if max(by_id) >= vocab_size:
        raise ValueError(f"The tokenizer has id {max(by_id)} but the config's `vocab_size` is {vocab_size}.")
    added = tokenizer.added_tokens_decoder
    tokens, types = [], []
    for i in range(vocab_size):
        if i not in by_id:
            tokens.append(f"[PAD{i}]")
            types.append(gguf.TokenType.UNUSED)
        elif i in added:
            tokens.append(by_id[i])
            types.append(gguf.TokenType.CONTROL if added[i].special else gguf.TokenType.USER_DEFINED)
        else:
            tokens.append(by_id[i])
            types.append(gguf.TokenType.NORMAL)
    return tokens, types


def add_tokenizer(writer: gguf.GGUFWriter, tokenizer, config: ILLaDAConfig) -> None:
    """The `tokenizer.ggml.*` keys and the chat template."""
    spec = json.loads(tokenizer.backend_tokenizer.to_str())
    check_bpe_model(spec["model"])
    check_normalizer(spec.get("normalizer"))
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in spec["model"]["merges"]]
    if any(len(pair) != 2 or " " in "".join(pair) for pair in merges):
        raise ValueError("`model.merges` holds a token with a space: GGUF stores merges as 'left right' strings.")
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(pre_tokenizer_name(spec.get("pre_tokenizer"), merges))
    tokens, types = vocabulary(tokenizer, config.vocab_size)
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    writer.add_token_merges([f"{left} {right}" for left, right in merges])
    ids = special_ids(config)
    for name, value in ids.items():
        tokenizer_id = getattr(tokenizer, f"{name}_token_id", None)
        if tokenizer_id is not None and tokenizer_id != value:
            raise ValueError(f"`{name}_token_id` is {value} in the config but {tokenizer_id} in the tokenizer.")
    writer.add_bos_token_id(ids["bos"])
    writer.add_eos_token_id(ids["eos"])
    writer.add_pad_token_id(ids["pad"])
    writer.add_mask_token_id(ids["mask"])
    probe = tokenizer("a").input_ids
    writer.add_add_bos_token(probe[0] == ids["bos"])
    writer.add_add_eos_token(probe[-1] == ids["eos"])
    if tokenizer.chat_template:
        writer.add_chat_template(tokenizer.chat_template)


def export_gguf(model_dir: str | Path, out: str | Path, outtype: str = "f32") -> Path:
    """Writes `out` (which must not exist) from the checkpoint folder `model_dir`; returns its path."""
    if outtype not in OUTTYPES:
        raise ValueError(f"`outtype` {outtype!r} is not one of {sorted(OUTTYPES)}.")
    model_dir, out = Path(model_dir), Path(out)
    if out.exists():
        raise ValueError(f"OUT {str(out)!r} exists; remove it or choose another path (nothing is overwritten).")
    config = ILLaDAConfig.from_pretrained(model_dir)
    tokenizer = load_tokenizer(model_dir, trust_remote_code=True)  # config.json names our own code
    state = read_checkpoint(model_dir)
    check_tied_head(state)
    writer = gguf.GGUFWriter(out, gguf.MODEL_ARCH_NAMES[ARCH])
    try:
        writer.add_name(model_dir.resolve().name)
        writer.add_file_type(OUTTYPES[outtype][1])
        add_hyperparameters(writer, config)
        add_tokenizer(writer, tokenizer, config)
        for name, array in gguf_tensors(config, state):
            qtype = tensor_type(array, outtype)
            data = array if qtype == gguf.GGMLQuantizationType.F32 else gguf.quants.quantize(array, qtype)
            writer.add_tensor(name, data, raw_dtype=qtype)
        writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
    except BaseException:
        writer.close()
        out.unlink(missing_ok=True)
        raise
    writer.close()
    return out


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m illada.gguf_export",
        description="Export an iLLaDA checkpoint to GGUF for llama.cpp's diffusion runtime (docs/llama_cpp.md).",
    )
    parser.add_argument("model_dir", metavar="MODEL_DIR", help="Local checkpoint folder (config, weights, tokenizer).")
    parser.add_argument("out", metavar="OUT.gguf", help="The GGUF file to write (must not exist).")
    parser.add_argument("--outtype", default="f32", choices=sorted(OUTTYPES), help="Matrix type (default f32).")
    return parser


def main(argv: list[str] | None = None) -> Path:
    args = build_parser().parse_args(argv)
    try:
        out = export_gguf(args.model_dir, args.out, args.outtype)
    except ValueError as error:
        sys.exit(f"error: {error}")
    print(f"wrote {out} ({out.stat().st_size / 2**20:.1f} MiB, {args.outtype})")
    return out


if __name__ == "__main__":
    main()
