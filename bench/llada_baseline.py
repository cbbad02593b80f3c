"""The peer baseline: the official LLaDA sampling loop (ML-GSAI/LLaDA `generate.py`), as the benchmarks run it.

The loop itself is `tests/reference_sampler.llada_generate`, the one restatement of LLaDA's arithmetic in this
repository, which the tests check our fixed canvas against token for token. It behaves as the official code:
fixed length (the whole budget of masks allocated up front), one forward over the full canvas per step, logits
of every position over the whole vocabulary (float64 Gumbel noise on all of them when sampling), a per-row top-k,
no cache, no early stop, prompts of one length (no attention mask). This module only counts its forwards.
"""

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from reference_sampler import llada_generate as reference_llada_generate  # noqa: E402


@torch.no_grad()
def llada_generate(
    model: torch.nn.Module,
    prompt: torch.Tensor,
    mask_id: int,
    gen_length: int = 128,
    block_length: int = 32,
    steps: int = 128,
    temperature: float = 0.0,
) -> tuple[torch.Tensor, int]:
    """Returns (canvas of shape (batch, prompt_len + gen_length), number of forward passes)."""
    forwards = 0

    def logits_fn(x: torch.Tensor) -> torch.Tensor:
        nonlocal forwards
        forwards += 1
        return model(x).logits  # every position, every step

    canvas = reference_llada_generate(
        logits_fn,
        prompt,
        mask_id=mask_id,
        steps=steps,
        gen_length=gen_length,
        block_length=block_length,
        temperature=temperature,
    )
    return canvas, forwards
