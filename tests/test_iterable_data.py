"""Streaming training data (issue 25): an `IterableDataset` goes through the same data layer as a map-style one, and
training on it gives what training on the same rows in the same order gives.

The reference for each check is the map-style path on the same rows (itself checked against independent
tokenisations in `test_fuzz_data.py` and `test_training.py`): prepared rows equal for every packing strategy and
format (the pre-training window splits included, seeded by the example index), and a few training steps with
`pad_to_multiple_of=max_length` (masks independent of the batch layout) give the same logged losses and the same
weights as a sequential map-style run.
"""

import pytest
import torch
from datasets import Dataset, IterableDataset
from tiny import make_model
from tiny_tokenizer import make_tiny_tokenizer

from illada.data import prepare_dataset
from illada.trainer import DiffusionSFTConfig, DiffusionSFTTrainer

pytestmark = pytest.mark.usefixtures("one_thread")
TOKENIZER = make_tiny_tokenizer(chat_template=True)


def conversation(i: int) -> dict:
    return {
        "messages": [
            {"role": "user", "content": " ".join(str((i + k) % 50) for k in range(1 + i % 4))},
            {"role": "assistant", "content": " ".join(str((3 * i + k) % 50) for k in range(1 + i % 3))},
        ]
    }


ROWS = {
    "messages": [conversation(i) for i in range(40)],
    "text": [{"text": " ".join(str((7 * i + k) % 50) for k in range(2 + i % 9))} for i in range(40)],
    "tokenized": [{"input_ids": [6 + (i + k) % 40 for k in range(2 + i % 5)]} for i in range(40)],
}


def streamed(rows: list[dict]) -> IterableDataset:
    return IterableDataset.from_generator(lambda: iter(rows))


@pytest.mark.parametrize("fmt", sorted(ROWS))
@pytest.mark.parametrize(
    "packing",
    [
        dict(packing=False),
        dict(packing_strategy="wrapped"),
        dict(packing_strategy="bfd"),
        dict(packing_strategy="bfd_split"),
    ],
)
def test_streamed_rows_equal_the_map_style_rows(fmt, packing):
    options = dict(max_length=16, **packing)
    if fmt == "text":
        options.update(data_format="pretrain", split_probability=0.5, seed=3)
    mapped = list(prepare_dataset(Dataset.from_list(ROWS[fmt]), TOKENIZER, **options))
    got = list(prepare_dataset(streamed(ROWS[fmt]), TOKENIZER, **options))
    assert got == mapped and len(got) > 1
    if fmt == "text" and packing.get("packing_strategy") == "wrapped":
        assert any(len(row["seq_lengths"]) == 2 for row in got)  # some windows were split


def test_streamed_bad_rows_name_the_example():
    rows = [
        *ROWS["messages"][:3],
        {"messages": [{"role": "user", "content": "1 2"}, {"role": "assistant", "content": " "}]},
    ]
    with pytest.raises(ValueError, match=r"Example 3 has no response"):
        list(prepare_dataset(streamed(rows), TOKENIZER, max_length=16))
    with pytest.raises(ValueError, match="empty"):
        prepare_dataset(streamed([]), TOKENIZER, max_length=16)


def train(dataset, output_dir, **overrides):
    args = DiffusionSFTConfig(
        str(output_dir),
        use_cpu=True,
        report_to="none",
        max_steps=3,
        per_device_train_batch_size=2,
        max_length=16,
        pad_to_multiple_of=16,
        learning_rate=1e-2,
        min_lr=1e-3,
        logging_steps=1,
        save_strategy="no",
        disable_tqdm=True,
        seed=5,
        train_sampling_strategy="sequential",
        **overrides,
    )
    trainer = DiffusionSFTTrainer(make_model(seed=1), args=args, train_dataset=dataset, processing_class=TOKENIZER)
    trainer.train()
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    return losses, trainer.model.state_dict()


@pytest.mark.parametrize("completion_only_loss", [False, True])
def test_training_on_a_stream_equals_training_on_the_same_rows(tmp_path, completion_only_loss):
    rows = ROWS["messages"]
    expected_losses, expected = train(
        Dataset.from_list(rows), tmp_path / "a", completion_only_loss=completion_only_loss
    )
    losses, weights = train(streamed(rows), tmp_path / "b", completion_only_loss=completion_only_loss)
    assert len(losses) == 3 and losses == expected_losses
    for name, tensor in expected.items():
        torch.testing.assert_close(weights[name], tensor, rtol=0, atol=0, msg=name)
