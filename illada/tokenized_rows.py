"""Pre-tokenised training rows (trl's "processed" datasets: `input_ids`, with optional `completion_mask`,
`attention_mask` and `seq_lengths`), checked row by row for `illada.data.prepare_dataset`, and the row-length check
both kinds of rows share."""

from __future__ import annotations

from typing import Any


def check_tokenized_row(
    example: dict[str, Any], index: int, vocab_size: int, mask_id: int | None, max_length: int | None = None
) -> dict[str, list[int]]:
    """A pre-tokenised row as a training row: `input_ids` taken as they are (no EOS added), positions whose
    `attention_mask` is 0 (padding) dropped, `completion_mask` kept (all ones when absent), `seq_lengths` kept.

    Raises naming the row and the column: ids that are not integers in `0 .. vocab_size - 1`, the mask token, no
    tokens, masks of another length or not 0/1, `seq_lengths` that do not add up, a row over `max_length`."""
    where = f"Example {index}"
    ids = example["input_ids"]
    if not isinstance(ids, list) or not all(is_token_id(t) for t in ids):
        raise TypeError(f"{where}: `input_ids` must be a list of integer token ids, got {repr(ids)[:80]}.")
    keep = _flags(example, "attention_mask", len(ids), where)
    mask = _flags(example, "completion_mask", len(ids), where)
    ids, mask = [t for t, k in zip(ids, keep) if k], [m for m, k in zip(mask, keep) if k]
    if not ids:
        raise ValueError(f"{where}: `input_ids` holds no tokens{' outside the padding' if not all(keep) else ''}.")
    bad = [t for t in ids if not 0 <= t < vocab_size]
    if bad:
        raise ValueError(f"{where}: `input_ids` holds id {bad[0]}, outside the vocabulary 0..{vocab_size - 1}.")
    if mask_id is not None and mask_id in ids:
        raise ValueError(
            f"{where}: `input_ids` holds the mask token id {mask_id} at token {ids.index(mask_id)}: the model would "
            "learn it as a clean token."
        )
    row = {"input_ids": ids, "completion_mask": mask}
    lengths = example.get("seq_lengths")
    if lengths is not None:
        if not all(keep):
            raise ValueError(f"{where}: `seq_lengths` (packed rows) cannot go with padding in `attention_mask`.")
        valid = isinstance(lengths, list) and all(is_token_id(n) and n > 0 for n in lengths)
        if not valid or sum(lengths) != len(ids):
            raise ValueError(f"{where}: `seq_lengths` {lengths!r} must be positive integers adding up to {len(ids)}.")
        row["seq_lengths"] = lengths
    check_length(ids, max_length, where)
    return row


def is_token_id(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _flags(example: dict[str, Any], name: str, length: int, where: str) -> list[int]:
    flags = example.get(name)
    if flags is None:
        return [1] * length
    if not isinstance(flags, list) or len(flags) != length or any(f not in (0, 1) or f is None for f in flags):
        raise ValueError(f"{where}: `{name}` must be {length} values 0 or 1 (one per id), got {repr(flags)[:80]}.")
    return [int(f) for f in flags]


def check_length(ids: list[int], max_length: int | None, where: str) -> None:
    if max_length is not None and len(ids) > max_length:
        raise ValueError(
            f"{where} is {len(ids)} tokens, longer than `max_length`={max_length}: rows hold whole examples here "
            "(truncating would drop the EOS). Use `packing_strategy='wrapped'` or 'bfd_split', a longer "
            "`max_length`, or filter long examples."
        )
