"""Builders of a tiny iLLaDA built in-process (no downloads), fp32 on CPU."""

from pathlib import Path

import torch
from safetensors.torch import save_file

from illada.configuration_illada import ILLaDAConfig
from illada.modeling_illada import ILLaDAForCausalLM

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


RELEASED_KEYS = [
    "model.embed_tokens.weight",
    "model.norm.weight",
    "lm_head.weight",
    *[f"model.layers.{{i}}.self_attn.{p}_proj.weight" for p in "qkvo"],
    *[f"model.layers.{{i}}.mlp.{p}_proj.weight" for p in ("gate", "up", "down")],
    "model.layers.{i}.input_layernorm.weight",
    "model.layers.{i}.post_attention_layernorm.weight",
]


def released_state_dict(config: ILLaDAConfig) -> dict[str, torch.Tensor]:
    """A state dict spelled with the released checkpoint's tensor names (docs/architecture.md), shapes from the
    config."""
    h, kv = config.hidden_size, config.num_key_value_heads * config.head_dim
    shapes = {
        "embed_tokens": (config.vocab_size, h),
        "lm_head": (config.vocab_size, h),
        "norm": (h,),
        "q_proj": (h, h),
        "k_proj": (kv, h),
        "v_proj": (kv, h),
        "o_proj": (h, h),
        "gate_proj": (config.intermediate_size, h),
        "up_proj": (config.intermediate_size, h),
        "down_proj": (h, config.intermediate_size),
        "layernorm": (h,),
    }
    g = torch.Generator().manual_seed(0)
    state = {}
    for template in RELEASED_KEYS:
        for i in range(config.num_hidden_layers) if "{i}" in template else [None]:
            key = template.format(i=i)
            shape = next(s for part, s in shapes.items() if part in key)
            state[key] = torch.randn(shape, generator=g)
    state["lm_head.weight"] = state["model.embed_tokens.weight"].clone()
    return state


def write_checkpoint(folder: Path, state: dict[str, torch.Tensor], config: ILLaDAConfig) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    config.save_pretrained(folder)
    save_file(state, folder / "model.safetensors", metadata={"format": "pt"})
