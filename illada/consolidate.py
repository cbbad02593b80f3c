"""Turns a sharded training checkpoint (FSDP or DeepSpeed ZeRO) into a normal `save_pretrained` folder.

Under `configs/accelerate/fsdp2*.yaml` a `checkpoint-N` folder holds the weights as torch distributed-checkpoint
shards (`pytorch_model_fsdp_0/`); under DeepSpeed ZeRO it holds `global_stepN/` with one file of fp32 partitions
per process. Both resume training as they are (`--resume`); to evaluate or publish one, consolidate it:

    python -m illada.consolidate out/sft/checkpoint-500 out/sft-500

The output folder loads with `AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=True)`: float32
weights (`--dtype bfloat16` halves them), the code files, the config, and the tokenizer and generation config
when the checkpoint has them. The config is the checkpoint's (the trainer writes it next to the shards), or
`--config` (a model folder). Runs on CPU in one process; needs the whole model in CPU memory (8B: 31 GB in fp32).
An existing non-empty output folder is refused: nothing is overwritten.
"""

from __future__ import annotations

import argparse
import logging
import tempfile
from pathlib import Path

import torch
from safetensors.torch import save_file

from illada.configuration_illada import ILLaDAConfig
from illada.modeling_illada import ILLaDAForCausalLM
from illada.utils import DTYPES

__all__ = ["consolidate", "load_sharded_state_dict", "main", "save_full_model"]

logger = logging.getLogger(__name__)

FSDP_MODEL_DIR = "pytorch_model_fsdp_0"
DEEPSPEED_STEP_PREFIX = "global_step"
# Files of the checkpoint that the output folder keeps as they are.
CARRIED_FILES = ("generation_config.json", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")


def load_sharded_state_dict(checkpoint: str | Path) -> dict[str, torch.Tensor]:
    """The full model state dict (float32, on CPU) of an FSDP (`pytorch_model_fsdp_0/`) or DeepSpeed ZeRO
    (`global_stepN/`) checkpoint folder."""
    checkpoint = Path(checkpoint)
    if (checkpoint / FSDP_MODEL_DIR).is_dir():
        from torch.distributed.checkpoint.api import CheckpointException
        from torch.distributed.checkpoint.format_utils import dcp_to_torch_save

        with tempfile.TemporaryDirectory() as scratch:
            merged = Path(scratch) / "model.pt"
            try:
                dcp_to_torch_save(checkpoint / FSDP_MODEL_DIR, merged)
            # torch's reader raises many types for missing or cut files; its own is a BaseException.
            except (Exception, CheckpointException) as error:
                raise ValueError(
                    f"`{checkpoint / FSDP_MODEL_DIR}` is not a complete torch distributed checkpoint "
                    f"({type(error).__name__}: {_last_line(error)})."
                ) from error
            state_dict = torch.load(merged, weights_only=True, map_location="cpu")
        # accelerate saves `{"model": state_dict}` under FSDP2.
        if set(state_dict) == {"model"}:
            state_dict = state_dict["model"]
        return state_dict
    if any(path.is_dir() for path in checkpoint.glob(f"{DEEPSPEED_STEP_PREFIX}*")):
        try:
            from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint
        except ImportError as error:
            raise ImportError(
                f"{checkpoint} is a DeepSpeed checkpoint; consolidating it needs the `deepspeed` package."
            ) from error
        return get_fp32_state_dict_from_zero_checkpoint(str(checkpoint))
    raise ValueError(
        f"{checkpoint} holds no sharded weights: expected `{FSDP_MODEL_DIR}/` (FSDP) or `{DEEPSPEED_STEP_PREFIX}N/` "
        f"(DeepSpeed ZeRO); found {sorted(path.name for path in checkpoint.iterdir()) if checkpoint.is_dir() else []}."
    )


def save_full_model(
    state_dict: dict[str, torch.Tensor], config: ILLaDAConfig, output_dir: str | Path, dtype: torch.dtype
) -> None:
    """Saves the full `state_dict` of an iLLaDA model as a `save_pretrained` folder (weights in `dtype`, config,
    code files). The tensors must fill the model exactly (the strict loading of `from_pretrained` checks it); a tied
    LM head may be present or not. Used for sharded checkpoints and for the final save of an FSDP run, whose model
    class FSDP2 has replaced (its `save_pretrained` would copy torch's files instead of this model's code)."""
    if config.tie_word_embeddings:
        state_dict = {name: tensor for name, tensor in state_dict.items() if name != "lm_head.weight"}
    with tempfile.TemporaryDirectory() as scratch:
        config.save_pretrained(scratch)
        save_file(
            {name: tensor.contiguous() for name, tensor in state_dict.items()}, Path(scratch) / "model.safetensors"
        )
        model = ILLaDAForCausalLM.from_pretrained(scratch, dtype=dtype)
    model.save_pretrained(output_dir)


def _last_line(error: BaseException) -> str:
    """The last line of an error's text (torch's checkpoint errors carry whole tracebacks)."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return lines[-1][:300] if lines else ""


def consolidate(
    checkpoint: str | Path, output_dir: str | Path, config: str | Path | None = None, dtype: str = "float32"
) -> Path:
    """Writes the model of the sharded `checkpoint` to `output_dir` with `save_pretrained` (see the module docstring)
    and returns `output_dir`. Every tensor of the model must be in the checkpoint and nothing else may be (the strict
    loading of `from_pretrained` checks it)."""
    checkpoint, output_dir = Path(checkpoint), Path(output_dir)
    if dtype not in DTYPES or dtype == "auto":
        raise ValueError(f"`dtype` must be one of {sorted(set(DTYPES) - {'auto'})}, got {dtype!r}.")
    if output_dir.exists() and any(output_dir.iterdir()):
        raise ValueError(f"The output folder {output_dir} is not empty: consolidate into a new folder.")
    config_source = Path(config) if config is not None else checkpoint
    if not (config_source / "config.json").is_file():
        raise ValueError(
            f"No config.json in {config_source}: pass `--config` (the folder of the model that was trained)."
        )
    model_config = ILLaDAConfig.from_pretrained(config_source)
    save_full_model(load_sharded_state_dict(checkpoint), model_config, output_dir, DTYPES[dtype])
    for name in CARRIED_FILES:
        source = checkpoint / name if (checkpoint / name).is_file() else config_source / name
        if source.is_file():
            (output_dir / name).write_bytes(source.read_bytes())
    logger.info("Consolidated %s into %s", checkpoint, output_dir)
    return output_dir


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoint", help="A checkpoint-N folder written under FSDP or DeepSpeed ZeRO.")
    parser.add_argument("output_dir", help="New folder for the consolidated model (must not hold files).")
    parser.add_argument("--config", default=None, help="Model folder whose config.json to use (default: checkpoint).")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    consolidate(args.checkpoint, args.output_dir, args.config, args.dtype)


if __name__ == "__main__":
    main()
