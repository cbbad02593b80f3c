"""Does `torch.compile` speed up diffusion generation on CPU? Eager against compiled, in the same process.

    python bench/bench_compile.py                     # the demo model and a tiny random model; appends to RESULTS.md
    python bench/bench_compile.py --model illada-demo --prompts 4 --new_tokens 32 --repeats 3

For each model, the same `generate` call (fixed canvas, greedy, one block of `new_tokens` masks decoded in
`new_tokens` steps, no cache: every forward has the same shapes, so the compiled model compiles once) runs on the
eager model and on `model.compile()` (inductor, the default backend, `dynamic=False`). Reported: the best of
`repeats` runs after a warm-up (seconds per `generate`, and the speed-up eager / compiled), the time of the first
compiled call (compilation included), the number of `generate` calls after which compiling pays off, and whether
the compiled model gives the same tokens. The forward is traced whole (`fullgraph=True` works, see
tests/test_conformance.py); `generate`'s Python loop stays eager.
"""

import argparse
import shlex
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "bench"), str(REPO / "tests")]

from common import best_time, environment, markdown_table, write_section  # noqa: E402
from tiny import make_model  # noqa: E402

from illada.modeling_illada import ILLaDAForCausalLM  # noqa: E402


def load(name: str) -> ILLaDAForCausalLM:
    if name == "tiny":
        return make_model(seed=0, attn_implementation="sdpa")
    return ILLaDAForCausalLM.from_pretrained(REPO / name, attn_implementation="sdpa").eval()


def measure(name: str, args: argparse.Namespace) -> list[object]:
    model = load(name)
    prompts = torch.randint(6, model.config.vocab_size, (args.prompts, 12), generator=torch.Generator().manual_seed(0))
    options = dict(max_new_tokens=args.new_tokens, block_length=args.new_tokens, steps=args.new_tokens, canvas="fixed")

    def run() -> torch.Tensor:
        with torch.no_grad():
            return model.generate(prompts, **options)

    eager_out = run()
    eager = best_time(run, repeats=args.repeats)
    model.compile(dynamic=False)
    start = time.perf_counter()
    compiled_out = run()
    first = time.perf_counter() - start
    compiled = best_time(run, repeats=args.repeats, warmup=0)
    saved = eager - compiled
    pays_off = f"{(first - compiled) / saved:.0f}" if saved > 0 else "never"
    width = f"{model.config.hidden_size} x {model.config.num_hidden_layers}, vocab {model.config.vocab_size}"
    return [
        f"{name} ({width})",
        f"{eager:.3f}",
        f"{compiled:.3f}",
        f"{eager / compiled:.2f}x",
        f"{first:.1f}",
        pays_off,
        "yes" if torch.equal(eager_out, compiled_out) else "no",
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", action="append", help="`tiny` or a folder under the repository (repeatable)")
    parser.add_argument("--prompts", type=int, default=4)
    parser.add_argument("--new_tokens", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--no_write", action="store_true", help="print only, do not append to RESULTS.md")
    args = parser.parse_args()
    models = args.model or ["illada-demo", "tiny"]
    rows = [measure(name, args) for name in models]
    header = ["model", "eager s", "compiled s", "speed-up", "first compiled call s", "calls to pay off", "same tokens"]
    command = "python bench/bench_compile.py " + shlex.join(sys.argv[1:])
    body = (
        f"## torch.compile and generation on CPU\n\n`{command.strip()}` ({environment()}; {args.prompts} prompts of "
        f"12 tokens, {args.new_tokens} new tokens in {args.new_tokens} steps, fixed canvas, no cache; seconds per "
        f"`generate`, best of {args.repeats})\n\n{markdown_table(header, rows)}\n"
    )
    print(body)
    if not args.no_write:
        write_section("compile", body)


if __name__ == "__main__":
    main()
