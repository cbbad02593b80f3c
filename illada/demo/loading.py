"""Loading the demo model as a Hub user would, and the prompt helper `demo.py` and `illada.demo.evaluate` share.

Loading a model folder runs its Python files (`trust_remote_code=True`). The shipped `illada-demo/` folder of this
repository is trusted; any other folder is loaded only when the caller says so (`--trust-remote-code`).
"""

import argparse
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, PreTrainedModel, PreTrainedTokenizerBase
from transformers.utils import logging as hf_logging

from illada.utils import load_tokenizer

SHIPPED_MODEL_DIR = Path(__file__).resolve().parents[2] / "illada-demo"


def is_shipped_model(folder: str | Path) -> bool:
    """Whether `folder` is this repository's `illada-demo/` (whose code files are the repository's own)."""
    return Path(folder).resolve() == SHIPPED_MODEL_DIR


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    """`--model` (default: the shipped `illada-demo/`) and `--trust-remote-code`, as the demo's tools take them."""
    parser.add_argument("--model", default=str(SHIPPED_MODEL_DIR), help="Model folder (default: illada-demo/).")
    parser.add_argument(
        "--trust-remote-code",
        action="store_true",
        help="Needed for any folder but the shipped illada-demo/: loading a model folder runs its Python files.",
    )


def check_model_folder(folder: str | Path) -> None:
    """Raises `ValueError` when `folder` holds no model (no `config.json`), before anything is loaded."""
    if not (Path(folder) / "config.json").is_file():
        raise ValueError(
            f"No model folder at {folder} (no config.json): pass `--model`, or build the demo model "
            "with `python -m illada.demo.build_demo_model`."
        )


def load_model(
    folder: str | Path, device: str = "cpu", trust_remote_code: bool = False
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Loads the model and tokenizer the way any Hub user would (remote code, offline from a local folder).

    Raises:
        ValueError: `folder` is not the shipped `illada-demo/` and `trust_remote_code` is not set: loading it would
            run its Python files.
    """
    if not (trust_remote_code or is_shipped_model(folder)):
        raise ValueError(
            f"{folder} is not the shipped illada-demo/ folder: loading it runs the Python files it "
            f"holds (modeling_illada.py, ...). If you trust them, pass `--trust-remote-code`."
        )
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    model = AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=True).to(device).eval()
    tokenizer = load_tokenizer(folder, trust_remote_code=True)
    return model, tokenizer


def encode(tokenizer: PreTrainedTokenizerBase, messages: list[dict[str, str]]) -> torch.Tensor:
    """The conversation in the chat template, ending with the assistant header: `(1, prompt_len)` ids."""
    return tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt", return_dict=True)[
        "input_ids"
    ]
