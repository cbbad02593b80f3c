"""llama.cpp against iLLaDA's PyTorch CPU generate, on the same machine in the same run (issue 28).

    bash bench/build_llama_cpp.sh            # once, about 15 minutes; then
    python bench/bench_llama_cpp.py [--threads 2] [--prompts 8] [--layers 2]

1. Demo model (`illada-demo/`), held-out questions one at a time with the demo's settings: answer tokens per second
   of `model.generate` (PyTorch) and of the same sampler on llama.cpp's forward (`GGUFDenoiser`, F32 and Q8_0);
   the answers are compared token for token.
2. An 8B-shaped layer stack (iLLaDA 8B's width 4096, FFN 14336, 32 query / 8 key-value heads; `--layers` layers and
   a 2048-token vocabulary so that it fits the machine): one forward on a 256-token canvas, i.e. the time of one
   denoising step, which commits one token at the default one token per step.
3. The stock `llama-diffusion-cli` on the demo file: exact answers (our answer text is the start of the CLI's) for
   candidate commands, one block the size of the canvas (`-ub` = `--diffusion-block-length` = `--diffusion-steps`).

Writes the section `llama_cpp` of bench/RESULTS.md.
"""

import argparse
import re
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from common import environment, markdown_table, write_section  # noqa: E402

from illada.demo.data import make_examples  # noqa: E402
from illada.demo.loading import encode, load_model  # noqa: E402
from illada.gguf_export import export_gguf  # noqa: E402
from illada.gguf_runtime import BUILD_SCRIPT, GGUFDenoiser, find_build  # noqa: E402
from illada.modeling_illada import ILLaDAForCausalLM  # noqa: E402

DEMO = Path(__file__).resolve().parents[1] / "illada-demo"
LOG_PREFIX = re.compile(r"[\d.]+ [IWE] ?")
CANVAS = 64  # the CLI's -ub: prompt plus answer
CLI_CANDIDATES = {
    "greedy tokens (`--top-k 1 --temp 0`)": ["--top-k", "1", "--temp", "0"],
    "defaults at `--temp 0` (top-k 40, top-p 0.95, then a draw)": ["--temp", "0", "--seed", "0"],
    "sharpened draw (`--top-k 0 --top-p 1 --temp 0.1`)": [
        "--top-k",
        "0",
        "--top-p",
        "1",
        "--temp",
        "0.1",
        "--seed",
        "0",
    ],
}


def export(model_dir: Path, folder: Path, outtype: str) -> Path:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the demo tokenizer's Prepend normalizer
        return export_gguf(model_dir, folder / f"{model_dir.name}-{outtype}.gguf", outtype)


def timed_answers(engines: dict, prompts: list[torch.Tensor], settings: dict) -> dict:
    """Per engine: answers, forward passes (one committed token each) and seconds of `generate` on each prompt
    alone. The engines take turns on each prompt, so that a shared machine's changing load reaches all of them."""
    results = {name: ([], 0, 0.0) for name in engines}
    with torch.no_grad():
        for ids in prompts:
            for name, engine in engines.items():
                start = time.perf_counter()
                out = engine.generate(ids, return_dict_in_generate=True, **settings)
                answers, forwards, seconds = results[name]
                answers.append(out.sequences[0, ids.shape[1] :].tolist())
                results[name] = (answers, forwards + out.nfe, seconds + time.perf_counter() - start)
    return results


def flash_difference(model, folder: Path, prompt: torch.Tensor, threads: int) -> float:
    """Max |logits difference| of llama.cpp with flash attention on (its CPU path is F16) on one canvas."""
    canvas = torch.cat([prompt, torch.full((1, 32), model.config.mask_token_id)], 1)
    with torch.no_grad():
        ours = model(input_ids=canvas).logits
    engine = GGUFDenoiser(folder / "illada-demo-f32.gguf", threads=threads, flash_attn=True)
    return (engine(input_ids=canvas).logits - ours).abs().max().item()


def demo_section(folder: Path, threads: int, count: int) -> tuple[str, list]:
    model, tokenizer = load_model(DEMO)
    prompts = [encode(tokenizer, [{"role": "user", "content": e.prompt}]) for e in make_examples("heldout", count)]
    settings = dict(max_new_tokens=128, block_length=32)  # the demo's generation_config.json
    engines = {"PyTorch `model.generate` (F32)": model}
    for outtype in ("f32", "q8_0"):
        engine = GGUFDenoiser(export(DEMO, folder, outtype), threads=threads)
        engines[f"llama.cpp forward + our sampler ({outtype.upper()})"] = engine
    results = timed_answers(engines, prompts, settings)
    ours, _, base_seconds = results["PyTorch `model.generate` (F32)"]
    rows = []
    for name, (answers, forwards, seconds) in results.items():
        same = sum(a == b for a, b in zip(answers, ours, strict=True))
        ratio = base_seconds / seconds
        rows.append([name, f"{seconds:.1f}", forwards, f"{forwards / seconds:.1f}", f"{ratio:.2f}", f"{same}/{count}"])
    header = ["engine", "seconds", "steps", "tokens/s (1 token per step)", "ratio", "answers equal to PyTorch's"]
    flash = flash_difference(model, folder, prompts[0], threads)
    table = (
        markdown_table(header, rows) + f"\n\nWith llama.cpp's flash attention on: max |logits difference| {flash:.2e}."
    )
    return table, [(model, tokenizer, prompts)]


def stack_model(folder: Path, layers: int) -> Path:
    """A random 8B-shaped stack saved with the demo's 2048-token tokenizer (which the export needs)."""
    torch.manual_seed(0)
    config = ILLaDAForCausalLM.config_class(
        vocab_size=2048,
        hidden_size=4096,
        intermediate_size=14336,
        num_hidden_layers=layers,
        num_attention_heads=32,
        num_key_value_heads=8,
        max_position_embeddings=512,
    )
    stack = folder / "stack-8b-shaped"
    ILLaDAForCausalLM._from_config(config).save_pretrained(stack)
    load_model(DEMO)[1].save_pretrained(stack)
    return stack


def stack_section(folder: Path, threads: int, layers: int, rounds: int = 5) -> str:
    """One forward per engine per round, engines alternating, best of `rounds`: on a shared machine the load
    changes between runs, and alternating exposes every engine to the same load."""
    stack = stack_model(folder, layers)
    canvas, keep = torch.randint(6, 2048, (1, 256)), torch.arange(224, 256)
    model = ILLaDAForCausalLM.from_pretrained(stack).eval()
    engines = {"PyTorch forward (F32)": lambda: model(input_ids=canvas, logits_to_keep=keep)}
    for outtype in ("f32", "q8_0"):
        engine = GGUFDenoiser(export(stack, folder, outtype), threads=threads)
        engines[f"llama.cpp forward ({outtype.upper()})"] = lambda engine=engine: engine(
            input_ids=canvas, logits_to_keep=keep
        )
    times = {name: [] for name in engines}
    with torch.no_grad():
        for _ in range(rounds + 1):  # the first round warms up
            for name, run in engines.items():
                start = time.perf_counter()
                run()
                times[name].append(time.perf_counter() - start)
    best = {name: min(values[1:]) for name, values in times.items()}
    base = best["PyTorch forward (F32)"]
    rows = [[name, f"{s:.2f}", f"{1 / s:.2f}", f"{base / s:.2f}"] for name, s in best.items()]
    header = ["engine", f"s per step (256-token canvas, best of {rounds})", "tokens/s at 1 token/step", "ratio"]
    return markdown_table(header, rows)


def cli_answer(cli: Path, gguf: Path, prompt: str, options: list[str], threads: int) -> tuple[str, float]:
    command = [str(cli), "-m", str(gguf), "-p", prompt, "-ub", str(CANVAS), "--diffusion-block-length", str(CANVAS)]
    command += [
        "--diffusion-steps",
        str(CANVAS),
        "--diffusion-algorithm",
        "4",
        "-fa",
        "off",
        "-t",
        str(threads),
        *options,
    ]
    for _ in range(3):  # the CLI's log thread sometimes exits before printing the answer (return code 0)
        start = time.perf_counter()
        run = subprocess.run(command, capture_output=True, text=True, timeout=600, check=True)
        seconds = time.perf_counter() - start
        if "total time:" in run.stdout + run.stderr:
            break
    else:
        raise RuntimeError(f"llama-diffusion-cli printed no answer three times: {' '.join(command)}")
    after = (run.stdout + run.stderr).split("total time:", 1)[1].split("\n")[1:]
    text = "\n".join(line for line in after if not LOG_PREFIX.fullmatch(line))  # the log's "0.05.561.567 I " lines
    return text.strip(), seconds


def cli_section(folder: Path, cli: Path, threads: int, demo) -> str:
    model, tokenizer, prompts = demo[0]
    gguf = folder / "illada-demo-f32.gguf"
    questions = [e.prompt for e in make_examples("heldout", len(prompts))]
    ours = []
    with torch.no_grad():
        for ids in prompts:
            budget = CANVAS - ids.shape[1]  # one block: the whole answer
            out = model.generate(ids, max_new_tokens=budget, block_length=budget, return_dict_in_generate=True)
            answer = out.sequences[0, ids.shape[1] : ids.shape[1] + int(out.answer_lengths[0])]
            ours.append(tokenizer.decode(answer, skip_special_tokens=True).strip())
    rows = []
    for name, options in CLI_CANDIDATES.items():
        same, seconds = 0, 0.0
        for question, answer in zip(questions, ours, strict=True):
            text, elapsed = cli_answer(cli, gguf, " " + question, options, threads)
            same += text.startswith(answer)
            seconds += elapsed
        rows.append([name, f"{same}/{len(ours)}", f"{seconds / len(ours):.2f}"])
    return markdown_table(["`llama-diffusion-cli` options", "answers equal to ours", "s per answer"], rows)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--prompts", type=int, default=8)
    parser.add_argument("--layers", type=int, default=2)
    args = parser.parse_args(argv)
    build = find_build()
    if build is None:
        sys.exit(f"error: no llama.cpp build; run `bash {BUILD_SCRIPT}` first.")
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        demo_table, demo = demo_section(folder, args.threads, args.prompts)
        cli_table = cli_section(folder, build.cli, args.threads, demo)
        stack_table = stack_section(folder, args.threads, args.layers)
    command = "python bench/bench_llama_cpp.py " + " ".join(argv if argv is not None else sys.argv[1:])
    body = f"""## llama.cpp (GGUF) against PyTorch CPU generate

`{command.strip()}` ({environment()}; llama.cpp from the llama-cpp-python 0.3.36 sdist, {args.threads} threads,
flash attention off). Same machine, same run.

Demo model, {args.prompts} held-out questions one at a time, the demo's settings (128-token budget, blocks of 32,
one token per step, variable canvas):

{demo_table}

8B-shaped layer stack ({args.layers} layers of iLLaDA 8B's shape, 2048-token vocabulary), one denoising step:

{stack_table}

Stock `llama-diffusion-cli` on the demo file (F32), one block the size of the 64-token canvas, `--diffusion-algorithm
4` (confidence), the user text given with a leading space (docs/llama_cpp.md); "equal" means our answer's text
starts the CLI's output (the CLI does not stop at EOS):

{cli_table}
"""
    write_section("llama_cpp", body)
    print(body)


if __name__ == "__main__":
    main()
