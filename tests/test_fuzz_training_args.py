"""Fuzz: `DiffusionSFTConfig` (the diffusion trainer's arguments, also the `train_sft.py` flags) with hostile values
(issue 12): NaN, inf, negative, huge, wrong types, unknown choices. An oracle written here from the documented
ranges says which arguments a case gets wrong (a flag that another flag makes inert included: `packing_strategy`
without packing, `split_probability` outside pre-training, `min_lr`/`decay_fraction` with Trainer's schedule); a
valid config keeps its values."""

import math
import tempfile

import pytest
from fuzz_strategies import fuzz_settings, is_int, is_real, run_case, weird_numbers, wrong_types
from hypothesis import given
from hypothesis import strategies as st

from illada.trainer import DiffusionSFTConfig

AREA = "training args"
OUTPUT_DIR = tempfile.gettempdir()
VALID = {
    "diffusion_eps": st.floats(1e-6, 0.5),
    "split_probability": st.one_of(st.just(0.3), st.floats(0.0, 1.0)),
    "decay_fraction": st.one_of(st.just(0.1), st.floats(0.0, 1.0)),
    "learning_rate": st.floats(1e-6, 1e-2),
    "min_lr": st.one_of(st.just(5e-7), st.floats(0.0, 1e-7)),
    "max_length": st.one_of(st.none(), st.integers(2, 8192)),
    "packing_strategy": st.sampled_from(["wrapped", "bfd", "bfd_split"]),
    "data_format": st.sampled_from(["sft", "pretrain"]),
    "lr_schedule": st.sampled_from(["sft", "pretrain", "trainer"]),
    "completion_only_loss": st.booleans(),
    "packing": st.booleans(),
}
DEFAULTS = {"packing_strategy": "wrapped", "split_probability": 0.3, "min_lr": 5e-7, "decay_fraction": 0.1}
CHOICES = {
    "packing_strategy": ("wrapped", "bfd", "bfd_split"),
    "data_format": ("sft", "pretrain"),
    "lr_schedule": ("sft", "pretrain", "trainer"),
}
HOSTILE = st.one_of(weird_numbers(), wrong_types(), st.sampled_from(["Wrapped", "cosine", "", 1]))


def problems(kw: dict) -> set[str]:
    """The arguments `kw` gets wrong, by the documented ranges."""
    bad = set()
    if not (is_real(kw["diffusion_eps"]) and 0 < kw["diffusion_eps"] < 1):
        bad.add("diffusion_eps")
    for name in ("split_probability", "decay_fraction"):
        if not (is_real(kw[name]) and 0 <= kw[name] <= 1):
            bad.add(name)
    if not (is_real(kw["learning_rate"]) and kw["learning_rate"] > 0):
        bad.add("learning_rate")
    if not (is_real(kw["min_lr"]) and kw["min_lr"] >= 0):
        bad.add("min_lr")
    if not bad & {"learning_rate", "min_lr"} and kw["min_lr"] > kw["learning_rate"]:
        bad |= {"min_lr", "learning_rate"}
    if kw["max_length"] is not None and not (is_int(kw["max_length"]) and kw["max_length"] >= 2):
        bad.add("max_length")
    bad |= {name for name, choices in CHOICES.items() if not (isinstance(kw[name], str) and kw[name] in choices)}
    if not (kw["completion_only_loss"] is None or isinstance(kw["completion_only_loss"], bool)):
        bad.add("completion_only_loss")
    elif kw["completion_only_loss"] and kw["data_format"] == "pretrain":
        bad |= {"completion_only_loss", "data_format"}
    if not isinstance(kw["packing"], bool):
        bad.add("packing")
    return bad | inert(kw)


def inert(kw: dict) -> set[str]:
    """Flags set away from their default where another flag makes them do nothing: refused (issue 25)."""
    changed = {name for name, default in DEFAULTS.items() if kw[name] != default}
    bad = set()
    if kw["packing"] is False and "packing_strategy" in changed:
        bad |= {"packing_strategy", "packing"}
    if kw["data_format"] != "pretrain" and "split_probability" in changed:
        bad |= {"split_probability", "data_format"}
    if kw["lr_schedule"] == "trainer" and changed & {"min_lr", "decay_fraction"}:
        bad |= {"min_lr", "decay_fraction", "lr_schedule"}
    return bad


@st.composite
def training_kwargs(draw, corrupt: str | None = None) -> dict:
    kw = {name: draw(strategy) for name, strategy in VALID.items()}
    names = [corrupt] if corrupt else draw(st.lists(st.sampled_from(sorted(VALID)), max_size=2))
    for name in names:
        kw[name] = draw(HOSTILE)
    return kw


def run_training_args_case(kw: dict) -> None:
    def check(config) -> None:
        for name, value in kw.items():
            got = getattr(config, name)
            value = False if name == "completion_only_loss" and value is None else value  # None: the default
            assert got == value or (isinstance(value, float) and math.isclose(got, value)), f"{name}: {got!r}"

    run_case(
        AREA,
        lambda: DiffusionSFTConfig(output_dir=OUTPUT_DIR, use_cpu=True, report_to="none", **kw),
        bad=problems(kw),
        check=check,
        describe=f"DiffusionSFTConfig(**{kw!r})",
    )


@pytest.mark.parametrize("name", sorted(VALID))
@fuzz_settings(max_examples=6)
@given(data=st.data())
def test_fuzz_training_args_one_argument(name, data):
    """Each argument in turn gets hostile values; the others are valid."""
    run_training_args_case(data.draw(training_kwargs(corrupt=name)))


@fuzz_settings(max_examples=30)
@given(kw=training_kwargs())
def test_fuzz_training_args(kw):
    run_training_args_case(kw)
