"""Helpers of the training, evaluation and demo tools (never shipped in a model folder): dtype names, a count check
and a tokenizer loader that checks a folder's JSON files first."""

from __future__ import annotations

import os
from dataclasses import MISSING, fields
from typing import Any

import numpy as np
import torch
from transformers import AutoTokenizer

from illada.utils_illada import check_choice, check_json_files, is_int

# Names accepted wherever a dtype is chosen by a string (CLI flags, lm-eval model args); "auto" keeps the
# checkpoint's own dtype.
DTYPES: dict[str, Any] = {
    "auto": "auto",
    "float32": torch.float32,
    "bfloat16": torch.bfloat16,
    "float16": torch.float16,
}


def check_non_negative_int(name: str, value: Any, allow_none: bool = False) -> None:
    """`value` is an integer >= 0 (or None when `allow_none`)."""
    if value is None and allow_none:
        return
    if not is_int(value) or value < 0:
        raise ValueError(f"`{name}` must be an integer >= 0{' or None' if allow_none else ''}, got {value!r}.")


def refuse_inert(owner: Any, names: tuple[str, ...], reason: str) -> None:
    """Raises naming the first of `names` that `owner` (a dataclass of flags) sets away from its default: the flag
    would have no effect, because `reason`. An inert flag is a user's mistake, so it is refused, not ignored."""
    defaults = {f.name: f.default_factory() if f.default_factory is not MISSING else f.default for f in fields(owner)}
    for name in names:
        value = getattr(owner, name)
        if value != defaults[name]:
            raise ValueError(f"`{name}`={value!r} has no effect {reason}: leave it unset, or change the other flag.")


def resolve_dtype(name: str, argument: str = "dtype") -> Any:
    """The torch dtype (or "auto") for a name of `DTYPES`; `argument` names the option in the error."""
    check_choice(argument, name, DTYPES)
    return DTYPES[name]


# The JSON files a tokenizer folder may hold; `load_tokenizer` checks those present before transformers reads them.
TOKENIZER_JSON_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "chat_template.json",
    "vocab.json",
)


def load_tokenizer(name_or_path: str | os.PathLike, **kwargs: Any):
    """`AutoTokenizer.from_pretrained(name_or_path, **kwargs)`; for a local folder, its JSON files are checked first
    (`check_json_files`): transformers and tokenizers raise a bare `JSONDecodeError` / `UnicodeDecodeError` that
    names no file."""
    folder = os.path.join(name_or_path, kwargs.get("subfolder") or "")
    if os.path.isdir(folder):
        check_json_files(folder, TOKENIZER_JSON_FILES)
    return AutoTokenizer.from_pretrained(name_or_path, **kwargs)


def mask_seed(*key: int) -> int:
    """A 32-bit generator seed mixed from `key`: (seed, step) for the trainer's masks, (seed, step, example, answer)
    for VRPO's. The one seeding scheme of the tools. torch's CPU generator keeps only the low 32 bits of a seed, so
    arithmetic mixing such as `seed * 2**32 + step` drops `seed`; numpy's `SeedSequence` hashes the whole key."""
    return int(np.random.SeedSequence(list(key)).generate_state(1)[0])
