"""Preference optimisation of iLLaDA with VRPO (LLaDA 1.5, arXiv 2505.19223): DPO on variance-reduced ELBO estimates.

Data are trl's preference formats, in local .jsonl/.json/.parquet/.csv files, a saved `datasets` folder or a
`datasets` name: `prompt`/`chosen`/`rejected`, conversational (rendered with the model's chat template) or plain
text, or `chosen`/`rejected` with an implicit prompt. Each answer's log-likelihood is replaced by a Monte-Carlo
ELBO of `--num_mc_samples` stratified mask counts with one mask each, the policy and the reference seeing the same
masks (antithetic sampling); see `illada/vrpo.py` for the loss, the normalisation and the mask seeding.

Commands:

    # one GPU (or CPU: add --use_cpu); the reference is a frozen copy of the model
    python train_vrpo.py --model_name_or_path GSAI-ML/iLLaDA-8B-Instruct --train_files prefs.jsonl \\
        --output_dir out/vrpo --beta 0.1 --num_mc_samples 8 --learning_rate 5e-7 \\
        --per_device_train_batch_size 1 --gradient_accumulation_steps 16 --num_train_epochs 1 \\
        --activation_checkpointing --save_steps 200 --save_total_limit 2

    # LoRA: the reference is the model with its adapters disabled (no second copy in memory)
    python train_vrpo.py <same arguments> --use_lora --lora_r 16 --lora_alpha 32 --merge_lora

    # reference estimates computed once before training (no reference forward during training)
    python train_vrpo.py <same arguments> --precompute_ref_log_probs

    # other trl loss types: ipo, hinge, robust (with --label_smoothing), or a weighted mix
    python train_vrpo.py <same arguments> --loss_type sigmoid ipo --loss_weights 1.0 0.5

    # several GPUs, or two CPU processes (gloo)
    accelerate launch --num_processes 8 train_vrpo.py <same arguments>
    # sharded (the frozen reference is sharded like the policy): configs/accelerate/, docs/fine-tuning.md
    accelerate launch --config_file configs/accelerate/fsdp2.yaml train_vrpo.py <same arguments>
    torchrun --nproc_per_node 2 train_vrpo.py --use_cpu <same arguments>

    # resume from the newest checkpoint-* in --output_dir (starts afresh when there is none)
    python train_vrpo.py <same arguments> --resume

    # the demo: preferences from the demo model's training split, then VRPO (docs/vrpo.md)
    python -m illada.demo.build_preferences --output outputs/preferences.jsonl
    python train_vrpo.py --model_name_or_path illada-demo --train_files outputs/preferences.jsonl \\
        --output_dir outputs/illada-demo-vrpo-lr3e-5 --use_cpu --learning_rate 3e-5 --max_steps 150 \\
        --per_device_train_batch_size 8 --num_mc_samples 8 --beta 0.1 --warmup_steps 10

The saved folder holds the weights, the code files, the tokenizer and the generation config, as `train_sft.py`'s.
"""

import logging
from dataclasses import dataclass, field
from pathlib import Path

from datasets import Dataset, load_dataset, load_from_disk

from illada.configuration_illada import ILLaDAConfig
from illada.data import located_rows
from illada.modeling_illada import ILLaDAForCausalLM
from illada.sft_cli import (
    ModelArguments,
    load_model,
    load_model_to_train,
    prepare_run,
    train_and_save,
)
from illada.sft_cli import parse_arguments as sft_parse_arguments
from illada.vrpo import VRPOConfig, VRPOTrainer, check_preference, is_zero3_partitioned

logger = logging.getLogger(__name__)

_DATA_BUILDERS = {".jsonl": "json", ".json": "json", ".parquet": "parquet", ".csv": "csv"}


@dataclass
class PreferenceDataArguments:
    """Where the preference data are: local files, or a `datasets` name / saved folder."""

    train_files: list[str] | None = field(
        default=None, metadata={"help": "Local training files (.jsonl, .json, .parquet or .csv)."}
    )
    eval_files: list[str] | None = field(default=None, metadata={"help": "Local evaluation files, same formats."})
    dataset_name: str | None = field(
        default=None, metadata={"help": "A `datasets` name or a folder written by `Dataset.save_to_disk`."}
    )
    dataset_config: str | None = field(default=None, metadata={"help": "Configuration of `dataset_name`."})
    dataset_train_split: str = field(default="train", metadata={"help": "Training split of `dataset_name`."})
    dataset_test_split: str | None = field(default=None, metadata={"help": "Evaluation split of `dataset_name`."})

    def __post_init__(self) -> None:
        if (self.train_files is None) == (self.dataset_name is None):
            raise ValueError(
                "Give exactly one of `train_files` and `dataset_name`; got "
                f"train_files={self.train_files!r}, dataset_name={self.dataset_name!r}."
            )


def parse_arguments(argv: list[str] | None = None) -> tuple[ModelArguments, PreferenceDataArguments, VRPOConfig]:
    """Command-line flags, or a single .json / .yaml file holding them."""
    return sft_parse_arguments(argv, (ModelArguments, PreferenceDataArguments, VRPOConfig))


def load_files(files: list[str]) -> Dataset:
    """Loads local files with the `datasets` builder their extension names (all files must share it)."""
    missing = [f for f in files if not Path(f).is_file()]
    if missing:
        raise ValueError(f"Data files not found: {missing}.")
    builders = {_DATA_BUILDERS.get(Path(f).suffix.lower()) for f in files}
    if None in builders or len(builders) != 1:
        raise ValueError(f"Data files must all be one of {sorted(_DATA_BUILDERS)}, got {files}.")
    for path in map(Path, files):
        if path.suffix.lower() in (".jsonl", ".json"):
            check_preference_file(path)
    return load_dataset(builders.pop(), data_files=list(files), split="train")


def check_preference_file(path: Path) -> None:
    """Checks every row of a JSON-lines (or JSON array) file, naming the file and the line of the first bad one."""
    count = 0
    try:
        for where, example in located_rows(path):
            check_preference(example, where)
            count += 1
    except UnicodeDecodeError as error:
        raise ValueError(f"{path} is not UTF-8 text (byte {error.start}): save the data file as UTF-8.") from None
    if count == 0:
        raise ValueError(f"{path} is empty: it holds no preference pairs.")


def _split(splits, name: str, flag: str, where: str) -> Dataset:
    if name not in splits:
        raise ValueError(f"`{flag}`={name!r} is not a split of {where}: it has {sorted(splits)}.")
    return splits[name]


def load_preferences(data_args: PreferenceDataArguments) -> tuple[Dataset, Dataset | None]:
    """The raw training and (optional) evaluation preference data."""
    if data_args.train_files is not None:
        evaluation = load_files(data_args.eval_files) if data_args.eval_files else None
        return load_files(data_args.train_files), evaluation
    if Path(data_args.dataset_name).is_dir() and (Path(data_args.dataset_name) / "dataset_info.json").is_file():
        saved = load_from_disk(data_args.dataset_name)
        splits = saved if isinstance(saved, dict) else {data_args.dataset_train_split: saved}
    else:
        splits = load_dataset(data_args.dataset_name, data_args.dataset_config)
    train = _split(splits, data_args.dataset_train_split, "dataset_train_split", data_args.dataset_name)
    test = data_args.dataset_test_split
    return train, None if test is None else _split(splits, test, "dataset_test_split", data_args.dataset_name)


def load_partitioned_reference(
    model: ILLaDAForCausalLM, model_args: ModelArguments, config: ILLaDAConfig, training_args: VRPOConfig
) -> ILLaDAForCausalLM | None:
    """The reference, loaded like the model, when DeepSpeed ZeRO-3 partitioned the model as it was loaded (a copy of
    a partitioned model is no model); else `None`: the trainer then uses a frozen copy of the model, the model without
    its LoRA adapters, or the precomputed estimates."""
    if not is_zero3_partitioned(model) or model_args.use_lora or training_args.precompute_ref_log_probs:
        return None
    if model_args.model_name_or_path is None:
        raise ValueError(
            "Under DeepSpeed ZeRO-3 the reference is loaded from `--model_name_or_path` (a second random model would "
            "differ from the first): give it, or pass `--use_lora` or `--precompute_ref_log_probs`."
        )
    return load_model(model_args, config)


def main(argv: list[str] | None = None) -> None:
    model_args, data_args, training_args = parse_arguments(argv)
    # Model: the config and tokenizer are checked before any weight is loaded.
    checkpoint, config, tokenizer = prepare_run(model_args, data_args, training_args)
    model = load_model_to_train(model_args, config)

    # Data
    train_dataset, eval_dataset = load_preferences(data_args)
    logger.info("%d preference pairs", len(train_dataset))

    # Train and save
    trainer = VRPOTrainer(
        model,
        load_partitioned_reference(model, model_args, config, training_args),
        args=training_args,
        train_dataset=train_dataset,
        eval_dataset=eval_dataset,
        processing_class=tokenizer,
    )
    train_and_save(trainer, checkpoint, merge_lora=model_args.merge_lora)


if __name__ == "__main__":
    main()
