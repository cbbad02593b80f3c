"""Pieces shared by the iLLaDA Hub modules: argument checks, a JSON file check and classifier-free guidance.

Each check raises the error the style guide asks for: `ValueError` for a bad value, `TypeError` for a wrong type,
with the argument's name in backticks, the value received and what is allowed. The Hub folder carries this file
next to `modeling_illada.py` (transformers copies the modules the model file imports with a relative import).
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterable
from numbers import Integral, Real
from typing import Any

import torch


def is_int(value: Any) -> bool:
    """True for Python and numpy integers, False for `bool` (which is an `int` subclass)."""
    return isinstance(value, Integral) and not isinstance(value, bool)


def check_positive_int(name: str, value: Any, allow_none: bool = False) -> None:
    """`value` is an integer >= 1 (or None when `allow_none`)."""
    if value is None and allow_none:
        return
    if not is_int(value) or value < 1:
        raise ValueError(f"`{name}` must be a positive integer{' or None' if allow_none else ''}, got {value!r}.")


def check_choice(name: str, value: Any, choices: Iterable) -> None:
    """`value` is one of `choices`."""
    choices = list(choices)
    if value not in choices:
        raise ValueError(f"`{name}` must be one of {choices}, got {value!r}.")


def is_one_line(value: Any) -> bool:
    """`value` is a string with a non-blank character and no line break."""
    return isinstance(value, str) and bool(value.strip()) and len(value.splitlines()) == 1


def as_tag_list(name: str, value: Any) -> list[str]:
    """`value` (a tag, a list or tuple of tags, or `None`) as a list of tags, each a one-line string."""
    if value is None:
        return []
    tags = [value] if isinstance(value, str) else value
    if not isinstance(tags, list | tuple) or not all(is_one_line(tag) for tag in tags):
        raise TypeError(f"`{name}` must be a tag or a list of tags (non-blank one-line strings), got {value!r}.")
    return list(tags)


def check_range(
    name: str, value: Any, low: float, high: float, *, low_open: bool = False, high_open: bool = False
) -> None:
    """`value` is a finite number in the interval from `low` to `high` (open or closed at each end).

    NaN and infinities are refused even when the interval is unbounded (`high=math.inf`).
    """
    if isinstance(value, bool) or not isinstance(value, Real):
        raise TypeError(f"`{name}` must be a number, got {type(value).__name__} {value!r}.")
    interval = f"{'(' if low_open else '['}{low}, {high}{')' if high_open else ']'}"
    if not math.isfinite(value):
        raise ValueError(f"`{name}` must be a finite number in {interval}, got {value!r}.")
    if (value <= low if low_open else value < low) or (value >= high if high_open else value > high):
        raise ValueError(f"`{name}` must be in {interval}, got {value!r}.")


def check_token_ids(name: str, value: Any, allow_int: bool = False, allow_none: bool = True) -> None:
    """`value` is a list/tuple of token ids (non-negative integers), or one id when `allow_int`."""
    if (value is None and allow_none) or (allow_int and is_int(value) and value >= 0):
        return
    if not isinstance(value, (list, tuple)) or not all(is_int(t) and t >= 0 for t in value):
        kind = "a token id or a list of token ids" if allow_int else "a list of token ids"
        none = "None or " if allow_none else ""
        raise ValueError(f"`{name}` must be {none}{kind} (non-negative integers), got {value!r}.")


def as_id_list(value: Any) -> list[int]:
    """None -> [], one id -> [id], a sequence of ids -> list of ints (checked by `check_token_ids` first)."""
    if value is None:
        return []
    return [int(value)] if is_int(value) else [int(t) for t in value]


# Largest classifier-free guidance scale, for generation and scoring alike: scales in use are 0-3 (LLaDA); far larger
# ones only amplify `c - u` until the guided logits overflow float32 (NaN scores, the mask token in an answer).
MAX_CFG_SCALE = 1e3


def check_json_files(folder: str | os.PathLike, names: Iterable[str]) -> None:
    """Each file of `names` present in `folder` is a UTF-8 JSON object; else a `ValueError` naming the file."""
    for name in names:
        path = os.path.join(folder, name)
        if not os.path.isfile(path):
            continue
        try:
            with open(path, encoding="utf-8") as handle:
                content = json.load(handle)
        except (json.JSONDecodeError, UnicodeDecodeError) as error:
            raise ValueError(
                f"`{path}` is not valid JSON ({error}): it is empty, truncated or corrupt, probably by an "
                f"interrupted save, copy or download. Restore {name} from the original folder."
            ) from None
        if not isinstance(content, dict):
            raise ValueError(
                f"`{path}` holds a JSON {type(content).__name__}, not an object. Restore {name} from "
                f"the original folder."
            )


def guided_logits(conditional: torch.Tensor, unconditional: torch.Tensor, cfg_scale: float) -> torch.Tensor:
    """Unsupervised classifier-free guidance (LLaDA App. B.3, after Nie et al. 2024): `u + (s + 1) (c - u)`.

    Used by generation and by scoring; `cfg_scale = 0` gives back the conditional logits.
    """
    return unconditional + (cfg_scale + 1) * (conditional - unconditional)
