"""Fuzz: the `--quantization` flag of `train_sft.py` / `train_vrpo.py` (`ModelArguments`) with hostile values and
every combination with `use_lora` / `merge_lora` (issue 29). An oracle written here from the documented rules
(a known method name or None; a quantised base needs LoRA and cannot be merged into) says which arguments a case
gets wrong; a valid case keeps its values."""

from fuzz_strategies import fuzz_settings, run_case, weird_numbers, wrong_types
from hypothesis import given
from hypothesis import strategies as st

from illada.quantization import QUANTIZATIONS
from illada.sft_cli import ModelArguments

AREA = "quantization args"
QUANTIZATION = st.one_of(
    st.none(),
    st.sampled_from(sorted(QUANTIZATIONS)),
    st.sampled_from(["BNB-NF4", "nf4", "gptq", "", "bnb-nf4 "]),
    weird_numbers(),
    wrong_types(),
)


def problems(kw: dict) -> set[str]:
    bad = set()
    if kw["merge_lora"] and not kw["use_lora"]:
        bad |= {"merge_lora", "use_lora"}
    quantization = kw["quantization"]
    if quantization is None:
        return bad
    if not (isinstance(quantization, str) and quantization in QUANTIZATIONS):
        return bad | {"quantization"}
    if not kw["use_lora"]:
        bad |= {"quantization", "use_lora"}
    elif kw["merge_lora"]:
        bad |= {"quantization", "merge_lora"}
    return bad


@fuzz_settings(max_examples=60)
@given(quantization=QUANTIZATION, use_lora=st.booleans(), merge_lora=st.booleans())
def test_fuzz_quantization_arguments(quantization, use_lora, merge_lora):
    kw = {"quantization": quantization, "use_lora": use_lora, "merge_lora": merge_lora}

    def check(arguments) -> None:
        for name, value in kw.items():
            assert getattr(arguments, name) == value, name

    run_case(
        AREA,
        lambda: ModelArguments(model_name_or_path="model", **kw),
        bad=problems(kw),
        check=check,
        describe=f"ModelArguments(**{kw!r})",
    )
