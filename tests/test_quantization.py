"""Quantised loading (bitsandbytes NF4 / int8, torchao weight-only int8) through `from_pretrained(...,
quantization_config=...)`, generation and scoring on the quantised model, and QLoRA with the diffusion trainer.

The backends are optional (requirements-quant.txt); each test skips, with the reason, where its package is missing.
The quantised model is checked against an independent computation: the unquantised model with every linear weight
replaced by the backend's dequantised weight must give the same logits (up to the backend's matmul precision).
"""

import importlib.util

import pytest
import torch
from tiny import SHARP, left_pad, make_model, random_prompts

from illada import quantization as quant
from illada.sft_cli import ModelArguments

pytestmark = pytest.mark.usefixtures("one_thread")

HAS = {package: importlib.util.find_spec(package) is not None for package in ("bitsandbytes", "torchao")}
# Relative (Frobenius) rounding error of a weight: ~0.1-0.2 for 4 bits on these tiny blocks, ~0.01 for 8 bits.
RELATIVE_ERROR = {"bnb-nf4": 0.25, "bnb-int8": 0.02, "torchao-int8": 0.02}
# bitsandbytes' CPU 4-bit inference kernel packs the weights in blocks (32 outputs, 64 inputs): on the tiny model's
# 32-wide layers it fails inside bitsandbytes (a reshape to [32, 0]), so these tests use a 64-wide model.
SHAPE = dict(SHARP, hidden_size=64, intermediate_size=128)


def methods():
    return [
        pytest.param(name, marks=pytest.mark.skipif(not HAS[package], reason=f"{package} is not installed"))
        for name, (package, _) in quant.QUANTIZATIONS.items()
    ]


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    path = tmp_path_factory.mktemp("tiny")
    make_model(seed=3, **SHAPE).save_pretrained(path)
    return path


def dequantised(layer: torch.nn.Module) -> torch.Tensor:
    """The float weight a quantised linear layer stands for, read from the backend's own storage."""
    weight = layer.weight
    kind = type(weight).__name__
    if kind == "Params4bit":
        import bitsandbytes.functional as bnb_functional

        return bnb_functional.dequantize_4bit(weight.data, weight.quant_state).float()
    if kind == "Int8Params":
        return weight.data.float() * layer.weight.SCB.float()[:, None] / 127
    if hasattr(weight, "dequantize"):  # torchao tensor subclasses
        return weight.dequantize().float()
    raise AssertionError(f"{type(layer).__name__} with a {kind} weight is not a quantised layer")


@pytest.mark.parametrize("method", methods())
def test_quantised_model_equals_the_model_with_dequantised_weights(folder, method):
    model = quant.load_quantized(folder, method)
    reference = make_model(seed=3, **SHAPE)
    linear = [name for name, m in reference.named_modules() if isinstance(m, torch.nn.Linear) and name != "lm_head"]
    state = reference.state_dict()
    for name in linear:
        weight = dequantised(model.get_submodule(name))
        # Each weight is a rounding of the original (NF4: 16 levels per block of 64; int8: 255 levels per row).
        original = state[f"{name}.weight"]
        assert weight.shape == original.shape
        assert (weight - original).norm() <= RELATIVE_ERROR[method] * original.norm()
        state[f"{name}.weight"] = weight
    reference.load_state_dict(state)
    ids, mask = left_pad(random_prompts([5, 8], seed=1))
    with torch.no_grad():
        expected = reference(input_ids=ids, attention_mask=mask).logits
        got = model(input_ids=ids, attention_mask=mask).logits
    if method.startswith("bnb"):
        # LLM.int8() also rounds the activations to int8 per row (in float16), and the CPU 4-bit kernel multiplies
        # in bfloat16 where the CPU has AVX512-BF16: close to the reference, not equal.
        assert (got.float() - expected).norm() <= 0.05 * expected.norm()
    else:
        torch.testing.assert_close(got.float(), expected, rtol=0, atol=1e-4)


@pytest.mark.parametrize("method", methods())
def test_generate_and_score_run_on_the_quantised_model(folder, method):
    model = quant.load_quantized(folder, method)
    ids, mask = left_pad(random_prompts([4, 6], seed=2))
    out = model.generate(ids, attention_mask=mask, max_new_tokens=8, block_length=4)
    new = out[:, ids.shape[1] :]
    assert new.shape == (2, 8) and not (new == model.config.mask_token_id).any()
    scored = model.score_choices_batch([[7, 8, 9]], [[[10, 2], [11, 12, 2]]], method="confidence")
    assert scored[0].scores.shape == (2,) and torch.isfinite(scored[0].scores).all()


@pytest.mark.skipif(not HAS["bitsandbytes"], reason="bitsandbytes is not installed")
def test_qlora_trains_with_the_diffusion_trainer(tmp_path, folder):
    from safetensors.torch import load_file
    from test_train_cli import ROWS, write_jsonl
    from tiny_tokenizer import make_tiny_tokenizer

    from illada import sft_cli

    make_tiny_tokenizer().save_pretrained(folder)
    data = write_jsonl(tmp_path / "train.jsonl", [ROWS["prompt_completion"](i) for i in range(16)])
    out = tmp_path / "out"
    sft_cli.main(
        ["--model_name_or_path", str(folder), "--train_files", str(data), "--output_dir", str(out), "--use_cpu",
         "--report_to", "none", "--max_steps", "2", "--per_device_train_batch_size", "2", "--learning_rate", "1e-2",
         "--min_lr", "1e-3", "--save_strategy", "no", "--disable_tqdm", "true", "--use_lora",
         "--quantization", "bnb-nf4", "--lora_r", "4"]
    )  # fmt: skip
    adapter = load_file(out / "adapter_model.safetensors")
    assert adapter and all("lora_" in name for name in adapter)
    assert any(name.endswith("lora_B.weight") and tensor.abs().sum() > 0 for name, tensor in adapter.items())


def test_quantization_argument_errors(monkeypatch):
    with pytest.raises(ValueError, match="use_lora=True"):
        ModelArguments(model_name_or_path="x", quantization="bnb-nf4")
    with pytest.raises(ValueError, match="quantization"):
        ModelArguments(model_name_or_path="x", quantization="gptq", use_lora=True)
    with pytest.raises(ValueError, match="merge"):
        ModelArguments(model_name_or_path="x", quantization="bnb-nf4", use_lora=True, merge_lora=True)
    monkeypatch.setattr(quant.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ImportError, match="pip install torchao==0.18.0"):
        quant.quantization_config("torchao-int8")
