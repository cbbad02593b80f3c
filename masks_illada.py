"""The attention masks of iLLaDA's bidirectional Transformer: key padding, packed documents and the cached span.

No mask built here is ever causal. transformers' `create_bidirectional_mask` ignores `position_ids`, so packed
documents would attend to each other; these helpers add the block-diagonal mask of packed documents themselves.
"""

from __future__ import annotations

from numbers import Integral

import torch


def _tracing() -> bool:
    """True inside `torch.compile` and `torch.export`. The shortcuts below read tensor values to skip a mask that
    changes nothing; a traced graph cannot branch on values, so it always builds the mask (same result)."""
    return torch.compiler.is_compiling()


def _document_ids(position_ids: torch.Tensor) -> torch.Tensor | None:
    """Per-token document index of packed rows (a document starts where `position_ids` is 0), or `None`
    when no row holds more than one document."""
    starts = position_ids == 0  # [B, L]
    if not _tracing() and not starts[:, 1:].any():
        return None
    return starts.cumsum(-1)


def _attention_mask_4d(mask: torch.Tensor, batch_size: int, seq_len: int) -> torch.Tensor:
    """Checks a user mask (2-D key padding, 3-D or 4-D, bool or additive) and returns it as 4-D."""
    if mask.dim() == 2:
        if mask.shape != (batch_size, seq_len):
            raise ValueError(
                f"A 2-D `attention_mask` must have shape (batch_size, seq_len) = {(batch_size, seq_len)}, "
                f"got {tuple(mask.shape)}."
            )
        return mask.bool()[:, None, None, :].expand(batch_size, 1, seq_len, seq_len)
    if mask.dim() == 3:
        mask = mask[:, None]
    if mask.dim() != 4 or mask.shape[0] not in (1, batch_size) or mask.shape[-2:] != (seq_len, seq_len):
        raise ValueError(
            f"`attention_mask` must be 2-D (batch_size, seq_len), 3-D (batch_size, seq_len, seq_len) or 4-D "
            f"(batch_size, 1 or heads, seq_len, seq_len) with batch_size={batch_size}, seq_len={seq_len}; "
            f"got shape {tuple(mask.shape)}."
        )
    if mask.dtype != torch.bool and not mask.is_floating_point():
        mask = mask.bool()  # 0/1 integer masks mean keep/drop
    return mask


def build_bidirectional_mask(
    attention_mask: torch.Tensor | None,
    position_ids: torch.Tensor,
    dtype: torch.dtype,
    attn_implementation: str,
    packed: bool = True,
) -> torch.Tensor | None:
    """The attention mask handed to the kernels: never causal.

    Combines key padding (or a user 4-D mask) with the block-diagonal mask of packed documents found in
    `position_ids` (`packed=False`: the caller knows there are none, as for the default `arange` positions).
    Returns `None` when every token may attend to every token (outside `torch.compile` / `torch.export`). For
    `eager` the result is additive; for the other kernels a boolean `(batch, 1, seq_len, seq_len)` mask
    (True = attend). flash attention gets the 2-D padding mask (or `None`, and finds packed documents in
    `position_ids` itself).
    """
    batch_size, seq_len = position_ids.shape
    if attn_implementation.startswith("flash"):
        if attention_mask is not None and attention_mask.dim() != 2:
            raise ValueError("`flash_attention_2` takes only a 2-D padding `attention_mask`; use `sdpa` for 4-D masks.")
        return None if attention_mask is None or (not _tracing() and attention_mask.bool().all()) else attention_mask
    mask = None if attention_mask is None else _attention_mask_4d(attention_mask, batch_size, seq_len)
    doc_ids = _document_ids(position_ids) if packed else None
    if doc_ids is not None:
        same_doc = (doc_ids[:, :, None] == doc_ids[:, None, :])[:, None]  # [B, 1, L, L]
        if mask is None or mask.dtype == torch.bool:
            mask = same_doc if mask is None else mask & same_doc
        else:
            mask = mask.masked_fill(~same_doc, torch.finfo(mask.dtype).min)
    if mask is None or (mask.dtype == torch.bool and not _tracing() and mask.all()):
        return None
    if mask.dtype == torch.bool:
        # A row with no visible key (an all-padding row) attends to itself rather than producing NaN.
        eye = torch.eye(seq_len, dtype=torch.bool, device=mask.device)
        mask = mask | (~mask.any(-1, keepdim=True) & eye)
        if attn_implementation == "eager":
            return torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill(~mask, torch.finfo(dtype).min)
        return mask
    return mask.to(dtype)


def build_span_mask(
    attention_mask: torch.Tensor | None,
    span: tuple[int, int],
    key_len: int,
    dtype: torch.dtype,
    attn_implementation: str,
) -> torch.Tensor | None:
    """Key-padding mask for a cached forward: queries `span` of the canvas, keys the whole canvas."""
    if attention_mask is None or (not _tracing() and attention_mask.bool().all()):
        return None
    if attention_mask.dim() != 2 or attention_mask.shape[-1] != key_len:
        raise ValueError(
            f"With a `kv_cache` span, `attention_mask` must be the 2-D padding mask of the whole canvas "
            f"(batch_size, {key_len}), got shape {tuple(attention_mask.shape)}."
        )
    if attn_implementation.startswith("flash"):
        raise ValueError("A `kv_cache` span with padding needs `sdpa` or `eager` attention, not flash attention.")
    start, end = span
    keep = attention_mask.bool()[:, None, None, :].expand(-1, 1, end - start, key_len)
    own_key = torch.zeros(end - start, key_len, dtype=torch.bool, device=keep.device)
    own_key[:, start:end] = torch.eye(end - start, dtype=torch.bool, device=keep.device)
    keep = keep | (~keep.any(-1, keepdim=True) & own_key)  # all-padding rows attend to themselves, not NaN
    if attn_implementation == "eager":
        return torch.zeros(keep.shape, dtype=dtype, device=keep.device).masked_fill(~keep, torch.finfo(dtype).min)
    return keep


def check_logits_to_keep(logits_to_keep, batch_size: int, seq_len: int) -> int | torch.Tensor:
    """Checks the `logits_to_keep` of a forward on `(batch_size, seq_len)` inputs; returns it (an integer as `int`).

    Valid: an int `n >= 0` (the last `n` positions, 0 for all; more than `seq_len` keeps all); an integer tensor of
    positions in `[0, seq_len)`, 1-D or 2-D `(batch_size, n)`; a boolean mask `(batch_size, seq_len)` or `(seq_len,)`.
    transformers' `slice_logits_to_keep` would read a negative int as a slice from the start, and index a float or
    out-of-range tensor with a raw torch error.
    """
    if isinstance(logits_to_keep, bool) or not isinstance(logits_to_keep, (Integral, torch.Tensor)):
        raise TypeError(
            f"`logits_to_keep` must be an int or a tensor (positions, or a boolean mask), got "
            f"{type(logits_to_keep).__name__} {logits_to_keep!r}."
        )
    if not isinstance(logits_to_keep, torch.Tensor):
        if logits_to_keep < 0:
            raise ValueError(
                f"`logits_to_keep` must be >= 0 (the number of last positions kept; 0 keeps all), got {logits_to_keep}."
            )
        return int(logits_to_keep)
    keep = logits_to_keep
    if keep.dtype == torch.bool:
        if tuple(keep.shape) not in ((batch_size, seq_len), (seq_len,)):
            raise ValueError(
                f"A boolean `logits_to_keep` must have the shape of the inputs (batch_size, seq_len) = "
                f"{(batch_size, seq_len)} (or ({seq_len},)), got {tuple(keep.shape)}."
            )
        return keep
    if keep.is_floating_point() or keep.is_complex():
        raise TypeError(
            f"`logits_to_keep` must be an integer tensor of positions or a boolean mask, got dtype {keep.dtype}."
        )
    if keep.dim() not in (1, 2) or (keep.dim() == 2 and keep.shape[0] != batch_size):
        raise ValueError(
            f"A `logits_to_keep` tensor of positions must be 1-D, or 2-D (batch_size={batch_size}, "
            f"num_positions), got shape {tuple(keep.shape)}."
        )
    if keep.numel() and not _tracing() and (keep.min() < 0 or keep.max() >= seq_len):
        raise ValueError(
            f"`logits_to_keep` holds positions outside [0, {seq_len}) (the input length): "
            f"{sorted(set(keep[(keep < 0) | (keep >= seq_len)].tolist()))[:5]}."
        )
    return keep


__all__ = ["build_bidirectional_mask", "build_span_mask", "check_logits_to_keep"]
