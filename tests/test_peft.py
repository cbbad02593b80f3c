"""PEFT: LoRA with `task_type="CAUSAL_LM"` or none, trained with a masked-diffusion loss, saved, and reloaded through
`PeftModel` / `AutoPeftModelForCausalLM` (merged or not) in a fresh offline process to the same outputs."""

import json
import os
import subprocess
import sys

import pytest
import torch
from peft import LoraConfig, PeftModel, PeftModelForCausalLM, get_peft_model
from tiny import SHARP, TINY, left_pad, make_model, random_prompts

from illada.modeling_illada import ILLaDAForCausalLM

pytestmark = pytest.mark.usefixtures("one_thread")

TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
GENERATE = dict(max_new_tokens=8, block_length=4)
# Merging rounds W + BA once in float32: logits of size ~2 move by up to a few 1e-5.
MERGED_ATOL = 1e-4


@pytest.fixture(scope="module")
def base_folder(tmp_path_factory):
    """A sharp tiny model saved as a Hub folder (code files included), so adapters record a loadable base path."""
    folder = tmp_path_factory.mktemp("base")
    make_model(seed=3, **SHARP).save_pretrained(folder)
    return folder


def lora_config(task_type: str | None) -> LoraConfig:
    # init_lora_weights=False: random A and B. With PEFT's default B = 0, A gets no gradient in the first step.
    return LoraConfig(task_type=task_type, r=4, lora_alpha=8, target_modules=TARGETS, init_lora_weights=False)


def masked_diffusion_loss(model, ids: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """The masked-diffusion loss written out here (independent of train_sft.py): t ~ U[eps, 1] per row, each token
    masked with probability t, loss = sum over masked tokens of CE / t, divided by batch * length."""
    t = 1e-3 + (1 - 1e-3) * torch.rand(ids.shape[0], 1, generator=generator)
    masked = torch.rand(ids.shape, generator=generator) < t
    masked[:, 0] = True  # at least one masked token per row
    noisy = ids.masked_fill(masked, TINY["mask_token_id"])
    logits = model(input_ids=noisy).logits
    ce = torch.nn.functional.cross_entropy(logits[masked], ids[masked], reduction="none")
    return (ce / t.expand_as(ids)[masked]).sum() / ids.numel()


def reference_outputs(model, ids: torch.Tensor, mask: torch.Tensor) -> dict:
    model.eval()
    with torch.no_grad():
        logits = model(input_ids=ids, attention_mask=mask).logits
    tokens = model.generate(ids, attention_mask=mask, **GENERATE)
    return {"logits": logits, "tokens": tokens}


FRESH_PROCESS = """
import json, sys, torch
torch.set_num_threads(1)  # as the parent test: same kernels, same rounding
from peft import AutoPeftModelForCausalLM, PeftModel
from transformers import AutoModelForCausalLM
base_folder, settings, cases = sys.argv[1], json.loads(sys.argv[2]), sys.argv[3:]

def compare(model, ref):
    model.eval()
    with torch.no_grad():
        logits = model(input_ids=ref["ids"], attention_mask=ref["mask"]).logits
    tokens = model.generate(ref["ids"], attention_mask=ref["mask"], **settings)
    return {"logits": (logits - ref["logits"]).abs().max().item(), "tokens": torch.equal(tokens, ref["tokens"])}

out = {}
for adapters in cases:
    ref = torch.load(adapters + "/ref.pt")
    auto = AutoPeftModelForCausalLM.from_pretrained(adapters, trust_remote_code=True)
    base = AutoModelForCausalLM.from_pretrained(base_folder, trust_remote_code=True)
    peft = PeftModel.from_pretrained(base, adapters)
    out[adapters] = {"auto_class": type(auto).__name__, "auto": compare(auto, ref), "peft": compare(peft, ref),
                     "auto_merged": compare(auto.merge_and_unload(), ref),
                     "peft_merged": compare(peft.merge_and_unload(), ref)}
print(json.dumps(out))
"""


def save_with_reference(peft_model, folder) -> None:
    """Saves the adapters, and next to them the model's logits and generated tokens on a left-padded batch."""
    ids, mask = left_pad(random_prompts([5, 3], seed=2))
    ref = reference_outputs(peft_model, ids, mask)
    with peft_model.disable_adapter():  # the adapters matter: without them the model answers otherwise
        assert (peft_model(input_ids=ids, attention_mask=mask).logits - ref["logits"]).abs().max() > 1e-3
    peft_model.save_pretrained(folder)
    torch.save({"ids": ids, "mask": mask, **ref}, folder / "ref.pt")


def reload_in_fresh_process(base_folder, cases: list) -> dict:
    """Loads each adapter folder with AutoPeftModelForCausalLM and with PeftModel over the base (each also merged) in
    a fresh offline process where the repo root is not importable; returns the differences from the reference."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": ""}
    result = subprocess.run(
        [sys.executable, "-c", FRESH_PROCESS, str(base_folder), json.dumps(GENERATE), *map(str, cases)],
        cwd=base_folder.parent,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_lora_trains_only_adapters_and_reloads_in_fresh_process(base_folder, tmp_path):
    model = ILLaDAForCausalLM.from_pretrained(base_folder)
    peft_model = get_peft_model(model, lora_config("CAUSAL_LM"))
    assert isinstance(peft_model, PeftModelForCausalLM)
    trainable = {n for n, p in peft_model.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n for n in trainable)
    assert len(trainable) == 2 * len(TARGETS) * TINY["num_hidden_layers"]  # A and B of every target
    before = {n: p.detach().clone() for n, p in peft_model.named_parameters()}

    peft_model.train()
    optimizer = torch.optim.AdamW([p for p in peft_model.parameters() if p.requires_grad], lr=1e-2, weight_decay=0)
    ids = torch.tensor(random_prompts([12] * 4, seed=1))
    masked_diffusion_loss(peft_model, ids, torch.Generator().manual_seed(0)).backward()
    optimizer.step()
    changed = {n for n, p in peft_model.named_parameters() if not torch.equal(before[n], p)}
    assert changed == trainable  # every adapter tensor moved, no base tensor did
    save_with_reference(peft_model, tmp_path / "causal_lm")

    # Adapters saved without a task type: PEFT records the base class's module, which a fresh process cannot
    # import for remote code; the fix in docs/training.md is to set "task_type": "CAUSAL_LM" in adapter_config.json.
    untyped = get_peft_model(ILLaDAForCausalLM.from_pretrained(base_folder), lora_config(None))
    save_with_reference(untyped, tmp_path / "no_task_type")
    config_file = tmp_path / "no_task_type" / "adapter_config.json"
    config_file.write_text(json.dumps({**json.loads(config_file.read_text()), "task_type": "CAUSAL_LM"}))

    out = reload_in_fresh_process(base_folder, [tmp_path / "causal_lm", tmp_path / "no_task_type"])
    assert len(out) == 2
    for case, diffs in out.items():
        assert diffs.pop("auto_class") == "PeftModelForCausalLM"
        for name, diff in diffs.items():
            assert diff["tokens"], (case, name)
            assert diff["logits"] <= (MERGED_ATOL if "merged" in name else 0.0), (case, name, diff)


@pytest.mark.parametrize("task_type", ["CAUSAL_LM", None])
def test_peft_generate_reaches_diffusion_generate(base_folder, task_type):
    """`peft_model.generate` passes prompts, mask and diffusion settings through to our `generate` and runs the
    adapted forward: it equals the merged model's generate, and differs from the base model's."""
    peft_model = get_peft_model(ILLaDAForCausalLM.from_pretrained(base_folder), lora_config(task_type)).eval()
    assert isinstance(peft_model, PeftModelForCausalLM if task_type else PeftModel)
    ids, mask = left_pad(random_prompts([6, 4], seed=5))
    settings = dict(GENERATE, steps=2, return_dict_in_generate=True)
    got = peft_model.generate(ids, attention_mask=mask, **settings)
    by_keyword = peft_model.generate(input_ids=ids, attention_mask=mask, **settings)
    with peft_model.disable_adapter():
        base = peft_model.generate(ids, attention_mask=mask, **settings)
    merged = peft_model.merge_and_unload().generate(ids, attention_mask=mask, **settings)
    assert torch.equal(got.sequences, merged.sequences) and torch.equal(by_keyword.sequences, got.sequences)
    assert not torch.equal(got.sequences, base.sequences)
    assert got.sequences.shape == (2, ids.shape[1] + GENERATE["max_new_tokens"])


def test_adapters_without_task_type_reload_with_peft_model(base_folder, tmp_path):
    peft_model = get_peft_model(ILLaDAForCausalLM.from_pretrained(base_folder), lora_config(None)).eval()
    ids, mask = left_pad(random_prompts([5, 7], seed=4))
    ref = reference_outputs(peft_model, ids, mask)
    peft_model.save_pretrained(tmp_path)
    reloaded = PeftModel.from_pretrained(ILLaDAForCausalLM.from_pretrained(base_folder), tmp_path)
    got = reference_outputs(reloaded, ids, mask)
    assert torch.equal(got["logits"], ref["logits"]) and torch.equal(got["tokens"], ref["tokens"])


def test_merged_model_saves_and_reloads_strictly(base_folder, tmp_path):
    """`merge_and_unload()` gives a plain ILLaDAForCausalLM (tie intact) that saves and loads under strict loading."""
    peft_model = get_peft_model(ILLaDAForCausalLM.from_pretrained(base_folder), lora_config("CAUSAL_LM")).eval()
    ids, mask = left_pad(random_prompts([5, 7], seed=6))
    ref = reference_outputs(peft_model, ids, mask)
    merged = peft_model.merge_and_unload()
    assert type(merged) is ILLaDAForCausalLM and merged.lm_head.weight is merged.model.embed_tokens.weight
    in_memory = reference_outputs(merged, ids, mask)
    assert (in_memory["logits"] - ref["logits"]).abs().max() <= MERGED_ATOL
    assert torch.equal(in_memory["tokens"], ref["tokens"])
    merged.save_pretrained(tmp_path)
    reloaded = reference_outputs(ILLaDAForCausalLM.from_pretrained(tmp_path), ids, mask)
    assert torch.equal(reloaded["logits"], in_memory["logits"]) and torch.equal(reloaded["tokens"], ref["tokens"])


def test_transformers_peft_integration_loads_adapters(base_folder, tmp_path):
    """transformers' own PEFT routes: `model.load_adapter(folder)` and `AutoModelForCausalLM.from_pretrained` of an
    adapter folder (base found through `adapter_config.json`) give the adapted model's outputs."""
    from transformers import AutoModelForCausalLM

    peft_model = get_peft_model(ILLaDAForCausalLM.from_pretrained(base_folder), lora_config("CAUSAL_LM")).eval()
    ids, mask = left_pad(random_prompts([5, 7], seed=7))
    ref = reference_outputs(peft_model, ids, mask)
    peft_model.save_pretrained(tmp_path)
    with_adapter = ILLaDAForCausalLM.from_pretrained(base_folder)
    with_adapter.load_adapter(str(tmp_path))
    auto = AutoModelForCausalLM.from_pretrained(str(tmp_path), trust_remote_code=True)
    for model in (with_adapter, auto):
        got = reference_outputs(model, ids, mask)
        assert torch.equal(got["logits"], ref["logits"]) and torch.equal(got["tokens"], ref["tokens"])


def test_prompt_learning_is_refused_not_silently_ignored():
    """Prompt tuning adds virtual tokens through `prepare_inputs_for_generation`, which diffusion sampling never
    calls: `generate` would silently drop the adapter, so it raises. Prefix tuning needs `past_key_values`."""
    from peft import PrefixTuningConfig, PromptTuningConfig

    ids, mask = left_pad(random_prompts([6, 4], seed=5))
    prompt_tuned = get_peft_model(make_model(), PromptTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=3))
    assert prompt_tuned(input_ids=ids, attention_mask=mask).logits.shape[1] == ids.shape[1] + 3
    with pytest.raises(ValueError, match="`prepare_inputs_for_generation`.*use LoRA"):
        prompt_tuned.generate(input_ids=ids, attention_mask=mask, **GENERATE)
    prefix_tuned = get_peft_model(make_model(), PrefixTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=3))
    with pytest.raises(ValueError, match="`past_key_values` is not supported"):
        prefix_tuned(input_ids=ids, attention_mask=mask)
