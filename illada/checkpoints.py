"""Crash-safe training checkpoints for `train_sft.py`: atomic saves, completeness checks, and what `--resume` does.

A process killed during a save (kill -9, out of memory, a preempted node) used to leave a `checkpoint-N` folder
without `trainer_state.json` or with a truncated `optimizer.pt`, and `--resume`, which took the highest number,
then failed (or, with the optimizer file missing, silently restarted the optimizer). Three pieces prevent it:

- [`SafeCheckpointMixin`] (mixed into the trainer): every checkpoint is written into
  `output_dir/_incomplete-checkpoints/checkpoint-N` and renamed to `output_dir/checkpoint-N` only once every file
  of every process is written, so an interrupted save never has a checkpoint's name. Resuming from a checkpoint
  that already reached `max_steps` trains nothing (Trainer alone would run one step more).
- [`last_complete_checkpoint`]: the newest `checkpoint-N` whose files are all there and whole (checked from file
  sizes and headers, without loading tensors); every newer folder it passes over is logged with the reason. It
  also protects against folders that this package did not write atomically (older runs, copies, a full disk).
- [`checkpoint_to_resume`]: what the command line does with an existing `output_dir`: resume from the newest
  complete checkpoint, and refuse to start a new run over an old run's checkpoints unless asked to delete them
  (else a later `--resume` would pick the old run's).

The guarantee is for a crashed *process*: files are not fsync'ed, so after a power loss the operating system may
lose the last writes; the completeness checks then skip the damaged checkpoint.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import struct
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR, rotate_checkpoints

logger = logging.getLogger(__name__)

CHECKPOINT_NAME = re.compile(rf"^{PREFIX_CHECKPOINT_DIR}-(\d+)$")
# Where checkpoints are written before being renamed into place; its name never matches `CHECKPOINT_NAME`, and
# starts with "_" so that `Trainer.push_to_hub` (which uploads `output_dir` except `_*` and `checkpoint-*`) never
# uploads a checkpoint being written (the push at each save runs in the background) or an interrupted one.
STAGING_DIR = "_incomplete-checkpoints"
TRAINER_STATE = "trainer_state.json"
# Left in a checkpoint by transformers' just-in-time (SIGTERM) save until it finishes.
JIT_SENTINEL = "checkpoint-is-incomplete.txt"
# A safetensors file: 8-byte little-endian header length, JSON header, tensor bytes (safetensors format spec).
SAFETENSORS_LENGTH_BYTES = 8
SAFE_WEIGHTS = ("model.safetensors", "adapter_model.safetensors")
SAFE_INDEX = "model.safetensors.index.json"
TORCH_WEIGHTS = ("pytorch_model.bin", "adapter_model.bin")
# Sharded (FSDP) and DeepSpeed states are folders whose contents this module does not inspect.
SHARDED_WEIGHT_DIRS = ("pytorch_model_fsdp_", "global_step")
SHARDED_OPTIMIZER_DIRS = ("optimizer_", "global_step")


# ----------------------------------------------------------------------------------------------------------------
# Completeness
# ----------------------------------------------------------------------------------------------------------------


def safetensors_problem(path: Path) -> str | None:
    """Why the safetensors file `path` is not whole (`None` when it is): the header must parse and the file must
    end exactly where the last tensor's bytes end. Reads the header only."""
    size = path.stat().st_size
    if size < SAFETENSORS_LENGTH_BYTES:
        return f"`{path.name}` is {size} bytes, too short for a safetensors header"
    with path.open("rb") as file:
        (header_length,) = struct.unpack("<Q", file.read(SAFETENSORS_LENGTH_BYTES))
        if SAFETENSORS_LENGTH_BYTES + header_length > size:
            return f"`{path.name}` is {size} bytes but its header alone claims {header_length} (truncated?)"
        try:
            header = json.loads(file.read(header_length))
            data_end = max(
                (entry["data_offsets"][1] for key, entry in header.items() if key != "__metadata__"), default=0
            )
        except (ValueError, TypeError, KeyError, IndexError) as error:
            return f"`{path.name}` has a corrupt header ({error})"
    expected = SAFETENSORS_LENGTH_BYTES + header_length + data_end
    if size != expected:
        return f"`{path.name}` is {size} bytes, its header describes {expected} (truncated?)"
    return None


def torch_file_problem(path: Path) -> str | None:
    """Why the `torch.save` file `path` is not whole (`None` when it is). torch writes a zip archive whose central
    directory comes last, so a truncated file has none; the tensors themselves are not read."""
    try:
        with zipfile.ZipFile(path) as archive:
            end = max((info.header_offset + info.compress_size for info in archive.infolist()), default=0)
    except (zipfile.BadZipFile, OSError, ValueError) as error:
        return f"`{path.name}` is not a complete torch archive (truncated?): {error}"
    if end > path.stat().st_size:
        return f"`{path.name}` lists data past its end (truncated?)"
    return None


def _json_problem(path: Path) -> tuple[Any, str | None]:
    try:
        return json.loads(path.read_text(encoding="utf-8")), None
    except (ValueError, OSError) as error:
        return None, f"`{path.name}` is not valid JSON (truncated?): {error}"


def _weights_problem(folder: Path) -> str | None:
    """The model (or adapter) weights: a safetensors file, a sharded index with all its shards, a torch file, or an
    FSDP/DeepSpeed folder."""
    for name in SAFE_WEIGHTS:
        if (folder / name).is_file():
            return safetensors_problem(folder / name)
    if (folder / SAFE_INDEX).is_file():
        index, problem = _json_problem(folder / SAFE_INDEX)
        if problem:
            return problem
        shards = sorted(set(index.get("weight_map", {}).values())) if isinstance(index, dict) else []
        if not shards:
            return f"`{SAFE_INDEX}` names no shards"
        for shard in shards:
            problem = (
                safetensors_problem(folder / shard) if (folder / shard).is_file() else f"shard `{shard}` is missing"
            )
            if problem:
                return problem
        return None
    for name in TORCH_WEIGHTS:
        if (folder / name).is_file():
            return torch_file_problem(folder / name)
    if any(path.is_dir() and path.name.startswith(SHARDED_WEIGHT_DIRS) for path in folder.iterdir()):
        return None
    return (
        "no model weights (`model.safetensors`, a sharded index, `adapter_model.safetensors`, "
        "`pytorch_model.bin` or an FSDP/DeepSpeed folder)"
    )


def _training_state_problem(folder: Path) -> str | None:
    """Optimizer, scheduler, gradient scaler and RNG states: present where Trainer needs them, and whole."""
    has_sharded_optimizer = any(p.is_dir() and p.name.startswith(SHARDED_OPTIMIZER_DIRS) for p in folder.iterdir())
    if not (folder / "optimizer.pt").is_file() and not has_sharded_optimizer:
        return (
            "no optimizer state (`optimizer.pt`): saved with `save_only_model`, from which Trainer cannot "
            "resume exactly"
        )
    if (folder / "optimizer.pt").is_file() and not (folder / "scheduler.pt").is_file():
        # transformers 5.23 `Trainer._load_optimizer_and_scheduler` loads the optimizer only when both files exist:
        # without the scheduler a resume would silently restart Adam's moments and the learning-rate schedule.
        return "no scheduler state (`scheduler.pt`) beside `optimizer.pt`: Trainer would restart the optimizer"
    rng_files = sorted(folder.glob("rng_state*.pth"))
    if not rng_files:
        return "no RNG state (`rng_state*.pth`)"
    for path in [folder / "optimizer.pt", folder / "scheduler.pt", folder / "scaler.pt", *rng_files]:
        problem = torch_file_problem(path) if path.is_file() else None
        if problem:
            return problem
    return None


def checkpoint_problem(folder: str | os.PathLike) -> str | None:
    """Why Trainer cannot resume from the checkpoint `folder`, or `None` when it is complete.

    Complete means: every JSON file parses, and `trainer_state.json`'s `global_step` is the folder's number;
    the weights (full model, sharded, LoRA adapter, or an FSDP/DeepSpeed folder) are whole; the optimizer and RNG
    states (with the scheduler state beside `optimizer.pt`, and the scaler state when present) are whole torch
    archives; no unfinished
    just-in-time save. "Whole" is judged from headers and sizes, so checking an 8B checkpoint reads a few kB.

    Args:
        folder (`str` or `os.PathLike`): A `checkpoint-N` folder.

    Returns:
        `str | None`: The first problem found, in words, or `None`.
    """
    folder = Path(folder)
    match = CHECKPOINT_NAME.match(folder.name)
    if not folder.is_dir() or match is None:
        return f"not a `{PREFIX_CHECKPOINT_DIR}-<step>` folder"
    if (folder / JIT_SENTINEL).exists():
        return f"holds `{JIT_SENTINEL}`: a just-in-time save did not finish"
    if not (folder / TRAINER_STATE).is_file():
        return f"no `{TRAINER_STATE}` (Trainer writes it last: the save was interrupted)"
    for path in sorted(folder.glob("*.json")):  # trainer state, configs, tokenizer, shard index
        problem = _json_problem(path)[1]
        if problem:
            return problem
    state = _json_problem(folder / TRAINER_STATE)[0]
    step = state.get("global_step") if isinstance(state, dict) else None
    if step != int(match.group(1)):
        return f"`{TRAINER_STATE}` says global_step {step!r}, the folder name says {match.group(1)}"
    return _weights_problem(folder) or _training_state_problem(folder)


def list_checkpoints(output_dir: str | os.PathLike) -> list[Path]:
    """The `checkpoint-N` folders of `output_dir`, newest (highest N) first; empty if `output_dir` does not exist."""
    output_dir = Path(output_dir)
    if not output_dir.is_dir():
        return []
    folders = [path for path in output_dir.iterdir() if path.is_dir() and CHECKPOINT_NAME.match(path.name)]
    return sorted(folders, key=lambda path: int(CHECKPOINT_NAME.match(path.name).group(1)), reverse=True)


def last_complete_checkpoint(output_dir: str | os.PathLike) -> str | None:
    """The newest complete `checkpoint-N` folder of `output_dir` (see [`checkpoint_problem`]), or `None`.

    Each newer, incomplete folder is skipped with a warning that names it and says why; it is left on disk.
    """
    for folder in list_checkpoints(output_dir):
        problem = checkpoint_problem(folder)
        if problem is None:
            return str(folder)
        logger.warning("Skipping %s: %s.", folder, problem)
    return None


# ----------------------------------------------------------------------------------------------------------------
# Atomic saves
# ----------------------------------------------------------------------------------------------------------------


def drop_tied_copies(state_dict: dict[str, Any], model: Any) -> dict[str, Any]:
    """`state_dict` without the weights that `model` ties to another one (its `_tied_weights_keys`, when its config
    ties them: for iLLaDA `lm_head.weight` -> `model.embed_tokens.weight` with `tie_word_embeddings`), where the copy
    equals its source (dtype, shape and every value); `from_pretrained` ties them again. A copy that differs from its
    source is kept (with a warning): dropping it would lose weights. A PEFT model's state dict (its adapters) is
    returned as it is."""
    if hasattr(model, "get_base_model") or not hasattr(model, "get_expanded_tied_weights_keys"):
        return state_dict
    dropped = set()
    for copy, source in model.get_expanded_tied_weights_keys(all_submodels=True).items():
        tensors = state_dict.get(copy), state_dict.get(source)
        if not all(isinstance(tensor, torch.Tensor) and tensor.device.type != "meta" for tensor in tensors):
            continue
        if tensors[0].dtype == tensors[1].dtype and torch.equal(*tensors):
            dropped.add(copy)
        else:
            logger.warning("Saving `%s` as it is: it is tied to `%s` but differs from it.", copy, source)
    return {name: tensor for name, tensor in state_dict.items() if name not in dropped}


class SafeCheckpointMixin:
    """[`Trainer`] mixin (`class MyTrainer(SafeCheckpointMixin, Trainer)`): atomic checkpoints, no step past
    `max_steps`.

    Trainer writes each checkpoint into `output_dir/_incomplete-checkpoints/checkpoint-N`; when every process has
    written its files, the main process renames the folder to `output_dir/checkpoint-N` (replacing a folder of
    that name) and only then deletes old checkpoints beyond `save_total_limit`. A crash at any point leaves either
    the previous checkpoints untouched or the new one complete; leftovers of an interrupted save are deleted at
    the next save. Needs the output directory on a file system shared by the saving processes, as Trainer does.

    Resumed from a checkpoint at (or past) `max_steps`, `train()` runs no step and goes straight to its end, so the
    caller's final save is redone from that checkpoint (Trainer alone runs one more step when `max_steps` is not
    a multiple of the epoch length).
    """

    _staging_checkpoint = False

    def train(self, resume_from_checkpoint: str | bool | None = None, *args: Any, **kwargs: Any) -> Any:
        """Trainer's `train`, after refusing an `output_dir` that is the model's own folder (its weights would be
        overwritten by the final save) or that holds another run's checkpoints when not resuming (a checkpoint of
        the same step would replace it; `args.overwrite_output_dir` allows it)."""
        model = self.model.get_base_model() if hasattr(self.model, "get_base_model") else self.model
        source = getattr(getattr(model, "config", None), "_name_or_path", "")
        check_inputs_outside(self.args.output_dir, models={"model": source or None})
        if not resume_from_checkpoint and not getattr(self.args, "overwrite_output_dir", False):
            checkpoints = list_checkpoints(self.args.output_dir)
            if checkpoints:
                raise ValueError(
                    f"`output_dir` {self.args.output_dir!r} holds checkpoints of another run ({checkpoints[0].name}, "
                    "...): pass `resume_from_checkpoint` to continue it, set `overwrite_output_dir=True` to let this "
                    "run replace them, or choose another `output_dir`."
                )
        return super().train(resume_from_checkpoint, *args, **kwargs)

    # Trainer has no public hook for where a checkpoint is written: `_save_checkpoint` asks `_get_output_dir`.
    def _get_output_dir(self, trial: Any) -> str:
        run_dir = super()._get_output_dir(trial)
        return os.path.join(run_dir, STAGING_DIR) if self._staging_checkpoint else run_dir

    def get_batch_samples(self, epoch_iterator: Any, num_batches: int, device: Any) -> tuple[list, Any]:
        """No batch (and a stop) once `max_steps` is reached: the step loop then has nothing to train."""
        if 0 < self.state.max_steps <= self.state.global_step:
            self.control.should_training_stop = True
            return [], None
        return super().get_batch_samples(epoch_iterator, num_batches, device)

    def _save(self, output_dir: str | None = None, state_dict: dict | None = None) -> None:
        """Trainer's save, without the copies of tied weights in a given `state_dict` ([`drop_tied_copies`]).
        Under DeepSpeed, Trainer passes a state dict whose tensors no longer share storage, so `save_pretrained`
        (which finds tied weights by storage) would write the tied LM head as a second vocab x hidden matrix."""
        if state_dict is not None:
            state_dict = drop_tied_copies(state_dict, self.accelerator.unwrap_model(self.model))
        super()._save(output_dir, state_dict)

    def _save_checkpoint(self, model: Any, trial: Any) -> None:
        """Trainer's save, into the staging folder, then published by the main process (barriers around)."""
        run_dir = Path(self._get_output_dir(trial))
        staging_root, name = run_dir / STAGING_DIR, f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}"
        if self.args.should_save:
            shutil.rmtree(staging_root, ignore_errors=True)  # an earlier interrupted save
        self.accelerator.wait_for_everyone()
        self._staging_checkpoint = True
        try:
            super()._save_checkpoint(model, trial)  # also rotates inside the staging folder: it holds one checkpoint
        finally:
            self._staging_checkpoint = False
        self.accelerator.wait_for_everyone()
        if self.args.should_save:
            self._describe_sharded_checkpoint(model, staging_root / name)
            self._publish_checkpoint(staging_root / name, run_dir / name)
            shutil.rmtree(staging_root, ignore_errors=True)
            rotate_checkpoints(
                output_dir=str(run_dir),
                save_total_limit=self.args.save_total_limit,
                best_model_checkpoint=self.state.best_model_checkpoint,
                use_mtime=True,
            )
        self.accelerator.wait_for_everyone()

    def _describe_sharded_checkpoint(self, model: Any, staged: Path) -> None:
        """A sharded checkpoint (FSDP, DeepSpeed) holds no config: write the model's config and the tokenizer next to
        the shards, so that `python -m illada.consolidate` can turn the folder into a `save_pretrained` one."""
        sharded = any(path.is_dir() and path.name.startswith(SHARDED_WEIGHT_DIRS) for path in staged.iterdir())
        if not sharded or (staged / "config.json").is_file():
            return
        if hasattr(model, "get_base_model"):  # PEFT: the base model's config
            model = model.get_base_model()
        self.accelerator.unwrap_model(model).config.save_pretrained(staged)
        if self.processing_class is not None:
            self.processing_class.save_pretrained(staged)

    def _publish_checkpoint(self, staged: Path, final: Path) -> None:
        """Points the saved state's best checkpoint at `output_dir` (Trainer looked for it in the staging folder),
        then renames `staged` to `final`."""
        best_step = self.state.best_global_step
        if best_step:
            best = final.parent / f"{PREFIX_CHECKPOINT_DIR}-{best_step}"
            if best == final or best.is_dir():
                self.state.best_model_checkpoint = str(best)
                self.state.save_to_json(str(staged / TRAINER_STATE))
        if final.exists():  # a folder of the same step (an older run's, or a JIT save's sentinel folder)
            replaced = staged.parent / f"replaced-{final.name}"
            os.replace(final, replaced)
        os.replace(staged, final)


# ----------------------------------------------------------------------------------------------------------------
# What the command line does with an existing output directory
# ----------------------------------------------------------------------------------------------------------------


@dataclass
class ResumeArguments:
    """The two command-line fields that decide what a run does with an existing `output_dir` (see
    [`checkpoint_to_resume`]); a base of `DiffusionSFTConfig` and `VRPOConfig`, so that both scripts read them alike.

    List it *before* the `TrainingArguments` class (`class MyConfig(ResumeArguments, TrainingArguments)`): dataclass
    fields follow the reversed MRO, so its fields then come after the parent's and `MyConfig("out")` still sets
    `output_dir`."""

    resume: bool = field(
        default=False, metadata={"help": "Resume from the newest complete checkpoint in `output_dir` (if any)."}
    )
    overwrite_output_dir: bool = field(
        default=False,
        metadata={
            "help": "Delete the checkpoints of an earlier run in `output_dir` and start afresh "
            "(without it or `resume`, such an `output_dir` is refused)."
        },
    )


# What a training run writes into `output_dir` besides its checkpoints: the final model (or adapter), its code,
# tokenizer and card, and the run's state and metrics. Finding one of them means a model or a run that this run did
# not create.
RUN_OUTPUTS = (
    "config.json",
    "generation_config.json",
    "model.safetensors",
    SAFE_INDEX,
    "pytorch_model.bin",
    "adapter_config.json",
    "adapter_model.safetensors",
    "tokenizer.json",
    "tokenizer_config.json",
    "README.md",
    TRAINER_STATE,
    "training_args.bin",
    "train_results.json",
    "eval_results.json",
    "all_results.json",
)


def saved_outputs(output_dir: str | os.PathLike) -> list[str]:
    """The names of `RUN_OUTPUTS` that `output_dir` holds (empty if it does not exist)."""
    folder = Path(output_dir)
    return [name for name in RUN_OUTPUTS if (folder / name).exists()] if folder.is_dir() else []


def check_inputs_outside(
    output_dir: str | os.PathLike, models: dict[str, Any] | None = None, data: dict[str, Any] | None = None
) -> None:
    """Refuses an `output_dir` that is the folder of one of `models` (name -> folder or file) or that holds one of
    `data` (name -> path or list of paths): the run would overwrite its own inputs (see [`check_output_dir`])."""
    out = Path(output_dir).resolve()
    for name, path in (models or {}).items():
        if path is not None and Path(path).exists():
            folder = Path(path).resolve()
            folder = folder if folder.is_dir() else folder.parent
            if folder == out:
                raise ValueError(
                    f"`output_dir` {str(output_dir)!r} is the folder of `{name}` {str(path)!r}: training in place "
                    "would overwrite it. Choose another `--output_dir`."
                )
    for name, paths in (data or {}).items():
        for path in [paths] if isinstance(paths, (str, os.PathLike)) else paths or []:
            resolved = Path(path).resolve()
            if Path(path).exists() and (resolved == out or out in resolved.parents):
                raise ValueError(
                    f"`{name}` {str(path)!r} lies in `output_dir` {str(output_dir)!r}, which the run writes into: "
                    "choose another `--output_dir`."
                )


def check_output_dir(
    output_dir: str | os.PathLike | None,
    resume: bool = False,
    overwrite: bool = False,
    models: dict[str, Any] | None = None,
    data: dict[str, Any] | None = None,
) -> None:
    """Refuses an `output_dir` whose files a training run would overwrite without being told to.

    - `output_dir` must be a non-empty path; `resume` and `overwrite` contradict each other.
    - Never the folder of an input: `models` (name -> folder or file: the model, config, tokenizer, reference) must
      not be `output_dir` (training in place would overwrite the base model); `data` (name -> path or list of paths:
      data files or folders) must not lie in `output_dir`.
    - A saved model or run (`RUN_OUTPUTS`: weights, config, card, trainer state...) is replaced only with `overwrite`,
      or when `resume` continues that run from one of its checkpoints.

    Checkpoint folders are `checkpoint_to_resume`'s concern (it refuses them, without `resume` or `overwrite`, with
    its own message).

    Raises:
        `ValueError`: naming the flag, the folder and the files at stake, and what to pass instead.
    """
    if output_dir is None or not str(output_dir).strip():
        raise ValueError(f"`output_dir` must be a folder path, got {output_dir!r}.")
    if resume and overwrite:
        raise ValueError(
            "`--resume` continues the run in `output_dir` and `--overwrite_output_dir` deletes it: pass one of them."
        )
    out = Path(output_dir).resolve()
    check_inputs_outside(output_dir, models, data)
    saved = saved_outputs(out)
    continued = resume and last_complete_checkpoint(out)
    if saved and not overwrite and not continued and (resume or not list_checkpoints(out)):  # else: see below
        raise ValueError(
            f"`output_dir` {str(output_dir)!r} already holds a saved model or run ({', '.join(saved[:4])}"
            f"{', ...' if len(saved) > 4 else ''}) and no checkpoint to resume from: pass `--overwrite_output_dir` "
            "to replace it, or choose another `--output_dir`."
        )


def checkpoint_to_resume(
    output_dir: str | os.PathLike, resume: bool, max_steps: int = -1, overwrite: bool = False
) -> str | None:
    """The checkpoint a training run in `output_dir` starts from (`None`: afresh), after checking the folder.

    - `resume`: the newest *complete* checkpoint (incomplete ones are skipped with a warning), or `None` when there
      is none. One at (or past) `max_steps` (> 0) is returned with a warning that there is nothing to train: a
      [`SafeCheckpointMixin`] trainer then trains no step and the final save is redone from it.
    - not `resume`, and `output_dir` holds `checkpoint-*` folders: with `overwrite` they are deleted (so that a
      later `--resume` cannot pick an old run's checkpoint), and so are the files of a saved model or run
      (`RUN_OUTPUTS`: no stale card or state is left beside the new model); without it, a `ValueError` says what
      to pass.

    Call it on every process before training; with `overwrite`, from the main process first
    (`args.main_process_first()`).

    Args:
        output_dir (`str` or `os.PathLike`): The run's output directory (need not exist).
        resume (`bool`): `--resume` was given.
        max_steps (`int`, *optional*, defaults to -1): The run's `max_steps` (<= 0: the length is in epochs).
        overwrite (`bool`, *optional*, defaults to `False`): Delete an earlier run's checkpoints.

    Returns:
        `str | None`: The checkpoint folder to pass to `trainer.train(resume_from_checkpoint=...)`.

    Raises:
        `ValueError`: `output_dir` holds checkpoints, and neither `resume` nor `overwrite` is set.
    """
    checkpoints = list_checkpoints(output_dir)
    if not resume:
        if checkpoints and not overwrite:
            names = ", ".join(path.name for path in checkpoints[:3]) + (", ..." if len(checkpoints) > 3 else "")
            raise ValueError(
                f"`output_dir` {str(output_dir)!r} holds checkpoints of an earlier run ({names}): pass `--resume` to "
                "continue that run, `--overwrite_output_dir` to delete them and start afresh, or choose another "
                "`--output_dir`."
            )
        for path in checkpoints:
            logger.warning("Deleting %s of an earlier run (`overwrite_output_dir`).", path)
            shutil.rmtree(path, ignore_errors=True)
        for name in saved_outputs(output_dir) if overwrite else []:  # no stale card or state beside the new model
            logger.warning("Deleting %s of an earlier run (`overwrite_output_dir`).", Path(output_dir) / name)
            (Path(output_dir) / name).unlink()
        shutil.rmtree(Path(output_dir) / STAGING_DIR, ignore_errors=True)
        return None
    checkpoint = last_complete_checkpoint(output_dir)
    if checkpoint is None:
        logger.warning("`--resume`: no complete checkpoint in %s, starting afresh.", output_dir)
        return None
    step = int(CHECKPOINT_NAME.match(Path(checkpoint).name).group(1))
    if 0 < max_steps <= step:
        logger.warning(
            "`--resume`: %s already reached `max_steps`=%d: nothing to train (the final model is saved "
            "again from it). Raise `--max_steps` to train further.",
            checkpoint,
            max_steps,
        )
    else:
        logger.info("Resuming from %s.", checkpoint)
    return checkpoint
