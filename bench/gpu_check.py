"""GPU checks in one command: flash-attn parity, bf16 versus fp32, a short bf16 training run, peak memory.

    python bench/gpu_check.py                  # on a CUDA machine; prints a table, exit code 1 if a check fails
    python bench/gpu_check.py --json out.json  # also writes the figures as JSON
    python bench/gpu_check.py --device cpu     # the same checks (flash-attn excepted) on CPU, tiny shapes only

Without CUDA (and without `--device cpu`) it prints what it skipped and exits 0; without the flash-attn package
it skips only the flash check. Checks, each on randomly initialised models (no download):

1. flash: `flash_attention_2` (varlen kernel, documents found from `position_ids` restarts) against SDPA with the
   block-diagonal mask, on a packed bf16 batch; its error against an fp32 SDPA reference must stay within
   `FLASH_ERROR_FACTOR` times bf16 SDPA's own error, and every packed document must match that document run
   alone.
2. bf16: the same weights in bf16 and fp32, on a tiny model and on an 8B-shaped stack (iLLaDA 8B's hidden size,
   heads, kv heads, MLP width and vocabulary, `--layers_8b` layers): top-1 agreement of the logits at masked
   positions (must reach `MIN_TOP1_AGREEMENT`) and, for greedy `generate`, the share of identical answer tokens
   and of identical rows (reported; a single differing near-tie changes the rest of a row's canvas).
3. train: `--train_steps` optimizer steps of the masked-diffusion loss under bf16 autocast with AdamW on a
   learnable toy task (each row counts upward): the loss must stay finite and its last quarter must average
   below its first quarter.
4. memory: peak CUDA memory of each check (`torch.cuda.max_memory_allocated`).
5. launch (CUDA only): each sharded accelerate config of configs/accelerate/ (fsdp2, fsdp2_offload, zero2, zero3,
   zero3_offload) run as its documented `accelerate launch --config_file ... train_sft.py` line on the GPUs there
   are, 4 bf16 steps of a tiny model with a checkpoint at step 2: it must finish, log finite losses, save a final
   folder that `AutoModelForCausalLM` loads, and (FSDP, ZeRO) a checkpoint that `illada.consolidate` turns into
   one. The CPU tests (tests/test_training_sharded.py) run all but fsdp2_offload (torch's offload policy needs an
   accelerator), DeepSpeed on its CPU accelerator in float32; here they run in bf16 on CUDA. The DeepSpeed configs
   are skipped where `deepspeed` is not installed (it is in requirements-test.txt, not in requirements.txt).
"""

from __future__ import annotations

import argparse
import copy
import importlib.util
import json
import math
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from illada.configuration_illada import ILLaDAConfig  # noqa: E402
from illada.modeling_illada import ILLaDAForCausalLM  # noqa: E402
from illada.trainer import masked_diffusion_loss, sample_mask  # noqa: E402

# iLLaDA 8B (arXiv 2606.25331; docs/architecture.md), without the layer count.
SHAPE_8B = dict(
    hidden_size=4096,
    intermediate_size=14336,
    num_attention_heads=32,
    num_key_value_heads=8,
    vocab_size=155136,
    max_position_embeddings=8192,
)
TINY = dict(
    hidden_size=64,
    intermediate_size=128,
    num_attention_heads=4,
    num_key_value_heads=2,
    vocab_size=512,
    num_hidden_layers=2,
    max_position_embeddings=1024,
)
SPECIAL_IDS = dict(bos_token_id=0, pad_token_id=1, eos_token_id=2, mask_token_id=5)
FIRST_ORDINARY_ID = 6
# A wider init than the default 0.02 makes the random model's top-1 choices less tied, so that bf16 versus fp32
# agreement measures precision and not coin flips between near-equal logits.
SHARP_INIT = 0.1
# bf16 keeps 8 bits of mantissa: flash-attn in bf16 may differ from fp32 as much as SDPA in bf16 does, a bit more.
FLASH_ERROR_FACTOR = 2.0
MIN_TOP1_AGREEMENT = 0.9
# Documents of the packed flash-attn batch: odd lengths, one very short.
DOC_LENGTHS = (37, 120, 5, 90, 200)


@dataclass
class CheckResult:
    name: str
    status: str  # "pass", "FAIL" or "skipped"
    figures: dict[str, Any] = field(default_factory=dict)
    note: str = ""


def make_model(
    shape: dict, num_layers: int | None, device: str, attn: str = "sdpa", seed: int = 0
) -> ILLaDAForCausalLM:
    """A randomly initialised fp32 model of `shape` (`num_layers` overrides its layer count), built on CPU from
    `seed` (so that two calls give the same weights whatever the attention kernel), then moved to `device`."""
    settings = {**shape, **SPECIAL_IDS, "initializer_range": SHARP_INIT}
    if num_layers is not None:
        settings["num_hidden_layers"] = num_layers
    torch.manual_seed(seed)
    model = ILLaDAForCausalLM._from_config(ILLaDAConfig(**settings), attn_implementation=attn, dtype=torch.float32)
    return model.to(device).eval()


def packed_batch(vocab_size: int, device: str, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, list[int]]:
    """One row holding `DOC_LENGTHS` documents back to back: ids `(1, L)` and position ids restarting at each."""
    g = torch.Generator().manual_seed(seed)
    total = sum(DOC_LENGTHS)
    ids = torch.randint(FIRST_ORDINARY_ID, vocab_size, (1, total), generator=g)
    positions = torch.cat([torch.arange(n) for n in DOC_LENGTHS])[None]
    return ids.to(device), positions.to(device), list(DOC_LENGTHS)


def check_flash(device: str) -> CheckResult:
    name = "flash-attn varlen vs SDPA (packed, bf16)"
    if device != "cuda":
        return CheckResult(name, "skipped", note="needs CUDA")
    if importlib.util.find_spec("flash_attn") is None:
        return CheckResult(name, "skipped", note="flash-attn is not installed (pip install flash-attn)")
    reference = make_model(TINY, 4, device, "sdpa")
    sdpa_model = copy.deepcopy(reference).to(torch.bfloat16)
    flash_model = make_model(TINY, 4, device, "flash_attention_2").to(torch.bfloat16)
    ids, positions, lengths = packed_batch(TINY["vocab_size"], device)
    with torch.no_grad():
        exact = reference(input_ids=ids, position_ids=positions).logits.float()
        sdpa = sdpa_model(input_ids=ids, position_ids=positions).logits.float()
        flash = flash_model(input_ids=ids, position_ids=positions).logits.float()
        alone, start = [], 0
        for length in lengths:  # each document by itself, flash kernel, no packing
            piece = ids[:, start : start + length]
            alone.append(flash_model(input_ids=piece, position_ids=positions[:, start : start + length]).logits.float())
            start += length
        alone = torch.cat(alone, dim=1)
    sdpa_error = (sdpa - exact).abs().max().item()
    flash_error = (flash - exact).abs().max().item()
    packing_error = (flash - alone).abs().max().item()
    figures = {
        "sdpa_bf16_max_error": sdpa_error,
        "flash_bf16_max_error": flash_error,
        "flash_packed_vs_alone_max_diff": packing_error,
        "flash_vs_sdpa_max_diff": (flash - sdpa).abs().max().item(),
    }
    ok = (
        flash_error <= FLASH_ERROR_FACTOR * sdpa_error + 1e-3
        and packing_error <= FLASH_ERROR_FACTOR * sdpa_error + 1e-3
    )
    return CheckResult(name, "pass" if ok else "FAIL", figures)


def top1_agreement(fp32: ILLaDAForCausalLM, bf16: ILLaDAForCausalLM, ids: torch.Tensor) -> tuple[float, float]:
    """Top-1 agreement and max logit difference of the two models at the masked positions of `ids` (half masked)."""
    g = torch.Generator().manual_seed(1)
    masked = (torch.rand(ids.shape, generator=g) < 0.5).to(ids.device)
    noisy = ids.masked_fill(masked, SPECIAL_IDS["mask_token_id"])
    with torch.no_grad():
        exact = fp32(input_ids=noisy, logits_to_keep=masked).logits.float()
        low = bf16(input_ids=noisy, logits_to_keep=masked).logits.float()
    return (exact.argmax(-1) == low.argmax(-1)).float().mean().item(), (exact - low).abs().max().item()


def generate_agreement(
    fp32: ILLaDAForCausalLM, bf16: ILLaDAForCausalLM, prompts: torch.Tensor, new_tokens: int
) -> dict[str, float]:
    """Greedy `generate` (fixed canvas, one token per step) of the two models: shares of identical answer tokens
    and of identical rows."""
    settings = dict(max_new_tokens=new_tokens, block_length=min(32, new_tokens), canvas="fixed", temperature=0.0)
    exact, low = (model.generate(prompts, **settings)[:, prompts.shape[1] :] for model in (fp32, bf16))
    same = exact == low
    return {
        "generate_token_agreement": same.float().mean().item(),
        "generate_identical_rows": same.all(dim=1).float().mean().item(),
    }


def check_bf16(device: str, label: str, shape: dict, num_layers: int | None, new_tokens: int) -> CheckResult:
    """The fp32 model and its bf16 copy (weights rounded to bf16, as a bf16 checkpoint load gives)."""
    name = f"bf16 vs fp32, {label}"
    fp32 = make_model(shape, num_layers, device)
    bf16 = copy.deepcopy(fp32).to(torch.bfloat16)
    g = torch.Generator().manual_seed(2)
    ids = torch.randint(FIRST_ORDINARY_ID, shape["vocab_size"], (4, 128), generator=g).to(device)
    agreement, max_diff = top1_agreement(fp32, bf16, ids)
    figures = {
        "top1_agreement": agreement,
        "max_logit_diff": max_diff,
        **generate_agreement(fp32, bf16, ids[:, :16], new_tokens),
    }
    return CheckResult(name, "pass" if agreement >= MIN_TOP1_AGREEMENT else "FAIL", figures)


def counting_batch(batch: int, length: int, vocab_size: int, g: torch.Generator, device: str) -> torch.Tensor:
    """Rows that count upward from a random start (mod the ordinary ids): learnable from either side."""
    span = vocab_size - FIRST_ORDINARY_ID
    starts = torch.randint(0, span, (batch, 1), generator=g)
    return (FIRST_ORDINARY_ID + (starts + torch.arange(length)) % span).to(device)


def check_training(device: str, steps: int) -> CheckResult:
    name = f"bf16 training, {steps} steps"
    model = make_model({**TINY, "hidden_size": 128, "intermediate_size": 256}, 2, device).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.1)
    g, noise = torch.Generator().manual_seed(3), torch.Generator(device=device).manual_seed(4)
    losses = []
    for _ in range(steps):
        ids = counting_batch(16, 64, TINY["vocab_size"], g, device)
        maskable = torch.ones_like(ids, dtype=torch.bool)
        noisy, masked, t = sample_mask(ids, maskable, SPECIAL_IDS["mask_token_id"], generator=noise)
        with torch.autocast(device_type=device, dtype=torch.bfloat16):
            logits = model(input_ids=noisy, logits_to_keep=masked).logits  # [N, V]
        t_per_token = t[:, None].expand_as(masked)[masked]
        loss = masked_diffusion_loss(logits.float(), ids[masked], t_per_token, maskable.sum())
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(loss.item())
    quarter = max(1, steps // 4)
    first, last = sum(losses[:quarter]) / quarter, sum(losses[-quarter:]) / quarter
    finite = all(math.isfinite(x) for x in losses)
    figures = {"loss_first_quarter": first, "loss_last_quarter": last, "all_finite": finite}
    return CheckResult(name, "pass" if finite and last < first else "FAIL", figures)


def measured(device: str, check: Callable[[], CheckResult]) -> CheckResult:
    """Runs `check`, adding its wall time and (on CUDA) its peak memory."""
    if device == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    result = check()
    if result.status != "skipped":
        result.figures["seconds"] = round(time.perf_counter() - start, 2)
        if device == "cuda":
            result.figures["peak_memory_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 3)
    return result


LAUNCH_CONFIGS = ("fsdp2.yaml", "fsdp2_offload.yaml", "zero2.yaml", "zero3.yaml", "zero3_offload.yaml")


def check_launch(config: str) -> CheckResult:
    """`accelerate launch --config_file configs/accelerate/CONFIG train_sft.py ...` on every GPU (see check 5)."""
    import os
    import subprocess
    import tempfile

    name = f"launch {config}"
    if config.startswith("zero") and importlib.util.find_spec("deepspeed") is None:
        return CheckResult(name, "skipped", note="deepspeed is not installed")
    sys.path[:0] = [str(ROOT / "tests")]
    from tiny_tokenizer import make_tiny_tokenizer
    from transformers import AutoModelForCausalLM

    from illada.consolidate import consolidate

    with tempfile.TemporaryDirectory() as scratch:
        folder = Path(scratch)
        model = make_model({**TINY, "hidden_size": 128, "intermediate_size": 256}, 2, "cpu")
        model.save_pretrained(folder / "init")
        make_tiny_tokenizer().save_pretrained(folder / "init")
        rows = [{"text": " ".join(str((i + k) % 50) for k in range(12))} for i in range(64)]
        (folder / "train.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
        command = [
            sys.executable, "-m", "accelerate.commands.launch",
            "--config_file", str(ROOT / "configs" / "accelerate" / config),
            "--num_processes", str(max(1, torch.cuda.device_count())), str(ROOT / "train_sft.py"),
            "--model_name_or_path", str(folder / "init"), "--train_files", str(folder / "train.jsonl"),
            "--output_dir", str(folder / "out"), "--max_steps", "4", "--save_steps", "2", "--max_length", "32",
            "--per_device_train_batch_size", "2", "--learning_rate", "1e-3", "--min_lr", "1e-4", "--logging_steps", "1",
            "--report_to", "none", "--disable_tqdm", "true", "--bf16",
        ]  # fmt: skip
        result = subprocess.run(command, capture_output=True, text=True, timeout=900, env=dict(os.environ))
        if result.returncode != 0:
            return CheckResult(name, "FAIL", note=result.stderr[-1500:])
        state = json.loads((folder / "out" / "trainer_state.json").read_text())
        losses = [entry["loss"] for entry in state["log_history"] if "loss" in entry]
        AutoModelForCausalLM.from_pretrained(folder / "out", trust_remote_code=True)
        merged = consolidate(folder / "out" / "checkpoint-4", folder / "merged")
        AutoModelForCausalLM.from_pretrained(merged, trust_remote_code=True)
    finite = len(losses) == 4 and all(math.isfinite(x) for x in losses)
    return CheckResult(name, "pass" if finite else "FAIL", {"first_loss": losses[0], "last_loss": losses[-1]})


def run_checks(args: argparse.Namespace) -> list[CheckResult]:
    device = args.device
    checks = [
        lambda: check_flash(device),
        lambda: check_bf16(device, "tiny", TINY, None, args.new_tokens),
        lambda: check_training(device, args.train_steps),
    ]
    if device == "cuda":
        checks.insert(
            2,
            lambda: check_bf16(
                device, f"8B-shaped, {args.layers_8b} layers", SHAPE_8B, args.layers_8b, args.new_tokens
            ),
        )
        checks += [lambda config=config: check_launch(config) for config in LAUNCH_CONFIGS]
    return [measured(device, check) for check in checks]


def report(results: list[CheckResult]) -> str:
    lines = []
    for result in results:
        figures = ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in result.figures.items())
        lines.append(f"[{result.status:>7}] {result.name}: {figures or result.note}")
    return "\n".join(lines)


def parse_arguments(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--device",
        choices=["cuda", "cpu"],
        default="cuda",
        help="cpu: run the checks that do not need CUDA, on tiny shapes (to test this script)",
    )
    parser.add_argument("--layers_8b", type=int, default=4, help="layers of the 8B-shaped stack")
    parser.add_argument("--new_tokens", type=int, default=64, help="answer length of the generate comparison")
    parser.add_argument("--train_steps", type=int, default=200, help="optimizer steps of the training check")
    parser.add_argument("--json", default=None, help="also write the results to this JSON file")
    args = parser.parse_args(argv)
    for flag in ("layers_8b", "new_tokens", "train_steps"):
        if getattr(args, flag) < 1:
            parser.error(f"`--{flag}` must be a positive integer, got {getattr(args, flag)}.")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_arguments(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        print(
            "No CUDA device: skipped every GPU check (flash-attn parity, bf16 vs fp32 on the tiny and 8B-shaped "
            "stacks, bf16 training, peak memory). `--device cpu` runs the non-flash checks on CPU."
        )
        return 0
    print(f"device: {torch.cuda.get_device_name() if args.device == 'cuda' else 'cpu'}; torch {torch.__version__}")
    results = run_checks(args)
    print(report(results))
    if args.json:
        Path(args.json).write_text(json.dumps([result.__dict__ for result in results], indent=2) + "\n")
    return 1 if any(result.status == "FAIL" for result in results) else 0


if __name__ == "__main__":
    sys.exit(main())
