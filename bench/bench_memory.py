"""Training memory of iLLaDA-8B, planned from one decoder layer measured on CPU.

What backward keeps is counted exactly with `torch.autograd.graph.saved_tensors_hooks` (the bytes of every distinct
storage saved for backward; hardware-independent): one bfloat16 `ILLaDADecoderLayer` on a batch of one row at
small sizes, SDPA without a mask (the fused kernels keep O(L) per head, as flash attention does on a GPU). A
formula, bytes per token per layer = 2 * (a*h + b*kv + c*f) + d*heads + e*head_dim, is fitted on 16 sizes,
checked on 3 others (printed: measured against predicted), then applied to the 8B shape (32 layers, hidden 4096,
32 heads, 8 kv heads, FFN 14336, vocab 155136, tied). The LM head's part (the trainer computes logits only at the masked
positions) is measured the same way. Weights, gradients and AdamW state are counted from the parameter numbers.

    python bench/bench_memory.py              # prints the fit, its check and the table (markdown)
"""

from __future__ import annotations

import itertools
import sys
from pathlib import Path

import torch

sys.path[:0] = [str(Path(__file__).resolve().parents[1])]

from illada.configuration_illada import ILLaDAConfig  # noqa: E402
from illada.modeling_illada import ILLaDADecoderLayer, ILLaDARotaryEmbedding  # noqa: E402

GB = 1e9
SHAPE_8B = dict(layers=32, hidden=4096, heads=32, kv_heads=8, ffn=14336, vocab=155136)
LORA_TARGETS = ("q", "k", "v", "o", "gate", "up", "down")


def saved_bytes(function, inputs: list[torch.Tensor], excluded: list[torch.Tensor]) -> int:
    """Bytes of the distinct storages that autograd saves for backward while `function(*inputs)` runs, leaving out
    the storages of `excluded` (the weights, and the input that the previous layer already keeps)."""
    storages: dict[int, int] = {}

    def pack(tensor):
        storage = tensor.untyped_storage()
        storages[storage.data_ptr()] = storage.nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        function(*inputs)
    skip = {tensor.untyped_storage().data_ptr() for tensor in excluded}
    return sum(size for pointer, size in storages.items() if pointer not in skip)


def layer_bytes_per_token(hidden: int, heads: int, kv_heads: int, ffn: int, seq_len: int) -> float:
    """Measured activation bytes per token kept by one bf16 decoder layer (input excluded: it is the previous
    layer's output, counted there)."""
    config = ILLaDAConfig(
        hidden_size=hidden,
        num_attention_heads=heads,
        num_key_value_heads=kv_heads,
        intermediate_size=ffn,
        num_hidden_layers=1,
        vocab_size=64,
        max_position_embeddings=seq_len,
        attn_implementation="sdpa",
    )
    config._attn_implementation = "sdpa"
    layer = ILLaDADecoderLayer(config, 0).to(torch.bfloat16)
    rotary = ILLaDARotaryEmbedding(config)
    x = torch.randn(1, seq_len, hidden, dtype=torch.bfloat16, requires_grad=True)
    position = rotary(x, torch.arange(seq_len)[None])
    total = saved_bytes(lambda h: layer(h, position, None), [x], [x, *layer.parameters()])
    return total / seq_len


def head_bytes_per_masked_token(hidden: int, vocab: int, masked: int = 64) -> float:
    """Measured bytes per masked token of the final norm + tied LM head + float32 cross-entropy (the trainer's
    `masked_diffusion_loss`), on `masked` positions."""
    norm_weight = torch.ones(hidden, dtype=torch.bfloat16, requires_grad=True)
    head = torch.randn(vocab, hidden, dtype=torch.bfloat16, requires_grad=True)
    x = torch.randn(masked, hidden, dtype=torch.bfloat16, requires_grad=True)
    targets = torch.randint(0, vocab, (masked,))

    def forward(h):
        variance = h.float().pow(2).mean(-1, keepdim=True)
        normed = (h.float() * torch.rsqrt(variance + 1e-5)).to(torch.bfloat16) * norm_weight
        logits = normed @ head.T
        return torch.nn.functional.cross_entropy(logits.float(), targets, reduction="sum")

    return saved_bytes(forward, [x], [x, norm_weight, head]) / masked


def fit_layer_formula() -> tuple[torch.Tensor, list[tuple]]:
    """Least-squares fit of bytes/token = 2*(a*h + b*kv + c*f) + d*heads + e*head_dim on a grid; returns the
    coefficients and the check rows (size, measured, predicted) on other sizes."""
    grid = [
        (h, n, k, f)
        for h, (n, k), f in itertools.product((128, 256), ((2, 1), (4, 2), (8, 2), (8, 4)), (256, 448))
        if h % n == 0
    ]
    rows, targets = [], []
    for h, n, k, f in grid:
        rows.append([2 * h, 2 * k * (h // n), 2 * f, n, h // n])
        targets.append(layer_bytes_per_token(h, n, k, f, seq_len=128))
    coefficients = torch.linalg.lstsq(torch.tensor(rows, dtype=torch.float64), torch.tensor(targets).double()).solution
    checks = []
    for h, n, k, f, seq_len in [(384, 6, 3, 1024, 96), (512, 8, 2, 1792, 160), (256, 4, 4, 640, 256)]:
        predicted = float(torch.tensor([2 * h, 2 * k * (h // n), 2 * f, n, h // n], dtype=torch.float64) @ coefficients)
        checks.append(((h, n, k, f, seq_len), layer_bytes_per_token(h, n, k, f, seq_len), predicted))
    return coefficients, checks


def parameter_counts(shape: dict) -> dict[str, int]:
    h, f, layers = shape["hidden"], shape["ffn"], shape["layers"]
    kv = shape["kv_heads"] * h // shape["heads"]
    linear = layers * (2 * h * h + 2 * h * kv + 3 * h * f)
    embedding = shape["vocab"] * h
    norms = layers * 2 * h + h
    lora = layers * 16 * ((h + h) + 2 * (h + kv) + (h + h) + 3 * (h + f))  # r = 16 on the 7 projections
    return {"linear": linear, "embedding": embedding, "norms": norms, "total": linear + embedding + norms, "lora": lora}


def plan(coefficients: torch.Tensor, head_per_token: float) -> list[dict]:
    """Peak memory (GB) per configuration on one GPU (and full fine-tuning sharded over 8 GPUs by FSDP/ZeRO-3)."""
    shape = SHAPE_8B
    counts = parameter_counts(shape)
    h, kv, f, n = shape["hidden"], shape["kv_heads"] * shape["hidden"] // shape["heads"], shape["ffn"], shape["heads"]
    per_token_layer = float(torch.tensor([2 * h, 2 * kv, 2 * f, n, h // n], dtype=torch.float64) @ coefficients)
    static = {
        # bf16 mixed precision: fp32 master weights, fp32 gradients, fp32 AdamW m and v = 16 bytes per parameter
        "full": 16 * counts["total"],
        # bf16 frozen base; LoRA weights, gradients and AdamW state in fp32
        "LoRA": 2 * counts["total"] + 16 * counts["lora"],
        # NF4 linear weights with double quantisation (4.127 bits), bf16 embedding and norms
        "QLoRA": counts["linear"] * 4.127 / 8 + 2 * (counts["embedding"] + counts["norms"]) + 16 * counts["lora"],
    }
    rows = []
    for method, checkpointing, seq_len in itertools.product(static, (False, True), (2048, 8192)):
        if checkpointing:  # each layer keeps its bf16 input; one layer's activations live during its recompute
            activations = seq_len * (shape["layers"] * 2 * h + per_token_layer)
        else:
            activations = seq_len * shape["layers"] * (2 * h + per_token_layer)
        head = seq_len * head_per_token  # worst case: every position masked (t near 1)
        total = static[method] + activations + head
        rows.append(
            {
                "method": method,
                "checkpointing": checkpointing,
                "seq_len": seq_len,
                "static": static[method] / GB,
                "activations": activations / GB,
                "head": head / GB,
                "total": total / GB,
                "fsdp8": (static[method] / 8 + activations + head) / GB if method == "full" else None,
            }
        )
    return rows


def main() -> None:
    torch.manual_seed(0)
    coefficients, checks = fit_layer_formula()
    a, b, c, d, e = coefficients.tolist()
    print(f"bytes/token/layer = 2*({a:.3f}*h + {b:.3f}*kv + {c:.3f}*f) + {d:.3f}*heads + {e:.3f}*head_dim")
    for size, measured, predicted in checks:
        print(f"check h,heads,kv_heads,f,L={size}: measured {measured:.1f}, predicted {predicted:.1f}")
    # Per masked token the head keeps vocab-sized tensors and a few hidden-sized ones: linear in the vocab.
    small, large = head_bytes_per_masked_token(256, 1024), head_bytes_per_masked_token(256, 2048)
    check = head_bytes_per_masked_token(256, 3072)
    per_vocab = (large - small) / 1024
    print(
        f"LM head + loss per masked token: {small:.0f} B at vocab 1024, {large:.0f} at 2048; 3072: measured "
        f"{check:.0f}, predicted {large + per_vocab * 1024:.0f}"
    )
    head_8b = (
        large + per_vocab * (SHAPE_8B["vocab"] - 2048) + (small - per_vocab * 1024) / 256 * (SHAPE_8B["hidden"] - 256)
    )
    print(f"-> {head_8b / 1e6:.2f} MB per masked token at the 8B shape")
    counts = parameter_counts(SHAPE_8B)
    total, linear, lora = counts["total"] / 1e9, counts["linear"] / 1e9, counts["lora"] / 1e6
    print(f"parameters: {total:.2f}B ({linear:.2f}B linear); LoRA r=16: {lora:.1f}M")
    print()
    print(
        "| method | activation checkpointing | sequence | weights + grads + AdamW | activations | LM head + loss "
        "| peak, 1 GPU | peak per GPU, FSDP/ZeRO-3 x8 |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for row in plan(coefficients, head_8b):
        fsdp = f"{row['fsdp8']:.1f}" if row["fsdp8"] is not None else "-"
        print(
            f"| {row['method']} | {'on' if row['checkpointing'] else 'off'} | {row['seq_len']} | "
            f"{row['static']:.1f} | {row['activations']:.1f} | {row['head']:.1f} | {row['total']:.1f} | {fsdp} |"
        )


if __name__ == "__main__":
    main()
