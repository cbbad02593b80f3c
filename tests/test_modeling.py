"""Model core: parity with transformers' Llama, bidirectionality, masks, packing, save/load, errors."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from tiny import TINY, llama_twin, make_model
from transformers import Trainer, TrainingArguments
from transformers.utils import is_flash_attn_2_available

from illada.configuration_illada import ILLaDAConfig
from illada.modeling_illada import ILLaDAForCausalLM, ILLaDAModel

REPO = Path(__file__).resolve().parents[1]
BACKENDS = ["eager", "sdpa"]


def random_ids(batch: int, length: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(6, TINY["vocab_size"], (batch, length), generator=g)


@pytest.mark.parametrize("attn", BACKENDS)
def test_logits_match_llama_with_full_bidirectional_mask(attn):
    model = make_model(seed=1, attn_implementation=attn)
    llama = llama_twin(model, attn)
    ids = random_ids(3, 11)
    no_mask = torch.zeros(3, 1, 11, 11)  # additive 4-D mask: every token sees every token
    with torch.no_grad():
        expected = llama(ids, attention_mask=no_mask).logits
        got = model(ids).logits
    assert llama.lm_head.weight.data_ptr() == llama.model.embed_tokens.weight.data_ptr()
    assert (got - expected).abs().max().item() <= 1e-5


def test_llama_causal_twin_differs():
    """The parity test can fail: the same weights with Llama's causal mask give other logits."""
    model = make_model(seed=1)
    llama = llama_twin(model, "sdpa")
    for layer in llama.model.layers:
        layer.self_attn.is_causal = True
    ids = random_ids(1, 9)
    with torch.no_grad():
        assert (llama(ids).logits - model(ids).logits).abs().max() > 1e-3


@pytest.mark.parametrize("attn", BACKENDS)
@pytest.mark.parametrize("with_mask", [False, True])
def test_later_token_changes_earlier_logits(attn, with_mask):
    model = make_model(attn_implementation=attn)
    ids = random_ids(1, 9)
    changed = ids.clone()
    changed[0, -1] = (ids[0, -1] + 1 - 6) % (TINY["vocab_size"] - 6) + 6
    kwargs = {"attention_mask": torch.ones_like(ids)} if with_mask else {}
    if with_mask:
        kwargs["attention_mask"][0, 3] = 0  # a real mask reaches the kernel
    with torch.no_grad():
        a, b = model(ids, **kwargs).logits, model(changed, **kwargs).logits
    assert (a[0, 0] - b[0, 0]).abs().max() > 1e-4


def test_eager_matches_sdpa_with_padding():
    eager, sdpa = make_model(attn_implementation="eager"), make_model(attn_implementation="sdpa")
    ids = random_ids(2, 10)
    mask = torch.ones_like(ids)
    mask[0, :3] = 0
    mask[1, 7:] = 0
    with torch.no_grad():
        a, b = eager(ids, attention_mask=mask).logits, sdpa(ids, attention_mask=mask).logits
    assert (a - b)[mask.bool()].abs().max() <= 1e-5


@pytest.mark.parametrize("attn", BACKENDS)
@pytest.mark.parametrize("side", ["left", "right"])
def test_padding_invariance(attn, side):
    model = make_model(attn_implementation=attn)
    real = random_ids(1, 7, seed=3)
    pad = torch.full((1, 4), TINY["pad_token_id"])
    ids = torch.cat([pad, real] if side == "left" else [real, pad], dim=1)
    mask = (torch.arange(11) >= 4) if side == "left" else (torch.arange(11) < 7)
    mask = mask[None].long()
    position_ids = (mask.cumsum(-1) - 1).clamp(min=0)
    with torch.no_grad():
        alone = model(real).logits[0]
        padded = model(ids, attention_mask=mask, position_ids=position_ids).logits[0]
    assert (padded[mask[0].bool()] - alone).abs().max() <= 1e-5


@pytest.mark.parametrize("attn", BACKENDS)
def test_packed_documents_attend_only_within_themselves(attn):
    model = make_model(attn_implementation=attn)
    doc_a, doc_b = random_ids(1, 5, seed=4), random_ids(1, 8, seed=5)
    packed = torch.cat([doc_a, doc_b], dim=1)
    position_ids = torch.cat([torch.arange(5), torch.arange(8)])[None]
    with torch.no_grad():
        got = model(packed, position_ids=position_ids).logits[0]
        alone = torch.cat([model(doc_a).logits[0], model(doc_b).logits[0]])
        unpacked = model(packed).logits[0]
    assert (got - alone).abs().max() <= 1e-5
    assert (unpacked - alone).abs().max() > 1e-4  # without the restart the documents do mix


@pytest.mark.parametrize("attn", BACKENDS)
def test_4d_bool_and_additive_masks_equal_2d_padding(attn):
    model = make_model(attn_implementation=attn)
    ids = random_ids(2, 8)
    mask2d = torch.ones_like(ids)
    mask2d[1, 5:] = 0
    as_bool = mask2d.bool()[:, None, None, :].expand(2, 1, 8, 8)
    additive = torch.zeros(2, 1, 8, 8).masked_fill(~as_bool, torch.finfo(torch.float32).min)
    with torch.no_grad():
        ref = model(ids, attention_mask=mask2d).logits
        for mask in (as_bool, additive, as_bool[:, 0]):
            assert (model(ids, attention_mask=mask).logits - ref).abs().max() <= 1e-5


def test_all_padding_row_gives_finite_logits():
    model = make_model()
    ids = random_ids(2, 6)
    mask = torch.ones_like(ids)
    mask[1] = 0
    with torch.no_grad():
        assert torch.isfinite(model(ids, attention_mask=mask).logits).all()


def test_logits_to_keep_variants(tiny_model):
    ids = random_ids(2, 9)
    with torch.no_grad():
        full = tiny_model(ids).logits
        assert torch.allclose(tiny_model(ids, logits_to_keep=3).logits, full[:, -3:], atol=1e-6)
        index = torch.tensor([0, 4])
        assert torch.allclose(tiny_model(ids, logits_to_keep=index).logits, full[:, index], atol=1e-6)
        select = torch.zeros(2, 9, dtype=torch.bool)
        select[0, 2], select[1, 5], select[1, 7] = True, True, True
        assert torch.allclose(tiny_model(ids, logits_to_keep=select).logits, full[select], atol=1e-6)


@pytest.mark.parametrize(
    "keep, error",
    [
        (-1, ValueError),  # transformers' slice would keep positions 1.. (`slice(1, None)`)
        (1.5, TypeError),
        (True, TypeError),
        (torch.tensor([0.0, 1.0]), TypeError),
        (torch.tensor([12]), ValueError),  # past the 9 positions
        (torch.tensor([-1]), ValueError),
        (torch.ones(2, 10, dtype=torch.bool), ValueError),
        (torch.tensor(3), ValueError),
    ],
)
def test_logits_to_keep_out_of_its_domain_is_named(tiny_model, keep, error):
    """Fuzz finding M1: before, -1 silently kept positions 1..8 and the others raised raw torch errors."""
    with pytest.raises(error, match="`logits_to_keep`"):
        tiny_model(random_ids(2, 9), logits_to_keep=keep)


def test_logits_to_keep_numpy_int_and_overlong_int(tiny_model):
    """A numpy integer keeps the last n positions like an int; n past the sequence keeps them all."""
    import numpy as np

    ids = random_ids(2, 9)
    with torch.no_grad():
        full = tiny_model(ids).logits
        assert torch.allclose(tiny_model(ids, logits_to_keep=np.int64(2)).logits, full[:, -2:], atol=1e-6)
        assert torch.allclose(tiny_model(ids, logits_to_keep=20).logits, full, atol=1e-6)


def test_labels_are_rejected_not_shifted(tiny_model):
    ids = random_ids(1, 5)
    with pytest.raises(ValueError, match="DiffusionSFTTrainer"):
        tiny_model(ids, labels=ids)


def test_output_hidden_states(tiny_model):
    out = tiny_model(random_ids(1, 5), output_hidden_states=True)
    assert len(out.hidden_states) == TINY["num_hidden_layers"] + 1


def test_inputs_embeds_equal_input_ids(tiny_model):
    ids = random_ids(2, 6)
    with torch.no_grad():
        embeds = tiny_model.model.embed_tokens(ids)
        assert torch.allclose(tiny_model(inputs_embeds=embeds).logits, tiny_model(ids).logits, atol=1e-6)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({}, "exactly one of `input_ids` and `inputs_embeds`"),
        ({"input_ids": random_ids(1, 4), "inputs_embeds": torch.zeros(1, 4, 32)}, "exactly one"),
        ({"input_ids": random_ids(1, 4)[0]}, "`input_ids` must be 2-D"),
        ({"inputs_embeds": torch.zeros(1, 4, 7)}, "`inputs_embeds` must have shape"),
        ({"input_ids": random_ids(1, 4), "attention_mask": torch.ones(1, 5)}, "2-D `attention_mask`"),
        ({"input_ids": random_ids(2, 4), "attention_mask": torch.ones(2, 1, 4, 3)}, "`attention_mask` must be"),
        ({"input_ids": random_ids(1, 4), "position_ids": torch.arange(5)[None]}, "`position_ids` must have shape"),
        ({"input_ids": random_ids(2, 4), "position_ids": torch.zeros(3, 4, dtype=torch.long)}, "`position_ids`"),
    ],
)
def test_malformed_inputs_raise(tiny_model, kwargs, match):
    with pytest.raises(ValueError, match=match):
        tiny_model(**kwargs)


def test_float_input_ids_raise_type_error(tiny_model):
    with pytest.raises(TypeError, match="integer"):
        tiny_model(torch.zeros(1, 4))


def test_gradient_checkpointing_gives_same_gradients():
    ids = random_ids(2, 7)
    grads = []
    for checkpointing in (False, True):
        model = make_model(seed=2).train()
        if checkpointing:
            model.activation_checkpointing_enable()
            assert model.is_activation_checkpointing
        model(ids).logits.pow(2).mean().backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters()})
    assert grads[0].keys() == grads[1].keys()
    for name in grads[0]:
        assert torch.allclose(grads[0][name], grads[1][name], atol=1e-6), name


def test_trainer_with_gradient_checkpointing_updates_weights(tmp_path):
    class SquareLossTrainer(Trainer):
        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            return model(inputs["input_ids"]).logits.pow(2).mean()

    model = make_model().train()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    data = [{"input_ids": ids} for ids in random_ids(4, 6)]
    args = TrainingArguments(
        output_dir=str(tmp_path),
        max_steps=2,
        per_device_train_batch_size=2,
        activation_checkpointing=True,
        use_cpu=True,
        report_to=[],
        save_strategy="no",
        learning_rate=1e-2,
        remove_unused_columns=False,
    )
    SquareLossTrainer(model=model, args=args, train_dataset=data).train()
    assert model.is_activation_checkpointing
    assert all(not torch.equal(before[n], p) for n, p in model.named_parameters())


def test_parameter_count_of_8b_config():
    with torch.device("meta"):
        model = ILLaDAForCausalLM(ILLaDAConfig())
    n = sum(p.numel() for p in model.parameters())  # tied head counted once
    c = model.config
    attn = c.hidden_size * c.head_dim * (2 * c.num_attention_heads + 2 * c.num_key_value_heads)
    per_layer = attn + 3 * c.hidden_size * c.intermediate_size + 2 * c.hidden_size
    assert n == c.vocab_size * c.hidden_size + c.num_hidden_layers * per_layer + c.hidden_size
    assert round(n / 1e9, 3) == 7.615


def test_rotary_buffer_recomputed_after_reload(tmp_path, tiny_model):
    tiny_model.save_pretrained(tmp_path)
    reloaded = ILLaDAForCausalLM.from_pretrained(tmp_path)
    head_dim = TINY["hidden_size"] // TINY["num_attention_heads"]
    expected = 1.0 / (TINY["rope_theta"] ** (torch.arange(0, head_dim, 2).double() / head_dim))
    assert torch.allclose(reloaded.model.rotary_emb.inv_freq.double(), expected)
    with torch.no_grad():
        ids = random_ids(1, 6)
        assert torch.equal(reloaded.eval()(ids).logits, tiny_model(ids).logits)


FRESH_PROCESS_CHECK = """
import json, sys, torch
from transformers import AutoConfig, AutoModel, AutoModelForCausalLM
folder, ref = sys.argv[1], torch.load(sys.argv[2])
out = {"config": type(AutoConfig.from_pretrained(folder, trust_remote_code=True)).__name__}
for auto in (AutoModel, AutoModelForCausalLM):
    model = auto.from_pretrained(folder, trust_remote_code=True).eval()
    with torch.no_grad():
        out[auto.__name__] = (model(ref["ids"]).logits - ref["logits"]).abs().max().item()
    out[auto.__name__ + "_tied"] = model.lm_head.weight is model.model.embed_tokens.weight
print(json.dumps(out))
"""


def test_save_and_reload_in_fresh_offline_process(tmp_path, tiny_model):
    folder = tmp_path / "saved"
    tiny_model.save_pretrained(folder)
    saved = {p.name for p in folder.iterdir()}
    assert {"configuration_illada.py", "modeling_illada.py", "config.json", "model.safetensors"} <= saved
    auto_map = json.loads((folder / "config.json").read_text())["auto_map"]
    assert set(auto_map) == {"AutoConfig", "AutoModel", "AutoModelForCausalLM"}
    ids = random_ids(2, 7)
    with torch.no_grad():
        torch.save({"ids": ids, "logits": tiny_model(ids).logits}, tmp_path / "ref.pt")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": ""}
    result = subprocess.run(
        [sys.executable, "-c", FRESH_PROCESS_CHECK, str(folder), str(tmp_path / "ref.pt")],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    out = json.loads(result.stdout.strip().splitlines()[-1])
    assert out == {
        "config": "ILLaDAConfig",
        "AutoModel": 0.0,
        "AutoModelForCausalLM": 0.0,
        "AutoModel_tied": True,
        "AutoModelForCausalLM_tied": True,
    }


def test_root_config_json_is_the_8b_architecture():
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(REPO, trust_remote_code=True)
    assert type(config).__name__ == "ILLaDAConfig"
    assert (
        config.num_hidden_layers,
        config.hidden_size,
        config.num_attention_heads,
        config.num_key_value_heads,
        config.intermediate_size,
        config.vocab_size,
    ) == (32, 4096, 32, 8, 14336, 155136)
    assert config.mask_token_id == 5 and config.eos_token_id == 2 and config.tie_word_embeddings
    assert config.rope_parameters == {"rope_type": "default", "rope_theta": 500000.0}


def test_backbone_loads_from_causal_lm_checkpoint(tmp_path, tiny_model):
    tiny_model.save_pretrained(tmp_path)
    backbone = ILLaDAModel.from_pretrained(tmp_path).eval()
    ids = random_ids(1, 5)
    with torch.no_grad():
        assert torch.allclose(backbone(ids).last_hidden_state, tiny_model.model(ids).last_hidden_state)


@pytest.mark.gpu
@pytest.mark.skipif(
    not (torch.cuda.is_available() and is_flash_attn_2_available()), reason="needs CUDA and the flash-attn package"
)
def test_flash_varlen_packed_matches_sdpa_bf16():
    sdpa = make_model(attn_implementation="sdpa").to("cuda", torch.bfloat16)
    flash = make_model(attn_implementation="flash_attention_2").to("cuda", torch.bfloat16)
    lengths = [5, 9, 3]
    ids = random_ids(1, sum(lengths)).cuda()
    position_ids = torch.cat([torch.arange(n) for n in lengths])[None].cuda()
    with torch.no_grad():
        a = sdpa(ids, position_ids=position_ids).logits.float()
        b = flash(ids, position_ids=position_ids).logits.float()
    assert (a - b).abs().max().item() < 5e-2
