"""Fuzz: training data rows and data files (issue 12), through `illada.data` (the data layer `train_sft.py` uses).

Rows in trl's formats (`messages`, `prompt`/`completion` as strings or turns, `prompt`/`response`, `text`), with
now and then one field missing, null, a number, a string instead of a list (or the reverse), a turn without
`role`/`content`, a last turn that is not a non-empty assistant turn. Tokenizers with and without a chat template.
Files: JSON-lines and JSON files of such rows, with file-level faults (empty, blank lines only, a malformed line,
non-UTF-8 bytes, a line that is not an object, rows of two formats).

An oracle written here says which field (or file and line) a case gets wrong. A valid example must tokenise to the
rendering built here independently (the plain `"{role}: {content}\\n"` turns, or transformers'
`apply_chat_template`; plain prompt + completion strings concatenated), closed by exactly one EOS, with a
completion mask of 0s then 1s starting where prompt and full rendering diverge. Packed windows must reassemble to
the concatenated examples.
"""

import json
import tempfile
from pathlib import Path

import datasets
import pytest
from datasets import Dataset
from fuzz_strategies import fuzz_settings, run_case
from hypothesis import assume, given
from hypothesis import strategies as st
from tiny_tokenizer import make_tiny_tokenizer

from illada.data import load_data_files, prepare_dataset

datasets.disable_progress_bars()
datasets.logging.set_verbosity_error()

PLAIN, CHAT = make_tiny_tokenizer(), make_tiny_tokenizer(chat_template=True)
EOS = PLAIN.eos_token_id
WORDS = ("the", "cat", "dog", "sat", "on", "mat", "red", "blue", "3", "4", "yes", "no", "hello", "world", ".")
SENTENCE = st.lists(st.sampled_from(WORDS), min_size=1, max_size=4).map(" ".join)
MASK_TEXT = "the <[MASK]> cat"  # the mask token's literal text: tokenised to the mask token, which may not be a target
FORMATS = ("messages", "prompt-completion", "prompt-completion-turns", "prompt-response", "text")


# ------------------------------------------------------------------------------------------ rows


def turn(role: str) -> st.SearchStrategy:
    return SENTENCE.map(lambda content: {"role": role, "content": content})


@st.composite
def conversation(draw) -> list[dict]:
    turns = [draw(turn("system"))] if draw(st.booleans()) else []
    for _ in range(draw(st.integers(0, 1))):
        turns += [draw(turn("user")), draw(turn("assistant"))]
    return turns + [draw(turn("user")), draw(turn("assistant"))]


@st.composite
def valid_row(draw, fmt: str) -> dict:
    if fmt == "messages":
        return {"messages": draw(conversation())}
    if fmt == "prompt-completion":
        return {"prompt": draw(SENTENCE), "completion": " " + draw(SENTENCE)}
    if fmt == "prompt-completion-turns":
        turns = draw(conversation())
        return {"prompt": turns[:-1], "completion": turns[-1:]}
    if fmt == "prompt-response":
        return {"prompt": draw(SENTENCE), "response": draw(SENTENCE)}
    return {"text": draw(SENTENCE)}


WRONG_VALUES = st.sampled_from([None, 3, 2.5, True, "hello", ["the"], {"role": "user"}, [], "", "  \n", MASK_TEXT])
TURN_FAULTS = (
    {"content": "the"},
    {"role": "user"},
    {"role": "user", "content": None},
    {"role": "assistant", "content": 4},
    {"role": "assistant", "content": " "},
    {"role": "user", "content": MASK_TEXT},
    "the cat",
    None,
)


@st.composite
def corrupted_row(draw, fmt: str) -> tuple[dict, set[str]]:
    """A row of format `fmt` with one fault, and the field(s) an error may name for it (empty: still valid)."""
    row = draw(valid_row(fmt))
    field = draw(st.sampled_from(sorted(row)))
    actions = ["drop", "replace", "turn", "only_last"] if isinstance(row[field], list) else ["drop", "replace"]
    action = draw(st.sampled_from(actions))
    if action == "drop":
        del row[field]
    elif action == "replace":
        row[field] = draw(WRONG_VALUES)
    elif action == "only_last":  # e.g. an assistant-only conversation: no turn to answer
        row[field] = row[field][-1:]
    else:
        k = draw(st.integers(0, len(row[field]) - 1))
        row[field] = [*row[field][:k], draw(st.sampled_from(TURN_FAULTS)), *row[field][k + 1 :]]
    return row, row_problems(row, fmt)


def is_turns(value) -> bool:
    return isinstance(value, list) and all(
        isinstance(t, dict) and isinstance(t.get("role"), str) and isinstance(t.get("content"), str) for t in value
    )


def has_response(turns: list) -> bool:
    return bool(turns) and turns[-1]["role"] == "assistant" and bool(turns[-1]["content"].strip())


def holds_mask(value) -> bool:
    if isinstance(value, str):
        return "<[MASK]>" in value
    return isinstance(value, list) and any(isinstance(t, dict) and holds_mask(t.get("content")) for t in value)


def row_problems(row: dict, fmt: str) -> set[str]:
    """`type_problems`, and the mask token's text in a field that is otherwise valid."""
    bad = type_problems(row, fmt)
    if fmt == "messages" and not bad and len(row["messages"]) < 2:
        return {"messages"}  # nothing before the response
    if fmt == "prompt-completion-turns" and not bad and row["prompt"] == []:
        return {"prompt"}
    return bad or {field for field, value in row.items() if holds_mask(value)}


def type_problems(row: dict, fmt: str) -> set[str]:
    """The fields a row of (intended) format `fmt` gets wrong, by trl's formats (independent of the package)."""
    if fmt == "messages":
        return set() if is_turns(row.get("messages")) and has_response(row["messages"]) else {"messages"}
    if fmt == "text":
        return set() if isinstance(row.get("text"), str) else {"text"}
    second = "response" if fmt == "prompt-response" else "completion"
    prompt, answer = row.get("prompt"), row.get(second)
    if isinstance(prompt, str) and isinstance(answer, str):
        return set() if answer.strip() else {second}
    if fmt.startswith("prompt-completion") and is_turns(prompt) and is_turns(answer):
        return set() if has_response(answer) else {second}
    bad = set()
    if not (isinstance(prompt, str) or fmt.startswith("prompt-completion") and is_turns(prompt)):
        bad.add("prompt")
    if not (
        isinstance(answer, str)
        and answer.strip()
        or fmt.startswith("prompt-completion")
        and is_turns(answer)
        and has_response(answer)
    ):
        bad.add(second)
    return bad or {"prompt", second}  # a string with a list of turns: either may be named


# ------------------------------------------------------------------------------------------ expected tokens


def render_plain(turns: list[dict], generation_prompt: bool) -> str:
    """The plain conversation format without a chat template: `"{role}: {content}\\n"` per turn, the final
    assistant turn as `"assistant: {content}"`."""
    if generation_prompt:
        return "".join(f"{t['role']}: {t['content']}\n" for t in turns) + "assistant: "
    return render_plain(turns[:-1], True) + turns[-1]["content"]


def expected_example(row: dict, fmt: str, tokenizer) -> tuple[list[int], list[int]]:
    """`input_ids` and `completion_mask` of a valid row, computed here without the package."""

    def ids(text: str) -> list[int]:
        return tokenizer(text, add_special_tokens=False)["input_ids"]

    if fmt == "text":
        full, prefix = ids(row["text"]), []
    elif fmt == "prompt-completion":
        full, prefix = ids(row["prompt"] + row["completion"]), ids(row["prompt"])
    else:
        if fmt == "messages":
            prompt_turns, answer_turns = row["messages"][:-1], row["messages"][-1:]
        elif fmt == "prompt-response":
            prompt_turns = [{"role": "user", "content": row["prompt"]}]
            answer_turns = [{"role": "assistant", "content": row["response"]}]
        else:
            prompt_turns, answer_turns = row["prompt"], row["completion"]
        if tokenizer.chat_template is None:
            full = ids(render_plain(prompt_turns + answer_turns, False))
            prefix = ids(render_plain(prompt_turns, True))
        else:
            full = tokenizer.apply_chat_template(prompt_turns + answer_turns, tokenize=True, return_dict=True)[
                "input_ids"
            ]
            prefix = tokenizer.apply_chat_template(
                prompt_turns, tokenize=True, add_generation_prompt=True, return_dict=True
            )["input_ids"]
    start = 0
    while start < min(len(prefix), len(full)) and prefix[start] == full[start]:
        start += 1
    if fmt == "text":
        start = 0
    while len(full) > start and full[-1] == EOS:
        full = full[:-1]
    input_ids = full + [EOS]
    return input_ids, [0] * start + [1] * (len(input_ids) - start)


def check_examples(rows: list[dict], fmt: str, tokenizer, packed: bool):
    def check(dataset) -> None:
        expected = [expected_example(row, fmt, tokenizer) for row in rows]
        if packed:
            stream = [t for window in dataset["input_ids"] for t in window]
            assert stream == [t for ids, _ in expected for t in ids], "packed windows do not reassemble the examples"
            return
        assert len(dataset) == len(rows), f"{len(dataset)} examples for {len(rows)} rows"
        for k, (ids, mask) in enumerate(expected):
            assert dataset[k]["input_ids"] == ids, (
                f"example {k}: {tokenizer.decode(dataset[k]['input_ids'])!r} != {tokenizer.decode(ids)!r}"
            )
            assert dataset[k]["completion_mask"] == mask, f"example {k}: mask {dataset[k]['completion_mask']} != {mask}"

    return check


# ------------------------------------------------------------------------------------------ rows in memory


@pytest.mark.parametrize("fmt", FORMATS)
@fuzz_settings(max_examples=12)
@given(data=st.data())
def test_fuzz_data_rows(fmt, data):
    """One row (valid or with one fault) of each format, with and without a chat template."""
    row, bad = data.draw(st.one_of(valid_row(fmt).map(lambda r: (r, set())), corrupted_row(fmt)))
    tokenizer = data.draw(st.sampled_from([PLAIN, CHAT]))
    data_format = "pretrain" if fmt == "text" and data.draw(st.booleans()) else "sft"
    try:
        dataset = Dataset.from_list([row])
    except Exception:  # noqa: BLE001 - pyarrow cannot hold this row at all: not the package's input
        assume(False)
    if fmt == "text" and data_format == "pretrain" and "text" not in row:
        bad = {"text"}
    bad_files = {"empty"} if len(dataset) == 0 else set()  # a row without columns makes an empty dataset
    # A conversational prompt of zero turns: training on the completion alone or a clear error are both fine.
    doubtful = {"prompt"} if row.get("prompt") == [] and not bad else set()
    run_case(
        "training data: rows",
        lambda: prepare_dataset(dataset, tokenizer, 64, packing=False, data_format=data_format),
        bad=set() if bad_files else bad,
        bad_files=bad_files,
        doubtful=doubtful,
        check=check_examples([row], fmt, tokenizer, packed=False),
        describe=f"prepare_dataset(Dataset.from_list([{row!r}]), chat_template={tokenizer is CHAT}, "
        f"data_format={data_format!r})",
    )


# ------------------------------------------------------------------------------------------ files


FILE_FAULTS = (
    "none",
    "row",
    "mixed_formats",
    "empty",
    "blank_lines",
    "malformed_line",
    "not_utf8",
    "not_an_object",
    "json_array_file",
    "json_array_row_fault",
)


@st.composite
def data_file(draw, fault: str):
    """(file name, bytes, rows for the reference, format, bad file/line names)."""
    fmt = draw(st.sampled_from(FORMATS))
    rows = draw(st.lists(valid_row(fmt), min_size=1, max_size=4))
    name = draw(st.sampled_from(["train.jsonl", "data 1.jsonl", "rows.JSONL"]))
    k = draw(st.integers(0, len(rows) - 1))
    lines = [json.dumps(row) for row in rows]
    bad: set[str] = set()
    if fault in ("row", "json_array_row_fault"):
        row, fields = draw(corrupted_row(fmt))
        if fields:
            lines[k], rows[k] = json.dumps(row), row
            bad = {f"{name} line {k + 1}"}
    elif fault == "mixed_formats" and len(rows) > 1:
        k = max(k, 1)
        other = draw(
            st.sampled_from(
                [f for f in FORMATS if f != fmt and {fmt, f} != {"prompt-completion", "prompt-completion-turns"}]
            )
        )
        lines[k] = json.dumps(draw(valid_row(other)))
        bad = {f"{name} line {k + 1}"}
    elif fault == "empty":
        lines, bad = [], {name}
    elif fault == "blank_lines":
        lines, bad = ["", "   ", ""], {name}
    elif fault == "malformed_line":
        lines[k] = lines[k][: draw(st.integers(1, len(lines[k]) - 1))]
        bad = {f"{name} line {k + 1}"}
    elif fault == "not_an_object":
        lines[k] = draw(st.sampled_from(["[1, 2]", '"the cat"', "3", "null"]))
        bad = {f"{name} line {k + 1}"}
    content = ("\n".join(lines) + ("\n" if lines else "")).encode("utf-8")
    if fault == "not_utf8":
        cut = draw(st.integers(0, len(content)))
        content, bad = content[:cut] + b"\xff\xfe\xc3(" + content[cut:], {name}
    if fault.startswith("json_array"):
        name = name.rsplit(".", 1)[0] + ".json"
        content = ("[" + ",\n".join(lines) + "]").encode("utf-8")
        bad = {name, f"xample {k}"} if bad else set()  # a JSON file's row may be named by its index
    return name, content, rows, fmt, bad


@pytest.mark.parametrize("fault", FILE_FAULTS)
@fuzz_settings(max_examples=8)
@given(data=st.data())
def test_fuzz_data_files(fault, data):
    """Data files through `load_data_files` and `prepare_dataset` (packed, wrapped windows)."""
    name, content, rows, fmt, bad = data.draw(data_file(fault))
    tokenizer = data.draw(st.sampled_from([PLAIN, CHAT]))
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / name
        path.write_bytes(content)

        def call():
            return prepare_dataset(load_data_files([str(path)]), tokenizer, 16, packing=True)

        run_case(
            "training data: files",
            call,
            bad_files=bad,
            check=None if bad else check_examples(rows, fmt, tokenizer, packed=True),
            describe=f"{name}: {content[:300]!r} (chat_template={tokenizer is CHAT})",
        )


# ------------------------------------------------------------------------------------------ pre-tokenised rows

VOCAB = len(PLAIN)
MASK_ID = PLAIN.mask_token_id
TOKEN = st.integers(6, VOCAB - 1)
TOKENIZED_FAULTS = (
    "none",
    "none",
    "padding",
    "out_of_vocabulary",
    "mask_token",
    "no_tokens",
    "not_ints",
    "mask_length",
    "mask_values",
    "labels",
    "raw_column",
    "too_long",
    "completion_only_without_mask",
)


@st.composite
def tokenized_case(draw):
    """Pre-tokenised rows (trl's processed format) with at most one fault, and what an error may name."""
    rows = [{"input_ids": draw(st.lists(TOKEN, min_size=1, max_size=8))} for _ in range(draw(st.integers(1, 3)))]
    with_mask = draw(st.booleans())
    for row in rows:
        if with_mask:
            row["completion_mask"] = [int(k >= len(row["input_ids"]) // 2) for k in range(len(row["input_ids"]))]
    fault = draw(st.sampled_from(TOKENIZED_FAULTS))
    k = draw(st.integers(0, len(rows) - 1))
    row, bad = rows[k], set()
    if fault == "padding":  # left or right padding, named by attention_mask: dropped
        pad = draw(st.integers(1, 3))
        left = draw(st.booleans())
        for r in rows:
            n = len(r["input_ids"])
            extra = [1] * pad
            r["input_ids"] = extra + r["input_ids"] if left else r["input_ids"] + extra
            r["attention_mask"] = ([0] * pad + [1] * n) if left else ([1] * n + [0] * pad)
            if "completion_mask" in r:
                r["completion_mask"] = (
                    ([0] * pad + r["completion_mask"]) if left else (r["completion_mask"] + [0] * pad)
                )
    elif fault == "out_of_vocabulary":
        row["input_ids"][-1], bad = draw(st.sampled_from([VOCAB, 10**6, -1])), {"input_ids"}
    elif fault == "mask_token":
        row["input_ids"][0], bad = MASK_ID, {"input_ids"}
    elif fault == "no_tokens":
        row["input_ids"], bad = [], {"input_ids"}
        row.pop("completion_mask", None)
        for r in rows:  # one column set for all rows
            r.pop("completion_mask", None)
        with_mask = False
    elif fault == "mask_length" and with_mask:
        row["completion_mask"], bad = row["completion_mask"] + [1], {"completion_mask"}
    elif fault == "mask_values" and with_mask:
        row["completion_mask"], bad = [2] * len(row["input_ids"]), {"completion_mask"}
    elif fault == "labels":
        for r in rows:
            r["labels"] = list(r["input_ids"])
        bad = {"labels"}
    elif fault == "raw_column":
        for r in rows:
            r["text"] = "the cat"
        bad = {"input_ids", "text"}
    elif fault == "too_long":
        row["input_ids"] = row["input_ids"] * 70  # over the 64 of `max_length`
        if with_mask:
            row["completion_mask"] = row["completion_mask"] * 70
        bad = {"max_length"}
    completion_only = fault == "completion_only_without_mask" and not with_mask or draw(st.booleans()) and with_mask
    if completion_only and not with_mask:
        bad = bad or {"completion_mask", "completion_only_loss"}
    return rows, bad, completion_only, fault


@fuzz_settings(max_examples=60)
@given(case=tokenized_case(), streamed=st.booleans())
def test_fuzz_tokenized_rows(case, streamed):
    """Pre-tokenised rows through `prepare_dataset` (one row per example), map-style or streamed: valid rows come
    back with their padding dropped and their completion mask kept (all ones when absent); faults are named."""
    rows, bad, completion_only, fault = case
    try:
        dataset = Dataset.from_list(rows)
    except Exception:  # noqa: BLE001 - pyarrow cannot hold these rows
        assume(False)
    if streamed:
        dataset = dataset.to_iterable_dataset()

    def check(prepared) -> None:
        got = list(prepared)
        assert len(got) == len(rows)
        for k, row in enumerate(rows):
            keep = row.get("attention_mask", [1] * len(row["input_ids"]))
            ids = [t for t, m in zip(row["input_ids"], keep) if m]
            mask = [c for c, m in zip(row.get("completion_mask", [1] * len(keep)), keep) if m]
            assert got[k]["input_ids"] == ids, f"row {k}: {got[k]['input_ids']} != {ids}"
            assert got[k]["completion_mask"] == mask, f"row {k}: mask {got[k]['completion_mask']} != {mask}"

    def call():
        prepared = prepare_dataset(dataset, PLAIN, 64, packing=False, completion_only_loss=completion_only)
        return list(prepared) if streamed else prepared  # a stream raises while it is read

    run_case(
        "training data: pre-tokenised rows",
        call,
        bad=bad,
        check=check,
        describe=f"{fault}, completion_only_loss={completion_only}, streamed={streamed}: {rows!r}",
    )
