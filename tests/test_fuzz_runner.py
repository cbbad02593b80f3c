"""The fuzz runner itself (`fuzz_strategies.run_case`): each way a case can go wrong fails it, so the fuzz suite
cannot pass vacuously. The tally is restored afterwards so that these deliberate failures stay out of the table."""

import fuzz_strategies
import pytest
from fuzz_strategies import CLEAR_ERROR, CORRECT, DATA_LOST, REFUSED, SILENT, UNCLEAR, FuzzFailure, run_case


@pytest.fixture(autouse=True)
def separate_tally(monkeypatch):
    monkeypatch.setattr(fuzz_strategies, "TALLY", type(fuzz_strategies.TALLY)())
    monkeypatch.setattr(fuzz_strategies, "SURVEY", False)
    monkeypatch.setattr(fuzz_strategies, "event", lambda *args: None)  # outside a hypothesis test
    return fuzz_strategies


def raise_(error):
    def call():
        raise error

    return call


def wrong_result(result) -> None:
    raise AssertionError(f"{result} is not the expected result")


def file_changed() -> None:
    raise AssertionError("model.safetensors changed")


def test_clear_errors_and_correct_results_pass(separate_tally):
    run_case("self", raise_(ValueError("`steps` must be positive, got 0.")), bad={"steps"})
    run_case("self", raise_(TypeError("`steps['x']` must be an int")), bad={"steps"})
    run_case("self", raise_(ValueError("The file /tmp/a/config.json is empty")), bad_files={"config.json"})
    run_case("self", lambda: 3, check=lambda result: None)
    run_case("self", raise_(ValueError("`temperature` is too large")), doubtful={"temperature"})
    assert separate_tally.TALLY == {("self", CLEAR_ERROR): 4, ("self", CORRECT): 1}


@pytest.mark.parametrize(
    "call, kwargs, outcome",
    [
        (lambda: 3, {"bad": {"steps"}}, SILENT),  # a bad value accepted
        (lambda: 3, {"check": wrong_result}, SILENT),  # a result that breaks a property
        (raise_(ValueError("must be positive")), {"bad": {"steps"}}, UNCLEAR),  # the error names nothing
        (raise_(ValueError("`block_length` must be positive")), {"bad": {"steps"}}, UNCLEAR),  # another argument
        (raise_(ValueError("steps must be positive")), {"bad": {"steps"}}, UNCLEAR),  # the name without backticks
        (raise_(RuntimeError("`steps` is bad")), {"bad": {"steps"}}, UNCLEAR),  # neither ValueError nor TypeError
        (raise_(IndexError("index out of range")), {}, UNCLEAR),  # a valid case crashes
        (raise_(ValueError("`steps` is bad")), {}, REFUSED),  # a valid case is refused
        (lambda: 3, {"kept": file_changed}, DATA_LOST),  # a correct result, but a file it must keep changed
        (raise_(ValueError("`steps` is bad")), {"bad": {"steps"}, "kept": file_changed}, DATA_LOST),  # a clear error
    ],
)
def test_every_kind_of_wrong_outcome_fails(call, kwargs, outcome, separate_tally):
    with pytest.raises(FuzzFailure):
        run_case("self", call, **kwargs)
    assert separate_tally.TALLY == {("self", outcome): 1}
