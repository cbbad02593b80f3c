"""Fuzz: batches through transformers' text-generation `pipeline` (issue 25): lists of prompts (plain text or chat
messages, of different lengths, so that rows carry different padding), `batch_size` 1 to 4, `max_new_tokens` and
`steps` now and then hostile.

An oracle written here says which options a case gets wrong. A valid case must return one result per prompt, each
equal to `model.generate` on that prompt alone (a row decodes the same alone or padded, README). Empty prompts are
drawn anywhere in a batch: the model named by path gets its own pipeline class (`custom_pipelines`), which keeps them.
"""

import pytest
import torch
from fuzz_strategies import fuzz_settings, run_case
from hypothesis import given
from hypothesis import strategies as st
from tiny import SHARP, make_model
from tiny_tokenizer import make_tiny_tokenizer
from transformers import pipeline

from illada.generation_config_illada import ILLaDAGenerationConfig

pytestmark = pytest.mark.usefixtures("one_thread")
WORDS = ("the", "cat", "sat", "on", "mat", "red", "3", "4", "hello", "world")
SENTENCE = st.lists(st.sampled_from(WORDS), min_size=1, max_size=6).map(" ".join)


@pytest.fixture(scope="module")
def generator(tmp_path_factory):
    folder = tmp_path_factory.mktemp("pipeline-fuzz")
    model = make_model(seed=3, **SHARP)
    model.generation_config = ILLaDAGenerationConfig(
        max_new_tokens=8, block_length=4, steps=4, mask_token_id=5, pad_token_id=1, eos_token_id=2
    )
    model.save_pretrained(folder)
    make_tiny_tokenizer(chat_template=True).save_pretrained(folder)
    return pipeline("text-generation", model=str(folder), trust_remote_code=True)


@st.composite
def pipeline_case(draw):
    chat = draw(st.booleans())
    prompts = draw(st.lists(SENTENCE, min_size=1, max_size=5))
    if not chat and draw(st.integers(0, 2)) == 0:  # empty prompts, alone or among others
        prompts = [("" if draw(st.booleans()) else text) for text in prompts] + [""]
    if chat:
        prompts = [[{"role": "user", "content": text}] for text in prompts]
    batch_size = draw(st.integers(1, 4))
    options, bad = {}, set()
    if draw(st.booleans()):
        options["max_new_tokens"] = draw(st.sampled_from([4, 6, 8, 0, -2]))
        if options["max_new_tokens"] < 1:
            bad.add("max_new_tokens")
    if draw(st.integers(0, 2)) == 0:
        options["steps"] = draw(st.sampled_from([2, 4, 9]))
        if options["steps"] > 4:
            bad |= {"steps", "block_length"}
    return prompts, batch_size, options, bad


@fuzz_settings(max_examples=25)
@given(case=pipeline_case())
def test_fuzz_pipeline_batches(case, generator):
    prompts, batch_size, options, bad = case
    model, tokenizer = generator.model, generator.tokenizer

    pad = tokenizer.pad_token_id

    def alone(prompt) -> list[int]:
        """The prompt and answer tokens of `generate` on the prompt alone, padding left out."""
        if isinstance(prompt, list):
            encoded = tokenizer.apply_chat_template(
                prompt, add_generation_prompt=True, return_tensors="pt", return_dict=True
            )
            ids = encoded["input_ids"]
        else:
            ids = tokenizer(prompt, return_tensors="pt")["input_ids"].to(torch.long)
        return [t for t in model.generate(ids, **options)[0].tolist() if t != pad]

    def check(results) -> None:
        assert len(results) == len(prompts), f"{len(results)} results for {len(prompts)} prompts"
        for prompt, result in zip(prompts, results):
            got = [t for t in result[0]["generated_token_ids"] if t != pad]  # left and right padding of the batch
            expected = alone(prompt)
            assert got == expected, f"{prompt!r}: {got} != {expected} alone"

    run_case(
        "pipeline: batches",
        lambda: generator(prompts, batch_size=batch_size, return_tensors=True, **options),
        bad=bad,
        check=check,
        describe=f"pipeline({prompts!r}, batch_size={batch_size}, **{options!r})",
    )
