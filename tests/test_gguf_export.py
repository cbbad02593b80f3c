"""The GGUF exporter (`illada.gguf_export`, issue 28): round trips read back with `gguf`'s own `GGUFReader`, and the
errors for what GGUF cannot carry.

Every tensor is checked against the checkpoint: its name, shape and values (F32 exactly; F16 and BF16 against
numpy's / torch's own rounding; Q8_0 decoded by hand from its blocks). The q/k rows are checked against the
row-mapping formula and, independently, by attention scores: rotate-half RoPE on the checkpoint's rows equals
adjacent-pairs RoPE (llama.cpp's "normal" RoPE, a float64 loop here) on the exported rows. Every metadata key is
checked against the config and the tokenizer, and the key set is exact (nothing written silently).
"""

import json
import math
import shutil
import warnings
from pathlib import Path

import gguf
import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file
from tiny import make_model
from tiny_tokenizer import make_tiny_tokenizer
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from illada.demo.tokenizer import SPECIAL_TOKENS, train_tokenizer, wrap_tokenizer
from illada.gguf_export import export_gguf, main

pytestmark = pytest.mark.usefixtures("one_thread")

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "illada-demo"
TEXTS = ["the cat sat on the mat 12 times", "what is 3 plus 4? it is 7.", "hello world, the dog ran"] * 20
TINY_VOCAB = 300  # the byte alphabet (256) + 6 specials + merges; ids past the tokenizer are UNUSED
EXPECTED_KEYS = {
    "general.architecture",
    "general.name",
    "general.file_type",
    "general.quantization_version",
    "llada.context_length",
    "llada.embedding_length",
    "llada.block_count",
    "llada.feed_forward_length",
    "llada.attention.head_count",
    "llada.attention.head_count_kv",
    "llada.attention.key_length",
    "llada.attention.value_length",
    "llada.rope.dimension_count",
    "llada.rope.freq_base",
    "llada.attention.layer_norm_rms_epsilon",
    "llada.vocab_size",
    "llada.attention.causal",
    "diffusion.shift_logits",
    "tokenizer.ggml.model",
    "tokenizer.ggml.pre",
    "tokenizer.ggml.tokens",
    "tokenizer.ggml.token_type",
    "tokenizer.ggml.merges",
    "tokenizer.ggml.bos_token_id",
    "tokenizer.ggml.eos_token_id",
    "tokenizer.ggml.padding_token_id",
    "tokenizer.ggml.mask_token_id",
    "tokenizer.ggml.add_bos_token",
    "tokenizer.ggml.add_eos_token",
    "tokenizer.chat_template",
}
LAYER_KEYS = {
    "attn_norm": "input_layernorm",
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "ffn_norm": "post_attention_layernorm",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
}


def plain_byte_level_tokenizer():
    """A byte-level BPE with GPT-2's pre-tokenizer and no normalizer (what llama.cpp's `gpt-2` pre-type runs)."""
    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=280,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    backend.train_from_iterator(TEXTS, trainer=trainer)
    return wrap_tokenizer(backend)


def save_tiny(folder: Path, tokenizer=None, seed: int = 0) -> Path:
    """A tiny iLLaDA (tests/tiny.py, vocabulary widened for a byte-level BPE) with a tiny BPE tokenizer."""
    model = make_model(seed=seed, vocab_size=TINY_VOCAB, hidden_size=64, intermediate_size=96, head_dim=16)
    model.save_pretrained(folder)
    (tokenizer or train_tokenizer(TEXTS, vocab_size=290)).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    return save_tiny(tmp_path_factory.mktemp("tiny") / "model")


def export(model_dir: Path, out: Path, outtype: str = "f32") -> gguf.GGUFReader:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the demo tokenizer's Prepend normalizer (tested below)
        export_gguf(model_dir, out, outtype)
    return gguf.GGUFReader(out)


def field(reader: gguf.GGUFReader, key: str):
    return reader.fields[key].contents()


def decode_q8_0(raw: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """Q8_0 by hand: blocks of 34 bytes, an f16 scale then 32 int8 quants; value = scale * quant."""
    blocks = raw.reshape(-1, 34)
    scales = blocks[:, :2].copy().view(np.float16).astype(np.float32)
    quants = blocks[:, 2:].copy().view(np.int8).astype(np.float32)
    return (scales * quants).reshape(shape)


def read_values(tensor) -> np.ndarray:
    """A tensor's values as float32 in numpy order (rows, columns)."""
    shape = tuple(int(n) for n in reversed(tensor.shape))
    kind = tensor.tensor_type
    if kind == gguf.GGMLQuantizationType.Q8_0:
        return decode_q8_0(np.asarray(tensor.data), shape)
    if kind == gguf.GGMLQuantizationType.BF16:
        bits = np.asarray(tensor.data).view(np.uint16).astype(np.uint32) << 16
        return bits.view(np.float32).reshape(shape)
    return np.asarray(tensor.data, dtype=np.float32).reshape(shape)


def expected_rows(weight: torch.Tensor, num_heads: int) -> torch.Tensor:
    """The row-mapping formula: exported row `h*d + 2j` is row `h*d + j`, row `h*d + 2j + 1` is `h*d + j + d/2`."""
    head_dim = weight.shape[0] // num_heads
    out = torch.empty_like(weight)
    for h in range(num_heads):
        for j in range(head_dim // 2):
            out[h * head_dim + 2 * j] = weight[h * head_dim + j]
            out[h * head_dim + 2 * j + 1] = weight[h * head_dim + j + head_dim // 2]
    return out


def checkpoint_tensors(model_dir: Path, config: dict) -> dict[str, tuple[torch.Tensor, int | None]]:
    """GGUF name -> (checkpoint tensor, heads to permute for or None), built from the names by hand."""
    state = load_file(model_dir / "model.safetensors")
    out = {
        "token_embd.weight": (state["model.embed_tokens.weight"], None),
        "output_norm.weight": (state["model.norm.weight"], None),
    }
    heads = {"attn_q": config["num_attention_heads"], "attn_k": config["num_key_value_heads"]}
    for layer in range(config["num_hidden_layers"]):
        for short, long in LAYER_KEYS.items():
            out[f"blk.{layer}.{short}.weight"] = (state[f"model.layers.{layer}.{long}.weight"], heads.get(short))
    return out


def check_tensors(reader: gguf.GGUFReader, model_dir: Path, outtype: str) -> None:
    config = json.loads((model_dir / "config.json").read_text())
    expected = checkpoint_tensors(model_dir, config)
    assert sorted(t.name for t in reader.tensors) == sorted(expected)  # no output.weight: the head is tied
    for tensor in reader.tensors:
        weight, heads = expected[tensor.name]
        want = (weight if heads is None else expected_rows(weight, heads)).float().numpy()
        got = read_values(tensor)
        assert got.shape == want.shape, tensor.name
        kind = tensor.tensor_type
        if want.ndim == 1 or outtype == "f32":
            assert kind == gguf.GGMLQuantizationType.F32, tensor.name
            np.testing.assert_array_equal(got, want, err_msg=tensor.name)
        elif outtype == "f16" or (outtype == "q8_0" and want.shape[1] % 32):
            assert kind == gguf.GGMLQuantizationType.F16, tensor.name
            np.testing.assert_array_equal(got, want.astype(np.float16).astype(np.float32), err_msg=tensor.name)
        elif outtype == "bf16":
            assert kind == gguf.GGMLQuantizationType.BF16, tensor.name
            rounded = torch.from_numpy(want).to(torch.bfloat16).float().numpy()
            np.testing.assert_array_equal(got, rounded, err_msg=tensor.name)
        else:
            assert kind == gguf.GGMLQuantizationType.Q8_0, tensor.name
            blocks = want.reshape(-1, 32)
            step = np.abs(blocks).max(axis=1, keepdims=True) / 127  # one quantisation step per block
            # half a step of rounding, plus the f16 rounding of the scale (2**-11 relative) times up to 127 steps
            error = np.abs(got.reshape(-1, 32) - blocks)
            assert (error <= step * (0.5 + 128 * 2**-11) + 1e-9).all(), tensor.name


def check_metadata(reader: gguf.GGUFReader, model_dir: Path, tokenizer_json: dict, chat_template: str) -> None:
    config = json.loads((model_dir / "config.json").read_text())
    assert set(reader.fields) - {"GGUF.version", "GGUF.tensor_count", "GGUF.kv_count"} == EXPECTED_KEYS
    head_dim = config.get("head_dim") or config["hidden_size"] // config["num_attention_heads"]
    assert field(reader, "general.architecture") == "llada"
    assert field(reader, "general.name") == model_dir.name
    expected = {
        "llada.context_length": config["max_position_embeddings"],
        "llada.embedding_length": config["hidden_size"],
        "llada.block_count": config["num_hidden_layers"],
        "llada.feed_forward_length": config["intermediate_size"],
        "llada.attention.head_count": config["num_attention_heads"],
        "llada.attention.head_count_kv": config["num_key_value_heads"],
        "llada.attention.key_length": head_dim,
        "llada.attention.value_length": head_dim,
        "llada.rope.dimension_count": head_dim,
        "llada.vocab_size": config["vocab_size"],
        "llada.attention.causal": False,
        "diffusion.shift_logits": False,
        "tokenizer.ggml.model": "gpt2",
        "tokenizer.ggml.pre": "gpt-2",
        "tokenizer.ggml.bos_token_id": config["bos_token_id"],
        "tokenizer.ggml.eos_token_id": config["eos_token_id"],
        "tokenizer.ggml.padding_token_id": config["pad_token_id"],
        "tokenizer.ggml.mask_token_id": config["mask_token_id"],
        "tokenizer.ggml.add_bos_token": False,  # the chat template writes <bos>; plain text gets none
        "tokenizer.ggml.add_eos_token": False,
        "tokenizer.chat_template": chat_template,
    }
    for key, value in expected.items():
        assert field(reader, key) == value, key
    rope_theta = config["rope_parameters"]["rope_theta"]
    assert field(reader, "llada.rope.freq_base") == pytest.approx(rope_theta, rel=1e-7)
    assert field(reader, "llada.attention.layer_norm_rms_epsilon") == pytest.approx(config["rms_norm_eps"], rel=1e-7)
    check_vocabulary(reader, config["vocab_size"], tokenizer_json)


def check_vocabulary(reader: gguf.GGUFReader, vocab_size: int, tokenizer_json: dict) -> None:
    by_id = {i: token for token, i in tokenizer_json["model"]["vocab"].items()}
    special = {t["id"]: t["content"] for t in tokenizer_json["added_tokens"] if t["special"]}
    by_id.update(special)
    tokens, types = field(reader, "tokenizer.ggml.tokens"), field(reader, "tokenizer.ggml.token_type")
    assert len(tokens) == len(types) == vocab_size
    for i in range(vocab_size):
        if i in special:
            assert (tokens[i], types[i]) == (special[i], gguf.TokenType.CONTROL), i
        elif i in by_id:
            assert (tokens[i], types[i]) == (by_id[i], gguf.TokenType.NORMAL), i
        else:
            assert (tokens[i], types[i]) == (f"[PAD{i}]", gguf.TokenType.UNUSED), i
    merges = [m if isinstance(m, str) else " ".join(m) for m in tokenizer_json["model"]["merges"]]
    assert field(reader, "tokenizer.ggml.merges") == merges


def rope(x: np.ndarray, positions: np.ndarray, theta: float, pairs: str) -> np.ndarray:
    """Float64 loop RoPE on `(positions, head_dim)`: `halves` rotates (i, i + d/2), `adjacent` (2i, 2i + 1)."""
    out = x.astype(np.float64).copy()
    d = x.shape[1]
    for p, pos in enumerate(positions):
        for i in range(d // 2):
            angle = pos * theta ** (-2 * i / d)
            a, b = (i, i + d // 2) if pairs == "halves" else (2 * i, 2 * i + 1)
            out[p, a] = x[p, a] * math.cos(angle) - x[p, b] * math.sin(angle)
            out[p, b] = x[p, a] * math.sin(angle) + x[p, b] * math.cos(angle)
    return out


@pytest.mark.parametrize("outtype", ["f32", "f16", "bf16", "q8_0"])
def test_tiny_round_trip(tiny_dir, tmp_path, outtype):
    """Every tensor and metadata key of the tiny model, for each output type."""
    reader = export(tiny_dir, tmp_path / "tiny.gguf", outtype)
    check_tensors(reader, tiny_dir, outtype)
    tokenizer_json = json.loads((tiny_dir / "tokenizer.json").read_text())
    template = json.loads((tiny_dir / "tokenizer_config.json").read_text()).get("chat_template")
    template = template or (tiny_dir / "chat_template.jinja").read_text()
    check_metadata(reader, tiny_dir, tokenizer_json, template)
    file_type = {"f32": 0, "f16": 1, "bf16": 32, "q8_0": 7}[outtype]  # llama.cpp's LLAMA_FTYPE values
    assert field(reader, "general.file_type") == file_type


def test_demo_round_trip(tmp_path):
    """The shipped demo model: every tensor and key (f32)."""
    reader = export(DEMO, tmp_path / "demo.gguf")
    check_tensors(reader, DEMO, "f32")
    tokenizer_json = json.loads((DEMO / "tokenizer.json").read_text())
    check_metadata(reader, DEMO, tokenizer_json, (DEMO / "chat_template.jinja").read_text())


def test_permuted_rows_give_the_same_attention_scores(tiny_dir, tmp_path):
    """Rotate-half RoPE on the checkpoint's q/k rows and adjacent-pairs RoPE on the exported rows give the same
    q.k scores for every head pair (GQA: query head h reads key head h // group)."""
    reader = export(tiny_dir, tmp_path / "tiny.gguf")
    config = json.loads((tiny_dir / "config.json").read_text())
    state = load_file(tiny_dir / "model.safetensors")
    exported = {t.name: read_values(t) for t in reader.tensors}
    d, theta = config["head_dim"], config["rope_parameters"]["rope_theta"]
    group = config["num_attention_heads"] // config["num_key_value_heads"]
    x = np.random.default_rng(0).standard_normal((5, config["hidden_size"]))
    positions = np.array([0, 1, 7, 30, 200])
    for name, pairs, weights in (
        ("ours", "halves", [state[f"model.layers.1.self_attn.{p}_proj.weight"].double().numpy() for p in "qk"]),
        ("gguf", "adjacent", [exported[f"blk.1.attn_{p}.weight"].astype(np.float64) for p in "qk"]),
    ):
        q, k = (x @ w.T for w in weights)
        scores = np.stack(
            [
                rope(q[:, h * d : (h + 1) * d], positions, theta, pairs)
                @ rope(k[:, (h // group) * d : (h // group + 1) * d], positions, theta, pairs).T
                for h in range(config["num_attention_heads"])
            ]
        )
        if name == "ours":
            reference = scores
    np.testing.assert_allclose(scores, reference, rtol=1e-5, atol=1e-6)


def test_plain_byte_level_tokenizer_exports_without_warning(tmp_path):
    """No normalizer, GPT-2 pre-tokenizer: `gpt-2`, and no warning (the Prepend warning is the demo's only)."""
    folder = save_tiny(tmp_path / "plain", tokenizer=plain_byte_level_tokenizer())
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        export_gguf(folder, tmp_path / "plain.gguf")
    reader = gguf.GGUFReader(tmp_path / "plain.gguf")
    assert field(reader, "tokenizer.ggml.pre") == "gpt-2"
    check_vocabulary(reader, TINY_VOCAB, json.loads((folder / "tokenizer.json").read_text()))


def test_prepend_normalizer_warns_naming_it(tiny_dir, tmp_path):
    with pytest.warns(UserWarning, match=r"`normalizer` Prepend"):
        export_gguf(tiny_dir, tmp_path / "tiny.gguf")


def edited_copy(source: Path, folder: Path, config=None, tokenizer=None, state=None) -> Path:
    """A copy of `source` with edits: `config(dict)`, `tokenizer(dict)` on tokenizer.json, `state(dict)`."""
    shutil.copytree(source, folder)
    for name, edit in (("config.json", config), ("tokenizer.json", tokenizer)):
        if edit is not None:
            data = json.loads((folder / name).read_text())
            edit(data)
            (folder / name).write_text(json.dumps(data))
    if state is not None:
        tensors = load_file(folder / "model.safetensors")
        state(tensors)
        save_file(tensors, folder / "model.safetensors", metadata={"format": "pt"})
    return folder


def untie(state):
    state["lm_head.weight"] = state["model.embed_tokens.weight"] + 0.5


def set_key(key, value):
    def edit(data):
        data[key] = value

    return edit


def set_model_key(key, value):
    def edit(data):
        data["model"][key] = value

    return edit


def digit_merge(data):
    data["model"]["merges"].append(["1", "2"])
    data["model"]["vocab"]["12"] = 289


@pytest.mark.parametrize(
    ("edits", "message"),
    [
        (dict(state=untie), r"`lm_head.weight` differs from `model.embed_tokens.weight`"),
        (
            dict(config=set_key("rope_scaling", {"rope_type": "linear", "factor": 2.0})),
            r"`rope_parameters.rope_type` 'linear': the `llada` loader reads no RoPE scaling",
        ),
        (dict(config=set_key("eos_token_id", [2, 3])), r"`eos_token_id` \[2, 3\]"),
        (dict(tokenizer=set_model_key("byte_fallback", True)), r"`model.byte_fallback`"),
        (dict(tokenizer=set_key("normalizer", {"type": "Lowercase"})), r"`normalizer`"),
        (dict(tokenizer=set_key("pre_tokenizer", {"type": "Whitespace"})), r"`pre_tokenizer`"),
        (dict(tokenizer=digit_merge), r"`pre_tokenizer` splits digits but merges \[\('1', '2'\)\]"),
    ],
    ids=["untied-head", "rope-scaling", "two-eos", "byte-fallback", "normalizer", "pre-tokenizer", "digit-merge"],
)
def test_what_gguf_cannot_carry_is_named(tiny_dir, tmp_path, edits, message):
    folder = edited_copy(tiny_dir, tmp_path / "bad", **edits)
    with pytest.raises(ValueError, match=message):
        export(folder, tmp_path / "bad.gguf")
    assert not (tmp_path / "bad.gguf").exists()  # a refused export leaves no partial file


def test_word_level_tokenizer_is_named(tmp_path):
    folder = save_tiny(tmp_path / "words", tokenizer=make_tiny_tokenizer(chat_template=True))
    with pytest.raises(ValueError, match=r"`model.type` 'WordLevel'"):
        export(folder, tmp_path / "words.gguf")


def test_bad_outtype_and_existing_output_are_named(tiny_dir, tmp_path):
    with pytest.raises(ValueError, match=r"`outtype` 'q4_0' is not one of"):
        export_gguf(tiny_dir, tmp_path / "x.gguf", "q4_0")
    existing = tmp_path / "taken.gguf"
    existing.write_bytes(b"mine")
    with pytest.raises(ValueError, match=r"exists; remove it"):
        export_gguf(tiny_dir, existing)
    assert existing.read_bytes() == b"mine"


def test_cli_writes_the_file_and_reports_errors(tiny_dir, tmp_path, capsys):
    out = tmp_path / "cli.gguf"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert main([str(tiny_dir), str(out), "--outtype", "q8_0"]) == out
    assert "wrote" in capsys.readouterr().out
    assert gguf.GGUFReader(out).fields["general.file_type"].contents() == 7
    with pytest.raises(SystemExit, match=r"error: OUT .* exists"):
        main([str(tiny_dir), str(out)])
