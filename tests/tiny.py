"""Builders of a tiny iLLaDA built in-process (no downloads), fp32 on CPU."""

import torch

from configuration_illada import ILLaDAConfig
from modeling_illada import ILLaDAForCausalLM

TINY = dict(
    vocab_size=97,
    hidden_size=32,
    intermediate_size=64,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=256,
    rope_theta=10000.0,
    pad_token_id=1,
    bos_token_id=0,
    eos_token_id=2,
    mask_token_id=5,
)


def make_config(**overrides) -> ILLaDAConfig:
    return ILLaDAConfig(**{**TINY, **overrides})


def make_model(seed: int = 0, attn_implementation: str = "sdpa", **overrides) -> ILLaDAForCausalLM:
    torch.manual_seed(seed)
    config = make_config(**overrides)
    model = ILLaDAForCausalLM._from_config(config, attn_implementation=attn_implementation)
    return model.eval()


# A random tiny model with the default 0.02 init is almost uniform; a wider init gives confidences that differ.
SHARP = dict(initializer_range=0.3)

FIRST_ORDINARY_ID = 6  # ids 0-5 are special in the tiny vocabulary


def random_prompts(lengths: list[int], seed: int = 0) -> list[list[int]]:
    """Prompts of the given lengths, ordinary (non-special) token ids only."""
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(FIRST_ORDINARY_ID, TINY["vocab_size"], (n,), generator=g).tolist() for n in lengths]


def left_pad(prompts: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
    """A left-padded batch and its attention mask."""
    width = max(len(p) for p in prompts)
    pad = TINY["pad_token_id"]
    ids = torch.tensor([[pad] * (width - len(p)) + p for p in prompts])
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts])
    return ids, mask
