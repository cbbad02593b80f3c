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

Pre-tokenised rows (`input_ids`, with optional `completion_mask`, `attention_mask` and `seq_lengths`) are checked
(ids in the vocabulary, no mask token, no empty row) and packed the same way, their padding dropped. A
`datasets.IterableDataset` (streaming) goes through the same steps lazily and gives the same rows. No example may
hold the mask token (its text `<[MASK]>` included): the model would learn it as a clean token.

Every error names the example (index, or file and line for JSON-lines files read by `load_data_files`).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from datasets import Dataset, DatasetDict, IterableDataset, load_dataset, load_from_disk
from transformers import PreTrainedTokenizerBase
from trl.data_utils import common_prefix_length, is_conversational_from_value, maybe_convert_to_chatml, pack_dataset

from illada.tokenized_rows import check_length, check_tokenized_row

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
        _check_has_prompt(example["messages"][:-1], "messages", where)
    else:
        prompt, completion = example["prompt"], example[columns[1]]
        if isinstance(prompt, list) and fmt == "prompt-completion":
            _check_turns(prompt, "prompt", where)
            _check_turns(completion, "completion", where, final_response=True)
            _check_has_prompt(prompt, "prompt", where)
        else:
            _check_string(prompt, "prompt", where)
            _check_string(completion, columns[1], where, non_empty=True)
    _check_template_columns(example, where)


def _check_string(value: Any, name: str, where: str, non_empty: bool = False) -> None:
    if not isinstance(value, str):
        raise TypeError(f"{where}: `{name}` must be a string, got {type(value).__name__} {repr(value)[:80]}.")
    if non_empty and not value.strip():
        raise ValueError(f"{where}: `{name}` is {'blank' if value else 'empty'}: there is no response to train on.")


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
    if final_response and (not turns or turns[-1]["role"] != "assistant" or not turns[-1]["content"].strip()):
        raise ValueError(
            f"{where} has no response: the last turn of `{name}` must be a non-empty assistant turn, "
            f"got {str(turns)[:200]}."
        )


def _check_has_prompt(turns: list, name: str, where: str) -> None:
    if not turns:
        raise ValueError(
            f"{where}: `{name}` has no turn before the assistant's response: a conversation needs a user (or system) "
            "turn to answer; plain text goes in a `text` column."
        )


def _check_template_columns(example: dict[str, Any], where: str) -> None:
    """trl's optional `tools` (a list of tool schemas, or its JSON text) and `chat_template_kwargs` (a mapping)."""
    tools = example.get("tools")
    if isinstance(tools, str):
        try:
            tools = json.loads(tools)
        except json.JSONDecodeError as error:
            raise ValueError(f"{where}: `tools` is not valid JSON ({error.msg} at column {error.colno}).") from None
    if tools is not None and not (isinstance(tools, list) and all(isinstance(tool, dict) for tool in tools)):
        raise TypeError(f"{where}: `tools` must be a list of tool schemas (dicts), got {repr(tools)[:80]}.")
    kwargs = example.get("chat_template_kwargs")
    if kwargs is not None and not (isinstance(kwargs, dict) and all(isinstance(key, str) for key in kwargs)):
        raise TypeError(
            f"{where}: `chat_template_kwargs` must be a mapping of template variable names to values, got "
            f"{repr(kwargs)[:80]}."
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
    example: dict[str, Any],
    index: int,
    tokenizer: PreTrainedTokenizerBase,
    fmt: str,
    text_field: str,
    max_length: int | None = None,
) -> dict[str, list[int]]:
    """`input_ids` of `prompt + completion + EOS` (one EOS) and `completion_mask` (1 on completion and EOS).

    The completion starts where the tokenised prompt and prompt + completion diverge (trl's
    `common_prefix_length`), so a chat template's generation prompt stays in the prompt. A text holding the mask
    token (e.g. the literal `<[MASK]>`) is refused: the model would learn the mask token as a clean token. With
    `max_length`, an example longer than it is refused (rows that must hold whole examples).
    """
    where = f"Example {index}"
    check_example(example, fmt, text_field, where)
    if fmt == "text":
        ids = tokenizer(example[text_field], add_special_tokens=False)["input_ids"]
        row = _close_with_eos(ids, 0, tokenizer.eos_token_id)
    else:
        prompt, completion = prompt_and_completion(example, fmt)
        if isinstance(prompt, list):
            kwargs = {
                "chat_template": tokenizer.chat_template or PLAIN_CHAT_TEMPLATE,
                "tools": _tools(example),
                "tokenize": True,
                "return_dict": True,
                **(example.get("chat_template_kwargs") or {}),
            }
            prompt_ids = tokenizer.apply_chat_template(prompt, add_generation_prompt=True, **kwargs)["input_ids"]
            full_ids = tokenizer.apply_chat_template(prompt + completion, **kwargs)["input_ids"]
        else:
            prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
            full_ids = tokenizer(prompt + completion, add_special_tokens=False)["input_ids"]
        row = _close_with_eos(full_ids, common_prefix_length(prompt_ids, full_ids), tokenizer.eos_token_id)
    _check_no_mask_token(row, tokenizer, FORMAT_COLUMNS.get(fmt, (text_field,)), where)
    check_length(row["input_ids"], max_length, where)
    return row


def _tools(example: dict[str, Any]) -> list | None:
    tools = example.get("tools")
    return json.loads(tools) if isinstance(tools, str) else tools


def _check_no_mask_token(row: dict[str, list[int]], tokenizer: PreTrainedTokenizerBase, columns: tuple, where: str):
    mask_id = tokenizer.mask_token_id
    if mask_id is None or mask_id not in row["input_ids"]:
        return
    position = row["input_ids"].index(mask_id)
    column = columns[-1] if row["completion_mask"][position] and len(columns) > 1 else columns[0]
    raise ValueError(
        f"{where}: `{column}` holds the mask token {tokenizer.mask_token!r} (id {mask_id}) at token {position}: the "
        "model would learn it as a clean token. Remove it from the text (training data may not contain it)."
    )


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
    tokenized: Dataset | IterableDataset,
    max_length: int,
    packing: bool,
    strategy: str,
    split_probability: float,
    seed: int,
    num_proc: int | None = None,
) -> Dataset | IterableDataset:
    """Packs tokenised examples with trl's `pack_dataset` (see the module docstring). Rows longer than `max_length`
    are refused before (`whole_rows`) where the rows must hold whole examples."""
    if not packing:
        return tokenized
    streamed = isinstance(tokenized, IterableDataset)
    map_kwargs = {"batch_size": STREAM_CHUNK_EXAMPLES, **({} if streamed else {"num_proc": num_proc})}
    packed = pack_dataset(tokenized, max_length, strategy, map_kwargs)
    if strategy != "wrapped":
        return packed
    return packed.map(
        split_windows,
        batched=True,
        with_indices=True,
        fn_kwargs={"split_probability": split_probability, "seed": seed},
        **map_kwargs,
    )


def whole_rows(packing: bool, strategy: str) -> bool:
    """Whether each row must hold whole examples (no packing, or best-fit packing without splits)."""
    return not packing or strategy == "bfd"


def prepare_dataset(
    dataset: Dataset | IterableDataset,
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
    completion_only_loss: bool = False,
    vocab_size: int | None = None,
) -> Dataset | IterableDataset:
    """Turns raw rows in trl's formats, or pre-tokenised rows, into training rows (the data layer of
    [`DiffusionSFTTrainer`]).

    Args:
        dataset (`datasets.Dataset` or `datasets.IterableDataset`): Raw rows (see the module docstring), or
            pre-tokenised rows: `input_ids` with optional `completion_mask`, `attention_mask` (its 0s are padding,
            dropped) and `seq_lengths` (rows packed already: kept as they are). Pre-tokenised ids are taken as
            they are (no EOS added). An `IterableDataset` (streaming) goes through the same steps lazily.
        tokenizer ([`PreTrainedTokenizerBase`]): Renders and tokenises the rows; its EOS closes each example.
        max_length (`int`): Window length.
        packing (`bool`, *optional*, defaults to `True`): Pack examples into windows; else one example per row.
        packing_strategy (`str`, *optional*, defaults to `"wrapped"`): trl's `"wrapped"`, `"bfd"` or `"bfd_split"`.
        data_format (`str`, *optional*, defaults to `"sft"`): `"pretrain"` reads `text` and splits windows.
        split_probability (`float`, *optional*, defaults to 0.3): Pre-training window split probability.
        seed (`int`, *optional*, defaults to 0): Seed of the window splits (and of the shuffle).
        text_field (`str`, *optional*, defaults to `"text"`): Column of plain text rows (trl's `dataset_text_field`).
        formatting_func (`Callable`, *optional*): Turns a row into a text (trl's `formatting_func`).
        num_proc (`int`, *optional*): Processes for `datasets.map` (map-style datasets).
        shuffle (`bool`, *optional*, defaults to `False`): Shuffle the rows after packing.
        name (`str`, *optional*): Name of the dataset in errors.
        completion_only_loss (`bool`, *optional*, defaults to `False`): The trainer masks the completion only: the
            rows must have one (not `text`, not pre-tokenised rows without `completion_mask`).
        vocab_size (`int`, *optional*): Ids of pre-tokenised rows must be below it; defaults to `len(tokenizer)`.

    Returns:
        The dataset (of the same kind) with `input_ids`, `completion_mask` and, when packed, `seq_lengths`.
    """
    streamed = isinstance(dataset, IterableDataset)
    if not isinstance(dataset, (Dataset, IterableDataset)):
        raise TypeError(
            f"The {name} dataset must be a `datasets.Dataset` or `datasets.IterableDataset`, got "
            f"{type(dataset).__name__} (pick one split of a DatasetDict)."
        )
    first = next(iter(dataset), None)
    if first is None:
        raise ValueError(f"The {name} dataset is empty: there is nothing to train on.")
    map_kwargs = {} if streamed else {"num_proc": num_proc}
    whole = max_length if whole_rows(packing, packing_strategy) else None
    if "input_ids" in first:
        rows = _prepare_tokenized(
            dataset, first, tokenizer, whole, completion_only_loss, vocab_size, name, map_kwargs, text_field
        )
        if "seq_lengths" in first:
            return rows.shuffle(seed=seed) if shuffle else rows
    else:
        if formatting_func is not None:
            dataset = dataset.map(lambda example: {text_field: formatting_func(example)}, **map_kwargs)
            first = next(iter(dataset))
        if is_conversational_from_value(first):
            dataset = dataset.map(maybe_convert_to_chatml, remove_columns="conversations", **map_kwargs)
            first = next(iter(dataset))
        fmt = dataset_format(first, data_format, text_field, f"example 0 of the {name} dataset")
        if completion_only_loss and fmt == "text":
            raise ValueError(
                f"`completion_only_loss=True` but the {name} dataset holds `{text_field}` rows, which have no "
                "completion: give prompt/completion or conversational rows, or set `completion_only_loss=False`."
            )
        rows = dataset.map(
            tokenize_example,
            with_indices=True,
            remove_columns=list(first),
            fn_kwargs={"tokenizer": tokenizer, "fmt": fmt, "text_field": text_field, "max_length": whole},
            **map_kwargs,
        )
    split_probability = split_probability if data_format == "pretrain" else 0.0
    rows = pack_rows(rows, max_length, packing, packing_strategy, split_probability, seed, num_proc)
    return rows.shuffle(seed=seed) if shuffle else rows


def _prepare_tokenized(
    dataset, first, tokenizer, max_length, completion_only_loss, vocab_size, name, map_kwargs, text_field="text"
):
    """Pre-tokenised rows through `check_tokenized_row` (see `prepare_dataset`)."""
    raw = sorted({text_field, *(c for columns in FORMAT_COLUMNS.values() for c in columns)} & set(_non_null(first)))
    if raw:
        raise ValueError(
            f"The {name} dataset has both `input_ids` (pre-tokenised rows) and {raw} (raw rows): keep one, e.g. "
            "`dataset.remove_columns('input_ids')` to tokenise the raw rows here."
        )
    if "labels" in first:
        raise ValueError(
            f"The {name} dataset has a `labels` column (next-token targets), which the diffusion trainer does not "
            "read: give `completion_mask` (1 on the tokens to train) with `completion_only_loss=True`, or drop it."
        )
    if completion_only_loss and "completion_mask" not in first:
        raise ValueError(
            f"`completion_only_loss=True` but the pre-tokenised {name} dataset has no `completion_mask` column."
        )
    kwargs = {"vocab_size": vocab_size or len(tokenizer), "mask_id": tokenizer.mask_token_id, "max_length": max_length}
    return dataset.map(
        check_tokenized_row, with_indices=True, remove_columns=list(first), fn_kwargs=kwargs, **map_kwargs
    )


# ----------------------------------------------------------------------------------------------------------------
# Loading
# ----------------------------------------------------------------------------------------------------------------


def check_json_file(path: Path, data_format: str = "sft", text_field: str = "text") -> int:
    """Reads a JSON-lines file (or a `.json` file holding one array of rows) and checks every row, naming the file
    and the line (or array index) of the first bad one; returns the number of rows."""
    fmt, count = None, 0
    try:
        for where, example in located_rows(path):
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


def located_rows(path: Path):
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
