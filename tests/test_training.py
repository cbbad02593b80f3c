"""Tests of the diffusion trainer (illada/trainer.py), its data layer (illada/data.py) and the train_sft.py script:
the masked-diffusion loss against float64 loops, accumulation and resume equivalence, the SFT / pre-training data
pipelines, LoRA, the learning rate schedules, a real learning check and the errors.

The 2-process torchrun comparison is in `test_training_ddp.py`; trl's formats, the exact-ELBO check and the guards
against next-token trainers in `test_trl.py`; the command line on every data source in `test_train_cli.py`.
"""

import copy
import json
import math

import pytest
import torch
from datasets import Dataset
from ddp_train_helper import WINDOW, logged_losses, make_trainer, train
from safetensors.torch import load_file
from tiny import make_config, make_model
from tiny_tokenizer import make_tiny_tokenizer
from transformers import AutoModelForCausalLM, TrainerCallback
from transformers.trainer_utils import get_last_checkpoint

from illada import data as data_illada
from illada import sft_cli as train_sft
from illada.data import check_tokenizer, prepare_dataset
from illada.sft_cli import DataArguments, ModelArguments, add_lora
from illada.trainer import (
    DiffusionDataCollator,
    DiffusionSFTConfig,
    DiffusionSFTTrainer,
    diffusion_lr_lambda,
    masked_diffusion_loss,
    sample_mask,
)
from illada.utils import mask_seed

MASK_ID, PAD_ID, EOS_ID = 5, 1, 2


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py: tiny matmuls are 20x slower on two busy threads


def trainer_args(tmp_path, **overrides) -> DiffusionSFTConfig:
    settings = dict(use_cpu=True, report_to="none", save_strategy="no", disable_tqdm=True, logging_steps=1)
    return DiffusionSFTConfig(str(tmp_path / "out"), **{**settings, **overrides})


def make_diffusion_trainer(tmp_path, model, rows, **overrides) -> DiffusionSFTTrainer:
    return DiffusionSFTTrainer(
        model=model,
        args=trainer_args(tmp_path, **overrides),
        train_dataset=rows,
        processing_class=make_tiny_tokenizer(),
    )


def packed_rows(examples: list[dict], length: int = WINDOW, tokenizer=None):
    """Whole examples packed best-fit (trl's "bfd") into rows of at most `length` tokens."""
    return prepare_dataset(
        Dataset.from_list(examples), tokenizer or make_tiny_tokenizer(), max_length=length, packing_strategy="bfd"
    )


def segments(rows) -> list[tuple[list[int], list[int]]]:
    """The (ids, completion flags) of every packed example, cut at the rows' `seq_lengths`."""
    pieces = []
    for ids, flags, lengths in zip(rows["input_ids"], rows["completion_mask"], rows["seq_lengths"]):
        assert sum(lengths) == len(ids)
        starts = [sum(lengths[:k]) for k in range(len(lengths) + 1)]
        pieces += [(ids[a:b], flags[a:b]) for a, b in zip(starts, starts[1:])]
    return pieces


def pair_examples(n: int, offset: int = 0) -> list[dict]:
    """Prompt/response pairs of varying lengths over the tiny tokenizer's words."""
    return [
        {
            "prompt": " ".join(["count", *(str((i + k) % 50) for k in range(1 + i % 4))]),
            "response": " ".join(["cat", "sat"][: 1 + i % 2] + [str(i % 50)] * (i % 3)),
        }
        for i in range(offset, offset + n)
    ]


def as_messages(example: dict) -> dict:
    return {
        "messages": [
            {"role": "user", "content": example["prompt"]},
            {"role": "assistant", "content": example["response"]},
        ]
    }


def reference_loss(model, input_ids, position_ids, maskable, masked, t, noisy_ids) -> float:
    """sum over masked (b, i) of -log softmax(logits[b, i])[x0] / t_b, divided by the maskable count: explicit
    float64 loops over the full logits of a float64 copy of the model."""
    model64 = copy.deepcopy(model).double().eval()
    with torch.no_grad():
        logits = model64(input_ids=noisy_ids, position_ids=position_ids).logits  # [B, L, V] float64
    total = 0.0
    for b in range(input_ids.shape[0]):
        for i in range(input_ids.shape[1]):
            if masked[b, i]:
                row = logits[b, i].tolist()
                top = max(row)
                log_normaliser = top + math.log(sum(math.exp(x - top) for x in row))
                total += (log_normaliser - row[int(input_ids[b, i])]) / float(t[b])
    return total / int(maskable.sum())


def padded_batch(completion_only_loss: bool = False) -> dict:
    rows = packed_rows(pair_examples(12))
    return DiffusionDataCollator(PAD_ID, completion_only_loss)([rows[i] for i in range(len(rows))])


# ---------------------------------------------------------------------------------------------------------------
# The objective
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("completion_only_loss", [False, True])
def test_loss_equals_float64_formula(tmp_path, completion_only_loss):
    model = make_model(seed=2)
    batch = padded_batch(completion_only_loss)
    assert (batch["input_ids"] == PAD_ID).any(), "the batch should contain padding"
    assert (~batch["maskable"] & (batch["input_ids"] != PAD_ID)).any() == completion_only_loss
    trainer = make_diffusion_trainer(
        tmp_path, model, packed_rows(pair_examples(12)), completion_only_loss=completion_only_loss
    )
    loss, out = trainer.compute_loss(model, dict(batch), return_outputs=True)

    ids, maskable, masked = batch["input_ids"], batch["maskable"], out.masked
    assert masked.any() and not (masked & ~maskable).any()  # only maskable tokens are masked
    assert torch.equal(out.noisy_input_ids, torch.where(masked, MASK_ID, ids))
    assert ((out.t >= 1e-3) & (out.t <= 1)).all()
    assert out.logits.shape == (int(masked.sum()), model.config.vocab_size)
    expected = reference_loss(model, ids, batch["position_ids"], maskable, masked, out.t, out.noisy_input_ids)
    assert loss.item() == pytest.approx(expected, rel=1e-5)


def test_unmasked_tokens_contribute_nothing(tmp_path):
    """The LM head sees only masked positions, and the loss has no gradient through the final hidden state of an
    unmasked token (masked tokens have one)."""
    model = make_model(seed=2)
    batch = padded_batch()
    captured = {}
    model.model.norm.register_forward_hook(lambda module, args, output: captured.update(hidden=output))
    model.model.norm.register_forward_hook(lambda module, args, output: output.retain_grad())
    head_rows = []
    model.lm_head.register_forward_hook(lambda module, args, output: head_rows.append(args[0].shape[0]))
    trainer = make_diffusion_trainer(tmp_path, model, packed_rows(pair_examples(12)))
    loss, out = trainer.compute_loss(model, dict(batch), return_outputs=True)
    loss.backward()
    grad_norm = captured["hidden"].grad.norm(dim=-1)  # [B, L]
    assert head_rows == [int(out.masked.sum())]
    assert (grad_norm[~out.masked] == 0).all()
    assert (grad_norm[out.masked] > 0).all()


def test_one_over_t_weighting_makes_the_loss_unbiased():
    """With uniform logits every token costs log V, and E[sum_masked log V / t] / N = log V exactly when the
    weight is 1/t (without it the mean would be log V / 2). Monte Carlo over 3000 rows x 40 tokens."""
    vocab, rows, length, eps = 11, 3000, 40, 1e-3
    ids = torch.randint(6, vocab, (rows, length), generator=torch.Generator().manual_seed(0))
    maskable = torch.ones(rows, length, dtype=torch.bool)
    _, masked, t = sample_mask(ids, maskable, MASK_ID, eps, torch.Generator().manual_seed(1))
    per_token_t = t[:, None].expand_as(masked)[masked]
    per_row = torch.stack(
        [
            masked_diffusion_loss(
                torch.zeros(int(m.sum()), vocab), ids[r][m], per_token_t.new_full((int(m.sum()),), t[r]), length
            )
            for r, m in enumerate(masked[:200])
        ]
    )
    assert torch.allclose(per_row, masked[:200].sum(1) * math.log(vocab) / t[:200] / length)
    loss = masked_diffusion_loss(torch.zeros(int(masked.sum()), vocab), ids[masked], per_token_t, masked.numel())
    # Var of (#masked / t) / L given t is (1 - t) / (t L); E over t ~ U[eps, 1] of 1/t is log(1/eps) / (1 - eps).
    std = math.log(vocab) * math.sqrt(math.log(1 / eps) / (1 - eps) / length / rows)
    assert abs(loss.item() - math.log(vocab)) < 5 * std


def test_sample_mask_rates_strata_and_rows():
    rows, length = 64, 4000
    ids = torch.full((rows, length), 7)
    maskable = torch.rand(rows, length, generator=torch.Generator().manual_seed(0)) < 0.5
    noisy, masked, t = sample_mask(ids, maskable, MASK_ID, 0.1, torch.Generator().manual_seed(2))
    assert not (masked & ~maskable).any() and torch.equal(noisy == MASK_ID, masked)
    assert ((t >= 0.1) & (t <= 1)).all()
    rate = masked.sum(1) / maskable.sum(1)  # each row's masking rate estimates its t
    assert (rate - t).abs().max() < 5 * math.sqrt(0.25 / (0.5 * length))

    _, _, t_strat = sample_mask(ids, maskable, MASK_ID, 0.0 + 1e-9, torch.Generator().manual_seed(3), stratified=True)
    strata = torch.floor(t_strat * rows).long().sort().values
    assert torch.equal(strata, torch.arange(rows))  # exactly one t per 1/rows-wide stratum

    # A slice of the global batch draws exactly the rows the whole batch would give it.
    _, masked_all, t_all = sample_mask(ids, maskable, MASK_ID, 0.1, torch.Generator().manual_seed(4), True)
    _, masked_part, t_part = sample_mask(
        ids[8:24], maskable[8:24], MASK_ID, 0.1, torch.Generator().manual_seed(4), True, row_offset=8, num_rows=rows
    )
    assert torch.equal(masked_part, masked_all[8:24]) and torch.equal(t_part, t_all[8:24])


def test_lr_schedules_follow_the_paper():
    lr_lambda = {
        decay: [
            diffusion_lr_lambda(s, warmup_steps=10, total_steps=200, decay_fraction=0.1, min_lr_ratio=0.1, decay=decay)
            for s in range(201)
        ]
        for decay in ("linear", "cosine")
    }
    for values in lr_lambda.values():
        assert values[:10] == pytest.approx([(s + 1) / 10 for s in range(10)])  # linear warmup, no step at 0
        assert values[10:181] == pytest.approx([1.0] * 171)  # constant until the last 10% (20 steps)
        assert values[200] == pytest.approx(0.1)  # floor
    # Hand-derived: at step 180 + k of the 20 decay steps, linear = 1 - 0.9 k / 20 and
    # cosine = 0.1 + 0.45 (1 + cos(pi k / 20)).
    assert lr_lambda["linear"][190] == pytest.approx(1 - 0.9 * 10 / 20)
    assert lr_lambda["cosine"][185] == pytest.approx(0.1 + 0.45 * (1 + math.cos(math.pi * 5 / 20)))


def test_trainer_uses_the_sft_schedule(tmp_path):
    trainer = train(str(tmp_path), 2, 1, max_steps=10, warmup_steps=2, learning_rate=1e-2, min_lr=1e-3)
    logged = [entry["learning_rate"] for entry in trainer.state.log_history if "learning_rate" in entry]
    expected = [
        1e-2
        * diffusion_lr_lambda(s, warmup_steps=2, total_steps=10, decay_fraction=0.1, min_lr_ratio=0.1, decay="linear")
        for s in range(10)
    ]
    assert logged == pytest.approx(expected)
    assert logged[:2] == pytest.approx([5e-3, 1e-2]) and logged[-1] == pytest.approx(1e-2)  # 10% of 10 = 1 step


# ---------------------------------------------------------------------------------------------------------------
# Equivalences: accumulation, resume, checkpointing
# ---------------------------------------------------------------------------------------------------------------


class GradientRecorder(TrainerCallback):
    """Keeps a copy of every gradient just before each optimizer step."""

    def __init__(self):
        self.steps = []

    def on_pre_optimizer_step(self, args, state, control, model=None, **kwargs):
        self.steps.append({n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None})


def test_gradient_accumulation_equals_one_big_batch(tmp_path):
    """2 micro-batches of 2 with accumulation 2 give the gradients of one batch of 4 (same masks). Rows hold
    different numbers of response tokens, so a per-micro-batch normalisation would fail this."""
    recorders = {}
    for per_device, accumulation in [(4, 1), (2, 2)]:
        recorders[per_device] = GradientRecorder()
        train(str(tmp_path / f"{per_device}"), per_device, accumulation, max_steps=2, callbacks=[recorders[per_device]])
    big, accumulated = recorders[4].steps, recorders[2].steps
    assert len(big) == len(accumulated) == 2
    for step_big, step_acc in zip(big, accumulated):
        assert step_big.keys() == step_acc.keys() and len(step_big) == len(list(make_model().parameters()))
        for name in step_big:
            torch.testing.assert_close(step_acc[name], step_big[name], rtol=1e-4, atol=1e-6)


class StopAt(TrainerCallback):
    def __init__(self, step: int):
        self.step = step

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == self.step:
            control.should_training_stop = True


def test_resume_equals_uninterrupted(tmp_path):
    uninterrupted = train(str(tmp_path / "full"), 2, 2, max_steps=6)
    stopped = train(
        str(tmp_path / "resumed"), 2, 2, max_steps=6, save_strategy="steps", save_steps=3, callbacks=[StopAt(3)]
    )
    assert stopped.state.global_step == 3
    checkpoint = get_last_checkpoint(str(tmp_path / "resumed"))
    assert checkpoint.endswith("checkpoint-3")
    resumed = make_trainer(str(tmp_path / "resumed"), 2, 2, max_steps=6, model=make_model(seed=7))
    resumed.train(resume_from_checkpoint=checkpoint)
    assert resumed.state.global_step == 6
    assert logged_losses(resumed)[-3:] == pytest.approx(logged_losses(uninterrupted)[-3:], rel=1e-5)
    expected = uninterrupted.model.state_dict()
    for name, tensor in resumed.model.state_dict().items():
        torch.testing.assert_close(tensor, expected[name], rtol=1e-5, atol=1e-6)


def test_one_step_changes_every_parameter_and_checkpointing_keeps_gradients(tmp_path):
    plain, checkpointed = GradientRecorder(), GradientRecorder()
    before = {n: p.detach().clone() for n, p in make_model(seed=1).named_parameters()}
    trainer = train(str(tmp_path / "a"), 4, 1, max_steps=1, callbacks=[plain])
    train(str(tmp_path / "b"), 4, 1, max_steps=1, callbacks=[checkpointed], activation_checkpointing=True)
    for name, param in trainer.model.named_parameters():
        assert not torch.equal(param.detach(), before[name]), f"{name} did not change"
        torch.testing.assert_close(checkpointed.steps[0][name], plain.steps[0][name], rtol=1e-5, atol=1e-7)


# ---------------------------------------------------------------------------------------------------------------
# LoRA and saving
# ---------------------------------------------------------------------------------------------------------------


def test_lora_changes_only_adapters_and_merges_exactly(tmp_path):
    base = make_model(seed=1)
    frozen_before = {n: p.detach().clone() for n, p in base.named_parameters()}
    model = add_lora(base, r=4, alpha=8)
    lora_before = {n: p.detach().clone() for n, p in model.named_parameters() if "lora_" in n}
    assert {n.split(".")[-4] for n in lora_before} == {
        "q_proj",
        "k_proj",
        "v_proj",
        "o_proj",
        "gate_proj",
        "up_proj",
        "down_proj",
    }
    # With activation checkpointing: lora_B starts at 0 and only a gradient through the checkpointed layers moves it.
    trainer = train(str(tmp_path), 4, 1, max_steps=3, model=model, learning_rate=1e-2, activation_checkpointing=True)

    for name, param in model.named_parameters():
        if "lora_" in name:
            assert not torch.equal(param.detach(), lora_before[name]), f"adapter {name} did not change"
        else:
            base_name = name.replace("base_model.model.", "").replace(".base_layer", "")
            assert torch.equal(param.detach(), frozen_before[base_name]), f"frozen {name} changed"

    batch = padded_batch()
    model.eval()
    with torch.no_grad():
        adapter_logits = model(input_ids=batch["input_ids"], position_ids=batch["position_ids"]).logits
    train_sft.save_trained_model(trainer, merge_lora=True)
    merged = trainer.model
    assert not any("lora_" in n for n, _ in merged.named_parameters())
    with torch.no_grad():
        merged_logits = merged(input_ids=batch["input_ids"], position_ids=batch["position_ids"]).logits
        reloaded = AutoModelForCausalLM.from_pretrained(str(tmp_path), trust_remote_code=True).eval()
        reloaded_logits = reloaded(input_ids=batch["input_ids"], position_ids=batch["position_ids"]).logits
    torch.testing.assert_close(merged_logits, adapter_logits, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(reloaded_logits, adapter_logits, rtol=1e-5, atol=1e-5)
    assert (tmp_path / "tokenizer.json").is_file() and (tmp_path / "modeling_illada.py").is_file()


def test_main_trains_and_saves_a_loadable_folder_and_resumes(tmp_path):
    """The command line end to end: a fresh model from a config folder, chat-templated JSONL data, checkpoints,
    `--resume`, a saved folder that AutoModelForCausalLM loads with trust_remote_code, and its model card."""
    make_config().save_pretrained(tmp_path / "init")
    make_tiny_tokenizer(chat_template=True).save_pretrained(tmp_path / "init")
    data = tmp_path / "train.jsonl"
    data.write_text("".join(json.dumps(as_messages(e)) + "\n" for e in pair_examples(40)))
    evaluation = tmp_path / "eval.jsonl"
    evaluation.write_text("".join(json.dumps(as_messages(e)) + "\n" for e in pair_examples(8, offset=40)))
    out = tmp_path / "out"
    argv = [
        "--config_name",
        str(tmp_path / "init"),
        "--train_files",
        str(data),
        "--output_dir",
        str(out),
        "--max_seq_length",
        "32",
        "--per_device_train_batch_size",
        "4",
        "--use_cpu",
        "--report_to",
        "none",
        "--save_steps",
        "2",
        "--save_total_limit",
        "1",
        "--learning_rate",
        "1e-3",
        "--min_lr",
        "1e-4",
        "--disable_tqdm",
        "true",
        "--logging_steps",
        "1",
        "--eval_files",
        str(evaluation),
    ]
    train_sft.main([*argv, "--max_steps", "2"])
    first = json.loads((out / "trainer_state.json").read_text())["log_history"]
    train_sft.main([*argv, "--max_steps", "4", "--resume"])
    state = json.loads((out / "trainer_state.json").read_text())
    assert state["global_step"] == 4
    assert [entry["step"] for entry in state["log_history"] if "loss" in entry] == [1, 2, 3, 4]
    assert state["log_history"][:2] == first[:2]  # steps 1-2 came from the checkpoint, not a new run
    assert [p.name for p in out.glob("checkpoint-*")] == ["checkpoint-4"]  # save_total_limit
    for name in ("config.json", "model.safetensors", "modeling_illada.py", "configuration_illada.py", "tokenizer.json"):
        assert (out / name).is_file(), name
    weights = load_file(out / "model.safetensors")
    loaded = AutoModelForCausalLM.from_pretrained(str(out), trust_remote_code=True)
    for name, tensor in loaded.state_dict().items():
        if name in weights:
            assert torch.equal(tensor, weights[name]), name
    assert type(loaded).__name__ == "ILLaDAForCausalLM"
    assert math.isfinite(json.loads((out / "eval_results.json").read_text())["eval_loss"])
    card = (out / "README.md").read_text()
    for tag in (
        "- illada",
        "- diffusion",
        "- custom_code",
        "trust_remote_code=True",
        "| `max_length` | 32 |",
        "| `learning_rate` | 0.001 |",
    ):
        assert tag in card, tag


def test_arguments_parse_from_a_json_file(tmp_path):
    path = tmp_path / "args.json"
    path.write_text(
        json.dumps(
            {
                "config_name": "cfg",
                "train_files": ["a.jsonl"],
                "output_dir": str(tmp_path),
                "completion_only_loss": True,
                "use_cpu": True,
                "lr_schedule": "pretrain",
            }
        )
    )
    model_args, data_args, args = train_sft.parse_arguments([str(path)])
    assert (model_args.config_name, data_args.train_files, args.completion_only_loss, args.lr_schedule) == (
        "cfg",
        ["a.jsonl"],
        True,
        "pretrain",
    )
    assert args.weight_decay == 0.1 and args.label_names == ["maskable"] and args.bf16 is False


def test_config_defaults_are_the_papers_not_trls(tmp_path):
    """trl's SFTConfig turns on activation checkpointing and bf16, uses lr 2e-5, windows of 1024, no packing and
    (for prompt-completion data) completion-only loss: the diffusion config keeps the paper's recipe."""
    args = DiffusionSFTConfig(str(tmp_path), use_cpu=True)
    assert (args.learning_rate, args.weight_decay) == (5e-6, 0.1)
    assert (args.activation_checkpointing, args.bf16) == (False, False)
    assert (args.packing, args.packing_strategy, args.completion_only_loss, args.max_length) == (
        True,
        "wrapped",
        False,
        None,
    )
    assert (args.lr_schedule, args.data_format, args.split_probability) == ("sft", "sft", 0.3)


# ---------------------------------------------------------------------------------------------------------------
# Data
# ---------------------------------------------------------------------------------------------------------------


def plain_example_ids(tokenizer, example: dict) -> tuple[list[int], list[int]]:
    """The documented plain format, written out: 'user: {prompt}\\n' + 'assistant: ', then the response, then EOS."""
    prompt = tokenizer(f"user: {example['prompt']}\nassistant: ", add_special_tokens=False).input_ids
    response = tokenizer(example["response"], add_special_tokens=False).input_ids
    return prompt, response + [tokenizer.eos_token_id]


@pytest.mark.parametrize("chunk", [1000, 7])
def test_sft_stream_windows_reassemble_to_the_examples(monkeypatch, chunk):
    """trl's "wrapped" packing (the default): one stream of `prompt + response + EOS` cut into full windows."""
    monkeypatch.setattr(data_illada, "STREAM_CHUNK_EXAMPLES", chunk)
    tokenizer, examples, length = make_tiny_tokenizer(), pair_examples(30), 11
    rows = prepare_dataset(Dataset.from_list(examples), tokenizer, max_length=length)
    expected_ids, expected_flags = [], []
    for example in examples:
        prompt, response = plain_example_ids(tokenizer, example)
        assert response.count(EOS_ID) == 1 and response[-1] == EOS_ID
        expected_ids += prompt + response
        expected_flags += [0] * len(prompt) + [1] * len(response)
    stream = [token for row in rows["input_ids"] for token in row]
    assert stream == expected_ids  # nothing lost, duplicated or reordered
    assert [f for row in rows["completion_mask"] for f in row] == expected_flags
    assert stream.count(EOS_ID) == len(examples)
    # Every window is full except the last of each chunk of examples, and SFT windows are never split.
    full = [len(row) == length for row in rows["input_ids"]]
    assert sum(not f for f in full) <= math.ceil(len(examples) / chunk)
    assert rows["seq_lengths"] == [[len(row)] for row in rows["input_ids"]]


def test_sft_chat_template_gets_exactly_one_eos():
    tokenizer = make_tiny_tokenizer(chat_template=True)
    examples = [as_messages(e) for e in pair_examples(6)]
    pieces = segments(packed_rows(examples, tokenizer=tokenizer))
    assert len(pieces) == len(examples)
    expected = []
    for example in examples:
        # The template closes the turn with its own EOS: it must not be doubled.
        rendered = tokenizer.apply_chat_template(example["messages"], tokenize=False)
        ids = tokenizer(rendered, add_special_tokens=False).input_ids
        response = tokenizer(example["messages"][-1]["content"], add_special_tokens=False).input_ids
        assert ids.count(EOS_ID) == 1 and ids[-1] == EOS_ID
        expected.append((ids, [0] * (len(ids) - len(response) - 1) + [1] * (len(response) + 1)))
    assert sorted(pieces) == sorted(expected)  # best-fit packing reorders whole examples


def test_sft_packing_keeps_examples_whole():
    tokenizer, examples, length = make_tiny_tokenizer(), pair_examples(25), 16
    rows = packed_rows(examples, length)
    assert all(len(ids) <= length for ids in rows["input_ids"])
    expected = [sum(plain_example_ids(tokenizer, e), []) for e in examples]
    assert sorted(ids for ids, _ in segments(rows)) == sorted(expected)
    # Position ids restart at every example (document-separated attention).
    batch = DiffusionDataCollator(PAD_ID)([rows[i] for i in range(len(rows))])
    for row, lengths in enumerate(rows["seq_lengths"]):
        positions = [p for n in lengths for p in range(n)]
        assert batch["position_ids"][row, : len(positions)].tolist() == positions
    # Best fit opens a row only for an example that fits in no open row: no two rows fit in one.
    lengths = [len(ids) for ids in rows["input_ids"]]
    assert all(lengths[r] + lengths[s] > length for r in range(len(lengths)) for s in range(r + 1, len(lengths)))


def test_pretrain_splits_windows_at_the_requested_rate():
    tokenizer, length, p = make_tiny_tokenizer(), 9, 0.3
    docs = [" ".join(str((7 * i + k) % 50) for k in range(3 + i % 11)) for i in range(3000)]
    rows = prepare_dataset(
        Dataset.from_dict({"text": docs}),
        tokenizer,
        max_length=length,
        data_format="pretrain",
        split_probability=p,
        seed=5,
    )
    stream = [t for row in rows["input_ids"] for t in row]
    assert stream == [t for d in docs for t in tokenizer(d, add_special_tokens=False).input_ids + [EOS_ID]]
    splits, points = 0, []
    for ids, lengths in zip(rows["input_ids"], rows["seq_lengths"]):
        assert sum(lengths) == len(ids) and len(lengths) <= 2
        if len(lengths) == 2:
            splits += 1
            points.append(lengths[0])
            assert 1 <= lengths[0] <= len(ids) - 1
    n = len(rows)
    assert abs(splits / n - p) < 4 * math.sqrt(p * (1 - p) / n)  # binomial, 4 sigma
    assert set(points) == set(range(1, length))  # every split point occurs
    none = prepare_dataset(
        Dataset.from_dict({"text": docs[:200]}),
        tokenizer,
        max_length=length,
        data_format="pretrain",
        split_probability=0.0,
    )
    assert all(len(lengths) == 1 for lengths in none["seq_lengths"])


def test_collator_pads_as_a_separate_unmaskable_segment():
    features = [
        {"input_ids": [7, 8, 9], "seq_lengths": [2, 1], "completion_mask": [0, 1, 1]},
        {"input_ids": [10, 11, 12, 13, 14], "seq_lengths": [5], "completion_mask": [1] * 5},
    ]
    batch = DiffusionDataCollator(PAD_ID)(features)
    assert batch["input_ids"].tolist() == [[7, 8, 9, PAD_ID, PAD_ID], [10, 11, 12, 13, 14]]
    assert batch["position_ids"].tolist() == [[0, 1, 0, 0, 1], [0, 1, 2, 3, 4]]
    assert batch["maskable"].tolist() == [[True] * 3 + [False] * 2, [True] * 5]
    response = DiffusionDataCollator(PAD_ID, completion_only_loss=True, pad_to_multiple_of=4)(features)
    assert response["input_ids"].shape == (2, 8)
    assert response["maskable"].tolist() == [[False, True, True] + [False] * 5, [True] * 5 + [False] * 3]
    assert response["position_ids"][1].tolist() == [0, 1, 2, 3, 4, 0, 1, 2]


@pytest.mark.parametrize("suffix", [".jsonl", ".parquet", ".txt"])
def test_load_data_files_reads_local_files(tmp_path, suffix):
    texts = ["the cat sat", "a dog ran"]
    path = tmp_path / f"data{suffix}"
    if suffix == ".jsonl":
        path.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
    elif suffix == ".parquet":
        Dataset.from_dict({"text": texts}).to_parquet(str(path))
    else:
        path.write_text("\n".join(texts) + "\n")
    assert data_illada.load_data_files([str(path)])["text"] == texts


# ---------------------------------------------------------------------------------------------------------------
# Learning
# ---------------------------------------------------------------------------------------------------------------


def counting_rows(num_docs: int = 400, length: int = 13) -> Dataset:
    """Runs of 12 consecutive numbers mod 50 from random starts: any masked number follows from a visible one."""
    starts = torch.randint(0, 50, (num_docs,), generator=torch.Generator().manual_seed(0)).tolist()
    docs = [" ".join(str((s + k) % 50) for k in range(length - 1)) for s in starts]
    return prepare_dataset(
        Dataset.from_dict({"text": docs}),
        make_tiny_tokenizer(),
        max_length=length,
        data_format="pretrain",
        split_probability=0.0,
    )


def fixed_mask_loss(model, batch) -> float:
    """The diffusion loss with masks from a fixed seed: comparable before and after training."""
    generator = torch.Generator().manual_seed(9)
    noisy, masked, t = sample_mask(batch["input_ids"], batch["maskable"], MASK_ID, 1e-3, generator)
    with torch.no_grad():
        logits = model.eval()(input_ids=noisy, position_ids=batch["position_ids"], logits_to_keep=masked).logits
    t_tokens = t[:, None].expand_as(masked)[masked]
    return masked_diffusion_loss(logits, batch["input_ids"][masked], t_tokens, batch["maskable"].sum()).item()


def learning_check(tmp_path, steps: int, hidden: int) -> tuple[float, float]:
    rows = counting_rows()
    held_out = DiffusionDataCollator(PAD_ID)([rows[i] for i in range(64)])
    model = make_model(seed=0, hidden_size=hidden, intermediate_size=2 * hidden)
    before = fixed_mask_loss(model, held_out)
    trainer = make_diffusion_trainer(
        tmp_path,
        model,
        rows,
        max_steps=steps,
        per_device_train_batch_size=16,
        learning_rate=3e-3,
        min_lr=3e-4,
        warmup_steps=10,
        weight_decay=0.0,
        logging_steps=50,
        data_format="pretrain",
    )
    trainer.train()
    return before, fixed_mask_loss(model, held_out)


def test_tiny_model_learns_counting(tmp_path):
    """400 steps of 16 rows (about 4 s on one CPU thread): the fixed-mask loss falls to well under half its start
    (measured: 4.67 -> 1.38)."""
    before, after = learning_check(tmp_path, steps=400, hidden=64)
    assert after < 0.5 * before, (before, after)


# ---------------------------------------------------------------------------------------------------------------
# Errors
# ---------------------------------------------------------------------------------------------------------------


def test_tokenizer_errors():
    tokenizer = make_tiny_tokenizer()
    check_tokenizer(tokenizer, make_config())
    with pytest.raises(ValueError, match="no token with the config's `mask_token_id` 96"):
        check_tokenizer(tokenizer, make_config(mask_token_id=96))
    with pytest.raises(ValueError, match="mask token has id 5, the config's `mask_token_id` is 4"):
        check_tokenizer(tokenizer, make_config(mask_token_id=4))
    with pytest.raises(ValueError, match="more than the model's `vocab_size` 80"):
        check_tokenizer(tokenizer, make_config(vocab_size=80))
    with pytest.raises(ValueError, match="`eos_token_id` 2 is not among"):
        check_tokenizer(tokenizer, make_config(eos_token_id=3))


@pytest.mark.parametrize(
    "data_format,columns,match",
    [
        (
            "sft",
            {"question": ["a"], "answer": ["b"]},
            r"`messages` column, `prompt` and `completion` columns, or a `text` column; example 0 of the train "
            r"dataset has \['answer', 'question'\]",
        ),
        ("pretrain", {"content": ["a"]}, r"`text` column; example 0 of the train dataset has \['content'\]"),
    ],
)
def test_dataset_column_errors(data_format, columns, match):
    with pytest.raises(ValueError, match=match):
        prepare_dataset(Dataset.from_dict(columns), make_tiny_tokenizer(), 16, data_format=data_format)


def test_empty_dataset_and_missing_response_errors():
    tokenizer = make_tiny_tokenizer()
    with pytest.raises(ValueError, match="The train dataset is empty"):
        prepare_dataset(Dataset.from_dict({"text": []}), tokenizer, 16, data_format="pretrain")
    with pytest.raises(ValueError, match="Example 1: `response` is empty"):
        prepare_dataset(
            Dataset.from_list([{"prompt": "a", "response": "b"}, {"prompt": "a", "response": ""}]), tokenizer, 16
        )
    user_last = [{"messages": [{"role": "user", "content": "a"}]}]
    with pytest.raises(ValueError, match="Example 0 has no response"):
        prepare_dataset(Dataset.from_list(user_last), tokenizer, 16)
    with pytest.raises(ValueError, match="longer than `max_length`=4"):
        packed_rows(pair_examples(3), 4)
    with pytest.raises(TypeError, match="must be a `datasets.Dataset`"):
        prepare_dataset({"text": ["a"]}, tokenizer, 16)


def test_max_seq_length_above_the_model_limit_fails_before_loading(tmp_path, monkeypatch):
    make_config().save_pretrained(tmp_path)  # max_position_embeddings = 256
    make_tiny_tokenizer().save_pretrained(tmp_path)
    monkeypatch.setattr(train_sft, "load_model", lambda *a: pytest.fail("weights loaded before the check"))
    with pytest.raises(
        ValueError,
        match=r"`max_length` \(`--max_seq_length`\)=512 exceeds the model's "
        "`max_position_embeddings`=256",
    ):
        train_sft.main(
            [
                "--config_name",
                str(tmp_path),
                "--train_files",
                "x.jsonl",
                "--max_seq_length",
                "512",
                "--output_dir",
                str(tmp_path / "out"),
                "--use_cpu",
                "--report_to",
                "none",
            ]
        )


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(diffusion_eps=0.0), r"`diffusion_eps` must be in \(0, 1\), got 0.0"),
        (dict(packing_strategy="greedy"), r"`packing_strategy` must be one of \['wrapped', 'bfd', 'bfd_split'\]"),
        (dict(lr_schedule="linear"), r"`lr_schedule` must be one of"),
        (dict(learning_rate=1e-5, min_lr=1e-4), r"`min_lr`=0.0001 is above `learning_rate`=1e-05"),
        (dict(decay_fraction=1.5), r"`decay_fraction` must be in \[0, 1\]"),
        (dict(split_probability=1.5), r"`split_probability` must be in \[0, 1\], got 1.5"),
        (dict(data_format="chat"), r"`data_format` must be one of \['sft', 'pretrain'\]"),
        (dict(max_length=1), "`max_length` must be an integer >= 2 or None, got 1"),
        (
            dict(completion_only_loss=True, data_format="pretrain"),
            "`completion_only_loss=True` needs `data_format='sft'`",
        ),
        (dict(padding_free=True), "`padding_free=True` is not supported by the diffusion trainer"),
        (dict(assistant_only_loss=True), "use `completion_only_loss=True`"),
        (dict(loss_type="dft"), "`loss_type`='dft' is a next-token loss option"),
    ],
)
def test_training_argument_errors(tmp_path, kwargs, match):
    with pytest.raises(ValueError, match=match):
        trainer_args(tmp_path, **kwargs)


@pytest.mark.parametrize(
    "cls,kwargs,match",
    [
        (ModelArguments, dict(), "exactly one of `model_name_or_path`"),
        (ModelArguments, dict(model_name_or_path="a", config_name="b"), "exactly one of `model_name_or_path`"),
        (ModelArguments, dict(config_name="b", merge_lora=True), "`merge_lora=True` needs `use_lora=True`"),
        (ModelArguments, dict(config_name="b", use_lora=True, lora_r=0), "`lora_r` must be a positive integer, got 0"),
        (ModelArguments, dict(config_name="b", dtype="fp8"), r"`dtype` must be one of"),
        (DataArguments, dict(train_files=["a"], dataset_name="b"), "Give one of `train_files` and `dataset_name`"),
        (DataArguments, dict(train_files=["a"], eval_split="test"), "`eval_split` selects a split of `dataset_name`"),
    ],
)
def test_model_and_data_argument_errors(cls, kwargs, match):
    with pytest.raises(ValueError, match=match):
        cls(**kwargs)


def test_combination_file_collator_and_batch_errors(tmp_path):
    with pytest.raises(ValueError, match="No training data: pass `--train_files`"):
        train_sft.check_arguments(ModelArguments(config_name="c"), DataArguments(), trainer_args(tmp_path))
    with pytest.raises(ValueError, match="Data files not found"):
        data_illada.load_data_files([str(tmp_path / "missing.jsonl")])
    (tmp_path / "data.xml").write_text("<a/>")
    with pytest.raises(ValueError, match="Data files must all be one of"):
        data_illada.load_data_files([str(tmp_path / "data.xml")])
    with pytest.raises(ValueError, match="needs a `completion_mask` in every row"):
        DiffusionDataCollator(PAD_ID, completion_only_loss=True)([{"input_ids": [7, 8]}])
    model = make_model()
    trainer = make_diffusion_trainer(tmp_path, model, packed_rows(pair_examples(4)))
    with pytest.raises(ValueError, match="no `maskable` tensor"):
        trainer.compute_loss(model, {"input_ids": torch.tensor([[7, 8]])})
    with pytest.raises(ValueError, match="do not fit in `num_rows`=4"):
        sample_mask(
            torch.ones(2, 3, dtype=torch.long), torch.ones(2, 3, dtype=torch.bool), MASK_ID, row_offset=3, num_rows=4
        )


def test_mask_seeds_depend_on_the_run_seed_and_the_step():
    """torch's CPU generator keeps only the low 32 bits of a seed: the (seed, step) key is hashed, not packed as
    `seed * 2**32 + step` (which made every run seed draw the same masks)."""
    seeds = {mask_seed(seed, step) for seed in range(4) for step in range(100)}
    assert len(seeds) == 400 and all(0 <= s < 2**32 for s in seeds)
    draws = [torch.rand(8, generator=torch.Generator().manual_seed(mask_seed(seed, 0))) for seed in (5, 6)]
    assert not torch.equal(*draws)
