"""Scoring for iLLaDA (work in progress: issue 5)."""


class ILLaDAScoringMixin:
    """Mixed into `ILLaDAForCausalLM`; gives it `score_choices`."""
