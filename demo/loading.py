"""Loading the demo model as a Hub user would, and the prompt and stop-token helpers `demo.py` and
`demo.evaluate` share."""

from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig, PreTrainedModel, PreTrainedTokenizerBase
from transformers.utils import logging as hf_logging


def load_model(folder: str | Path, device: str = "cpu") -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Loads the model and tokenizer the way any Hub user would (remote code, offline from a local folder)."""
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    model = AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=True).to(device).eval()
    tokenizer = AutoTokenizer.from_pretrained(folder, trust_remote_code=True)
    return model, tokenizer


def encode(tokenizer: PreTrainedTokenizerBase, messages: list[dict[str, str]]) -> torch.Tensor:
    """The conversation in the chat template, ending with the assistant header: `(1, prompt_len)` ids."""
    return tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt",
                                         return_dict=True)["input_ids"]


def stop_token_ids(model: PreTrainedModel, settings: GenerationConfig) -> set[int]:
    """EOS and the other stop tokens of the generation config (or of the model config)."""
    eos = settings.eos_token_id if settings.eos_token_id is not None else model.config.eos_token_ids
    eos = [eos] if isinstance(eos, int) else list(eos)
    return set(eos) | set(settings.stop_token_ids or [])
