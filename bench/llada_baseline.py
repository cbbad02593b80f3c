"""The peer baseline: the official LLaDA sampling loop (ML-GSAI/LLaDA `generate.py`), re-implemented here.

Kept deliberately as the official code behaves, because the benchmarks measure our sampler against it:
fixed length (the whole budget of masks allocated up front), one forward over the full canvas per step,
logits and float64 Gumbel noise over every position and the whole vocabulary, no cache, no early stop,
prompts of one length (no attention mask). Only its arithmetic is reproduced, in our own code.
"""

import torch


def transfer_schedule(masked: torch.Tensor, steps: int) -> torch.Tensor:
    """(batch, block) bool -> (batch, steps) tokens to commit per step: n // steps, +1 on the first n % steps."""
    count = masked.sum(dim=1, keepdim=True)
    schedule = (count // steps).repeat(1, steps)
    schedule += torch.arange(steps)[None] < (count % steps)
    return schedule


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
    batch, prompt_len = prompt.shape
    x = torch.full((batch, prompt_len + gen_length), mask_id, dtype=torch.long)
    x[:, :prompt_len] = prompt
    num_blocks = gen_length // block_length
    steps_per_block = steps // num_blocks
    forwards = 0
    for block in range(num_blocks):
        end = prompt_len + (block + 1) * block_length
        schedule = transfer_schedule(x[:, end - block_length : end] == mask_id, steps_per_block)
        for step in range(steps_per_block):
            masked = x == mask_id
            logits = model(x).logits  # every position, every step
            forwards += 1
            noisy = logits.double().exp() / (-torch.rand_like(logits, dtype=torch.float64).log()) ** temperature
            x0 = noisy.argmax(-1)
            confidence = torch.softmax(logits.double(), -1).gather(-1, x0[..., None])[..., 0]
            confidence[:, end:] = -torch.inf
            x0 = torch.where(masked, x0, x)
            confidence = torch.where(masked, confidence, -torch.inf)
            commit = torch.zeros_like(x, dtype=torch.bool)
            for row in range(batch):  # the official per-row top-k loop
                commit[row, torch.topk(confidence[row], k=int(schedule[row, step])).indices] = True
            x[commit] = x0[commit]
    return x, forwards
