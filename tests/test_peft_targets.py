"""`LoraConfig(task_type="CAUSAL_LM")` without `target_modules`, as PEFT's quick-start writes it, on the shipped demo
model loaded by `AutoModelForCausalLM(..., trust_remote_code=True)` in a fresh process (issue 29).

PEFT 0.21.2 fills missing targets only from its public tables keyed by `config.model_type`
(`peft.utils.TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING` and one per method) and asks the model nothing;
`modeling_illada.register_peft_targets` enters "illada" there when the model code is imported with PEFT loaded, as
the quick-start's imports do. The expected adapters are derived here from the model's own linear layers, not from
the code under test: LoRA on every projection of every layer (what PEFT's "all-linear" picks too), IA3 on Llama's
entry. Loaded before PEFT is imported, plain `get_peft_model` keeps PEFT's own error, while transformers' integration
(`model.add_adapter`) and the diffusion trainer register the targets themselves.
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
from peft import IA3Config, LoraConfig, TaskType, get_peft_model
from transformers import AutoModelForCausalLM, AutoTokenizer
sys.path.insert(0, ".")
from illada.trainer import DiffusionSFTConfig, DiffusionSFTTrainer

def adapted(model):
    return sorted(name.split(".lora_A")[0] for name, _ in model.named_parameters() if "lora_A" in name)

result = {}
model = AutoModelForCausalLM.from_pretrained("illada-demo", trust_remote_code=True)
result["layers"] = model.config.num_hidden_layers
result["linear"] = sorted(n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear) and n != "lm_head")
# PEFT's quick-start, word for word but the model.
peft_config = LoraConfig(task_type=TaskType.CAUSAL_LM, inference_mode=False, r=8, lora_alpha=32, lora_dropout=0.1)
result["plain"] = adapted(get_peft_model(model, peft_config))

model = AutoModelForCausalLM.from_pretrained("illada-demo", trust_remote_code=True)
ia3 = get_peft_model(model, IA3Config(task_type=TaskType.CAUSAL_LM))
result["ia3"] = sorted(n.split(".ia3_l")[0] for n, _ in ia3.named_parameters() if "ia3_l" in n)

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


def run_fresh(code: str, *args: str) -> dict:
    """Runs `code` in a fresh offline Python process from the repository root; returns the JSON it prints last."""
    result = subprocess.run(
        [sys.executable, "-c", code, *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        env={"HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin", "TOKENIZERS_PARALLELISM": "false"},
    )
    assert result.returncode == 0, result.stderr[-4000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_lora_without_target_modules_on_the_demo_model_in_a_fresh_process(tmp_path):
    found = run_fresh(FRESH_PROCESS, str(tmp_path / "out"))
    projections = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
    expected = sorted(
        f"model.layers.{i}.{'self_attn' if p[0] in 'qkvo' else 'mlp'}.{p}"
        for i in range(found["layers"])
        for p in projections
    )
    assert found["linear"] == expected  # the model's linear layers, lm_head aside, are exactly these
    # PEFT's quick-start, "all-linear" and the diffusion trainer all give adapters on every projection of every layer.
    assert [name.removeprefix("base_model.model.") for name in found["plain"]] == expected
    # Other PEFT methods get their Llama entry: IA3 scales k_proj, v_proj and down_proj.
    ia3 = [n for n in expected if n.rsplit(".", 1)[-1] in ("k_proj", "v_proj", "down_proj")]
    assert [name.removeprefix("base_model.model.") for name in found["ia3"]] == ia3
    assert [name.removeprefix("base_model.model.") for name in found["all_linear"]] == expected
    assert [name.removeprefix("base_model.model.") for name in found["trainer"]] == expected
    assert found["only_lora_trainable"] and found["trainable_moved"]


PEFT_AFTER_THE_MODEL = """
import json
import torch
from transformers import AutoModelForCausalLM
model = AutoModelForCausalLM.from_pretrained("illada-demo", trust_remote_code=True)
from peft import LoraConfig, get_peft_model
result = {}
try:
    get_peft_model(model, LoraConfig(task_type="CAUSAL_LM"))
    result["plain"] = "ok"
except ValueError as error:
    result["plain"] = str(error)
model = AutoModelForCausalLM.from_pretrained("illada-demo", trust_remote_code=True)
model.add_adapter(LoraConfig())
adapted = {n.split(".lora_A")[0].rsplit(".", 1)[-1] for n, _ in model.named_parameters() if "lora_A" in n}
result["add_adapter"] = sorted(adapted)
print(json.dumps(result))
"""


def test_peft_imported_after_the_model():
    """With PEFT imported only after the model code, PEFT's tables have no "illada" entry when `get_peft_model` reads
    them: its own error asks for `target_modules` (docs/fine-tuning.md says to import PEFT first or name them), while
    transformers' `model.add_adapter` goes through the model, which registers the targets first."""
    found = run_fresh(PEFT_AFTER_THE_MODEL)
    assert "target_modules" in found["plain"]
    assert found["add_adapter"] == sorted(("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"))
