"""The diffusion trainer as trl users write it: one class changed (`SFTTrainer` -> `DiffusionSFTTrainer`), trl's
dataset formats, the exact-ELBO check of the loss, seeded evaluation masks, the model card, and the errors that stop
a next-token objective (trl's plain `SFTTrainer`, a plain `Trainer` with `labels`) from training iLLaDA silently."""

import copy
import itertools
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from datasets import Dataset, load_dataset
from tiny import make_model
from tiny_tokenizer import make_tiny_tokenizer
from transformers import Trainer, TrainingArguments
from trl import SFTConfig, SFTTrainer

from illada.data import PLAIN_CHAT_TEMPLATE
from illada.hub import build_model_card
from illada.trainer import SFT_CARD_SETTINGS, DiffusionSFTConfig, DiffusionSFTTrainer, sft_card_training

pytestmark = pytest.mark.usefixtures("one_thread")
EOS_ID, PAD_ID = 2, 1


def config(tmp_path, **overrides) -> DiffusionSFTConfig:
    settings = dict(use_cpu=True, report_to="none", save_strategy="no", disable_tqdm=True, logging_steps=1)
    return DiffusionSFTConfig(str(tmp_path / "out"), **{**settings, **overrides})


def ids(tokenizer, text: str) -> list[int]:
    return tokenizer(text, add_special_tokens=False).input_ids


def unpacked_rows(tmp_path, rows: list[dict], tokenizer=None, **overrides):
    """The trainer's prepared rows, one example per row (no packing), and its collator."""
    trainer = DiffusionSFTTrainer(
        model=make_model(),
        args=config(tmp_path, packing=False, max_length=64, **overrides),
        train_dataset=Dataset.from_list(rows),
        processing_class=tokenizer or make_tiny_tokenizer(),
    )
    return trainer.train_dataset, trainer.data_collator


# ---------------------------------------------------------------------------------------------------------------
# One class changed
# ---------------------------------------------------------------------------------------------------------------


def test_a_trl_script_with_the_diffusion_classes_trains(tmp_path):
    """trl's usual call with `DiffusionSFTTrainer`/`DiffusionSFTConfig` and a jsonl dataset (the README's "Fine-tune"
    snippet runs in tests/test_readme.py)."""
    data = tmp_path / "chat.jsonl"
    data.write_text(
        "".join(
            json.dumps(
                {
                    "messages": [
                        {"role": "user", "content": f"count {i} {i + 1}"},
                        {"role": "assistant", "content": f"{i + 2}"},
                    ]
                }
            )
            + "\n"
            for i in range(30)
        )
    )
    model = make_model(seed=0)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    trainer = DiffusionSFTTrainer(
        model=model,
        args=DiffusionSFTConfig(
            str(tmp_path / "out"),
            max_steps=2,
            per_device_train_batch_size=2,
            use_cpu=True,
            learning_rate=1e-3,
            min_lr=1e-4,
            report_to="none",
        ),
        train_dataset=load_dataset("json", data_files=str(data), split="train"),
        processing_class=make_tiny_tokenizer(chat_template=True),
    )
    result = trainer.train()
    assert math.isfinite(result.training_loss) and trainer.state.global_step == 2
    assert all(not torch.equal(p.detach(), before[n]) for n, p in model.named_parameters())
    # The tiny model's max_position_embeddings (256) caps the paper's 8192-token windows.
    assert trainer.args.max_length == 256 and trainer.args.packing_strategy == "wrapped"
    assert "forward" not in model.__dict__  # trl's next-token LM head patch was taken off again


def test_trl_defaults_that_do_not_fit_are_replaced(tmp_path):
    """A plain `SFTConfig` passed to the diffusion trainer keeps the user's values but not trl's defaults for
    checkpointing, bf16, completion-only loss, window length and packing."""
    rows = [{"prompt": "count 1 2", "completion": " 3"}] * 4
    sft_args = SFTConfig(str(tmp_path / "out"), use_cpu=True, report_to="none", seed=7)
    trainer = DiffusionSFTTrainer(
        model=make_model(), args=sft_args, train_dataset=Dataset.from_list(rows), processing_class=make_tiny_tokenizer()
    )
    args = trainer.args
    assert isinstance(args, DiffusionSFTConfig) and (args.learning_rate, args.seed) == (5e-6, 7)
    assert (args.activation_checkpointing, args.bf16, args.completion_only_loss, args.packing) == (
        False,
        False,
        False,
        True,
    )
    # trl would default to completion-only loss for prompt-completion data: here the prompt is maskable too.
    batch = trainer.data_collator([trainer.train_dataset[0]])
    assert batch["maskable"].all()


# ---------------------------------------------------------------------------------------------------------------
# trl's dataset formats
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("value", [float("nan"), 1, "yes"])
def test_completion_only_loss_must_be_a_bool_or_none(tmp_path, value):
    assert config(tmp_path, completion_only_loss=None).completion_only_loss is False  # None: whole sequence
    with pytest.raises(TypeError, match="`completion_only_loss` must be True, False or None"):
        config(tmp_path, completion_only_loss=value)


def test_plain_prompt_completion_and_text_rows(tmp_path):
    tokenizer = make_tiny_tokenizer()
    rows, _ = unpacked_rows(
        tmp_path, [{"prompt": "count 1 2 ", "completion": "3 4"}, {"prompt": "what is", "completion": " 2 plus 3"}]
    )
    assert rows["input_ids"] == [
        ids(tokenizer, "count 1 2") + ids(tokenizer, "3 4") + [EOS_ID],
        ids(tokenizer, "what is") + ids(tokenizer, "2 plus 3") + [EOS_ID],
    ]
    assert rows["completion_mask"] == [[0, 0, 0, 1, 1, 1], [0, 0, 1, 1, 1, 1]]
    text, _ = unpacked_rows(tmp_path, [{"text": "the cat sat"}, {"text": "a dog ran </s>"}])
    assert text["input_ids"] == [ids(tokenizer, "the cat sat") + [EOS_ID], ids(tokenizer, "a dog ran") + [EOS_ID]]
    assert text["completion_mask"] == [[1] * 4, [1] * 4]


def test_messages_with_a_system_turn_without_a_chat_template(tmp_path):
    """Conversations render as "{role}: {content}\\n" turns, then "assistant: " + response + EOS."""
    tokenizer = make_tiny_tokenizer()
    messages = [
        {"role": "system", "content": "copy"},
        {"role": "user", "content": "the cat"},
        {"role": "assistant", "content": "yes"},
        {"role": "user", "content": "a dog"},
        {"role": "assistant", "content": "a dog"},
    ]
    rows, _ = unpacked_rows(tmp_path, [{"messages": messages}])
    prompt = ids(tokenizer, "system: copy\nuser: the cat\nassistant: yes\nuser: a dog\nassistant: ")
    assert rows["input_ids"] == [prompt + ids(tokenizer, "a dog") + [EOS_ID]]
    assert rows["completion_mask"] == [[0] * len(prompt) + [1, 1, 1]]
    rendered = tokenizer.apply_chat_template(messages, chat_template=PLAIN_CHAT_TEMPLATE, tokenize=False)
    assert rendered.endswith("assistant: a dog")


def test_conversational_prompt_completion_with_the_chat_template(tmp_path):
    tokenizer = make_tiny_tokenizer(chat_template=True)
    prompt = [{"role": "user", "content": "count 1 2"}]
    completion = [{"role": "assistant", "content": "3"}]
    rows, collator = unpacked_rows(
        tmp_path, [{"prompt": prompt, "completion": completion}], tokenizer, completion_only_loss=True
    )
    full = ids(tokenizer, tokenizer.apply_chat_template(prompt + completion, tokenize=False))
    head = ids(tokenizer, tokenizer.apply_chat_template(prompt, tokenize=False, add_generation_prompt=True))
    assert full[-1] == EOS_ID and full.count(EOS_ID) == 1 and full[: len(head)] == head
    assert rows["input_ids"] == [full]
    batch = collator([rows[0]])
    assert batch["maskable"][0].tolist() == [False] * len(head) + [True] * (len(full) - len(head))


def test_legacy_prompt_response_rows_are_one_user_and_one_assistant_turn(tmp_path):
    rows, _ = unpacked_rows(tmp_path, [{"prompt": "count 1", "response": "2"}])
    messages, _ = unpacked_rows(
        tmp_path, [{"messages": [{"role": "user", "content": "count 1"}, {"role": "assistant", "content": "2"}]}]
    )
    assert rows["input_ids"] == messages["input_ids"] and rows["completion_mask"] == messages["completion_mask"]


# ---------------------------------------------------------------------------------------------------------------
# The loss equals the exact ELBO
# ---------------------------------------------------------------------------------------------------------------


def exact_elbo_per_token(model, x: list[int], mask_id: int, eps: float) -> float:
    """-ELBO / L by enumerating every mask set M of x in float64:
    sum_M w(|M|) sum_{i in M} -log p(x_i | x with M masked) / L, with
    w(k) = E_{t ~ U[eps, 1]}[t^k (1 - t)^(L - k) / t] = (1 / (1 - eps)) int_eps^1 t^(k-1) (1 - t)^(L-k) dt."""
    model64 = copy.deepcopy(model).double().eval()
    length, total = len(x), 0.0
    t = np.polynomial.Polynomial([0.0, 1.0])
    for k in range(1, length + 1):
        weight = (t ** (k - 1) * (1 - t) ** (length - k)).integ()
        weight = (weight(1.0) - weight(eps)) / (1 - eps)
        for masked in itertools.combinations(range(length), k):
            noisy = torch.tensor([[mask_id if i in masked else token for i, token in enumerate(x)]])
            with torch.no_grad():
                log_probs = torch.log_softmax(model64(input_ids=noisy).logits[0], dim=-1)
            total += weight * sum(-log_probs[i, x[i]].item() for i in masked)
    return total / length


def test_mean_loss_equals_the_exact_elbo_of_a_short_sequence(tmp_path):
    model = make_model(seed=3, initializer_range=0.3)
    x, eps, rows, chunks = [7, 30, 9], 1e-3, 2000, 16
    trainer = DiffusionSFTTrainer(
        model=model,
        args=config(tmp_path, diffusion_eps=eps),
        train_dataset=Dataset.from_dict({"input_ids": [x]}),
        processing_class=make_tiny_tokenizer(),
    )
    batch = {
        "input_ids": torch.tensor([x] * rows),
        "position_ids": torch.arange(3).repeat(rows, 1),
        "maskable": torch.ones(rows, 3, dtype=torch.bool),
    }
    with torch.no_grad():
        losses = [trainer.compute_loss(model.eval(), batch).item() for _ in range(chunks)]  # fresh seed per call
    exact = exact_elbo_per_token(model, x, model.config.mask_token_id, eps)
    mean, stderr = np.mean(losses), np.std(losses, ddof=1) / math.sqrt(chunks)
    assert stderr < 0.03 * exact  # the check is sharp enough to see a wrong weighting
    assert abs(mean - exact) < 4 * stderr, (mean, exact, stderr)


# ---------------------------------------------------------------------------------------------------------------
# Evaluation masks
# ---------------------------------------------------------------------------------------------------------------


def test_evaluation_masks_are_seeded_not_drawn_from_the_global_generator(tmp_path):
    rows = [
        {"messages": [{"role": "user", "content": f"count {i}"}, {"role": "assistant", "content": f"{i + 1}"}]}
        for i in range(24)
    ]
    dataset = Dataset.from_list(rows)
    trainer = DiffusionSFTTrainer(
        model=make_model(seed=1),
        args=config(tmp_path, max_length=16, seed=5),
        train_dataset=dataset,
        eval_dataset=dataset,
        processing_class=make_tiny_tokenizer(),
    )
    torch.manual_seed(0)
    first = trainer.evaluate()["eval_loss"]
    torch.manual_seed(1)
    second = trainer.evaluate()["eval_loss"]
    assert first == second
    other = DiffusionSFTTrainer(
        model=make_model(seed=1),
        args=config(tmp_path, max_length=16, seed=6),
        train_dataset=dataset,
        eval_dataset=dataset,
        processing_class=make_tiny_tokenizer(),
    )
    assert other.evaluate()["eval_loss"] != first  # the masks do come from the seed


# ---------------------------------------------------------------------------------------------------------------
# Model card
# ---------------------------------------------------------------------------------------------------------------


def test_model_card_names_the_model_its_loading_and_the_settings(tmp_path):
    model = make_model()
    model.config._name_or_path = "GSAI-ML/iLLaDA-8B-Base"
    args = config(tmp_path, completion_only_loss=True, max_length=512)
    card = build_model_card(model, args, sft_card_training(args), SFT_CARD_SETTINGS, dataset_name="chat", tags=["demo"])
    header = card.split("---")[1]
    for line in (
        "library_name: transformers",
        "base_model: GSAI-ML/iLLaDA-8B-Base",
        "- chat",
        "- illada",
        "- diffusion",
        "- custom_code",
        "- demo",
    ):
        assert line in header.splitlines(), line
    assert 'AutoModelForCausalLM.from_pretrained("REPO_OR_FOLDER", trust_remote_code=True)' in card
    assert "model.generate(" in card and "| `max_length` | 512 |" in card
    assert "| `completion_only_loss` | True |" in card
    assert "only the completion" in card

    from peft import LoraConfig, get_peft_model

    adapter = get_peft_model(model, LoraConfig(r=2, target_modules=["q_proj"], task_type="CAUSAL_LM"))
    args = config(tmp_path)
    adapter_card = build_model_card(adapter, args, sft_card_training(args), SFT_CARD_SETTINGS)
    assert "library_name: peft" in adapter_card and "AutoPeftModelForCausalLM" in adapter_card
    assert "- lora" in adapter_card and "whole sequence" in adapter_card


# ---------------------------------------------------------------------------------------------------------------
# Next-token trainers are refused
# ---------------------------------------------------------------------------------------------------------------


def test_trls_plain_sft_trainer_raises_and_names_the_diffusion_trainer(tmp_path):
    rows = Dataset.from_list([{"prompt": "count 1 2", "completion": " 3"}] * 4)
    args = SFTConfig(str(tmp_path / "out"), use_cpu=True, report_to="none", bf16=False, max_steps=1)
    with pytest.raises(ValueError, match="next-token .* Use `illada.trainer.DiffusionSFTTrainer`"):
        SFTTrainer(model=make_model(), args=args, train_dataset=rows, processing_class=make_tiny_tokenizer())

    from peft import LoraConfig

    with pytest.raises(ValueError, match="DiffusionSFTTrainer"):
        SFTTrainer(
            model=make_model(),
            args=args,
            train_dataset=rows,
            processing_class=make_tiny_tokenizer(),
            peft_config=LoraConfig(r=2, target_modules=["q_proj"], task_type="CAUSAL_LM"),
        )


def test_a_plain_trainer_with_labels_raises(tmp_path):
    tokenizer = make_tiny_tokenizer()
    texts = ["the cat sat on the mat", "a dog ran"]
    encoded = [tokenizer(t, add_special_tokens=False) for t in texts]
    rows = Dataset.from_list([{"input_ids": e.input_ids, "labels": e.input_ids} for e in encoded])
    trainer = Trainer(
        model=make_model(),
        train_dataset=rows,
        args=TrainingArguments(
            str(tmp_path / "out"), use_cpu=True, report_to="none", max_steps=1, per_device_train_batch_size=1
        ),
    )
    with pytest.raises(ValueError, match="`labels` is not supported .*DiffusionSFTTrainer"):
        trainer.train()


def test_peft_config_trains_only_the_adapters(tmp_path):
    """trl's `peft_config=` argument works with the diffusion trainer as with `SFTTrainer`."""
    from peft import LoraConfig

    model = make_model(seed=0)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    rows = Dataset.from_list([{"prompt": f"count {i}", "completion": f" {i + 1}"} for i in range(16)])
    trainer = DiffusionSFTTrainer(
        model=model,
        args=config(
            tmp_path, max_steps=2, learning_rate=1e-2, min_lr=1e-3, per_device_train_batch_size=2, max_length=16
        ),
        train_dataset=rows,
        processing_class=make_tiny_tokenizer(),
        peft_config=LoraConfig(r=2, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM"),
    )
    trainer.train()
    changed = {n for n, p in trainer.model.named_parameters() if "lora_B" in n and p.detach().abs().sum() > 0}
    assert len(changed) == 2 * model.config.num_hidden_layers
    merged = trainer.model.merge_and_unload()
    for name, param in merged.named_parameters():
        if name.endswith(("q_proj.weight", "v_proj.weight")):
            assert not torch.equal(param.detach(), before[name]), name
        else:
            assert torch.equal(param.detach(), before[name]), name


def test_system_turns_with_the_shipped_chat_template(tmp_path):
    """The demo model's own template: a conversation with a system turn trains as rendered, with one EOS."""
    from transformers import AutoTokenizer

    from illada.data import prepare_dataset

    tokenizer = AutoTokenizer.from_pretrained(
        str(Path(__file__).resolve().parents[1] / "illada-demo"), trust_remote_code=True
    )
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "What is 2 plus 3?"},
        {"role": "assistant", "content": "5"},
    ]
    rows = prepare_dataset(Dataset.from_list([{"messages": messages}]), tokenizer, 64, packing=False)
    rendered = tokenizer.apply_chat_template(messages, tokenize=False)
    assert "Be brief." in rendered
    expected = tokenizer(rendered, add_special_tokens=False).input_ids
    assert rows[0]["input_ids"] == expected and expected.count(tokenizer.eos_token_id) == 1
    answer = tokenizer("5", add_special_tokens=False).input_ids
    assert [t for t, f in zip(expected, rows[0]["completion_mask"]) if f][-len(answer) - 1 :] == answer + [
        tokenizer.eos_token_id
    ]
