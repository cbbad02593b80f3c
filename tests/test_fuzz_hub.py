"""Fuzz: the surfaces of a push to the Hub (issue 31): the model card of a training run (`build_model_card`'s
`model_name`, `dataset_name`, `tags`) and the `tags` of `model.push_to_hub`, pushed to the local Hub of
`tests/hub_server.py`. A valid case gives a card whose YAML metadata (read back by huggingface_hub's `ModelCard`)
holds `MODEL_CARD_TAGS` then the given tags, the dataset and the title; an invalid one raises an error naming the
argument."""

import shutil
import tempfile
from pathlib import Path

import pytest
from fuzz_strategies import fuzz_settings, run_case
from hub_server import LocalHub, only_loopback_connections, point_huggingface_hub_at
from huggingface_hub import ModelCard
from hypothesis import given
from hypothesis import strategies as st
from tiny import make_model

from illada.hub import build_model_card
from illada.modeling_illada import MODEL_CARD_TAGS
from illada.trainer import SFT_CARD_SETTINGS, DiffusionSFTConfig, sft_card_training

pytestmark = pytest.mark.usefixtures("one_thread")

MODEL = make_model(seed=1)
ARGS = DiffusionSFTConfig(tempfile.mkdtemp(prefix="illada-fuzz-hub-"), use_cpu=True, report_to="none")


def one_line(text: str) -> bool:
    """The oracle: a non-blank string without a line break (any of the ones `str.splitlines` knows)."""
    return isinstance(text, str) and text.strip() != "" and len(text.splitlines()) == 1


TEXT = st.one_of(
    st.none(),
    st.text(min_size=1, max_size=20),
    st.sampled_from(["", "   ", "a\nb", "x\r", "- y", "k: v", "#tag", "'q'", '"', "---", "café"]),
    st.integers(),
)
TAGS = st.one_of(TEXT, st.lists(TEXT, max_size=4), st.tuples(TEXT), st.sets(st.text(min_size=1, max_size=4)))


def tags_ok(tags) -> bool:
    if tags is None:
        return True
    values = [tags] if isinstance(tags, str) else tags
    return isinstance(values, list | tuple) and all(one_line(tag) for tag in values)


def expected_tags(tags) -> list[str]:
    given_tags = [] if tags is None else [tags] if isinstance(tags, str) else list(tags)
    return list(dict.fromkeys([*MODEL_CARD_TAGS, *given_tags]))


@fuzz_settings(max_examples=60)
@given(model_name=TEXT, dataset_name=TEXT, tags=TAGS)
def test_fuzz_model_card_metadata(model_name, dataset_name, tags):
    names = {"model_name": model_name, "dataset_name": dataset_name}
    bad = {name for name, value in names.items() if value is not None and not one_line(value)}
    bad |= set() if tags_ok(tags) else {"tags"}

    def check(card: str) -> None:
        data = ModelCard(card).data
        assert data.tags == expected_tags(tags)
        assert data.datasets == ([dataset_name] if dataset_name is not None else None)
        assert f"\n# {model_name or Path(ARGS.output_dir).name}\n" in card
        assert data.library_name == "transformers" and "custom_code" in data.tags

    run_case(
        "model card",
        lambda: build_model_card(
            MODEL, ARGS, sft_card_training(ARGS), SFT_CARD_SETTINGS, model_name, dataset_name, tags
        ),
        bad=bad,
        check=check,
        describe=f"model_name={model_name!r} dataset_name={dataset_name!r} tags={tags!r}",
    )


@pytest.fixture(scope="module")
def hub():
    cache = Path(tempfile.mkdtemp(prefix="illada-fuzz-hub-cache-"))
    with only_loopback_connections(), LocalHub() as server, pytest.MonkeyPatch.context() as monkeypatch:
        yield point_huggingface_hub_at(server, monkeypatch, cache)
    shutil.rmtree(cache, ignore_errors=True)


@fuzz_settings(max_examples=12)
@given(tags=TAGS, number=st.integers(0, 10**9))
def test_fuzz_model_push_tags(hub, tags, number):
    """`model.push_to_hub(repo, tags=...)` against the local Hub: the card it uploads is tagged as expected."""
    repo_id = f"tester/fuzz-{number}"

    def check(_) -> None:
        assert ModelCard(hub.files(repo_id)["README.md"].decode()).data.tags == expected_tags(tags)

    run_case(
        "push tags",
        lambda: MODEL.push_to_hub(repo_id, tags=tags),
        bad=set() if tags_ok(tags) else {"tags"},
        check=check,
        describe=f"tags={tags!r}",
    )
