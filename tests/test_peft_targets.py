"""`LoraConfig(task_type="CAUSAL_LM")` without `target_modules`, as PEFT's quick-start writes it, on the shipped demo
model loaded by `AutoModelForCausalLM(..., trust_remote_code=True)` in a fresh process (issue 29).

PEFT 0.21.2 fills missing targets only from its table keyed by `config.model_type`
(`TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING`), which has no "illada" entry, and it consults no model-side
hook, so plain `get_peft_model` cannot complete that config (a model's code must not edit PEFT's table). What works:
`target_modules="all-linear"` (PEFT's shorthand; checked here to pick exactly the seven projections of every layer),
and the diffusion trainer, which fills the targets in (`DiffusionSFTTrainer(..., peft_config=LoraConfig(...))`).
"""

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

FRESH_PROCESS = """
import json, sys
import torch
torch.set_num_threads(1)
from datasets import Dataset
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForCausalLM, AutoTokenizer
sys.path.insert(0, ".")
from illada.trainer import DiffusionSFTConfig, DiffusionSFTTrainer

def adapted(model):
    return sorted(name.split(".lora_A")[0] for name, _ in model.named_parameters() if "lora_A" in name)

result = {}
model = AutoModelForCausalLM.from_pretrained("illada-demo", trust_remote_code=True)
result["layers"] = model.config.num_hidden_layers
result["linear"] = sorted(n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear) and n != "lm_head")
try:
    get_peft_model(model, LoraConfig(task_type="CAUSAL_LM"))
    result["plain"] = "ok"
except ValueError as error:
    result["plain"] = str(error)

model = AutoModelForCausalLM.from_pretrained("illada-demo", trust_remote_code=True)
result["all_linear"] = adapted(get_peft_model(model, LoraConfig(task_type="CAUSAL_LM", target_modules="all-linear")))

model = AutoModelForCausalLM.from_pretrained("illada-demo", trust_remote_code=True)
tokenizer = AutoTokenizer.from_pretrained("illada-demo")
rows = [{"prompt": f"What is {i} + 1?", "completion": f" {i + 1}"} for i in range(8)]
args = DiffusionSFTConfig(sys.argv[1], max_steps=2, per_device_train_batch_size=2, max_length=64, use_cpu=True,
                          report_to="none", save_strategy="no", disable_tqdm=True, learning_rate=1e-3, min_lr=1e-4)
trainer = DiffusionSFTTrainer(model, args=args, train_dataset=Dataset.from_list(rows), processing_class=tokenizer,
                              peft_config=LoraConfig(task_type="CAUSAL_LM"))
before = {n: p.detach().clone() for n, p in trainer.model.named_parameters() if p.requires_grad}
trainer.train()
result["trainer"] = adapted(trainer.model)
result["trainable_moved"] = all(
    not torch.equal(p, before[n]) for n, p in trainer.model.named_parameters() if "lora_B" in n)
result["only_lora_trainable"] = all("lora_" in n for n in before)
print(json.dumps(result))
"""


def test_lora_without_target_modules_on_the_demo_model_in_a_fresh_process(tmp_path):
    result = subprocess.run(
        [sys.executable, "-c", FRESH_PROCESS, str(tmp_path / "out")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        env={"HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin", "TOKENIZERS_PARALLELISM": "false"},
    )
    assert result.returncode == 0, result.stderr[-4000:]
    found = json.loads(result.stdout.strip().splitlines()[-1])
    projections = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
    expected = sorted(
        f"model.layers.{i}.{'self_attn' if p[0] in 'qkvo' else 'mlp'}.{p}"
        for i in range(found["layers"])
        for p in projections
    )
    assert found["linear"] == expected  # the model's linear layers, lm_head aside, are exactly these
    # Plain PEFT cannot complete the config for model_type "illada" (its error; no model-side hook exists).
    assert "target_modules" in found["plain"]
    # "all-linear" and the diffusion trainer both give adapters on every projection of every layer.
    assert [name.removeprefix("base_model.model.") for name in found["all_linear"]] == expected
    assert [name.removeprefix("base_model.model.") for name in found["trainer"]] == expected
    assert found["only_lora_trainable"] and found["trainable_moved"]
