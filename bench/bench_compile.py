"""Does `torch.compile` speed up diffusion generation on CPU? Eager against compiled, in the same process.

    python bench/bench_compile.py                     # the demo model and a tiny random model; appends to RESULTS.md
    python bench/bench_compile.py --model illada-demo --prompts 4 --new_tokens 32 --repeats 3

For each model, the same `generate` call (fixed canvas, greedy, one block of `new_tokens` masks decoded in
`new_tokens` steps, no cache: every forward has the same shapes, so the compiled model compiles once) runs on the
eager model and on `model.compile()` (inductor, the default backend, `dynamic=False`). Reported: the best of
`repeats` runs after a warm-up, eager and compiled runs alternating (wall and process CPU seconds per `generate`,
and the speed-ups eager / compiled), the time of the first
compiled call (compilation included), the number of `generate` calls after which compiling pays off, and whether
the compiled model gives the same tokens. Compilation starts from an empty inductor cache (a fresh
`TORCHINDUCTOR_CACHE_DIR` unless one is set). The forward is traced whole (`fullgraph=True` works, see
tests/test_conformance.py); `generate`'s Python loop stays eager.
"""

import argparse
import os
import shlex
import shutil
import sys
import tempfile
import time
from pathlib import Path

# A fresh inductor cache, so that the first compiled call pays the whole compilation (a warm on-disk cache from an
# earlier run would hide most of it).
OWN_CACHE = None if "TORCHINDUCTOR_CACHE_DIR" in os.environ else tempfile.mkdtemp(prefix="bench_compile_")
os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", OWN_CACHE or "")

import torch  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "bench"), str(REPO / "tests")]

from common import environment, markdown_table, write_section  # noqa: E402
from tiny import make_model  # noqa: E402

from illada.modeling_illada import ILLaDAForCausalLM  # noqa: E402


def load(name: str) -> ILLaDAForCausalLM:
    if name == "tiny":
        return make_model(seed=0, attn_implementation="sdpa")
    return ILLaDAForCausalLM.from_pretrained(REPO / name, attn_implementation="sdpa").eval()


def timed(fn) -> tuple[float, float]:
    """(wall seconds, CPU seconds of this process) of one call: on a shared machine the CPU time is the steadier."""
    wall, cpu = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - wall, time.process_time() - cpu


def measure(name: str, args: argparse.Namespace) -> list[object]:
    model = load(name)
    prompts = torch.randint(6, model.config.vocab_size, (args.prompts, 12), generator=torch.Generator().manual_seed(0))
    options = dict(max_new_tokens=args.new_tokens, block_length=args.new_tokens, steps=args.new_tokens, canvas="fixed")

    def run() -> torch.Tensor:
        with torch.no_grad():
            return model.generate(prompts, **options)

    eager_out = run()  # warm-up
    model.compile(dynamic=False)
    compiled_call = model._compiled_call_impl
    start = time.perf_counter()
    compiled_out = run()
    first = time.perf_counter() - start
    # Eager and compiled runs alternate, so that the load of a shared machine falls on both alike.
    times = {"eager": [], "compiled": []}
    for _ in range(args.repeats):
        for mode, call in (("eager", None), ("compiled", compiled_call)):
            model._compiled_call_impl = call
            times[mode].append(timed(run))
    (eager, eager_cpu), (compiled, compiled_cpu) = (tuple(map(min, zip(*times[mode]))) for mode in times)
    saved = eager - compiled
    pays_off = f"{(first - compiled) / saved:.0f}" if saved > 0 else "never"
    width = f"{model.config.hidden_size} x {model.config.num_hidden_layers}, vocab {model.config.vocab_size}"
    return [
        f"{name} ({width})",
        f"{eager:.3f}",
        f"{compiled:.3f}",
        f"{eager / compiled:.2f}x",
        f"{eager_cpu:.3f} / {compiled_cpu:.3f}",
        f"{eager_cpu / compiled_cpu:.2f}x",
        f"{first:.1f}",
        pays_off,
        "yes" if torch.equal(eager_out, compiled_out) else "no",
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", action="append", help="`tiny` or a folder under the repository (repeatable)")
    parser.add_argument("--prompts", type=int, default=4)
    parser.add_argument("--new_tokens", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1: steadier on a shared machine)")
    parser.add_argument("--no_write", action="store_true", help="print only, do not append to RESULTS.md")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    models = args.model or ["illada-demo", "tiny"]
    try:
        rows = [measure(name, args) for name in models]
    finally:
        if OWN_CACHE:
            shutil.rmtree(OWN_CACHE, ignore_errors=True)
    header = ["model", "eager s", "compiled s", "speed-up", "CPU s eager / compiled", "CPU speed-up"]
    header += ["first compiled call s", "calls to pay off", "same tokens"]
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
