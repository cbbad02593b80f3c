"""Generation and scoring findings of issue 25, each against an independent expectation: an empty prompt decodes the
same whatever its left padding (near-ties go to the leftmost position), a checkpoint's generation_config.json with
another tool's keys loads (one warning) while a misspelt setting still raises, its `max_length` is honoured as
`generate(max_length=...)` is, and `score_choices` refuses unordered containers."""

import json

import pytest
import torch
from tiny import SHARP, make_model

from illada import generation_config_illada
from illada.generation_config_illada import ILLaDAGenerationConfig
from illada.modeling_illada import ILLaDAForCausalLM
from illada.sampler_illada import TIE_TOLERANCE, select_commits

pytestmark = pytest.mark.usefixtures("one_thread")
OPTIONS = dict(max_new_tokens=16, block_length=8, steps=8, eos_token_id=[])


def test_an_empty_prompt_decodes_the_same_whatever_its_padding(sharp_model):
    """The README's promise that a row decodes the same alone or padded, for the row with no prompt at all: its
    all-mask confidences tie within float noise, which depends on the padding."""
    alone = sharp_model.generate(torch.zeros(1, 0, dtype=torch.long), **OPTIONS)[0].tolist()
    for pad in range(1, 6):
        ids = torch.full((1, pad), 1, dtype=torch.long)
        padded = sharp_model.generate(ids, attention_mask=torch.zeros_like(ids), **OPTIONS)[0, pad:].tolist()
        assert padded == alone, f"{pad} padding columns change the answer"
    # Batched with a real prompt, the empty row still decodes as alone.
    ids = torch.tensor([[1, 1, 1], [7, 8, 9]])
    batched = sharp_model.generate(ids, attention_mask=torch.tensor([[0, 0, 0], [1, 1, 1]]), **OPTIONS)
    assert batched[0, 3:].tolist() == alone


def naive_commits(scores: list[float], masked: list[bool], k: int) -> list[bool]:
    """The k best masked positions, where scores within the tolerance of the k-th best are tied, leftmost first:
    a plain loop over positions."""
    candidates = sorted((s for s, m in zip(scores, masked) if m), reverse=True)
    if k >= len(candidates):
        return list(masked)
    kth = candidates[k - 1]
    chosen = [m and s > kth + TIE_TOLERANCE for s, m in zip(scores, masked)]
    for position, (s, m) in enumerate(zip(scores, masked)):
        if sum(chosen) < k and m and not chosen[position] and s >= kth - TIE_TOLERANCE:
            chosen[position] = True
    return chosen


@pytest.mark.parametrize("seed", range(20))
def test_select_commits_ties_go_leftmost_within_the_tolerance(seed):
    g = torch.Generator().manual_seed(seed)
    n = 12
    levels = torch.tensor([0.2, 0.5, 0.9], dtype=torch.float64)
    # Scores on three levels with noise well inside the tolerance, so that ties are common; masks at random.
    scores = (
        levels[torch.randint(0, 3, (3, n), generator=g)] + torch.rand(3, n, generator=g, dtype=torch.float64) * 1e-7
    )
    masked = torch.rand(3, n, generator=g) < 0.8
    for k in (1, 3, 5, 20):
        got = select_commits(scores, masked, k, None)
        for row in range(3):
            expected = naive_commits(scores[row].tolist(), masked[row].tolist(), k)
            assert got[row].tolist() == expected, (row, k)


def write_generation_config(folder, values) -> None:
    (folder / "generation_config.json").write_text(json.dumps(values))


@pytest.fixture
def saved(tmp_path):
    make_model(seed=3, **SHARP).save_pretrained(tmp_path)
    return tmp_path


def test_foreign_keys_are_dropped_with_one_warning(saved, monkeypatch):
    warnings = []
    monkeypatch.setattr(generation_config_illada.logger, "warning", lambda message, *args: warnings.append(message))
    write_generation_config(saved, {"block_length": 4, "steps": 2, "chat_format": "chatml", "my_tool_version": 3})
    model = ILLaDAForCausalLM.from_pretrained(saved)
    assert (model.generation_config.block_length, model.generation_config.steps) == (4, 2)  # our settings kept
    named = [w for w in warnings if "chat_format" in w]
    assert len(named) == 1 and "my_tool_version" in named[0]
    assert not hasattr(model.generation_config, "chat_format")


def test_a_misspelt_setting_still_raises_with_the_suggestion(saved):
    write_generation_config(saved, {"block_lenght": 4})
    with pytest.raises(TypeError, match=r"`block_lenght` \(did you mean `block_length`\?\)"):
        ILLaDAForCausalLM.from_pretrained(saved)


@pytest.mark.parametrize("content", [[1, 2], "steps", 3])
def test_a_generation_config_that_is_not_an_object_is_named(saved, content):
    write_generation_config(saved, content)
    with pytest.raises((ValueError, OSError), match=r"generation_config\.json"):
        ILLaDAForCausalLM.from_pretrained(saved)


def test_max_length_of_a_checkpoint_file_is_honoured_like_the_argument(saved):
    prompt = torch.tensor([[7, 8, 9, 10]])
    model = make_model(seed=3, **SHARP)
    expected = model.generate(prompt, max_length=10, block_length=3, eos_token_id=[])
    write_generation_config(saved, {"max_length": 10, "block_length": 3, "eos_token_id": []})
    loaded = ILLaDAForCausalLM.from_pretrained(saved)
    got = loaded.generate(prompt)
    assert got.shape == (1, 10) and torch.equal(got, expected)
    assert loaded.generate(prompt, max_new_tokens=3).shape == (1, 7)  # the call's own budget wins
    # With both in the file, `max_new_tokens` wins (as transformers reads a stock file).
    write_generation_config(saved, {"max_length": 10, "max_new_tokens": 5, "block_length": 3, "eos_token_id": []})
    assert ILLaDAForCausalLM.from_pretrained(saved).generate(prompt).shape == (1, 9)
    write_generation_config(saved, {"max_length": -3})
    with pytest.raises(ValueError, match="`max_length`"):
        ILLaDAForCausalLM.from_pretrained(saved)


def test_saved_max_length_round_trips(tmp_path):
    config = ILLaDAGenerationConfig.from_dict({"max_length": 40})
    config.save_pretrained(tmp_path)
    assert ILLaDAGenerationConfig.from_pretrained(tmp_path).max_length == 40


@pytest.mark.parametrize("choices", [{"yes", "no"}, {"yes": 0, "no": 1}, "yes", iter(["yes", "no"])])
def test_score_choices_refuses_unordered_or_single_choices(sharp_model, choices):
    with pytest.raises((TypeError, ValueError), match="`choices`"):
        sharp_model.score_choices([7, 8], choices)
