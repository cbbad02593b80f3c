"""The key-value cache of diffusion sampling, imported by the model (which fills it) and by generation (which
drives it), so that neither imports the other."""

from __future__ import annotations

import torch


class DiffusionKVCache:
    """Keys and values of a whole canvas, reused by later forwards over a span of it.

    This is the prefix / dual cache of Fast-dLLM (arXiv 2505.22618) for diffusion sampling. A forward with
    `kv_cache.span = None` (a refresh) runs on the full canvas and stores every layer's keys and values. A
    forward with `kv_cache.span = (start, end)` takes only the tokens `canvas[:, start:end]`, computes their
    queries, keys and values, and attends to the stored keys and values everywhere else. `end` equal to the
    canvas length reuses only the prefix; a smaller `end` also reuses the suffix ("dual" cache).

    In a bidirectional model the stored entries go stale as soon as the canvas changes, because every position
    attends to every other: the cached forward is an approximation, exact right after a refresh.
    """

    def __init__(self) -> None:
        self.keys: dict[int, torch.Tensor] = {}
        self.values: dict[int, torch.Tensor] = {}
        self.span: tuple[int, int] | None = None

    @property
    def seq_len(self) -> int:
        """Length of the stored canvas (0 before the first refresh)."""
        return next(iter(self.keys.values())).shape[2] if self.keys else 0

    def update(self, layer_idx: int, key: torch.Tensor, value: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Stores `key`/`value` `(batch, kv_heads, seq_len, head_dim)` on a refresh, else splices them into the span."""
        if self.span is None:
            self.keys[layer_idx], self.values[layer_idx] = key, value
            return key, value
        start, end = self.span
        cached_key, cached_value = self.keys[layer_idx], self.values[layer_idx]
        key = torch.cat([cached_key[:, :, :start], key, cached_key[:, :, end:]], dim=2)
        value = torch.cat([cached_value[:, :, :start], value, cached_value[:, :, end:]], dim=2)
        return key, value


__all__ = ["DiffusionKVCache"]
