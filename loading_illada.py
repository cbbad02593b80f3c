"""Strict checkpoint loading for iLLaDA: every weight file readable, every tensor present with its shape, the tied
head really tied. Errors name the file or the tensors and say what to do.

transformers 5 logs missing tensors and re-initialises them, raises "look at the above report" for a shape
mismatch, lets safetensors' header errors through without the file name, and loads an untied head with a warning
although the config ties it. `StrictLoadingMixin.from_pretrained` (inherited by `ILLaDAPreTrainedModel`) runs the
checks below: the files and shapes before loading (local folders; Hub downloads are verified by huggingface_hub,
and a shape error there is named from the cache), the loaded state after.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from torch import nn
from transformers.utils import cached_file

WEIGHTS_NAME = "model.safetensors"
INDEX_NAME = "model.safetensors.index.json"
SHOWN_KEYS = 8  # how many tensor names an error lists


def _add_variant(name: str, variant: str | None) -> str:
    """transformers' file naming of a weight variant: `model.safetensors` -> `model.fp16.safetensors`."""
    if variant is None:
        return name
    stem, extension = name.rsplit(".", 1)
    return f"{stem}.{variant}.{extension}"


def safetensors_shapes(path: Path) -> dict[str, tuple[int, ...]]:
    """The tensor shapes of a safetensors file (header only); `ValueError` naming the file when it is empty,
    truncated or corrupt."""
    size = path.stat().st_size
    if size == 0:
        raise ValueError(
            f"The weight file `{path}` is empty (0 bytes): an interrupted save, copy or download. "
            f"Replace it with a complete copy."
        )
    try:
        with safe_open(path, framework="pt") as handle:
            return {key: tuple(handle.get_slice(key).get_shape()) for key in handle.keys()}
    except SafetensorError as error:
        raise ValueError(
            f"The weight file `{path}` ({size} bytes) is not a readable safetensors file ({error}): it is truncated "
            f"or corrupt, probably by an interrupted save, copy or download. Replace it with a complete copy."
        ) from None


def _read_index(index: Path) -> dict[str, str]:
    """The `weight_map` (tensor name -> shard file) of a sharded checkpoint's index, checked for form."""
    try:
        weight_map = json.loads(index.read_text(encoding="utf-8")).get("weight_map")
    except (json.JSONDecodeError, UnicodeDecodeError, AttributeError) as error:
        raise ValueError(
            f"The shard index `{index}` is not a JSON object ({error}). Restore it from the original checkpoint."
        ) from None
    if (
        not weight_map
        or not isinstance(weight_map, dict)
        or not all(isinstance(key, str) and isinstance(shard, str) for key, shard in weight_map.items())
    ):
        raise ValueError(
            f"The shard index `{index}` has no `weight_map` object mapping tensor names to shard files "
            f"(got {json.dumps(weight_map)[:80]}). Restore it from the original checkpoint."
        )
    return weight_map


def checkpoint_shapes(folder: str | os.PathLike, variant: str | None = None) -> dict[str, tuple[int, ...]]:
    """Checks the safetensors weights transformers would load from a local `folder` (the single file first, else
    the shard index and its shards) and returns every tensor's shape, without loading any data. Folders without
    safetensors weights give `{}` and are left to transformers."""
    folder = Path(folder)
    single, index = folder / _add_variant(WEIGHTS_NAME, variant), folder / _add_variant(INDEX_NAME, variant)
    if single.is_file():
        return safetensors_shapes(single)
    if not index.is_file():
        return {}
    weight_map, shapes = _read_index(index), {}
    for shard in sorted(set(weight_map.values())):
        path = folder / shard
        if not path.is_file():
            raise ValueError(f"The shard index `{index}` lists the shard `{shard}`, which is not in `{folder}`.")
        shapes.update(found := safetensors_shapes(path))
        absent = sorted(key for key, name in weight_map.items() if name == shard and key not in found)
        if absent:
            raise ValueError(
                f"The shard index `{index}` places tensors {absent[:SHOWN_KEYS]} in `{shard}`, which does "
                f"not contain them. Restore the index and shards from the same checkpoint."
            )
    return shapes


def check_shapes(expected: dict[str, tuple[int, ...]], found: dict[str, tuple[int, ...]], prefix: str) -> None:
    """Raises a `ValueError` naming every checkpoint tensor whose shape differs from the model's (`expected`), with
    both shapes, and the vocabulary sizes when the embeddings differ. A checkpoint name may lack or carry the
    backbone `prefix` (`model.`), as transformers allows."""
    wrong = []
    for key, shape in sorted(found.items()):
        name = next((n for n in (key, key.removeprefix(prefix), prefix + key) if n in expected), None)
        if name is not None and tuple(expected[name]) != tuple(shape):
            wrong.append((key, tuple(shape), tuple(expected[name])))
    if not wrong:
        return
    details = "; ".join(f"`{key}` checkpoint {ckpt} vs model {model}" for key, ckpt, model in wrong[:SHOWN_KEYS])
    vocab = next(
        (
            f" The checkpoint's vocabulary has {ckpt[0]} rows, the config's `vocab_size` is {model[0]}."
            for key, ckpt, model in wrong
            if key.endswith(("embed_tokens.weight", "lm_head.weight"))
        ),
        "",
    )
    raise ValueError(
        f"{len(wrong)} tensor(s) of the checkpoint do not have the model's shape: {details}.{vocab} "
        f"Load the config.json saved with these weights (or pass `ignore_mismatched_sizes=True` to re-initialise "
        f"those tensors)."
    )


def check_checkpoint_folder(model_class: type, folder: str | os.PathLike, kwargs: dict) -> None:
    """Checks a local checkpoint folder against `model_class` before loading: files readable (`checkpoint_shapes`)
    and every tensor of the model's shape (`check_shapes`). `kwargs` are those of `from_pretrained`: `config`,
    `variant` and config overrides such as `vocab_size` are honoured."""
    found = checkpoint_shapes(folder, kwargs.get("variant"))
    if not found or kwargs.get("ignore_mismatched_sizes"):
        return
    config = kwargs.get("config")
    if not isinstance(config, model_class.config_class):
        overrides = {key: value for key, value in kwargs.items() if key in model_class.config_class.__annotations__}
        config = model_class.config_class.from_pretrained(folder, **overrides)
    with torch.device("meta"):
        expected = {key: tuple(tensor.shape) for key, tensor in model_class(config).state_dict().items()}
    check_shapes(expected, found, model_class.base_model_prefix + ".")


def cached_folder(repo_id: str, kwargs: dict) -> str | None:
    """The local snapshot folder of a Hub checkpoint that `from_pretrained` has downloaded, or `None`."""
    download = {key: kwargs[key] for key in ("cache_dir", "revision", "token", "subfolder") if key in kwargs}
    config_file = cached_file(
        repo_id, "config.json", local_files_only=True, _raise_exceptions_for_missing_entries=False, **download
    )
    return None if config_file is None else os.path.dirname(config_file)


def check_loaded_state(model: nn.Module, info: dict, ignore_lm_head: bool) -> None:
    """Raises a `ValueError` naming the missing and unexpected tensors, or a head the checkpoint gives apart from
    the embeddings it should be tied to."""
    unexpected = sorted(key for key in info["unexpected_keys"] if not (ignore_lm_head and key.startswith("lm_head.")))
    problems = {"missing": sorted(info["missing_keys"]), "unexpected": unexpected}
    if any(problems.values()):
        details = "; ".join(f"{kind}: {keys[:SHOWN_KEYS]}" for kind, keys in problems.items() if keys)
        raise ValueError(
            f"The checkpoint does not match {type(model).__name__} ({details}). Check that it is an iLLaDA checkpoint "
            f"with the released tensor names, or pass `strict=False` to load it anyway."
        )
    head, embeddings = getattr(model, "lm_head", None), model.get_input_embeddings()
    if model.config.tie_word_embeddings and head is not None and head.weight is not embeddings.weight:
        raise ValueError(
            "The checkpoint's `lm_head.weight` differs from its `model.embed_tokens.weight`, but iLLaDA ties them "
            "(`tie_word_embeddings=True`, the only value this architecture has): transformers would load the head "
            "untied and the model would no longer be the one the config describes. Save the checkpoint with one "
            "shared tensor (drop `lm_head.weight`, or copy `model.embed_tokens.weight` into it), or pass "
            "`strict=False` to load it untied anyway."
        )


class StrictLoadingMixin:
    """Mixed into `ILLaDAPreTrainedModel` before `PreTrainedModel`: `from_pretrained` with the checks above."""

    @classmethod
    def from_pretrained(
        cls, pretrained_model_name_or_path, *args, strict: bool = True, output_loading_info: bool = False, **kwargs
    ):
        """[`PreTrainedModel.from_pretrained`], but a checkpoint that does not fill the model exactly is an error.

        transformers logs missing or unexpected tensors and silently re-initialises the missing ones; with an 8B
        checkpoint saved by another transformers version that hides a broken model. With `strict=True` (default)
        unreadable weight files, missing, unexpected or mis-shaped tensors and an untied head raise a `ValueError`
        that names them; a local folder is checked before anything is loaded. Pass
        `strict=False` for the library's lenient behaviour.
        """
        if not strict:
            return super().from_pretrained(
                pretrained_model_name_or_path, *args, output_loading_info=output_loading_info, **kwargs
            )
        folder = os.path.join(str(pretrained_model_name_or_path), kwargs.get("subfolder", ""))
        if os.path.isdir(folder):
            check_checkpoint_folder(cls, folder, kwargs)
        try:
            model, info = super().from_pretrained(
                pretrained_model_name_or_path, *args, output_loading_info=True, **kwargs
            )
        except RuntimeError as error:  # transformers' "look at the above report": name the tensors instead
            snapshot = None if os.path.isdir(folder) else cached_folder(str(pretrained_model_name_or_path), kwargs)
            if "ignore_mismatched_sizes" in str(error) and snapshot is not None:
                check_checkpoint_folder(cls, snapshot, kwargs)
            raise
        check_loaded_state(model, info, ignore_lm_head=not cls._tied_weights_keys)  # the backbone has no head
        return (model, info) if output_loading_info else model
