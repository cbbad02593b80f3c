"""transformers' text-generation `pipeline` on iLLaDA, as a Hub user writes it: its output equals `model.generate`
on the same input (a string, chat messages, a batch), with the pipeline's own defaults and with options passed
through, and the checkpoint's generation_config.json is the one source of the settings."""

import json
from pathlib import Path

import pytest
import torch
from tiny import SHARP, make_model
from tiny_tokenizer import make_tiny_tokenizer
from transformers import AutoModelForCausalLM, AutoTokenizer, pipeline

from illada.generation_config_illada import ILLaDAGenerationConfig

SHIPPED = Path(__file__).resolve().parents[1] / "illada-demo"
CHAT = [{"role": "user", "content": "What is 12 + 30?"}]

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory):
    """A tiny sharp model saved with non-default generation settings (steps=2, block 8, 16 tokens, a stop token)."""
    folder = tmp_path_factory.mktemp("tiny-pipeline")
    model = make_model(seed=3, **SHARP)
    model.generation_config = ILLaDAGenerationConfig(
        max_new_tokens=16, block_length=8, steps=2, stop_token_ids=[40], mask_token_id=5, pad_token_id=1, eos_token_id=2
    )
    model.save_pretrained(folder)
    make_tiny_tokenizer(chat_template=True).save_pretrained(folder)
    return folder


def count_forwards(model) -> list:
    calls = []
    model.register_forward_pre_hook(lambda module, args, kwargs: calls.append(1), with_kwargs=True)
    return calls


def test_pipeline_uses_the_checkpoint_settings_like_generate_without_arguments(tiny_folder):
    saved = json.loads((tiny_folder / "generation_config.json").read_text())
    assert (saved["steps"], saved["block_length"], saved["max_new_tokens"]) == (2, 8, 16)
    generator = pipeline("text-generation", model=str(tiny_folder), trust_remote_code=True)
    pipe_calls = count_forwards(generator.model)
    piped = generator("the cat sat on the mat", return_tensors=True)[0]["generated_token_ids"]

    model = AutoModelForCausalLM.from_pretrained(tiny_folder, trust_remote_code=True).eval()
    tokenizer = AutoTokenizer.from_pretrained(tiny_folder, trust_remote_code=True)
    calls = count_forwards(model)
    out = model.generate(**tokenizer("the cat sat on the mat", return_tensors="pt"), return_dict_in_generate=True)
    assert piped == out.sequences[0].tolist()
    assert len(pipe_calls) == len(calls) == out.nfe
    assert out.nfe <= 2 * 2 and out.nfe % 2 == 0  # steps=2 per block of 8 out of 16: 2 or 4 forwards, never 16


def test_pipeline_passes_options_through(tiny_folder):
    generator = pipeline("text-generation", model=str(tiny_folder), trust_remote_code=True)
    model, tokenizer = generator.model, generator.tokenizer
    inputs = tokenizer("a big dog ran", return_tensors="pt")
    options = dict(max_new_tokens=6, block_length=3, steps=3, do_sample=True, top_k=4)
    piped = generator("a big dog ran", return_tensors=True, generator=torch.Generator().manual_seed(0), **options)
    direct = model.generate(**inputs, generator=torch.Generator().manual_seed(0), **options)
    assert piped[0]["generated_token_ids"] == direct[0].tolist()
    three = generator("a big dog ran", num_return_sequences=3, do_sample=True, return_tensors=True)
    assert len(three) == 3


@pytest.mark.skipif(not (SHIPPED / "config.json").is_file(), reason="no illada-demo/ folder")
def test_demo_model_pipeline_equals_generate_for_text_chat_and_batches():
    generator = pipeline("text-generation", model=str(SHIPPED), trust_remote_code=True)
    assert "output_modalities" in repr(generator)  # printing the pipeline works
    model, tokenizer = generator.model, generator.tokenizer

    text = "What is 12 + 30?"
    inputs = tokenizer(text, return_tensors="pt")
    expected = model.generate(**inputs)[0]
    assert generator(text, return_tensors=True)[0]["generated_token_ids"] == expected.tolist()
    new_text = tokenizer.decode(expected[inputs["input_ids"].shape[1] :], skip_special_tokens=True)
    assert generator(text, return_full_text=False)[0]["generated_text"] == new_text

    chat_ids = tokenizer.apply_chat_template(CHAT, add_generation_prompt=True, return_tensors="pt", return_dict=True)
    chat_answer = model.generate(chat_ids)[0, chat_ids["input_ids"].shape[1] :]
    reply = generator(CHAT)[0]["generated_text"][-1]
    assert reply == {"role": "assistant", "content": tokenizer.decode(chat_answer, skip_special_tokens=True)}

    prompts = ["What is 1 + 2?", "Say backwards: red sun"]
    batch = tokenizer(prompts, return_tensors="pt", padding=True)
    assert tokenizer.padding_side == "left" and batch["attention_mask"][:, -1].all()
    batched = model.generate(**batch)
    width = batch["input_ids"].shape[1]
    piped = generator(prompts, batch_size=2, return_full_text=False)
    assert [p[0]["generated_text"] for p in piped] == tokenizer.batch_decode(
        batched[:, width:], skip_special_tokens=True
    )


@pytest.mark.skipif(not (SHIPPED / "config.json").is_file(), reason="no illada-demo/ folder")
def test_shipped_tokenizer_pads_left_and_accepts_a_system_turn():
    tokenizer = AutoTokenizer.from_pretrained(SHIPPED, trust_remote_code=False)  # a standard tokenizer
    assert tokenizer.padding_side == "left"
    user_only = tokenizer.apply_chat_template(CHAT, add_generation_prompt=True, tokenize=False)
    assert user_only == "<bos><|user|>What is 12 + 30?\n<|assistant|>"  # as in training
    with_system = tokenizer.apply_chat_template(
        [{"role": "system", "content": "Be brief."}, *CHAT], add_generation_prompt=True, tokenize=False
    )
    assert with_system == "<bos>Be brief.\n<|user|>What is 12 + 30?\n<|assistant|>"
    with pytest.raises(Exception, match="roles are supported"):
        tokenizer.apply_chat_template([{"role": "tool", "content": "x"}], tokenize=False)


@pytest.mark.skipif(not (SHIPPED / "config.json").is_file(), reason="no illada-demo/ folder")
def test_docs_transformers_snippets_run(monkeypatch):
    """The code blocks of docs/generation.md's "transformers: `pipeline` and the everyday `generate` arguments"
    section, run as written (from the repository root, with the demo model and tokenizer in scope)."""
    import re

    page = (SHIPPED.parent / "docs" / "generation.md").read_text()
    section = page.split("## transformers: `pipeline` and the everyday `generate` arguments")[1].split("\n## ")[0]
    blocks = re.findall(r"```python\n(.*?)```", section, re.S)
    assert len(blocks) == 2
    monkeypatch.chdir(SHIPPED.parent)
    model = AutoModelForCausalLM.from_pretrained(SHIPPED, trust_remote_code=True).eval()
    namespace = {
        "model": model,
        "tokenizer": AutoTokenizer.from_pretrained(SHIPPED, trust_remote_code=False),
        "torch": torch,
    }
    for block in blocks:
        exec(compile(block, "docs/generation.md", "exec"), namespace)
    ids = namespace["ids"]
    greedy = model.generate(ids)
    assert torch.equal(model.generate(ids, do_sample=True, top_k=1, generator=torch.Generator().manual_seed(0)), greedy)


def test_empty_prompts_keep_their_place_in_a_batch(tiny_folder):
    """Named by path, the model's pipeline is `ILLaDATextGenerationPipeline` (config.json's `custom_pipelines`):
    empty prompts inside a batch give one answer each, equal to `generate` on a `(1, 0)` prompt, next to the
    answers of the other prompts alone. transformers' own pipeline gives one answer for `["", ""]` and cannot
    collate `["", "text"]`; a model passed as an object gets the fix with `pipeline_class=`."""
    from illada.pipeline_illada import ILLaDATextGenerationPipeline

    generator = pipeline("text-generation", model=str(tiny_folder), trust_remote_code=True)
    assert type(generator).__name__ == "ILLaDATextGenerationPipeline"
    by_object = pipeline(
        "text-generation",
        model=generator.model,
        tokenizer=generator.tokenizer,
        pipeline_class=ILLaDATextGenerationPipeline,
    )
    model, tokenizer = generator.model, generator.tokenizer

    def alone(text: str) -> list[int]:
        ids = tokenizer(text, return_tensors="pt")["input_ids"].to(torch.long).reshape(1, -1)
        return [t for t in model.generate(ids)[0].tolist() if t != tokenizer.pad_token_id]

    for pipe in (generator, by_object):
        for prompts in (["", ""], ["", "the cat sat"], ["hello world", "", "red"]):
            results = pipe(prompts, batch_size=len(prompts), return_tensors=True)
            assert len(results) == len(prompts)
            for text, result in zip(prompts, results):
                got = [t for t in result[0]["generated_token_ids"] if t != tokenizer.pad_token_id]
                assert got == alone(text), (prompts, text)
