"""Command line for masked-diffusion training of iLLaDA: supervised fine-tuning (SFT) and pre-training, full or LoRA.

The objective and the trainer are in `illada/trainer.py` ([`DiffusionSFTTrainer`], a subclass of trl's
`SFTTrainer`, and [`DiffusionSFTConfig`]); the data preparation (trl's dataset formats, one EOS per example, trl's
packing) in `illada/data.py`. This script loads the model and the data, trains and saves. The defaults are the paper's
SFT recipe: each example `prompt + response + EOS` with exactly one EOS, all examples in one stream cut into windows
of 8192 tokens (capped by the model's `max_position_embeddings`), the whole window maskable, AdamW with weight decay
0.1, LR warmup, constant, linear decay to `--min_lr` over the last 10%.

Data: `--train_files` (local .jsonl/.json/.parquet/.csv/.txt) or `--dataset_name` (a `datasets` Hub name with
`--dataset_config`/`--dataset_split`, a folder written by `save_to_disk`, or a folder of data files). Rows in trl's
formats: `messages` (conversational, system turns included), `prompt`/`completion` (plain or conversational),
`text`, or the older `prompt`/`response` pairs.

Commands (`--config_name` instead of `--model_name_or_path` trains from a random initialisation):

    # one GPU (or CPU: add --use_cpu)
    python train_sft.py --model_name_or_path GSAI-ML/iLLaDA-8B-Base --train_files sft.jsonl \\
        --output_dir out/sft --per_device_train_batch_size 1 --gradient_accumulation_steps 16 \\
        --learning_rate 5e-6 --min_lr 5e-7 --num_train_epochs 3 --activation_checkpointing \\
        --save_steps 500 --save_total_limit 2

    # a datasets name, config and split (or a folder written by save_to_disk)
    python train_sft.py <same arguments> --dataset_name HuggingFaceH4/ultrachat_200k --dataset_split train_sft

    # several GPUs (DeepSpeed / FSDP: add --deepspeed ds.json or --fsdp ... as for any Trainer script)
    accelerate launch --num_processes 8 train_sft.py <same arguments>
    torchrun --nproc_per_node 8 train_sft.py <same arguments>

    # two CPU processes (gloo backend)
    torchrun --nproc_per_node 2 train_sft.py --use_cpu <same arguments>

    # LoRA on q/k/v/o/gate/up/down (a PEFT adapter folder; --merge_lora saves merged full weights instead)
    python train_sft.py <same arguments> --use_lora --lora_r 16 --lora_alpha 32

    # QLoRA: LoRA on 4-bit NF4 base weights (bitsandbytes; also bnb-int8, torchao-int8)
    python train_sft.py <same arguments> --use_lora --quantization bnb-nf4 --dtype bfloat16 --bf16

    # sharded: FSDP2 or DeepSpeed ZeRO-2/3 with the configs of configs/accelerate/ (docs/fine-tuning.md)
    accelerate launch --config_file configs/accelerate/fsdp2.yaml train_sft.py <same arguments>

    # LLaDA's response-only masking; whole examples packed best-fit instead of the stream
    python train_sft.py <same arguments> --completion_only_loss --packing_strategy bfd

    # pre-training schedule and data: text documents, warmup, constant, cosine to the floor
    python train_sft.py <same arguments> --data_format pretrain --lr_schedule pretrain \\
        --learning_rate 2e-4 --min_lr 5e-6

    # resume from the newest checkpoint-* in --output_dir (starts afresh when there is none)
    python train_sft.py <same arguments> --resume

Nothing is overwritten unless told to: the run refuses an `--output_dir` that holds a saved model or an earlier
run's checkpoints (`--overwrite_output_dir` replaces them, `--resume` continues the run from its checkpoints), and,
even with the flag, the folder of the model, config or tokenizer, or one holding the data (no training in place).
Flags that another flag makes inert (`--lora_r` without `--use_lora`, `--packing_strategy` with `--packing false`,
`--split_probability` outside pre-training) are refused, not ignored.

The saved folder holds the weights (or the adapter), the code files (`AutoModelForCausalLM.from_pretrained(folder,
trust_remote_code=True)` loads it), the tokenizer, the generation config and a model card (README.md).
"""

from __future__ import annotations

import json
import logging
import math
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from datasets import Dataset
from transformers import HfArgumentParser, Trainer, TrainingArguments, set_seed

from illada.checkpoints import check_output_dir, checkpoint_to_resume
from illada.configuration_illada import ILLaDAConfig
from illada.consolidate import save_full_model
from illada.data import (
    check_tokenizer,
    load_data,
    resolve_max_length,
)
from illada.modeling_illada import LORA_TARGET_MODULES, ILLaDAForCausalLM
from illada.quantization import QUANTIZATIONS, quantization_config
from illada.trainer import (
    DiffusionSFTConfig,
    DiffusionSFTTrainer,
)
from illada.utils import DTYPES, load_tokenizer, refuse_inert
from illada.utils_illada import check_choice, check_positive_int, check_range

__all__ = [
    "ATTENTION_KERNELS",
    "DataArguments",
    "ModelArguments",
    "add_lora",
    "load_model_to_train",
    "prepare_run",
    "check_arguments",
    "check_resumable",
    "check_sharding",
    "load_config",
    "load_datasets",
    "load_kbit_model",
    "load_model",
    "main",
    "parse_arguments",
    "resume_checkpoint",
    "save_fsdp_model",
    "save_trained_model",
    "train_and_save",
]

logger = logging.getLogger(__name__)

ATTENTION_KERNELS = ("sdpa", "eager", "flash_attention_2")


# ----------------------------------------------------------------------------------------------------------------
# Arguments
# ----------------------------------------------------------------------------------------------------------------


@dataclass
class ModelArguments:
    """Which model to train and how: checkpoint or fresh config, dtype, attention kernel, LoRA."""

    model_name_or_path: str | None = field(
        default=None, metadata={"help": "Checkpoint folder or Hub id to fine-tune. Give this or `config_name`."}
    )
    config_name: str | None = field(
        default=None, metadata={"help": "Config folder or file: train a randomly initialised model of that shape."}
    )
    tokenizer_name: str | None = field(
        default=None, metadata={"help": "Tokenizer folder or Hub id; defaults to `model_name_or_path` / `config_name`."}
    )
    dtype: str = field(
        default="auto",
        metadata={
            "help": "Dtype of the loaded weights ('auto' = the checkpoint's, float32 for a fresh model). "
            "Mixed precision is `--bf16`.",
            "choices": list(DTYPES),
        },
    )
    attn_implementation: str = field(
        default="sdpa", metadata={"help": "Attention kernel.", "choices": list(ATTENTION_KERNELS)}
    )
    use_lora: bool = field(default=False, metadata={"help": "Train LoRA adapters (PEFT) instead of all weights."})
    lora_r: int = field(default=16, metadata={"help": "LoRA rank."})
    lora_alpha: int = field(default=32, metadata={"help": "LoRA scaling numerator (scale = alpha / r)."})
    lora_dropout: float = field(default=0.0, metadata={"help": "Dropout on the LoRA branch."})
    lora_target_modules: list[str] = field(
        default_factory=lambda: list(LORA_TARGET_MODULES), metadata={"help": "Module names that get adapters."}
    )
    merge_lora: bool = field(
        default=False, metadata={"help": "Merge the adapters into the base weights and save a full model."}
    )
    quantization: str | None = field(
        default=None,
        metadata={
            "help": "Load the base weights quantised (QLoRA with `--use_lora`): 'bnb-nf4', 'bnb-int8' or "
            "'torchao-int8' (see illada/quantization.py; needs requirements-quant.txt).",
            "choices": [None, *QUANTIZATIONS],
        },
    )

    def __post_init__(self) -> None:
        if (self.model_name_or_path is None) == (self.config_name is None):
            raise ValueError(
                "Give exactly one of `model_name_or_path` (fine-tune a checkpoint) and `config_name` (train from a "
                f"random initialisation); got model_name_or_path={self.model_name_or_path!r}, "
                f"config_name={self.config_name!r}."
            )
        check_choice("dtype", self.dtype, DTYPES)
        check_choice("attn_implementation", self.attn_implementation, ATTENTION_KERNELS)
        if self.use_lora:
            check_positive_int("lora_r", self.lora_r)
            check_range("lora_alpha", self.lora_alpha, 0, math.inf, low_open=True)
            check_range("lora_dropout", self.lora_dropout, 0, 1, high_open=True)
            if not self.lora_target_modules:
                raise ValueError("`lora_target_modules` is empty: name at least one module, e.g. q_proj.")
        elif self.merge_lora:
            raise ValueError("`merge_lora=True` needs `use_lora=True`: there are no adapters to merge.")
        else:
            refuse_inert(self, ("lora_r", "lora_alpha", "lora_dropout", "lora_target_modules"), "without `use_lora`")
        if self.quantization is not None:
            check_choice("quantization", self.quantization, tuple(QUANTIZATIONS))
            if not self.use_lora:
                raise ValueError(
                    f"`quantization={self.quantization!r}` freezes the base weights in a quantised format: train "
                    "LoRA adapters on them (QLoRA) with `use_lora=True`."
                )
            if self.merge_lora:
                raise ValueError(
                    "`merge_lora=True` with `quantization`: merging adapters into quantised weights rounds them; save "
                    "the adapter, then merge it into the unquantised checkpoint."
                )


@dataclass
class DataArguments:
    """Where the data are: local files, or a `datasets` name / saved folder with its config and split.

    The shaping of the data (window length, packing, data format) is part of [`DiffusionSFTConfig`]
    (`--max_length`/`--max_seq_length`, `--packing_strategy`, `--data_format`, `--split_probability`).
    """

    train_files: list[str] | None = field(
        default=None, metadata={"help": "Local training files (.jsonl, .json, .parquet, .csv or .txt)."}
    )
    eval_files: list[str] | None = field(default=None, metadata={"help": "Local evaluation files, same formats."})
    dataset_name: str | None = field(
        default=None,
        metadata={"help": "A `datasets` name (Hub id), a folder written by `save_to_disk`, or a folder of data files."},
    )
    dataset_config: str | None = field(default=None, metadata={"help": "Configuration of `dataset_name`."})
    dataset_split: str = field(default="train", metadata={"help": "Training split of `dataset_name`."})
    eval_split: str | None = field(default=None, metadata={"help": "Evaluation split of `dataset_name`."})

    def __post_init__(self) -> None:
        if self.train_files is not None and self.dataset_name is not None:
            raise ValueError(
                f"Give one of `train_files` and `dataset_name`, not both; got {self.train_files!r} and "
                f"{self.dataset_name!r}."
            )
        if self.eval_split is not None and self.dataset_name is None:
            raise ValueError("`eval_split` selects a split of `dataset_name`; with local files use `eval_files`.")


def check_arguments(model_args: ModelArguments, data_args: DataArguments, args: DiffusionSFTConfig) -> None:
    """Checks the combinations that no single dataclass can see."""
    if data_args.train_files is None and data_args.dataset_name is None:
        raise ValueError(
            "No training data: pass `--train_files` (local .jsonl/.json/.parquet/.csv/.txt files) or "
            "`--dataset_name` (a datasets name, or a folder)."
        )


def parse_arguments(
    argv: list[str] | None = None,
    dataclass_types: tuple[type, ...] = (ModelArguments, DataArguments, DiffusionSFTConfig),
) -> tuple:
    """Command-line flags, or a single .json / .yaml file holding them, parsed into `dataclass_types` (by default
    this script's model, data and training arguments; `train_vrpo.py` passes its own)."""
    parser = HfArgumentParser(dataclass_types)
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) == 1 and argv[0].endswith(".json"):
        return parser.parse_json_file(argv[0])
    if len(argv) == 1 and argv[0].endswith((".yaml", ".yml")):
        return parser.parse_yaml_file(argv[0])
    return parser.parse_args_into_dataclasses(argv)


# ----------------------------------------------------------------------------------------------------------------
# Model, data, checkpoints, saving
# ----------------------------------------------------------------------------------------------------------------


def load_config(model_args: ModelArguments) -> ILLaDAConfig:
    """The config of the checkpoint (or of `config_name`), read before any weight is loaded."""
    return ILLaDAConfig.from_pretrained(model_args.model_name_or_path or model_args.config_name)


def load_model(model_args: ModelArguments, config: ILLaDAConfig) -> ILLaDAForCausalLM:
    """Loads the checkpoint strictly (every tensor must match), or builds a random model from `config`."""
    dtype = DTYPES[model_args.dtype]
    if model_args.quantization is not None:
        return load_kbit_model(model_args, config)
    if model_args.model_name_or_path is None:
        dtype = torch.float32 if dtype == "auto" else dtype
        return ILLaDAForCausalLM._from_config(config, dtype=dtype, attn_implementation=model_args.attn_implementation)
    return ILLaDAForCausalLM.from_pretrained(
        model_args.model_name_or_path, config=config, dtype=dtype, attn_implementation=model_args.attn_implementation
    )


def load_kbit_model(model_args: ModelArguments, config: ILLaDAConfig) -> ILLaDAForCausalLM:
    """The checkpoint with quantised base weights, prepared for QLoRA by PEFT's `prepare_model_for_kbit_training`
    (frozen base, norms and embedding in float32). Computes in bfloat16 with `--dtype bfloat16`, else float32."""
    from peft import prepare_model_for_kbit_training

    if model_args.model_name_or_path is None:
        raise ValueError("`quantization` quantises a checkpoint's weights: give `model_name_or_path`.")
    compute_dtype = torch.bfloat16 if model_args.dtype == "bfloat16" else torch.float32
    model = ILLaDAForCausalLM.from_pretrained(
        model_args.model_name_or_path,
        config=config,
        dtype=compute_dtype,
        attn_implementation=model_args.attn_implementation,
        quantization_config=quantization_config(model_args.quantization, compute_dtype),
    )
    return prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)


def add_lora(
    model: ILLaDAForCausalLM,
    r: int = 16,
    alpha: float = 32,
    dropout: float = 0.0,
    target_modules: list[str] | tuple[str, ...] = LORA_TARGET_MODULES,
) -> torch.nn.Module:
    """Wraps `model` in a PEFT model with LoRA adapters of rank `r` (scale `alpha / r`) on `target_modules`;
    only the adapters are trainable. `task_type="CAUSAL_LM"`, so the saved adapter loads with
    `AutoPeftModelForCausalLM.from_pretrained(folder, trust_remote_code=True)`."""
    from peft import LoraConfig, get_peft_model

    lora_config = LoraConfig(
        r=r, lora_alpha=alpha, lora_dropout=dropout, target_modules=list(target_modules), task_type="CAUSAL_LM"
    )
    return get_peft_model(model, lora_config)


def load_datasets(data_args: DataArguments, args: DiffusionSFTConfig) -> tuple[Dataset, Dataset | None]:
    """The raw training rows and, if asked for, the raw evaluation rows (the trainer tokenises and packs them)."""
    source = {
        "dataset_name": data_args.dataset_name,
        "dataset_config": data_args.dataset_config,
        "data_format": args.data_format,
        "text_field": args.dataset_text_field,
    }
    train = load_data(split=data_args.dataset_split, files=data_args.train_files, **source)
    evaluation = None
    if data_args.eval_files:
        evaluation = load_data(files=data_args.eval_files, **{**source, "dataset_name": None})
    elif data_args.eval_split:
        evaluation = load_data(split=data_args.eval_split, **source)
    return train, evaluation


def resume_checkpoint(args, model_args: ModelArguments, data_args) -> str | None:
    """What the run does with `output_dir`, before anything is loaded (shared by `train_sft.py` and `train_vrpo.py`).

    Refuses an `output_dir` that is the folder of the model, config or tokenizer (training in place), that holds the
    data, or that holds a saved model or run other than the checkpoints `--resume` continues (`--overwrite_output_dir`
    replaces it); see `illada.checkpoints.check_output_dir`. Then, with `--resume`, the newest complete
    `checkpoint-*` folder of `output_dir` (incomplete ones are skipped with a warning), or `None` (start afresh) if
    there is none; without it, `None`, after refusing an `output_dir` that holds an earlier run's checkpoints
    (`--overwrite_output_dir` deletes them)."""
    models = {name: getattr(model_args, name) for name in ("model_name_or_path", "config_name", "tokenizer_name")}
    data = {name: getattr(data_args, name, None) for name in ("train_files", "eval_files", "dataset_name")}
    check_output_dir(args.output_dir, args.resume, args.overwrite_output_dir, models, data)
    with args.main_process_first(desc="checking output_dir"):
        return checkpoint_to_resume(args.output_dir, args.resume, args.max_steps, args.overwrite_output_dir)


# Config fields that fix the shapes of the weights: a checkpoint saved with other values cannot be resumed.
SHAPE_FIELDS = (
    "vocab_size",
    "hidden_size",
    "intermediate_size",
    "num_hidden_layers",
    "num_attention_heads",
    "num_key_value_heads",
)


def check_resumable(checkpoint: str | None, config: ILLaDAConfig, use_lora: bool) -> None:
    """Refuses, before any weight is loaded, a `--resume` checkpoint that cannot hold this run's state: LoRA adapters
    for a full-model run or the reverse, or weights of another shape (Trainer would fail deep in torch)."""
    if checkpoint is None:
        return
    folder = Path(checkpoint)
    adapter = (folder / "adapter_config.json").is_file()
    if adapter != use_lora:
        held = "LoRA adapters" if adapter else "full model weights"
        wanted = "LoRA adapters (`--use_lora`)" if use_lora else "the full model (no `--use_lora`)"
        raise ValueError(
            f"`--resume`: {checkpoint} holds {held}, but this run trains {wanted}: resume with the setting of "
            "that run, or start afresh in another `--output_dir`."
        )
    saved = folder / "config.json"
    if saved.is_file():
        values = json.loads(saved.read_text(encoding="utf-8"))
        for name in SHAPE_FIELDS:
            if values.get(name) != getattr(config, name):
                raise ValueError(
                    f"`--resume`: {checkpoint} was saved from a model with {name}={values.get(name)!r}, this run's "
                    f"model has {name}={getattr(config, name)!r}: resume with that run's model, or start afresh in "
                    "another `--output_dir`."
                )


def train_and_save(trainer: Trainer, checkpoint: str | None, merge_lora: bool = False) -> None:
    """Trains (from `checkpoint` if given), logs and saves the metrics and state, evaluates when the trainer has an
    evaluation set, saves the model with `save_trained_model`, then ends the run (`Trainer.end`: the process group
    is destroyed, as torch asks before a process exits; a rank leaving with its gloo group alive can abort at exit,
    after the model was saved). Shared by `train_sft.py` and `train_vrpo.py`."""
    check_sharding(trainer)
    result = trainer.train(resume_from_checkpoint=checkpoint)
    trainer.log_metrics("train", result.metrics)
    trainer.save_metrics("train", result.metrics)
    trainer.save_state()
    if trainer.eval_dataset is not None:
        metrics = trainer.evaluate()
        trainer.log_metrics("eval", metrics)
        trainer.save_metrics("eval", metrics)
    save_trained_model(trainer, merge_lora=merge_lora)
    trainer.end()


def check_sharding(trainer: Trainer) -> None:
    """Refuses a launch whose accelerate config asks for FSDP or DeepSpeed when the trainer does not shard: accelerate
    shards only on accelerators and runs an FSDP launch with `--use_cpu` (or without GPUs) as plain data parallel,
    every process holding the whole model, which is not what the config promised."""
    for variable, sharded, name in (
        ("ACCELERATE_USE_FSDP", trainer.is_fsdp_enabled, "FSDP"),
        ("ACCELERATE_USE_DEEPSPEED", trainer.is_deepspeed_enabled, "DeepSpeed"),
    ):
        if os.environ.get(variable, "false").lower() == "true" and not sharded:
            raise ValueError(
                f"The accelerate config asks for {name} ({variable}=true) but the trainer runs "
                f"{trainer.accelerator.distributed_type} on {trainer.args.device}: accelerate shards only on GPUs "
                "(and other accelerators). Drop `--use_cpu`, or use configs/accelerate/ddp.yaml for a CPU run."
            )


def save_trained_model(trainer: Trainer, merge_lora: bool = False) -> None:
    """Saves weights (or the LoRA adapter), code files, tokenizer, generation config and model card to
    `output_dir`; LoRA adapters are merged into a full model first when `merge_lora`. Pushes when `push_to_hub`."""
    if merge_lora:
        trainer.model = trainer.model.merge_and_unload()
    if trainer.is_fsdp_enabled and not hasattr(trainer.model, "peft_config"):
        save_fsdp_model(trainer)
    else:
        if trainer.is_fsdp_enabled:  # PEFT under FSDP: Trainer gathers the adapter into one ordinary folder
            trainer.accelerator.state.fsdp_plugin.set_state_dict_type("FULL_STATE_DICT")
        trainer.save_model()
    generation_config = getattr(trainer.model, "generation_config", None)
    output_dir = Path(trainer.args.output_dir)
    missing = not (output_dir / "generation_config.json").exists()
    if trainer.args.should_save and generation_config is not None and missing:
        generation_config.save_pretrained(output_dir)
    trainer.create_model_card()
    if trainer.args.push_to_hub:
        trainer.push_to_hub()


def save_fsdp_model(trainer: Trainer) -> None:
    """The final save of an FSDP run (checkpoints stay sharded): the full weights are gathered to the main process,
    which writes an ordinary `save_pretrained` folder with the tokenizer (see `illada.consolidate.save_full_model`)."""
    state_dict = trainer.accelerator.get_state_dict(trainer.model)  # every process takes part
    if trainer.args.should_save:
        save_full_model(state_dict, trainer.model.config, trainer.args.output_dir, trainer.model.dtype)
        if trainer.processing_class is not None:
            trainer.processing_class.save_pretrained(trainer.args.output_dir)
    trainer.accelerator.wait_for_everyone()


# ----------------------------------------------------------------------------------------------------------------
# Script
# ----------------------------------------------------------------------------------------------------------------


def prepare_run(model_args: ModelArguments, data_args: Any, training_args: TrainingArguments) -> tuple:
    """What both command lines do before any weight is loaded: logging, the seed, the checkpoint to resume (which
    may refuse the output folder), and the config and tokenizer, checked against each other and the checkpoint.
    Returns `(checkpoint, config, tokenizer)`."""
    logging.basicConfig(
        format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=training_args.get_process_log_level()
    )
    set_seed(training_args.seed)
    checkpoint = resume_checkpoint(training_args, model_args, data_args)
    config = load_config(model_args)
    # Passing the config keeps AutoTokenizer from asking to run the folder's remote code to read it.
    tokenizer = load_tokenizer(
        model_args.tokenizer_name or model_args.model_name_or_path or model_args.config_name, config=config
    )
    check_tokenizer(tokenizer, config)
    check_resumable(checkpoint, config, model_args.use_lora)
    return checkpoint, config, tokenizer


def load_model_to_train(model_args: ModelArguments, config: ILLaDAConfig) -> ILLaDAForCausalLM:
    """The model of `model_args`, with LoRA adapters when `--use_lora`."""
    model = load_model(model_args, config)
    if model_args.use_lora:
        model = add_lora(
            model, model_args.lora_r, model_args.lora_alpha, model_args.lora_dropout, model_args.lora_target_modules
        )
    return model


def main(argv: list[str] | None = None) -> None:
    model_args, data_args, training_args = parse_arguments(argv)
    check_arguments(model_args, data_args, training_args)
    # Model: the config, tokenizer and window length are checked before any weight is loaded.
    checkpoint, config, tokenizer = prepare_run(model_args, data_args, training_args)
    training_args.max_length = resolve_max_length(training_args.max_length, config.max_position_embeddings)
    model = load_model_to_train(model_args, config)

    # Data: raw rows here; the trainer tokenises and packs them (trl's data layer, see illada/data.py).
    with training_args.main_process_first(desc="loading the data"):
        train_dataset, eval_dataset = load_datasets(data_args, training_args)

    # Train and save
    trainer = DiffusionSFTTrainer(
        model=model,
        args=training_args,
        train_dataset=train_dataset,
        eval_dataset=eval_dataset,
        processing_class=tokenizer,
    )
    logger.info("%d training rows of at most %d tokens", len(trainer.train_dataset), training_args.max_length)
    train_and_save(trainer, checkpoint, merge_lora=model_args.merge_lora)


if __name__ == "__main__":
    main()
