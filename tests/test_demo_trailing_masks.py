"""bench/demo_trailing_masks.py: rows with input-only masks after the example, and the loss over example tokens."""

import math
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
import demo_trailing_masks  # noqa: E402

from illada.trainer import DEFAULT_EPS  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")

MASK, PAD = 5, 1


def test_rows_are_the_example_then_its_masks_then_padding():
    input_ids, attention, is_example = demo_trailing_masks.trailing_mask_batch([[7, 8, 2], [9, 2]], [2, 0], MASK, PAD)
    assert input_ids.tolist() == [[7, 8, 2, MASK, MASK], [9, 2, PAD, PAD, PAD]]
    assert attention.tolist() == [[1, 1, 1, 1, 1], [1, 1, 0, 0, 0]]
    assert is_example.tolist() == [[True, True, True, False, False], [True, True, False, False, False]]


def test_loss_is_the_weighted_cross_entropy_of_masked_example_tokens_only(tiny_config):
    from illada.modeling_illada import ILLaDAForCausalLM

    torch.manual_seed(0)
    model = ILLaDAForCausalLM(tiny_config).eval()
    mask_id = tiny_config.mask_token_id
    rows = [[11, 12, 13, 14, 2], [15, 16, 2]]
    tensors = demo_trailing_masks.trailing_mask_batch(rows, [3, 1], mask_id, tiny_config.pad_token_id)
    loss = demo_trailing_masks.diffusion_loss(model, *tensors, mask_id, torch.Generator().manual_seed(1))

    # the same draws, then the loss by a float64 loop over positions
    generator = torch.Generator().manual_seed(1)
    input_ids, attention, is_example = tensors
    t = torch.rand(2, 1, generator=generator) * (1 - DEFAULT_EPS) + DEFAULT_EPS
    draws = torch.rand(input_ids.shape, generator=generator)
    noisy = input_ids.clone()
    chosen = []
    for i in range(2):
        for j in range(input_ids.shape[1]):
            if is_example[i, j] and draws[i, j] < t[i, 0]:
                noisy[i, j] = mask_id
                chosen.append((i, j))
    assert chosen, "the draw masked nothing: pick another seed"
    with torch.no_grad():
        logits = model(input_ids=noisy, attention_mask=attention).logits.double()
    total = 0.0
    for i, j in chosen:
        log_probs = torch.log_softmax(logits[i, j], -1)
        total += -log_probs[input_ids[i, j]].item() / t[i, 0].item()
    expected = total / sum(len(row) for row in rows)
    assert math.isclose(loss.item(), expected, rel_tol=1e-5)
