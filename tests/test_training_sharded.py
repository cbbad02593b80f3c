"""Sharded training with the shipped accelerate configs (configs/accelerate/), run as their documented launch lines
on the tiny model with two CPU processes over gloo (docs/fine-tuning.md).

FSDP2: accelerate shards only on accelerators, so the launch goes through `tests/fsdp_cpu_launch.py`, which gives
accelerate's process state the FSDP plugin that the config file describes; torch's `fully_shard` then runs on CPU.
The sharded run must train exactly like one process with the same global batch (the comparison of
tests/test_training_ddp.py: 1 row per process and 2 accumulation steps against 4 rows in one micro-batch), its
checkpoints are sharded (`pytorch_model_fsdp_0/`), resume to the same weights, and consolidate into an ordinary
`save_pretrained` folder that `AutoModelForCausalLM.from_pretrained(..., trust_remote_code=True)` loads.

DeepSpeed (zero2.yaml, zero3.yaml, zero3_offload.yaml) runs on its CPU accelerator (`DS_ACCELERATOR=cpu`, gloo)
with `--use_cpu`, under the same comparison: the same losses and weights as one process, one copy of the tied LM
head in the final folder, checkpoints (`global_stepN/`) that consolidate exactly into the final model and resume to
the same weights, and VRPO with a ZeRO-3-partitioned reference. Its C++ ops (shared-memory communication; CPU Adam
for the offload config) compile at first use into torch's extension cache (docs/fine-tuning.md): the first launch
of a fresh machine takes about a minute longer. A build killed mid-way leaves a `lock` file there that every later
build would wait on forever: `launch` fails at once naming such a file instead.
"""

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from ddp_train_helper import WINDOW, logged_losses, sft_examples, train
from safetensors.torch import load_file
from tiny import make_model
from tiny_tokenizer import make_tiny_tokenizer
from vrpo_helper import make_trainer as make_vrpo_trainer
from vrpo_helper import preference_rows

from illada.consolidate import consolidate

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "configs" / "accelerate"
CPU_LAUNCHER = ROOT / "tests" / "fsdp_cpu_launch.py"
LAUNCH_TIMEOUT_S = 400

# The settings of tests/ddp_train_helper.py's trainer, as command-line flags (2 processes x 1 row x 2 accumulation).
SFT_FLAGS = [
    "--report_to", "none", "--max_steps", "4", "--per_device_train_batch_size", "1",
    "--gradient_accumulation_steps", "2", "--learning_rate", "1e-2", "--min_lr", "1e-3", "--warmup_steps", "1",
    "--completion_only_loss", "--packing_strategy", "bfd", "--max_length", str(WINDOW),
    "--pad_to_multiple_of", str(WINDOW), "--logging_steps", "1", "--save_steps", "2", "--disable_tqdm", "true",
    "--max_grad_norm", "0", "--seed", "3", "--use_cpu",
]  # fmt: skip


def launch(config: str, script: str, args: list[str], cpu_fsdp: bool = False) -> None:
    """`accelerate launch --config_file configs/accelerate/CONFIG SCRIPT ARGS` with two CPU processes, no mixed
    precision (bf16 is 6-30x slower on CPU); FSDP configs go through the CPU launcher (module docstring)."""
    command = [
        sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(CONFIGS / config),
        "--num_processes", "2", "--mixed_precision", "no", "--main_process_port", "0",
        *([str(CPU_LAUNCHER)] if cpu_fsdp else []), str(ROOT / script), *args,
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false", "DS_ACCELERATOR": "cpu"}
    stale = stale_extension_locks() if config.startswith("zero") else []
    assert not stale, (
        f"{[str(path) for path in stale]}: lock files of torch C++ extension builds older than {LAUNCH_TIMEOUT_S} s, "
        "left by a build that was killed. DeepSpeed compiles its CPU ops there and would wait on them forever: "
        "delete them (when no build is running) and run again."
    )
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=LAUNCH_TIMEOUT_S)
    assert result.returncode == 0, result.stderr[-6000:]


def stale_extension_locks() -> list[Path]:
    """The `lock` files in torch's C++ extension build folders (where DeepSpeed compiles its CPU ops at their first use)
    older than a launch may take. A build killed mid-way leaves its lock, and every later build of that op waits."""
    from torch.utils.cpp_extension import get_default_build_root

    root = Path(os.environ.get("TORCH_EXTENSIONS_DIR") or get_default_build_root())
    return [path for path in root.rglob("lock") if time.time() - path.stat().st_mtime > LAUNCH_TIMEOUT_S]


def write_inputs(folder: Path) -> list[str]:
    """The tiny model (seed 1, as the 1-process reference) and `sft_examples()` as jsonl; returns the data flags."""
    folder.mkdir(parents=True, exist_ok=True)
    make_model(seed=1).save_pretrained(folder / "init")
    make_tiny_tokenizer().save_pretrained(folder / "init")
    rows = "".join(json.dumps(row) + "\n" for row in sft_examples())
    (folder / "train.jsonl").write_text(rows)
    return ["--model_name_or_path", str(folder / "init"), "--train_files", str(folder / "train.jsonl")]


def run_losses(output_dir: Path) -> list[float]:
    state = json.loads((output_dir / "trainer_state.json").read_text())
    return [entry["loss"] for entry in state["log_history"] if "loss" in entry]


def assert_weights_close(weights: dict, reference: dict) -> None:
    assert set(weights) == set(reference) - {"lm_head.weight"}
    for name, tensor in weights.items():
        # Adam divides by the root of tiny second moments: float32 summation-order noise grows to ~1e-5 in 4 steps.
        torch.testing.assert_close(tensor, reference[name], rtol=1e-4, atol=1e-5)


@pytest.fixture(scope="module")
def one_process(tmp_path_factory):
    """The 1-process run with the same global batch (4 rows in one micro-batch)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        trainer = train(str(tmp_path_factory.mktemp("one")), 4, 1)
    finally:
        torch.set_num_threads(threads)
    return logged_losses(trainer), trainer.model.state_dict()


@pytest.fixture(scope="module")
def fsdp_run(tmp_path_factory):
    """`accelerate launch --config_file configs/accelerate/fsdp2.yaml train_sft.py ...`: 4 steps, sharded
    checkpoints at steps 2 and 4."""
    folder = tmp_path_factory.mktemp("fsdp")
    data = write_inputs(folder)
    launch("fsdp2.yaml", "train_sft.py", [*data, "--output_dir", str(folder / "out"), *SFT_FLAGS], cpu_fsdp=True)
    return folder, data


def test_fsdp2_trains_like_one_process_and_saves_a_loadable_model(fsdp_run, one_process):
    from transformers import AutoModelForCausalLM

    folder, _ = fsdp_run
    out = folder / "out"
    one_losses, one_weights = one_process
    assert run_losses(out) == pytest.approx(one_losses, rel=1e-5)
    assert_weights_close(load_file(out / "model.safetensors"), one_weights)
    # Checkpoints are sharded (torch distributed checkpoint), with the config the consolidation reads.
    checkpoint = out / "checkpoint-2"
    assert (checkpoint / "pytorch_model_fsdp_0").is_dir() and (checkpoint / "optimizer_0").is_dir()
    assert not (checkpoint / "model.safetensors").exists() and (checkpoint / "config.json").is_file()
    # The final folder is an ordinary one: this model's code (not torch's FSDP class), loadable by the Auto class.
    assert json.loads((out / "config.json").read_text())["auto_map"]["AutoModelForCausalLM"] == (
        "modeling_illada.ILLaDAForCausalLM"
    )
    model = AutoModelForCausalLM.from_pretrained(out, trust_remote_code=True)
    assert_weights_close({k: v for k, v in model.state_dict().items() if k != "lm_head.weight"}, one_weights)


def test_sharded_checkpoint_consolidates_into_a_save_pretrained_folder(fsdp_run, tmp_path):
    from transformers import AutoModelForCausalLM

    folder, _ = fsdp_run
    merged = consolidate(folder / "out" / "checkpoint-4", tmp_path / "merged")
    final = load_file(folder / "out" / "model.safetensors")
    consolidated = load_file(merged / "model.safetensors")
    assert set(consolidated) == set(final)
    for name, tensor in consolidated.items():
        assert torch.equal(tensor, final[name]), name
    model = AutoModelForCausalLM.from_pretrained(merged, trust_remote_code=True)
    reference = AutoModelForCausalLM.from_pretrained(folder / "out", trust_remote_code=True)
    ids = torch.tensor([[7, 8, 5, 9, 5, 10]])
    torch.testing.assert_close(model(ids).logits, reference(ids).logits, rtol=0, atol=0)
    assert (merged / "tokenizer.json").is_file() and (merged / "modeling_illada.py").is_file()


def test_consolidate_refuses_a_folder_without_shards_and_a_used_output(fsdp_run, tmp_path):
    folder, _ = fsdp_run
    with pytest.raises(ValueError, match="holds no sharded weights"):
        consolidate(folder / "init", tmp_path / "a")
    (tmp_path / "used").mkdir()
    (tmp_path / "used" / "keep.txt").write_text("mine")
    with pytest.raises(ValueError, match="not empty"):
        consolidate(folder / "out" / "checkpoint-4", tmp_path / "used")
    assert (tmp_path / "used" / "keep.txt").read_text() == "mine"


@pytest.mark.parametrize("damage", ["metadata_deleted", "shard_cut"])
def test_consolidate_names_a_damaged_sharded_checkpoint(fsdp_run, tmp_path, damage):
    folder, _ = fsdp_run
    copy = tmp_path / "checkpoint-4"
    shutil.copytree(folder / "out" / "checkpoint-4", copy)
    shards = copy / "pytorch_model_fsdp_0"
    if damage == "metadata_deleted":
        (shards / ".metadata").unlink()
    else:
        shard = sorted(shards.glob("*.distcp"))[0]
        shard.write_bytes(shard.read_bytes()[: shard.stat().st_size // 2])
    with pytest.raises(ValueError, match="pytorch_model_fsdp_0"):
        consolidate(copy, tmp_path / "merged")


def assert_resumes_exactly(config: str, run: tuple[Path, list[str]], resumed: Path) -> None:
    """Resumes the 4-step `run` of `config` from a copy of its `checkpoint-2` in `resumed`: the final weights and
    the last two losses must be the uninterrupted run's, bit for bit. The copied checkpoint must be left as it is
    (a run that started afresh instead would have saved its own `checkpoint-2` over it)."""
    folder, data = run
    resumed.mkdir()
    shutil.copytree(folder / "out" / "checkpoint-2", resumed / "checkpoint-2")
    copied = (resumed / "checkpoint-2").stat().st_ino
    args = [*data, "--output_dir", str(resumed), "--resume", *SFT_FLAGS]
    launch(config, "train_sft.py", args, cpu_fsdp=config.startswith("fsdp"))
    assert (resumed / "checkpoint-2").stat().st_ino == copied, "the run did not resume from checkpoint-2"
    final, again = load_file(folder / "out" / "model.safetensors"), load_file(resumed / "model.safetensors")
    assert set(final) == set(again)
    for name, tensor in again.items():
        assert torch.equal(tensor, final[name]), name
    assert run_losses(resumed)[-2:] == run_losses(folder / "out")[-2:]


@pytest.mark.slow
def test_fsdp2_resumes_from_a_sharded_checkpoint_exactly(fsdp_run, tmp_path):
    assert_resumes_exactly("fsdp2.yaml", fsdp_run, tmp_path / "resumed")


@pytest.mark.slow
def test_ddp_launch_line_trains_like_one_process(one_process, tmp_path):
    """configs/accelerate/ddp.yaml. (fsdp2_offload.yaml cannot run on CPU: torch's CPU offload policy needs an
    accelerator to offload from; bench/gpu_check.py runs it.)"""
    data = write_inputs(tmp_path)
    out = tmp_path / "out"
    launch("ddp.yaml", "train_sft.py", [*data, "--output_dir", str(out), *SFT_FLAGS])
    one_losses, one_weights = one_process
    assert run_losses(out) == pytest.approx(one_losses, rel=1e-5)
    assert_weights_close(load_file(out / "model.safetensors"), one_weights)


@pytest.mark.slow
def test_fsdp_config_with_use_cpu_is_refused_not_run_unsharded(tmp_path):
    data = write_inputs(tmp_path)
    with pytest.raises(AssertionError, match="accelerate shards only on GPUs"):
        launch("fsdp2.yaml", "train_sft.py", [*data, "--output_dir", str(tmp_path / "out"), *SFT_FLAGS])


@pytest.fixture(scope="module")
def deepspeed_runs(tmp_path_factory):
    """`deepspeed_runs(CONFIG)`: `accelerate launch --config_file configs/accelerate/CONFIG train_sft.py ...` over
    DeepSpeed's CPU accelerator, once per module: 4 steps, sharded checkpoints (`global_stepN/`) at steps 2 and 4."""
    runs = {}

    def run(config: str) -> tuple[Path, list[str]]:
        if config not in runs:
            folder = tmp_path_factory.mktemp(config.removesuffix(".yaml"))
            data = write_inputs(folder)
            launch(config, "train_sft.py", [*data, "--output_dir", str(folder / "out"), *SFT_FLAGS])
            runs[config] = folder, data
        return runs[config]

    return run


DEEPSPEED_CONFIGS = ["zero2.yaml", "zero3.yaml", pytest.param("zero3_offload.yaml", marks=pytest.mark.slow)]


@pytest.mark.parametrize("config", DEEPSPEED_CONFIGS)
def test_deepspeed_trains_like_one_process_and_saves_a_loadable_model(config, deepspeed_runs, one_process):
    """ZeRO-2 (optimizer state and gradients sharded), ZeRO-3 (weights too, gathered for the final save) and ZeRO-3
    with CPU offload (DeepSpeed's CPU Adam takes the step): the same losses and weights as one process, and the final
    folder holds the model once (no second copy of the tied LM head) and loads with the Auto class."""
    from transformers import AutoModelForCausalLM

    folder, _ = deepspeed_runs(config)
    out = folder / "out"
    one_losses, one_weights = one_process
    assert run_losses(out) == pytest.approx(one_losses, rel=1e-5)
    assert_weights_close(load_file(out / "model.safetensors"), one_weights)
    assert (out / "checkpoint-2" / "global_step2").is_dir() and (out / "checkpoint-2" / "config.json").is_file()
    model = AutoModelForCausalLM.from_pretrained(out, trust_remote_code=True)
    assert type(model).__name__ == "ILLaDAForCausalLM"
    assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()
    assert_weights_close({k: v for k, v in model.state_dict().items() if k != "lm_head.weight"}, one_weights)


@pytest.mark.parametrize("config", DEEPSPEED_CONFIGS)
def test_deepspeed_checkpoint_consolidates_into_a_save_pretrained_folder(config, deepspeed_runs, tmp_path):
    """`python -m illada.consolidate out/checkpoint-4 merged`: DeepSpeed's fp32 partitions of both processes make
    the final model exactly."""
    from transformers import AutoModelForCausalLM

    from illada.consolidate import main as consolidate_main

    folder, _ = deepspeed_runs(config)
    consolidate_main([str(folder / "out" / "checkpoint-4"), str(tmp_path / "merged")])
    final = load_file(folder / "out" / "model.safetensors")
    consolidated = load_file(tmp_path / "merged" / "model.safetensors")
    assert set(consolidated) == set(final)
    for name, tensor in consolidated.items():
        assert torch.equal(tensor, final[name]), name
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "merged", trust_remote_code=True)
    reference = AutoModelForCausalLM.from_pretrained(folder / "out", trust_remote_code=True)
    ids = torch.tensor([[7, 8, 5, 9, 5, 10]])
    torch.testing.assert_close(model(ids).logits, reference(ids).logits, rtol=0, atol=0)


@pytest.mark.slow
def test_deepspeed_zero3_resumes_from_a_sharded_checkpoint_exactly(deepspeed_runs, tmp_path):
    assert_resumes_exactly("zero3.yaml", deepspeed_runs("zero3.yaml"), tmp_path / "resumed")


VRPO_FLAGS = [
    "--report_to", "none", "--max_steps", "3", "--per_device_train_batch_size", "1",
    "--gradient_accumulation_steps", "2", "--learning_rate", "1e-2", "--beta", "0.5", "--num_mc_samples", "4",
    "--logging_steps", "1", "--save_strategy", "no", "--disable_tqdm", "true", "--max_grad_norm", "0",
    "--seed", "3", "--use_cpu",
]  # fmt: skip


@pytest.mark.parametrize(
    "config, flags",
    [
        pytest.param("fsdp2.yaml", [], marks=pytest.mark.slow, id="fsdp2"),
        pytest.param("zero3.yaml", [], id="zero3"),
        pytest.param("zero3.yaml", ["--precompute_ref_log_probs"], marks=pytest.mark.slow, id="zero3-precomputed"),
    ],
)
def test_vrpo_with_a_sharded_reference_trains_like_one_process(config, flags, tmp_path):
    """train_vrpo.py under fsdp2.yaml or zero3.yaml, its frozen reference sharded like the policy
    (`VRPOTrainer._place_reference`: FSDP2's per-layer sharding, or ZeRO-3 partitions through trl's
    `prepare_deepspeed`): losses and weights equal the 1-process run of tests/vrpo_helper.py, so the sharded
    reference computes what the whole one does. With `--precompute_ref_log_probs` under ZeRO-3, the partitioned model
    is gathered for the estimates before training."""
    make_model(seed=1).save_pretrained(tmp_path / "init")
    make_tiny_tokenizer(chat_template=True).save_pretrained(tmp_path / "init")
    preference_rows().to_json(tmp_path / "pairs.jsonl")
    out = tmp_path / "out"
    data = ["--model_name_or_path", str(tmp_path / "init"), "--train_files", str(tmp_path / "pairs.jsonl")]
    args = [*data, "--output_dir", str(out), *VRPO_FLAGS, *flags]
    launch(config, "train_vrpo.py", args, cpu_fsdp=config == "fsdp2.yaml")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        one = make_vrpo_trainer(str(tmp_path / "one"), 4, 1, max_steps=3, precompute_ref_log_probs=bool(flags))
        one.train()
    finally:
        torch.set_num_threads(threads)
    assert run_losses(out) == pytest.approx([e["loss"] for e in one.state.log_history if "loss" in e], rel=1e-5)
    assert_weights_close(load_file(out / "model.safetensors"), one.model.state_dict())
