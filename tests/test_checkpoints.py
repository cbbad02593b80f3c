"""Tests of illada/checkpoints.py: which checkpoint folders count as complete, atomic saves, and what the command
line does with an existing output directory.

The checkpoints are real ones written by the trainer on the tiny model, then damaged the way a crash damages them
(a missing last file, truncated files, a corrupt header). Whether a damaged file is really unusable is decided by
the libraries that read it (`torch.load`, `safetensors.torch.load_file`), not by the code under test.
"""

import json
import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from ddp_train_helper import make_trainer
from safetensors.torch import load_file
from tiny import make_model
from transformers.trainer_utils import IntervalStrategy

from illada import checkpoints as checkpoints_illada
from illada.checkpoints import (
    STAGING_DIR,
    SafeCheckpointMixin,
    checkpoint_problem,
    checkpoint_to_resume,
    last_complete_checkpoint,
    list_checkpoints,
    safetensors_problem,
    torch_file_problem,
)

pytestmark = pytest.mark.usefixtures("one_thread")


def atomic_trainer(output_dir: Path, **overrides):
    """The tiny trainer of `ddp_train_helper` (a `DiffusionSFTTrainer`), saving a checkpoint every step."""
    trainer = make_trainer(str(output_dir), 2, 1, **{"save_strategy": "steps", "save_steps": 1, **overrides})
    assert isinstance(trainer, SafeCheckpointMixin)
    return trainer


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    """An output directory holding `checkpoint-1` and `checkpoint-2` of a 2-step run (full model)."""
    out = tmp_path_factory.mktemp("run") / "out"
    atomic_trainer(out, max_steps=2).train()
    return out


@pytest.fixture
def out(run_dir, tmp_path) -> Path:
    """A private copy of `run_dir` to damage."""
    return Path(shutil.copytree(run_dir, tmp_path / "out"))


def truncate(path: Path, keep: float = 0.5) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


def corrupt_header(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[8:20] = b"\x00garbage\xff\xfe{["
    path.write_bytes(bytes(data))


def huge_header_length(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[:8] = (10**12).to_bytes(8, "little")
    path.write_bytes(bytes(data))


def set_step(path: Path, step: int) -> None:
    state = json.loads(path.read_text())
    path.write_text(json.dumps({**state, "global_step": step}))


# Each way a crash (or a full disk) damages checkpoint-2, and the words the skip message must contain.
DAMAGE = {
    "no trainer_state": (lambda c: (c / "trainer_state.json").unlink(), "no `trainer_state.json`"),
    "truncated trainer_state": (lambda c: truncate(c / "trainer_state.json"), "`trainer_state.json` is not valid JSON"),
    "wrong global_step": (lambda c: set_step(c / "trainer_state.json", 1), "says global_step 1"),
    "truncated config": (lambda c: truncate(c / "config.json"), "`config.json` is not valid JSON"),
    "truncated optimizer": (lambda c: truncate(c / "optimizer.pt"), "`optimizer.pt` is not a complete torch archive"),
    "empty optimizer": (lambda c: truncate(c / "optimizer.pt", 0), "`optimizer.pt` is not a complete torch archive"),
    "no optimizer": (lambda c: (c / "optimizer.pt").unlink(), "no optimizer state"),
    "truncated scheduler": (lambda c: truncate(c / "scheduler.pt", 0.9), "`scheduler.pt` is not a complete"),
    "no scheduler": (lambda c: (c / "scheduler.pt").unlink(), "no scheduler state"),
    "truncated rng": (lambda c: truncate(c / "rng_state.pth", 0.99), "`rng_state.pth` is not a complete"),
    "no rng": (lambda c: (c / "rng_state.pth").unlink(), "no RNG state"),
    "truncated weights": (lambda c: truncate(c / "model.safetensors"), "`model.safetensors` is"),
    "weights cut in the header": (lambda c: truncate(c / "model.safetensors", 0.001), "`model.safetensors` is"),
    "corrupt weights header": (lambda c: corrupt_header(c / "model.safetensors"), "corrupt header"),
    "huge header length": (lambda c: huge_header_length(c / "model.safetensors"), "header alone claims"),
    "no weights": (lambda c: (c / "model.safetensors").unlink(), "no model weights"),
    "unfinished JIT save": (lambda c: (c / "checkpoint-is-incomplete.txt").write_text("x"), "just-in-time"),
}


def test_checkpoints_of_a_finished_save_are_complete(run_dir):
    assert [p.name for p in list_checkpoints(run_dir)] == ["checkpoint-2", "checkpoint-1"]
    assert checkpoint_problem(run_dir / "checkpoint-1") is None
    assert checkpoint_problem(run_dir / "checkpoint-2") is None
    assert last_complete_checkpoint(run_dir) == str(run_dir / "checkpoint-2")
    assert not (run_dir / STAGING_DIR).exists()


@pytest.mark.parametrize("damage", list(DAMAGE))
def test_damaged_newest_checkpoint_is_skipped_with_its_reason(out, damage, caplog):
    apply, reason = DAMAGE[damage]
    apply(out / "checkpoint-2")
    assert reason in checkpoint_problem(out / "checkpoint-2")
    with caplog.at_level(logging.WARNING, logger=checkpoints_illada.__name__):
        assert last_complete_checkpoint(out) == str(out / "checkpoint-1")
    assert "checkpoint-2" in caplog.text and reason in caplog.text


def test_no_complete_checkpoint_gives_none(out):
    for folder in list_checkpoints(out):
        (folder / "trainer_state.json").unlink()
    assert last_complete_checkpoint(out) is None
    assert last_complete_checkpoint(out / "missing") is None
    (out / "checkpoint-x").mkdir()  # not a checkpoint name: ignored
    assert [p.name for p in list_checkpoints(out)] == ["checkpoint-2", "checkpoint-1"]


@pytest.mark.parametrize("keep", [0.0, 0.002, 0.2, 0.5, 0.9, 0.999])
def test_file_checks_agree_with_the_loaders_on_truncated_files(run_dir, tmp_path, keep):
    """A verdict of "whole" must mean the library loads the file, and "not whole" that it cannot."""
    for name, check, loader in [
        ("optimizer.pt", torch_file_problem, torch.load),
        ("rng_state.pth", torch_file_problem, lambda p: torch.load(p, weights_only=False)),
        ("model.safetensors", safetensors_problem, load_file),
    ]:
        path = tmp_path / name
        shutil.copy(run_dir / "checkpoint-2" / name, path)
        loader(path)  # the intact file loads
        assert check(path) is None
        truncate(path, keep)
        assert check(path) is not None, f"{name} cut to {keep:.1%} looked whole"
        with pytest.raises(Exception):  # noqa: B017 (whichever error the loader raises: it must not load)
            loader(path)


def test_sharded_weights(out):
    folder = out / "checkpoint-2"
    (folder / "model.safetensors").unlink()
    make_model().save_pretrained(folder, max_shard_size="20KB")
    shards = sorted(folder.glob("model-*.safetensors"))
    assert len(shards) > 1 and (folder / "model.safetensors.index.json").is_file()
    assert checkpoint_problem(folder) is None
    truncate(shards[-1])
    assert shards[-1].name in checkpoint_problem(folder)
    shards[-1].unlink()
    assert f"shard `{shards[-1].name}` is missing" in checkpoint_problem(folder)


def test_lora_checkpoint(tmp_path):
    """A LoRA run's checkpoint holds the adapter (`adapter_model.safetensors`, `adapter_config.json`)."""
    from peft import LoraConfig, get_peft_model

    model = get_peft_model(
        make_model(seed=1), LoraConfig(task_type="CAUSAL_LM", r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"])
    )
    atomic_trainer(tmp_path / "out", max_steps=1, model=model).train()
    folder = tmp_path / "out" / "checkpoint-1"
    assert (folder / "adapter_model.safetensors").is_file() and not (folder / "model.safetensors").exists()
    assert checkpoint_problem(folder) is None
    truncate(folder / "adapter_config.json")
    assert "`adapter_config.json` is not valid JSON" in checkpoint_problem(folder)
    (folder / "adapter_config.json").unlink()
    truncate(folder / "adapter_model.safetensors")
    assert "`adapter_model.safetensors` is" in checkpoint_problem(folder)


# ---------------------------------------------------------------------------------------------------------------
# Atomic saves
# ---------------------------------------------------------------------------------------------------------------


class SaveCrash(Exception):
    """Stands for the process dying in the middle of `torch.save`."""


def test_interrupted_save_never_takes_a_checkpoint_name(tmp_path, monkeypatch):
    """The save of step 2 dies after writing half of `optimizer.pt`: no `checkpoint-2` exists, the last complete
    checkpoint is `checkpoint-1`, and the next save clears the leftovers."""
    real_save = torch.save

    def crashing_save(obj, f, *args, **kwargs):
        real_save(obj, f, *args, **kwargs)
        if str(f).endswith("optimizer.pt") and "checkpoint-2" in str(f):
            truncate(Path(f))
            raise SaveCrash

    monkeypatch.setattr(torch, "save", crashing_save)
    out = tmp_path / "out"
    with pytest.raises(SaveCrash):
        atomic_trainer(out, max_steps=3).train()
    assert [p.name for p in list_checkpoints(out)] == ["checkpoint-1"]
    assert (out / STAGING_DIR / "checkpoint-2" / "model.safetensors").is_file()  # the interrupted save is there
    assert last_complete_checkpoint(out) == str(out / "checkpoint-1")

    monkeypatch.setattr(torch, "save", real_save)
    atomic_trainer(out, max_steps=3, save_total_limit=2).train(resume_from_checkpoint=str(out / "checkpoint-1"))
    assert [p.name for p in list_checkpoints(out)] == ["checkpoint-3", "checkpoint-2"]  # save_total_limit
    assert not (out / STAGING_DIR).exists()
    assert all(checkpoint_problem(p) is None for p in list_checkpoints(out))


def test_save_replaces_a_folder_of_the_same_step(tmp_path):
    out = tmp_path / "out"
    stale = out / "checkpoint-1"
    stale.mkdir(parents=True)
    (stale / "stale.txt").write_text("an older run's file")
    atomic_trainer(out, max_steps=1, overwrite_output_dir=True).train()  # told to: else refused (test_write_paths)
    assert not (stale / "stale.txt").exists()
    assert checkpoint_problem(stale) is None


@pytest.mark.parametrize("case", ["tied copy", "differing copy"])
def test_a_given_state_dict_is_saved_without_the_tied_copy(case, tmp_path, caplog):
    """Under DeepSpeed, `Trainer.save_model` hands `_save` a state dict of copies (no shared storage), so
    `save_pretrained` no longer sees the tie: the LM head tied to the embeddings must still not be written as a second
    matrix; a copy that differs from the embeddings is kept (dropping it would lose weights)."""
    model = make_model(seed=1)
    trainer = atomic_trainer(tmp_path / "run", model=model)
    copies = {name: tensor.clone() for name, tensor in model.state_dict().items()}
    copies["lm_head.weight"] = copies["model.embed_tokens.weight"].clone()
    if case == "differing copy":
        copies["lm_head.weight"][0, 0] += 1
    with caplog.at_level(logging.WARNING, logger=checkpoints_illada.__name__):
        trainer._save(str(tmp_path / "saved"), state_dict=copies)
    saved = load_file(tmp_path / "saved" / "model.safetensors")
    assert set(saved) == set(copies) - ({"lm_head.weight"} if case == "tied copy" else set())
    for name, tensor in saved.items():
        assert torch.equal(tensor, copies[name]), name
    assert ("differs from it" in caplog.text) == (case == "differing copy")
    if case == "tied copy":  # the saved folder loads with the head tied again
        loaded = type(model).from_pretrained(tmp_path / "saved")
        assert loaded.lm_head.weight.data_ptr() == loaded.model.embed_tokens.weight.data_ptr()
        assert torch.equal(loaded.lm_head.weight, copies["model.embed_tokens.weight"])


def test_best_checkpoint_path_points_into_output_dir(tmp_path):
    """Trainer records the best checkpoint's folder in `trainer_state.json`: it must be the final path, not the
    staging one."""
    out = tmp_path / "out"
    trainer = atomic_trainer(out, max_steps=2)
    # Evaluation is switched on after construction: `make_trainer` builds no evaluation set.
    trainer.eval_dataset = trainer.train_dataset.select(range(4))
    settings = dict(
        eval_strategy=IntervalStrategy.STEPS, eval_steps=1, metric_for_best_model="loss", greater_is_better=False
    )
    for name, value in settings.items():
        setattr(trainer.args, name, value)
    trainer.train()
    best = trainer.state.best_model_checkpoint
    assert best in {str(out / "checkpoint-1"), str(out / "checkpoint-2")} and Path(best).is_dir()
    for folder in list_checkpoints(out):
        recorded = json.loads((folder / "trainer_state.json").read_text())["best_model_checkpoint"]
        assert STAGING_DIR not in recorded and recorded.startswith(str(out))


# ---------------------------------------------------------------------------------------------------------------
# What the command line does with an existing output directory
# ---------------------------------------------------------------------------------------------------------------


def test_reusing_an_output_dir_without_resume(out, tmp_path):
    assert checkpoint_to_resume(tmp_path / "new", resume=False) is None
    with pytest.raises(
        ValueError,
        match=r"holds checkpoints of an earlier run \(checkpoint-2, checkpoint-1\).*"
        r"`--resume`.*`--overwrite_output_dir`",
    ):
        checkpoint_to_resume(out, resume=False, max_steps=5)
    assert len(list_checkpoints(out)) == 2  # refusing deletes nothing
    (out / STAGING_DIR).mkdir()
    assert checkpoint_to_resume(out, resume=False, max_steps=5, overwrite=True) is None
    assert list_checkpoints(out) == [] and not (out / STAGING_DIR).exists()


def test_checkpoint_to_resume(out, tmp_path, caplog):
    assert checkpoint_to_resume(tmp_path / "new", resume=True, max_steps=5) is None
    assert checkpoint_to_resume(out, resume=True, max_steps=5) == str(out / "checkpoint-2")
    with caplog.at_level(logging.WARNING, logger=checkpoints_illada.__name__):
        assert checkpoint_to_resume(out, resume=True, max_steps=2) == str(out / "checkpoint-2")
    assert "already reached `max_steps`=2: nothing to train" in caplog.text
    truncate(out / "checkpoint-2" / "optimizer.pt")
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger=checkpoints_illada.__name__):
        assert checkpoint_to_resume(out, resume=True, max_steps=2) == str(out / "checkpoint-1")
    assert "Skipping" in caplog.text and "checkpoint-2" in caplog.text and "nothing to train" not in caplog.text


def test_resuming_at_max_steps_trains_no_further_step(tmp_path):
    """Trainer alone runs one step past `max_steps` when resumed from the last checkpoint of a finished run unless
    `max_steps` is a multiple of the epoch length (12 steps here); the mixin runs none, and the weights stay the
    checkpoint's."""
    out, max_steps = tmp_path / "out", 3
    finished = atomic_trainer(out, max_steps=max_steps, save_steps=max_steps)
    finished.train()
    checkpoint = out / f"checkpoint-{max_steps}"
    saved = load_file(checkpoint / "model.safetensors")
    resumed = atomic_trainer(out, max_steps=max_steps, save_steps=max_steps, model=make_model(seed=9))
    resumed.train(resume_from_checkpoint=str(checkpoint))
    assert resumed.state.global_step == max_steps
    assert [p.name for p in list_checkpoints(out)] == [checkpoint.name]
    for name, tensor in resumed.model.state_dict().items():
        if name in saved:
            assert torch.equal(tensor, saved[name]), name


# Run by `torchrun --nproc_per_node 2` in the test below: 3 steps, a checkpoint after each, at most 2 kept.
TWO_PROCESS_SCRIPT = """
import sys
sys.path[:0] = [{tests!r}, {root!r}]
import torch
torch.set_num_threads(1)
from ddp_train_helper import make_trainer
make_trainer({out!r}, 1, 1, max_steps=3, save_strategy="steps", save_steps=1, save_total_limit=2).train()
"""


@pytest.mark.slow
def test_two_processes_publish_complete_checkpoints(tmp_path):
    """With 2 processes (gloo), each checkpoint appears with both processes' RNG states, and rotation keeps 2."""
    tests = Path(__file__).resolve().parent
    script = tmp_path / "two_process.py"
    out = tmp_path / "out"
    script.write_text(TWO_PROCESS_SCRIPT.format(tests=str(tests), root=str(tests.parent), out=str(out)))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", str(script)]
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-4000:]
    assert [p.name for p in list_checkpoints(out)] == ["checkpoint-3", "checkpoint-2"]
    assert not (out / STAGING_DIR).exists()
    for folder in list_checkpoints(out):
        assert checkpoint_problem(folder) is None
        assert sorted(p.name for p in folder.glob("rng_state*.pth")) == ["rng_state_0.pth", "rng_state_1.pth"]


@pytest.mark.parametrize("config_class", ["DiffusionSFTConfig", "VRPOConfig"])
def test_resume_fields_are_shared_and_keep_output_dir_first(config_class, tmp_path):
    """Both training configs take `resume`/`overwrite_output_dir` from `ResumeArguments` (declared once), after the
    parent's fields: `Config("out")` sets `output_dir`, as transformers users write `TrainingArguments("out")`."""
    import dataclasses

    from transformers import HfArgumentParser

    from illada.checkpoints import ResumeArguments
    from illada.trainer import DiffusionSFTConfig
    from illada.vrpo import VRPOConfig

    cls = {"DiffusionSFTConfig": DiffusionSFTConfig, "VRPOConfig": VRPOConfig}[config_class]
    assert issubclass(cls, ResumeArguments)
    names = [f.name for f in dataclasses.fields(cls)]
    assert names[0] == "output_dir" and names.count("resume") == names.count("overwrite_output_dir") == 1
    config = cls(str(tmp_path / "out"), use_cpu=True)
    assert config.output_dir == str(tmp_path / "out") and (config.resume, config.overwrite_output_dir) == (False, False)
    (parsed,) = HfArgumentParser(cls).parse_args_into_dataclasses(
        ["--output_dir", str(tmp_path), "--resume", "--use_cpu"]
    )
    assert (parsed.resume, parsed.overwrite_output_dir) == (True, False)
