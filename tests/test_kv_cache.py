"""DiffusionKVCache: a cached span forward equals the full forward right after a refresh."""

import pytest
import torch
from tiny import TINY, make_model

from illada.modeling_illada import DiffusionKVCache


def canvas_with_left_padding() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(6, TINY["vocab_size"], (2, 12), generator=g)
    ids[:, 8:] = TINY["mask_token_id"]
    mask = torch.ones_like(ids)
    mask[1, :3] = 0
    ids[1, :3] = TINY["pad_token_id"]
    position_ids = (mask.cumsum(-1) - 1).clamp(min=0)
    return ids, mask, position_ids


@pytest.mark.parametrize("attn", ["eager", "sdpa"])
@pytest.mark.parametrize("span", [(6, 12), (6, 9), (0, 4)], ids=["prefix", "dual", "start"])
def test_span_forward_after_refresh_equals_full_forward(attn, span):
    model = make_model(attn_implementation=attn)
    ids, mask, position_ids = canvas_with_left_padding()
    start, end = span
    cache = DiffusionKVCache()
    with torch.no_grad():
        full = model(ids, attention_mask=mask, position_ids=position_ids, kv_cache=cache).logits
        cache.span = span
        part = model(
            ids[:, start:end], attention_mask=mask, position_ids=position_ids[:, start:end], kv_cache=cache
        ).logits
    assert cache.seq_len == 12
    real = mask[:, start:end].bool()  # logits at padding positions are unspecified
    assert (part - full[:, start:end])[real].abs().max() <= 1e-5


def test_stale_cache_is_an_approximation_and_a_refresh_makes_it_exact():
    model = make_model()
    ids, mask, position_ids = canvas_with_left_padding()
    cache = DiffusionKVCache()
    with torch.no_grad():
        model(ids, attention_mask=mask, position_ids=position_ids, kv_cache=cache)
        changed = ids.clone()
        changed[:, 8] = 7  # a token outside the span was committed after the refresh
        cache.span = (9, 12)
        stale = model(changed[:, 9:], attention_mask=mask, position_ids=position_ids[:, 9:], kv_cache=cache).logits
        exact = model(changed, attention_mask=mask, position_ids=position_ids).logits[:, 9:]
        assert (stale - exact).abs().max() > 1e-5
        cache.span = None
        model(changed, attention_mask=mask, position_ids=position_ids, kv_cache=cache)
        cache.span = (9, 12)
        fresh = model(changed[:, 9:], attention_mask=mask, position_ids=position_ids[:, 9:], kv_cache=cache).logits
    assert (fresh - exact).abs().max() <= 1e-5


def test_span_errors():
    model = make_model()
    ids, mask, _ = canvas_with_left_padding()
    cache = DiffusionKVCache()
    cache.span = (0, 4)
    with pytest.raises(ValueError, match="`kv_cache` is empty"):
        model(ids[:, :4], kv_cache=cache)
    cache.span = None
    with torch.no_grad():
        model(ids, kv_cache=cache)
    for span in [(4, 20), (5, 4)]:
        cache.span = span
        with pytest.raises(ValueError, match="must satisfy"):
            model(ids[:, :4], kv_cache=cache)
    cache.span = (0, 4)
    with pytest.raises(ValueError, match="2-D padding mask of the whole canvas"):
        model(ids[:, :4], attention_mask=mask[:, :4], kv_cache=cache)
