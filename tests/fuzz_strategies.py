"""Shared pieces of the property-based and fuzz suite (issue 12): the case runner, the tally and value strategies.

Every fuzz case states, from an oracle written in the test (independent of the package's own checks), which
arguments or files it gets wrong. `run_case` then demands one of two outcomes:

- the case is valid: the call returns, and the properties of its result hold ("correct");
- the case is invalid: the call raises `ValueError` or `TypeError` whose message names one of the offending
  arguments in backticks (`` `temperature` ``) or one of the offending files by name ("clear error").

Anything else fails the test and is counted as a "silent wrong result" (a bad value accepted, a result that breaks
a property), an "unclear error" (another exception type, an error that names nothing the case got wrong) or a
"valid input refused".

The counts per area are recorded as hypothesis events (`pytest --hypothesis-show-statistics`) and in `TALLY`;
with `FUZZ_TABLE=-` (stderr) or `FUZZ_TABLE=path` the table is written when the test process exits:

    FUZZ_TABLE=- .venv/bin/python -m pytest -q tests/test_fuzz_*.py

While a property fails, hypothesis shrinks the failing case and the tally counts the shrink attempts too. For
exact counts of a failing suite, `FUZZ_SURVEY=1` records a wrong case instead of failing the test (so every test
runs its examples once, without shrinking) and lists the distinct failures after the table. A survey never
fails: use it to count, never as the test.
"""

from __future__ import annotations

import atexit
import math
import os
import re
import sys
from collections import Counter
from collections.abc import Callable, Collection
from typing import Any

from hypothesis import HealthCheck, event, settings
from hypothesis import strategies as st

CORRECT, CLEAR_ERROR = "correct", "clear error"
# The three ways a case goes wrong: a bad value accepted or a result that breaks a property; an error that is not a
# ValueError/TypeError or names nothing the case got wrong; a valid case refused.
SILENT, UNCLEAR, REFUSED = "silent wrong result", "unclear error", "valid input refused"
# A fourth: files that the case must leave alone (a model, checkpoints, data) changed, whatever the call returned.
DATA_LOST = "data lost"
OUTCOMES = (CORRECT, CLEAR_ERROR, SILENT, UNCLEAR, REFUSED, DATA_LOST)
TALLY: Counter = Counter()  # (area, outcome) -> number of cases
SURVEY = os.environ.get("FUZZ_SURVEY") == "1"
FAILURES: Counter = Counter()  # survey mode: first line of each distinct failure -> cases
FAILURE_CASES: dict[str, str] = {}  # survey mode: first line -> the first case that showed it


def fuzz_settings(max_examples: int) -> settings:
    """Reproducible in CI: the same examples on every run (`derandomize`, no example database). No deadline and no
    too-slow health check: a busy shared CPU makes timings noisy."""
    return settings(
        max_examples=max_examples,
        deadline=None,
        derandomize=True,
        database=None,
        suppress_health_check=[HealthCheck.too_slow],
    )


class FuzzFailure(AssertionError):
    """A case that gave a silent wrong result, an unclear error or an unexpected exception."""


def _record(area: str, outcome: str) -> None:
    TALLY[area, outcome] += 1
    event(f"{area}: {outcome}")


def _fail(area: str, outcome: str, message: str, cause: BaseException | None = None) -> None:
    _record(area, outcome)
    if SURVEY:
        first, _, case = message.partition("\n")
        first = re.sub(r"/tmp/[^\s'`\"]*/", "<tmp>/", first)  # group the cases of different temporary folders
        FAILURES[first[:300]] += 1
        FAILURE_CASES.setdefault(first[:300], case.strip()[:600])
        return
    raise FuzzFailure(message) from cause


def names_one_of(message: str, bad: Collection[str], bad_files: Collection[str]) -> bool:
    """Whether `message` names one of the arguments `bad` (in backticks; `` `name`` or `` `name[...]`` etc.)
    or one of the files `bad_files` (by name)."""
    return any(f"`{name}" in message for name in bad) or any(name in message for name in bad_files)


def run_case(
    area: str,
    call: Callable[[], Any],
    bad: Collection[str] = (),
    bad_files: Collection[str] = (),
    check: Callable[[Any], None] | None = None,
    describe: str = "",
    doubtful: Collection[str] = (),
    doubtful_files: Collection[str] = (),
    kept: Callable[[], None] | None = None,
) -> Any:
    """Runs one case; see the module docstring. Returns the result of a valid case (None after a clear error).

    Args:
        area: the row of the table.
        call: the call under test.
        bad: the arguments the case gets wrong (empty: a valid case).
        bad_files: the files the case gets wrong (names that an error message must contain).
        check: asserts the properties of a valid case's result.
        describe: shown in failures (e.g. the drawn arguments).
        doubtful: arguments with legal but extreme values (e.g. a huge finite float) that the package may refuse
            with a clear error; if it accepts them, the result must still pass `check`.
        doubtful_files: files (or tensors) whose damage may go unnoticed when it leaves them valid (e.g. a changed
            metadata byte): an error naming them is clear, a result must pass `check`.
        kept: asserts, after the call whatever its outcome, that the files the case must not change are unchanged;
            a failure is "data lost" (before any other outcome).
    """
    if kept is not None:
        call = _keeping(area, call, kept, describe)
    try:
        return _run_case(area, call, bad, bad_files, check, describe, doubtful, doubtful_files)
    except _Lost:  # recorded as data lost (survey mode)
        return None


class _Lost(Exception):
    """Raised after a case recorded as data lost, so that no other outcome is recorded for it."""


def _keeping(area: str, call: Callable[[], Any], kept: Callable[[], None], describe: str) -> Callable[[], Any]:
    """`call`, followed (whatever its outcome) by `kept`; a failure of `kept` is recorded as data lost."""

    def checked_call():
        try:
            return call()
        finally:
            try:
                kept()
            except AssertionError as failure:
                reason = str(failure).splitlines()[0]
                _fail(area, DATA_LOST, f"[{area}] files changed: {reason}\n  case: {describe}", failure)
                raise _Lost from failure  # noqa: B012 - replaces the call's outcome on purpose

    return checked_call


def _run_case(area, call, bad, bad_files, check, describe, doubtful, doubtful_files) -> Any:
    invalid = bool(bad) or bool(bad_files)
    try:
        result = call()
    except (ValueError, TypeError) as error:
        message = f"{type(error).__name__}: {error}"
        if not invalid and names_one_of(str(error), doubtful, doubtful_files):
            _record(area, CLEAR_ERROR)
            return None
        if not invalid:
            return _fail(area, REFUSED, f"[{area}] a valid case raised {message}\n  case: {describe}", error)
        if not names_one_of(str(error), bad, bad_files):
            return _fail(
                area,
                UNCLEAR,
                f"[{area}] the error does not name the offending argument(s) {sorted(bad)} or "
                f"file(s) {sorted(bad_files)}: {message}\n  case: {describe}",
                error,
            )
        _record(area, CLEAR_ERROR)
        return None
    except (FuzzFailure, _Lost):  # data lost, recorded by `_keeping`
        raise
    except Exception as error:  # any other type is an unclear error by definition
        return _fail(
            area,
            UNCLEAR,
            f"[{area}] raised {type(error).__name__} (not ValueError/TypeError) for bad "
            f"{sorted(bad)} {sorted(bad_files)}: {error}\n  case: {describe}",
            error,
        )
    if invalid:
        return _fail(
            area, SILENT, f"[{area}] accepted bad {sorted(bad)} {sorted(bad_files)} silently\n  case: {describe}"
        )
    if check is not None:
        try:
            check(result)
        except AssertionError as failure:
            reason = str(failure).split("\n")[0]  # without pytest's rewritten-assertion details
            return _fail(area, SILENT, f"[{area}] wrong result: {reason}\n  case: {describe}", failure)
    _record(area, CORRECT)
    return result


def table() -> str:
    """The tally as a markdown table: cases per area and outcome."""
    areas = sorted({area for area, _ in TALLY})
    lines = [f"| area | cases | {' | '.join(OUTCOMES)} |", "|---|---|" + "---|" * len(OUTCOMES)]
    for area in areas:
        counts = [TALLY[area, outcome] for outcome in OUTCOMES]
        lines.append(f"| {area} | {sum(counts)} | {' | '.join(map(str, counts))} |")
    totals = [sum(TALLY[area, outcome] for area in areas) for outcome in OUTCOMES]
    lines.append(f"| **all** | {sum(totals)} | {' | '.join(map(str, totals))} |")
    return "\n".join(lines)


def _write_table() -> None:
    target = os.environ.get("FUZZ_TABLE")
    if not target or not TALLY:
        return
    text = table()
    if FAILURES:
        text += "\n\nDistinct failures (survey):\n" + "\n".join(
            f"{n:4d} x {m}\n         e.g. {FAILURE_CASES[m]}" for m, n in FAILURES.most_common()
        )
    if target == "-":
        print("\n" + text, file=sys.stderr)
    else:
        with open(target, "w", encoding="utf-8") as handle:
            handle.write(text + "\n")


atexit.register(_write_table)


# ------------------------------------------------------------------------------------------------- strategies

NON_FINITE = (math.nan, math.inf, -math.inf)
HUGE = (1e308, -1e308, 1e30, 2**63, -(2**63))


def weird_numbers() -> st.SearchStrategy:
    """Numbers a hostile user passes: non-finite, huge, tiny, negative, zero, booleans."""
    return st.one_of(
        st.sampled_from((*NON_FINITE, *HUGE, 0, 0.0, -0.0, -1, -1.5, 5e-324, True, False)),
        st.floats(allow_nan=True, allow_infinity=True),
        st.integers(min_value=-(2**70), max_value=2**70),
    )


def wrong_types() -> st.SearchStrategy:
    """Values of the wrong type for a number or a token id."""
    return st.sampled_from(("1", "abc", "", None, [1], (2,), {"a": 1}, b"1", 1j, object()))


def is_int(value: Any) -> bool:
    """A Python integer that is not a bool (the oracle's own definition, not the package's)."""
    return isinstance(value, int) and not isinstance(value, bool)


def is_real(value: Any) -> bool:
    """A finite real number that is not a bool."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
