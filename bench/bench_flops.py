"""How close the forward pass gets to the machine's matmul throughput.

    python bench/bench_flops.py            # 8 layers x 1024 hidden, vocab 155136, batch 1 x 512 tokens

Counts the model's forward FLOPs by hand (2 per multiply-add of every projection, the LM head, and the two
attention matmuls), times the forward, and divides the achieved FLOP/s by the FLOP/s of a plain fp32 matmul
of a similar shape measured in the same run. Writes the `flops` section of bench/RESULTS.md.
"""

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from common import best_time, environment, markdown_table, write_section  # noqa: E402

from illada.configuration_illada import ILLaDAConfig  # noqa: E402
from illada.modeling_illada import ILLaDAForCausalLM  # noqa: E402


def forward_flops(config: ILLaDAConfig, seq_len: int, logits_positions: int) -> int:
    """Matmul FLOPs of one forward of one sequence (norms, softmax and activations are not counted)."""
    h, kv = config.hidden_size, config.num_key_value_heads * config.head_dim
    projections = h * h * 2 + h * kv * 2 + 3 * h * config.intermediate_size  # q, o, k, v, gate, up, down
    attention = 2 * seq_len * h  # QK^T and AV per query token
    per_layer = 2 * seq_len * (projections + attention)
    return config.num_hidden_layers * per_layer + 2 * logits_positions * h * config.vocab_size


def matmul_flops_per_s(m: int, k: int, n: int) -> float:
    a, b = torch.randn(m, k), torch.randn(k, n)
    return 2 * m * k * n / best_time(lambda: a @ b, repeats=5)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--layers", type=int, default=8)
    parser.add_argument("--hidden", type=int, default=1024)
    parser.add_argument("--vocab", type=int, default=155136)
    parser.add_argument("--seq_len", type=int, default=512)
    args = parser.parse_args()
    torch.manual_seed(0)
    config = ILLaDAConfig(
        vocab_size=args.vocab,
        hidden_size=args.hidden,
        intermediate_size=args.hidden * 7 // 2,
        num_hidden_layers=args.layers,
        num_attention_heads=args.hidden // 128,
        num_key_value_heads=max(1, args.hidden // 512),
    )
    model = ILLaDAForCausalLM(config).eval()
    ids = torch.randint(6, args.vocab, (1, args.seq_len))
    rows = []
    peak = matmul_flops_per_s(args.seq_len, args.hidden, config.intermediate_size)
    for label, keep in (("all positions", 0), ("one 32-token block", 32)):
        with torch.no_grad():
            seconds = best_time(lambda keep=keep: model(ids, logits_to_keep=keep))
        flops = forward_flops(config, args.seq_len, keep or args.seq_len)
        rows.append(
            [
                label,
                f"{flops / 1e9:.1f}",
                f"{seconds:.3f}",
                f"{flops / seconds / 1e9:.1f}",
                f"{peak / 1e9:.1f}",
                f"{flops / seconds / peak:.0%}",
            ]
        )
    params = sum(p.numel() for p in model.parameters())
    table = markdown_table(["logits for", "GFLOP", "seconds", "GFLOP/s", "matmul GFLOP/s", "fraction"], rows)
    body = (
        f"## Forward FLOP/s against a plain matmul\n\n`python bench/bench_flops.py --layers {args.layers} --hidden "
        f"{args.hidden} --vocab {args.vocab} --seq_len {args.seq_len}` ({params / 1e6:.0f}M parameters, fp32, "
        f"batch 1 x {args.seq_len}; {environment()})\n\n{table}\n\nThe matmul reference is "
        f"`({args.seq_len} x {args.hidden}) @ ({args.hidden} x {config.intermediate_size})` in the same run."
    )
    print(body)
    write_section("flops", body)


if __name__ == "__main__":
    main()
