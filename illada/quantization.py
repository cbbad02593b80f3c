"""Quantised loading of iLLaDA (bitsandbytes 4-bit NF4 / 8-bit, torchao weight-only int8) and its answers on the
demo's held-out split against the unquantised model.

The weights are quantised by transformers at load time, `from_pretrained(..., quantization_config=...)`; generation
and scoring then run on the quantised model unchanged (the quantised layers replace `nn.Linear`; the embedding and
tied LM head stay in the checkpoint's dtype). QLoRA: `prepare_model_for_kbit_training` and LoRA adapters on top,
trained by the diffusion trainer (`train_sft.py --use_lora --quantization bnb-nf4`).

The backends are optional packages (requirements-quant.txt): `bitsandbytes==0.50.2` (its CPU backend runs 4-bit and
8-bit layers on CPU) and `torchao==0.18.0`. A missing package is an `ImportError` that names it.

    python -m illada.quantization                       # illada-demo/: fp32 and each method on 5 questions per task
    python -m illada.quantization --per-task 25 --methods bnb-nf4 torchao-int8
"""

from __future__ import annotations

import argparse
import importlib.util
import json
from pathlib import Path

import torch

__all__ = ["QUANTIZATIONS", "compare_on_demo", "load_quantized", "main", "quantization_config"]

# name -> (package, what it does)
QUANTIZATIONS = {
    "bnb-nf4": ("bitsandbytes", "bitsandbytes 4-bit NormalFloat weights (QLoRA's), double quantisation"),
    "bnb-int8": ("bitsandbytes", "bitsandbytes 8-bit weights (LLM.int8())"),
    "torchao-int8": ("torchao", "torchao weight-only int8 (per-channel scales)"),
}
PINS = {"bitsandbytes": "bitsandbytes==0.50.2", "torchao": "torchao==0.18.0"}


def quantization_config(name: str, compute_dtype: torch.dtype = torch.bfloat16):
    """The transformers quantization config of method `name` (see `QUANTIZATIONS`); `compute_dtype` is the dtype of
    the 4-bit matmuls (bfloat16 on GPUs; float32 on CPU, where bfloat16 is slow)."""
    if name not in QUANTIZATIONS:
        raise ValueError(f"`quantization` must be one of {sorted(QUANTIZATIONS)}, got {name!r}.")
    package = QUANTIZATIONS[name][0]
    if importlib.util.find_spec(package) is None:
        raise ImportError(
            f"Quantization {name!r} needs the `{package}` package: `pip install {PINS[package]}` "
            "(requirements-quant.txt)."
        )
    from transformers import BitsAndBytesConfig, TorchAoConfig

    if name == "bnb-nf4":
        return BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=compute_dtype,
        )
    if name == "bnb-int8":
        return BitsAndBytesConfig(load_in_8bit=True)
    from torchao.quantization import Int8WeightOnlyConfig

    return TorchAoConfig(Int8WeightOnlyConfig())


def load_quantized(folder: str | Path, name: str, device: str = "cpu", compute_dtype: torch.dtype | None = None):
    """`AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=True, quantization_config=...)` on `device`
    (float32 compute on CPU, bfloat16 elsewhere unless `compute_dtype` is given), in evaluation mode."""
    from transformers import AutoModelForCausalLM

    if compute_dtype is None:
        compute_dtype = torch.float32 if device == "cpu" else torch.bfloat16
    config = quantization_config(name, compute_dtype)
    model = AutoModelForCausalLM.from_pretrained(
        folder, trust_remote_code=True, quantization_config=config, device_map=device, dtype=compute_dtype
    )
    return model.eval()


def compare_on_demo(folder: str | Path, methods: list[str], per_task: int, seed: int) -> dict:
    """The demo's held-out evaluation (`illada.demo.evaluate`: generation exact match, multiple-choice accuracy
    with confidence and likelihood scoring) of the unquantised model and of each method, and how many of each
    method's answers differ from the unquantised model's."""
    from illada.demo.data import make_examples
    from illada.demo.evaluate import TASKS, generate_one, multiple_choice
    from illada.demo.loading import load_model

    model, tokenizer = load_model(folder, trust_remote_code=True)
    examples = make_examples("heldout", per_task * len(TASKS), seed=seed)
    results, reference = {}, None
    for name in ["fp32", *methods]:
        if name != "fp32":
            model = load_quantized(folder, name)
        with torch.no_grad():
            rows = [generate_one(model, tokenizer, example) for example in examples]
            choices = multiple_choice(model, tokenizer, examples, seed)
        answers = [row["answer"] for row in rows]
        reference = answers if reference is None else reference
        results[name] = {
            "weights_bytes": model.get_memory_footprint(),
            "exact_match": sum(row["correct"] for row in rows) / len(rows),
            **{f"mc_{method}": sum(hits) / len(hits) for method, hits in choices.items()},
            "answers_differing_from_fp32": sum(a != b for a, b in zip(answers, reference)),
        }
    return {"model": str(folder), "questions": len(examples), "seed": seed, "methods": results}


def main(argv: list[str] | None = None) -> dict:
    from illada.demo.evaluate import EVAL_SEED
    from illada.demo.loading import SHIPPED_MODEL_DIR

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=str(SHIPPED_MODEL_DIR), help="Model folder (default: illada-demo/).")
    parser.add_argument("--methods", nargs="+", default=list(QUANTIZATIONS), choices=list(QUANTIZATIONS))
    parser.add_argument("--per-task", type=int, default=5, help="Held-out questions per task (default 5).")
    parser.add_argument("--seed", type=int, default=EVAL_SEED)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    results = compare_on_demo(args.model, args.methods, args.per_task, args.seed)
    print("| method | weights (bytes) | exact match | MC confidence | MC likelihood | answers differing from fp32 |")
    print("|---|---|---|---|---|---|")
    for name, row in results["methods"].items():
        print(
            f"| {name} | {row['weights_bytes']:,} | {row['exact_match']:.1%} | {row['mc_confidence']:.1%} | "
            f"{row['mc_likelihood']:.1%} | {row['answers_differing_from_fp32']}/{results['questions']} |"
        )
    print(json.dumps(results))
    return results


if __name__ == "__main__":
    main()
