"""Parity with llama.cpp itself (issue 28): the exported GGUF file run by llama.cpp's `llada` forward pass.

Needs a llama.cpp build (`bash bench/build_llama_cpp.sh`, about 15 minutes; CI does not build it): the module is
skipped with the reason when `$ILLADA_LLAMA_CPP_DIR` (default `~/.cache/illada/llama.cpp`) holds none.

- (a) llama.cpp's logits on the same canvas equal the PyTorch model's within 1e-4 (F32 file, flash attention off),
  for a left-padded batch of held-out demo prompts followed by masks and committed tokens.
- (b) iLLaDA's sampler on llama.cpp's logits (`GGUFDenoiser.generate`) gives `model.generate`'s tokens exactly, for
  a batch of held-out demo prompts, variable and fixed canvas.
- (c) the F16 and Q8_0 files' answers on held-out prompts against the PyTorch model's (the match count is printed;
  F16 must match exactly, Q8_0 at least 90%).
- A fresh process that loads only the `.gguf` file (no PyTorch weights, no modeling code) answers like
  `model.generate`.
- llama.cpp's tokenizer gives our ids for a chat prompt whose user text starts with a space (see
  docs/llama_cpp.md: the demo tokenizer's `Prepend(" ")` normalizer), and the stock `llama-diffusion-cli`
  runs on the file with the command documented there.
"""

import json
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch

from illada.demo.data import make_examples
from illada.demo.loading import encode, load_model
from illada.gguf_export import export_gguf
from illada.gguf_runtime import BUILD_SCRIPT, GGUFDenoiser, find_build, llama_cpp_dir

BUILD = find_build()
pytestmark = pytest.mark.skipif(
    BUILD is None, reason=f"no llama.cpp build in {llama_cpp_dir()} (run `bash {BUILD_SCRIPT}`; CI does not build it)"
)
ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "illada-demo"
NUM_PROMPTS = 8
GENERATION = dict(max_new_tokens=64, block_length=32)  # the demo's settings with a shorter budget


@pytest.fixture(scope="module")
def demo():
    model, tokenizer = load_model(DEMO)
    return model, tokenizer


@pytest.fixture(scope="module")
def gguf_files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("gguf")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the demo tokenizer's Prepend normalizer
        return {
            outtype: export_gguf(DEMO, folder / f"demo-{outtype}.gguf", outtype) for outtype in ("f32", "f16", "q8_0")
        }


@pytest.fixture(scope="module")
def denoiser(gguf_files):
    return GGUFDenoiser(gguf_files["f32"], threads=2)


def heldout_prompts(tokenizer, count: int, offset: int = 0) -> list[list[int]]:
    examples = make_examples("heldout", offset + count)[offset:]
    return [encode(tokenizer, [{"role": "user", "content": e.prompt}])[0].tolist() for e in examples]


def left_padded(prompts: list[list[int]], pad: int) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(p) for p in prompts)
    ids = torch.tensor([[pad] * (width - len(p)) + p for p in prompts])
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts])
    return ids, mask


def test_logits_on_the_same_canvas(demo, denoiser):
    """(a) Every column's logits, left-padded rows at their own positions, masks and committed tokens mixed."""
    model, tokenizer = demo
    ids, mask = left_padded(heldout_prompts(tokenizer, 4), model.config.pad_token_id)
    answer = torch.full((ids.shape[0], 40), model.config.mask_token_id)
    answer[:, ::3] = torch.randint(
        6, model.config.vocab_size, answer[:, ::3].shape, generator=torch.Generator().manual_seed(0)
    )
    canvas, canvas_mask = torch.cat([ids, answer], 1), torch.cat([mask, torch.ones_like(answer)], 1)
    positions = (canvas_mask.cumsum(-1) - 1).clamp(min=0)
    keep = torch.arange(ids.shape[1], canvas.shape[1])
    with torch.no_grad():
        ours = model(input_ids=canvas, attention_mask=canvas_mask, position_ids=positions, logits_to_keep=keep).logits
    theirs = denoiser(input_ids=canvas, attention_mask=canvas_mask, position_ids=positions, logits_to_keep=keep).logits
    difference = (ours - theirs).abs().max().item()
    print(f"max |logits difference| (F32, flash attention off): {difference:.2e}")
    assert difference < 1e-4
    assert torch.equal(ours.argmax(-1), theirs.argmax(-1))


@pytest.mark.parametrize("canvas", ["variable", "fixed"])
def test_our_sampler_on_llama_cpp_logits_gives_our_tokens(demo, denoiser, canvas):
    """(b) `GGUFDenoiser.generate` and `model.generate` on a left-padded batch of held-out prompts: equal tokens."""
    model, tokenizer = demo
    ids, mask = left_padded(heldout_prompts(tokenizer, NUM_PROMPTS), model.config.pad_token_id)
    with torch.no_grad():
        ours = model.generate(ids, attention_mask=mask, canvas=canvas, **GENERATION)
    theirs = denoiser.generate(ids, attention_mask=mask, canvas=canvas, **GENERATION)
    assert torch.equal(ours, theirs)


@pytest.mark.parametrize(("outtype", "required"), [("f16", 1.0), ("q8_0", 0.9)])
def test_quantised_files_answer_like_ours(demo, gguf_files, outtype, required):
    """(c) F16 / Q8_0 answers on held-out prompts (one at a time, as the demo evaluation asks them)."""
    model, tokenizer = demo
    quantised = GGUFDenoiser(gguf_files[outtype], threads=2)
    prompts = heldout_prompts(tokenizer, 2 * NUM_PROMPTS, offset=NUM_PROMPTS)
    same = 0
    for prompt in prompts:
        ids = torch.tensor([prompt])
        with torch.no_grad():
            ours = model.generate(ids, **GENERATION)
        same += torch.equal(ours, quantised.generate(ids, **GENERATION))
    print(f"{outtype}: {same}/{len(prompts)} held-out answers equal to the PyTorch model's")
    assert same >= required * len(prompts)


CHILD = """
import json, sys, torch
from illada.gguf_runtime import GGUFDenoiser
denoiser = GGUFDenoiser(sys.argv[1], threads=2)
prompts = json.loads(sys.argv[2])
answers = [denoiser.generate(torch.tensor([p]), max_new_tokens=64, block_length=32)[0].tolist() for p in prompts]
loaded = sorted(m for m in sys.modules if m.endswith(("modeling_illada", "safetensors.torch", "loading_illada")))
print(json.dumps({"answers": answers, "loaded": loaded}))
"""


def test_a_fresh_process_with_only_the_gguf_file_answers_like_generate(demo, gguf_files, tmp_path):
    model, tokenizer = demo
    prompts = heldout_prompts(tokenizer, 4, offset=3 * NUM_PROMPTS)
    run = subprocess.run(
        [sys.executable, "-c", CHILD, str(gguf_files["f32"]), json.dumps(prompts)],
        capture_output=True,
        text=True,
        cwd=tmp_path,  # not the repository: nothing but the .gguf file and the installed package
        env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin", "ILLADA_LLAMA_CPP_DIR": str(llama_cpp_dir())},
        check=True,
    )
    child = json.loads(run.stdout.strip().splitlines()[-1])
    assert child["loaded"] == []  # no PyTorch model code, no safetensors reader
    with torch.no_grad():
        ours = [model.generate(torch.tensor([p]), **GENERATION)[0].tolist() for p in prompts]
    assert child["answers"] == ours


def llama_cpp_tokens(denoiser, text: str) -> list[int]:
    lib = denoiser._lib
    vocab = lib.llama_model_get_vocab(denoiser._model)
    data = text.encode()
    out = (lib.llama_token * (len(data) + 8))()
    count = lib.llama_tokenize(vocab, data, len(data), out, len(out), False, True)
    return list(out[:count])


def test_llama_cpp_tokenizes_chat_prompts_as_ours_with_a_leading_space(demo, denoiser):
    _, tokenizer = demo
    for example in make_examples("heldout", NUM_PROMPTS):
        messages = [{"role": "user", "content": example.prompt}]
        ours = encode(tokenizer, messages)[0].tolist()
        spaced = tokenizer.apply_chat_template(
            [{"role": "user", "content": " " + example.prompt}], tokenize=False, add_generation_prompt=True
        )
        assert llama_cpp_tokens(denoiser, spaced) == ours, example.prompt


def test_the_documented_cli_command_runs(gguf_files):
    """docs/llama_cpp.md's command on the demo file: it runs and prints an answer."""
    prompt = " " + make_examples("heldout", 1)[0].prompt
    command = [
        str(BUILD.cli),
        "-m",
        str(gguf_files["f32"]),
        "-p",
        prompt,
        "-ub",
        "64",
        "--diffusion-block-length",
        "32",
    ]
    command += [
        "--diffusion-steps",
        "64",
        "--diffusion-algorithm",
        "4",
        "--top-k",
        "1",
        "--temp",
        "0",
        "-fa",
        "off",
        "-t",
        "2",
    ]
    run = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
