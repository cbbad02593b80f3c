"""Diffusion sampling for iLLaDA (work in progress: issue 3)."""


class ILLaDAGenerationMixin:
    """Mixed into `ILLaDAForCausalLM`; gives it a diffusion `generate`."""
