"""Training data for iLLaDA: trl's dataset formats, tokenised with exactly one EOS per example, packed by trl.

Accepted rows (trl's formats; one format per dataset):

- conversational `messages`: `[{"role": ..., "content": ...}, ...]` (system turns included), the last turn the
  assistant's response;
- `prompt`/`completion`: two strings (plain text, concatenated), or two lists of turns (conversational);
- `text` (`dataset_text_field`): a document;
- the older `prompt`/`response` pair of strings, read as one user turn and one assistant turn.

Conversations are rendered with the tokenizer's chat template, or, if it has none, with `PLAIN_CHAT_TEMPLATE`
(`"{role}: {content}\\n"` per turn, then `"assistant: "` and the response). Each example becomes
`prompt + completion + EOS` with exactly one EOS (a template's own closing EOS is not doubled) and a
`completion_mask` (1 on the completion and the EOS; 1 everywhere for `text`). Rows are then packed by trl's
`pack_dataset`: `"wrapped"` concatenates all examples into one stream cut into windows of `max_length` (the paper's
SFT recipe: the window attends to itself as a whole), `"bfd"`/`"bfd_split"` pack whole examples and record their
`seq_lengths`, from which the position ids restart at 0 at every example (document-separated attention).
Pre-training (`data_format="pretrain"`) takes `text` documents, closes each with EOS, cuts the stream into windows
and splits each window with probability `split_probability` at a uniform point into two segments that do not attend
to each other.

Every error names the example (index, or file and line for JSON-lines files read by `load_data_files`).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from datasets import Dataset, DatasetDict, load_dataset, load_from_disk
from transformers import PreTrainedTokenizerBase
from trl.data_utils import common_prefix_length, is_conversational_from_value, maybe_convert_to_chatml, pack_dataset

# The paper trains on 8192-token windows; the model's `max_position_embeddings` caps it.
DEFAULT_MAX_LENGTH = 8192
# iLLaDA pre-training splits 30% of the windows into two segments (paper, section 3).
DEFAULT_SPLIT_PROBABILITY = 0.3
# Examples per `datasets.map` batch when packing: the "wrapped" stream restarts (and one window is short) every this
# many examples, so memory stays bounded on large corpora.
STREAM_CHUNK_EXAMPLES = 1000
# Turn format of conversations when the tokenizer has no chat template.
PLAIN_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if loop.last and message['role'] == 'assistant' and not add_generation_prompt %}"
    "{{ 'assistant: ' + message['content'] }}"
    "{% else %}{{ message['role'] + ': ' + message['content'] + '\n' }}{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ 'assistant: ' }}{% endif %}"
)
DATA_FILE_BUILDERS = {".jsonl": "json", ".json": "json", ".parquet": "parquet", ".txt": "text", ".csv": "csv"}
# The row formats and the columns each needs.
FORMAT_COLUMNS = {
    "messages": ("messages",),
    "prompt-completion": ("prompt", "completion"),
    "prompt-response": ("prompt", "response"),
}


# ----------------------------------------------------------------------------------------------------------------
# Tokenizer and lengths
# ----------------------------------------------------------------------------------------------------------------


def resolve_max_length(max_length: int | None, model_limit: int) -> int:
    """The window length: `max_length`, or `DEFAULT_MAX_LENGTH` capped by the model's `max_position_embeddings`."""
    if max_length is None:
        return min(DEFAULT_MAX_LENGTH, model_limit)
    if max_length > model_limit:
        raise ValueError(
            f"`max_length` (`--max_seq_length`)={max_length} exceeds the model's "
            f"`max_position_embeddings`={model_limit}: use at most {model_limit}, or leave it unset."
        )
    return max_length


def check_tokenizer(tokenizer: PreTrainedTokenizerBase, config: Any) -> None:
    """Checks that the tokenizer and the model config agree on the special tokens and the vocabulary size."""
    mask_id, size = config.mask_token_id, len(tokenizer)
    if size <= mask_id:
        raise ValueError(
            f"The tokenizer has {size} tokens, so it has no token with the config's `mask_token_id` "
            f"{mask_id}: use the model's own tokenizer."
        )
    if tokenizer.mask_token_id is not None and tokenizer.mask_token_id != mask_id:
        raise ValueError(
            f"The tokenizer's mask token has id {tokenizer.mask_token_id}, the config's "
            f"`mask_token_id` is {mask_id}: they must be the same token."
        )
    if size > config.vocab_size:
        raise ValueError(f"The tokenizer has {size} tokens, more than the model's `vocab_size` {config.vocab_size}.")
    if tokenizer.eos_token_id not in config.eos_token_ids:
        raise ValueError(
            f"The tokenizer's `eos_token_id` {tokenizer.eos_token_id} is not among the config's EOS "
            f"ids {config.eos_token_ids}: SFT appends this token to every example."
        )
    pad_id = pad_token_id(tokenizer, config)
    if pad_id is None or pad_id == mask_id:
        raise ValueError(f"Padding id {pad_id!r} is unusable: set a pad token different from the mask token.")


def pad_token_id(tokenizer: PreTrainedTokenizerBase, config: Any) -> int | None:
    """The tokenizer's pad id, else the config's."""
    return tokenizer.pad_token_id if tokenizer.pad_token_id is not None else config.pad_token_id


# ----------------------------------------------------------------------------------------------------------------
# Row formats and their checks
# ----------------------------------------------------------------------------------------------------------------


def row_format(example: dict[str, Any], text_field: str = "text") -> str | None:
    """The format of one row, read from its non-null columns, or `None` when it has none of the known columns."""
    present = {key for key, value in example.items() if value is not None}
    for name, columns in FORMAT_COLUMNS.items():
        if set(columns) <= present:
            return name
    return "text" if text_field in present else None


def dataset_format(example: dict[str, Any], data_format: str, text_field: str, where: str) -> str:
    """The format a dataset uses, read from its first row (`where` names it in errors)."""
    if data_format == "pretrain":
        if text_field not in example:
            raise ValueError(f"Pre-training data need a `{text_field}` column; {where} has {sorted(example)}.")
        return "text"
    found = row_format(example, text_field)
    if found is None:
        present = _non_null(example)
        hint = ""
        if "prompt" in present:
            hint = " (`completion` or `response` is missing or null)"
        elif {"completion", "response"} & set(present):
            hint = " (`prompt` is missing or null)"
        raise ValueError(
            f"SFT data need a `messages` column, `prompt` and `completion` columns, or a "
            f"`{text_field}` column; {where} has {present}{hint}."
        )
    return found


def check_example(example: dict[str, Any], fmt: str, text_field: str, where: str) -> None:
    """Raises `ValueError`/`TypeError` naming `where` when the row does not hold a valid example of format `fmt`."""
    found = row_format(example, text_field)
    columns = FORMAT_COLUMNS.get(fmt, (text_field,))
    if found is not None and found != fmt:
        raise ValueError(
            f"{where} is in the {found} format but the data before it are in the {fmt} format: use "
            f"one format per dataset (the row has {_non_null(example)})."
        )
    missing = [c for c in columns if example.get(c) is None]
    if missing:
        raise ValueError(
            f"{where}: `{missing[0]}` is missing or null (the data are in the {fmt} format, which "
            f"needs {list(columns)}); the row has {_non_null(example)}."
        )
    if fmt == "text":
        _check_string(example[text_field], text_field, where)
    elif fmt == "messages":
        _check_turns(example["messages"], "messages", where, final_response=True)
    else:
        prompt, completion = example["prompt"], example[columns[1]]
        if isinstance(prompt, list) and fmt == "prompt-completion":
            _check_turns(prompt, "prompt", where)
            _check_turns(completion, "completion", where, final_response=True)
        else:
            _check_string(prompt, "prompt", where)
            _check_string(completion, columns[1], where, non_empty=True)


def _check_string(value: Any, name: str, where: str, non_empty: bool = False) -> None:
    if not isinstance(value, str):
        raise TypeError(f"{where}: `{name}` must be a string, got {type(value).__name__} {repr(value)[:80]}.")
    if non_empty and not value:
        raise ValueError(f"{where}: `{name}` is empty: there is no response to train on.")


def _check_turns(turns: Any, name: str, where: str, final_response: bool = False) -> None:
    if not isinstance(turns, list):
        raise TypeError(
            f"{where}: `{name}` must be a list of {{'role', 'content'}} turns, got "
            f"{type(turns).__name__} {repr(turns)[:80]}."
        )
    for k, turn in enumerate(turns):
        if not (isinstance(turn, dict) and isinstance(turn.get("role"), str) and isinstance(turn.get("content"), str)):
            raise TypeError(
                f"{where}: turn {k} of `{name}` must be a dict with string `role` and `content`, got {repr(turn)[:80]}."
            )
    if final_response and (not turns or turns[-1]["role"] != "assistant" or not turns[-1]["content"]):
        raise ValueError(
            f"{where} has no response: the last turn of `{name}` must be a non-empty assistant turn, "
            f"got {str(turns)[:200]}."
        )


def _non_null(example: dict[str, Any]) -> list[str]:
    return sorted(key for key, value in example.items() if value is not None)


# ----------------------------------------------------------------------------------------------------------------
# Tokenisation
# ----------------------------------------------------------------------------------------------------------------


def prompt_and_completion(example: dict[str, Any], fmt: str) -> tuple[str | list, str | list]:
    """The (prompt, completion) of an SFT row: strings for plain prompt-completion, lists of turns otherwise."""
    if fmt == "messages":
        return example["messages"][:-1], example["messages"][-1:]
    if fmt == "prompt-response":
        return [{"role": "user", "content": example["prompt"]}], [{"role": "assistant", "content": example["response"]}]
    return example["prompt"], example["completion"]


def tokenize_example(
    example: dict[str, Any], index: int, tokenizer: PreTrainedTokenizerBase, fmt: str, text_field: str
) -> dict[str, list[int]]:
    """`input_ids` of `prompt + completion + EOS` (one EOS) and `completion_mask` (1 on completion and EOS).

    The completion starts where the tokenised prompt and prompt + completion diverge (trl's
    `common_prefix_length`), so a chat template's generation prompt stays in the prompt.
    """
    check_example(example, fmt, text_field, f"Example {index}")
    if fmt == "text":
        ids = tokenizer(example[text_field], add_special_tokens=False)["input_ids"]
        return _close_with_eos(ids, 0, tokenizer.eos_token_id)
    prompt, completion = prompt_and_completion(example, fmt)
    if isinstance(prompt, list):
        template = tokenizer.chat_template or PLAIN_CHAT_TEMPLATE
        tools = example.get("tools")
        kwargs = {
            "chat_template": template,
            "tools": json.loads(tools) if isinstance(tools, str) else tools,
            "tokenize": True,
            "return_dict": True,
            **(example.get("chat_template_kwargs") or {}),
        }
        prompt_ids = tokenizer.apply_chat_template(prompt, add_generation_prompt=True, **kwargs)["input_ids"]
        full_ids = tokenizer.apply_chat_template(prompt + completion, **kwargs)["input_ids"]
    else:
        prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
        full_ids = tokenizer(prompt + completion, add_special_tokens=False)["input_ids"]
    return _close_with_eos(full_ids, common_prefix_length(prompt_ids, full_ids), tokenizer.eos_token_id)


def _close_with_eos(ids: list[int], completion_start: int, eos: int) -> dict[str, list[int]]:
    """Drops the EOS tokens that already end the completion and appends exactly one."""
    end = len(ids)
    while end > completion_start and ids[end - 1] == eos:
        end -= 1
    ids = list(ids[:end]) + [eos]
    return {"input_ids": ids, "completion_mask": [0] * completion_start + [1] * (len(ids) - completion_start)}


# ----------------------------------------------------------------------------------------------------------------
# Packing
# ----------------------------------------------------------------------------------------------------------------


def split_windows(batch: dict, indices: list[int], split_probability: float, seed: int) -> dict:
    """`seq_lengths` of wrapped windows: `[n]`, or with probability `split_probability` `[s, n - s]` with the split
    point s uniform on 1 .. n - 1 (two segments that do not attend to each other)."""
    lengths = np.array([len(ids) for ids in batch["input_ids"]])
    rng = np.random.default_rng([seed, indices[0]])
    split = (rng.random(len(lengths)) < split_probability) & (lengths >= 2)
    points = (rng.random(len(lengths)) * (lengths - 1)).astype(np.int64) + 1  # uniform on 1 .. n - 1
    seq_lengths = [[int(p), int(n - p)] if s else [int(n)] for n, p, s in zip(lengths, points, split)]
    return {**batch, "seq_lengths": seq_lengths}


def pack_rows(
    tokenized: Dataset,
    max_length: int,
    packing: bool,
    strategy: str,
    split_probability: float,
    seed: int,
    num_proc: int | None = None,
) -> Dataset:
    """Packs tokenised examples with trl's `pack_dataset` (see the module docstring)."""
    if not packing or strategy == "bfd":  # rows must hold whole examples: truncation would cut the EOS off
        lengths = [len(ids) for ids in tokenized["input_ids"]]
        too_long = [n for n in lengths if n > max_length]
        if too_long:
            raise ValueError(
                f"{len(too_long)} examples are longer than `max_length`={max_length} (longest "
                f"{max(too_long)}): truncating them would drop their EOS. Use `packing_strategy="
                "'wrapped'` or 'bfd_split', or a longer `max_length`."
            )
    if not packing:
        return tokenized
    map_kwargs = {"num_proc": num_proc, "batch_size": STREAM_CHUNK_EXAMPLES}
    packed = pack_dataset(tokenized, max_length, strategy, map_kwargs)
    if strategy != "wrapped":
        return packed
    return packed.map(
        split_windows,
        batched=True,
        with_indices=True,
        batch_size=STREAM_CHUNK_EXAMPLES,
        fn_kwargs={"split_probability": split_probability, "seed": seed},
        num_proc=num_proc,
    )


def prepare_dataset(
    dataset: Dataset,
    tokenizer: PreTrainedTokenizerBase,
    max_length: int,
    packing: bool = True,
    packing_strategy: str = "wrapped",
    data_format: str = "sft",
    split_probability: float = DEFAULT_SPLIT_PROBABILITY,
    seed: int = 0,
    text_field: str = "text",
    formatting_func: Callable[[dict], str] | None = None,
    num_proc: int | None = None,
    shuffle: bool = False,
    name: str = "train",
) -> Dataset:
    """Turns raw rows in trl's formats into training rows (the data layer of [`DiffusionSFTTrainer`]).

    Args:
        dataset (`datasets.Dataset`): Raw rows (see the module docstring); a dataset that already has `input_ids`
            is returned as it is.
        tokenizer ([`PreTrainedTokenizerBase`]): Renders and tokenises the rows; its EOS closes each example.
        max_length (`int`): Window length.
        packing (`bool`, *optional*, defaults to `True`): Pack examples into windows; else one example per row.
        packing_strategy (`str`, *optional*, defaults to `"wrapped"`): trl's `"wrapped"`, `"bfd"` or `"bfd_split"`.
        data_format (`str`, *optional*, defaults to `"sft"`): `"pretrain"` reads `text` and splits windows.
        split_probability (`float`, *optional*, defaults to 0.3): Pre-training window split probability.
        seed (`int`, *optional*, defaults to 0): Seed of the window splits (and of the shuffle).
        text_field (`str`, *optional*, defaults to `"text"`): Column of plain text rows (trl's `dataset_text_field`).
        formatting_func (`Callable`, *optional*): Turns a row into a text (trl's `formatting_func`).
        num_proc (`int`, *optional*): Processes for `datasets.map`.
        shuffle (`bool`, *optional*, defaults to `False`): Shuffle the rows after packing.
        name (`str`, *optional*): Name of the dataset in errors.

    Returns:
        `datasets.Dataset` with `input_ids`, `completion_mask` and, when packed, `seq_lengths`.
    """
    if isinstance(dataset, DatasetDict) or not isinstance(dataset, Dataset):
        raise TypeError(
            f"The {name} dataset must be a `datasets.Dataset`, got {type(dataset).__name__} (pick one "
            "split of a DatasetDict)."
        )
    if "input_ids" in dataset.column_names:
        return dataset
    if len(dataset) == 0:
        raise ValueError(f"The {name} dataset is empty: there is nothing to train on.")
    if formatting_func is not None:
        dataset = dataset.map(lambda example: {text_field: formatting_func(example)}, num_proc=num_proc)
    if is_conversational_from_value(dataset[0]):
        dataset = dataset.map(maybe_convert_to_chatml, remove_columns="conversations", num_proc=num_proc)
    fmt = dataset_format(dataset[0], data_format, text_field, f"example 0 of the {name} dataset")
    tokenized = dataset.map(
        tokenize_example,
        with_indices=True,
        remove_columns=dataset.column_names,
        num_proc=num_proc,
        fn_kwargs={"tokenizer": tokenizer, "fmt": fmt, "text_field": text_field},
    )
    split_probability = split_probability if data_format == "pretrain" else 0.0
    rows = pack_rows(tokenized, max_length, packing, packing_strategy, split_probability, seed, num_proc)
    return rows.shuffle(seed=seed) if shuffle else rows


# ----------------------------------------------------------------------------------------------------------------
# Loading
# ----------------------------------------------------------------------------------------------------------------


def check_json_file(path: Path, data_format: str = "sft", text_field: str = "text") -> int:
    """Reads a JSON-lines file (or a `.json` file holding one array of rows) and checks every row, naming the file
    and the line (or array index) of the first bad one; returns the number of rows."""
    fmt, count = None, 0
    try:
        for where, example in _located_rows(path):
            if not isinstance(example, dict):
                raise TypeError(f"{where} must hold a JSON object, got {type(example).__name__}.")
            fmt = fmt or dataset_format(example, data_format, text_field, where)
            check_example(example, fmt, text_field, where)
            count += 1
    except UnicodeDecodeError as error:
        raise ValueError(f"{path} is not UTF-8 text (byte {error.start}): save the data file as UTF-8.") from None
    if count == 0:
        raise ValueError(f"{path} is empty: it holds no JSON rows to train on.")
    return count


def _located_rows(path: Path):
    """(where, row) for each row of a JSON file: an array's items, else one row per non-blank line (streamed)."""
    rows = _json_array(path.read_text(encoding="utf-8")) if path.suffix.lower() == ".json" else None
    if rows is not None:
        yield from ((f"{path} example {i}", row) for i, row in enumerate(rows))
        return
    with path.open(encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if line.strip():
                yield f"{path} line {number}", _json_line(line, f"{path} line {number}")


def _json_array(text: str) -> list | None:
    """The rows of a file holding one JSON array, or `None` for any other content (JSON lines)."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError:
        return None
    return value if isinstance(value, list) else None


def _json_line(line: str, where: str) -> Any:
    try:
        return json.loads(line)
    except json.JSONDecodeError as error:
        raise ValueError(f"{where} is not valid JSON ({error.msg} at column {error.colno}).") from None


def load_data_files(files: list[str], data_format: str = "sft", text_field: str = "text") -> Dataset:
    """Loads local files with the `datasets` builder their extension names (all files must share it); JSON files
    are checked row by row first, so that a bad row is reported with its file and line."""
    paths = [Path(f) for f in files]
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        raise ValueError(f"Data files not found: {missing}.")
    builders = {DATA_FILE_BUILDERS.get(p.suffix.lower()) for p in paths}
    if None in builders or len(builders) != 1:
        raise ValueError(f"Data files must all be one of {sorted(DATA_FILE_BUILDERS)}, got {[p.name for p in paths]}.")
    for path in paths:
        if path.suffix.lower() in (".jsonl", ".json"):
            check_json_file(path, data_format, text_field)
    try:
        return load_dataset(builders.pop(), data_files=[str(p) for p in paths], split="train")
    except Exception as error:  # datasets' and pyarrow's read errors do not name the file
        raise ValueError(f"Could not read the data files {[str(p) for p in paths]}: {error}") from error


def load_data(
    dataset_name: str | None = None,
    dataset_config: str | None = None,
    split: str = "train",
    files: list[str] | None = None,
    data_format: str = "sft",
    text_field: str = "text",
) -> Dataset:
    """One split of a dataset: local `files`, or `dataset_name`, which is a folder written by `save_to_disk`, a
    folder of data files, or a `datasets` name (Hub id) loaded with `dataset_config` and `split`."""
    if (dataset_name is None) == (files is None):
        raise ValueError(
            "Give exactly one of `dataset_name` and `train_files`/`eval_files`; got "
            f"dataset_name={dataset_name!r}, files={files!r}."
        )
    if files is not None:
        return load_data_files(files, data_format, text_field)
    folder = Path(dataset_name)
    if folder.is_dir() and any((folder / marker).is_file() for marker in ("dataset_dict.json", "state.json")):
        data = load_from_disk(str(folder))
        if isinstance(data, DatasetDict):
            if split not in data:
                raise ValueError(f"`dataset_split`={split!r} is not a split of {folder}: it has {sorted(data)}.")
            data = data[split]
        return data
    if folder.is_dir():
        found = sorted(p for p in folder.iterdir() if p.suffix.lower() in DATA_FILE_BUILDERS)
        if not found:
            raise ValueError(
                f"{folder} holds no data files ({sorted(DATA_FILE_BUILDERS)}) and was not written by `save_to_disk`."
            )
        return load_data_files([str(p) for p in found], data_format, text_field)
    return load_dataset(dataset_name, dataset_config, split=split)
