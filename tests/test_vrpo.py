"""Tests of illada/vrpo.py / train_vrpo.py against independent computations: the ELBO estimate against float64
loops and the exact ELBO by enumeration of mask sets, the DPO losses against hand formulas, the antithetic
identity (policy == reference gives exactly log 2 and zero rewards for any masks), accumulation and resume
equivalence, LoRA, precomputed references, trl's data formats, the CLI and the errors.

The 2-process torchrun comparison is in `test_vrpo_ddp.py`; the gradient-variance figures in `bench/bench_vrpo.py`.
"""

import itertools
import json
import math
import sys
from pathlib import Path

import pytest
import torch
from datasets import Dataset
from tiny import make_model
from tiny_tokenizer import make_tiny_tokenizer
from transformers import AutoModelForCausalLM
from vrpo_helper import logged_losses, make_trainer, preference_rows

from illada import vrpo_cli as train_vrpo
from illada.scoring_illada import likelihood_scores
from illada.sft_cli import add_lora
from illada.utils import mask_seed
from illada.vrpo import (
    REFERENCE_COLUMNS,
    PreferenceCollator,
    VRPOConfig,
    VRPOTrainer,
    build_preference_dataset,
    draw_answer_masks,
    elbo_estimates,
    preference_losses,
    tokenize_preference,
)

pytestmark = pytest.mark.usefixtures("one_thread")
MASK_ID, PAD_ID, EOS_ID = 5, 1, 2
LOG_2 = torch.tensor(math.log(2), dtype=torch.float32).item()


def float64_model(seed: int = 4):
    return make_model(seed=seed, initializer_range=0.3).double()


def token_log_prob(model, ids: list[int], position: int, token: int) -> float:
    with torch.no_grad():
        return model(input_ids=torch.tensor([ids])).logits[0, position].double().log_softmax(-1)[token].item()


def exact_elbo(model, prompt: list[int], answer: list[int]) -> float:
    """Σ_l (1/L) mean over the l-subsets S of (L/l) Σ_{i ∈ S} log p(y_i | prompt, y with S masked), enumerated."""
    length, total = len(answer), 0.0
    for count in range(1, length + 1):
        subsets = list(itertools.combinations(range(length), count))
        for subset in subsets:
            ids = prompt + [MASK_ID if j in subset else token for j, token in enumerate(answer)]
            value = sum(token_log_prob(model, ids, len(prompt) + j, answer[j]) for j in subset)
            total += value * length / count / len(subsets) / length
    return total


def naive_estimate(model, prompt: list[int], answer: list[int], span: torch.Tensor, counts: torch.Tensor) -> float:
    """The Monte-Carlo estimate with the given masks, one unpadded sample at a time."""
    values = []
    for sample_span, count in zip(span, counts.tolist()):
        masked = [j for j in range(len(answer)) if sample_span[j]]
        ids = prompt + [MASK_ID if j in masked else token for j, token in enumerate(answer)]
        values.append(sum(token_log_prob(model, ids, len(prompt) + j, answer[j]) for j in masked) * len(answer) / count)
    return sum(values) / len(values)


def padded(pairs: list[tuple[list[int], list[int]]]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    width = max(len(p) + len(a) for p, a in pairs)
    ids = torch.tensor([p + a + [PAD_ID] * (width - len(p) - len(a)) for p, a in pairs])
    attention = torch.tensor([[1] * (len(p) + len(a)) + [0] * (width - len(p) - len(a)) for p, a in pairs])
    return ids, attention, torch.tensor([len(p) for p, _ in pairs]), torch.tensor([len(a) for _, a in pairs])


# ------------------------------------------------------------------------------------------------ ELBO estimate


def test_estimate_with_given_masks_equals_a_float64_loop_per_sample():
    model = float64_model()
    pairs = [([7, 8, 9], [11, 12, 13, 2]), ([20, 21], [30, 2])]  # different lengths: padding and offsets
    ids, attention, starts, lengths = padded(pairs)
    counts, span = draw_answer_masks(lengths, 5, [mask_seed(0, 0, i, 0) for i in range(2)])
    with torch.no_grad():
        estimates = elbo_estimates(model, ids, attention, starts, lengths, counts, span, MASK_ID)
    expected = [naive_estimate(model, p, a, span[r, :, : len(a)], counts[r]) for r, (p, a) in enumerate(pairs)]
    torch.testing.assert_close(estimates, torch.tensor(expected, dtype=torch.float64), rtol=1e-10, atol=1e-10)
    assert estimates.dtype == torch.float64


def test_masks_are_n_stratified_counts_with_one_uniform_mask_each():
    lengths = torch.tensor([4, 1, 3])
    counts, span = draw_answer_masks(lengths, 4, [11, 12, 13])
    assert sorted(counts[0].tolist()) == [1, 2, 3, 4]  # n = L: every count once
    assert counts[1].tolist() == [1, 1, 1, 1]
    assert (span.sum(-1) == counts).all()
    assert not span[1, :, 1:].any() and not span[2, :, 3:].any()  # never beyond the answer
    again = draw_answer_masks(lengths, 4, [11, 12, 13])
    assert all(torch.equal(a, b) for a, b in zip((counts, span), again))  # a seed fixes the masks


def test_estimate_is_unbiased_against_the_exact_elbo_by_enumeration():
    model = float64_model()
    prompt, answer = [7, 8, 9], [11, 12, 2]
    exact = exact_elbo(model, prompt, answer)
    draws = 300
    ids, attention, starts, lengths = padded([(prompt, answer)] * draws)
    counts, span = draw_answer_masks(lengths, 2, [mask_seed(1, 0, i, 0) for i in range(draws)])
    with torch.no_grad():
        estimates = elbo_estimates(model, ids, None, starts, lengths, counts, span, MASK_ID)
    standard_error = estimates.std().item() / math.sqrt(draws)
    assert standard_error > 1e-3  # the estimate does vary with the masks
    assert abs(estimates.mean().item() - exact) < 4 * standard_error


def test_one_token_answer_is_exact_and_matches_likelihood_scoring():
    model = float64_model()
    prompt, answer = [7, 8, 9, 10], [2]
    ids, attention, starts, lengths = padded([(prompt, answer)])
    counts, span = draw_answer_masks(lengths, 3, [5])
    with torch.no_grad():
        estimate = elbo_estimates(model, ids, None, starts, lengths, counts, span, MASK_ID).item()
    direct = token_log_prob(model, prompt + [MASK_ID], len(prompt), answer[0])
    scored = likelihood_scores(model, [prompt], [answer]).scores.item()
    assert estimate == pytest.approx(direct, abs=1e-12)
    assert scored == pytest.approx(direct, abs=1e-12)


# ------------------------------------------------------------------------------------------------ losses


def test_losses_follow_trl_formulas():
    policy_chosen, policy_rejected = torch.tensor([-3.0, -5.0]), torch.tensor([-4.0, -2.0])
    reference_chosen, reference_rejected = torch.tensor([-3.5, -4.0]), torch.tensor([-3.0, -2.5])
    lengths_chosen, lengths_rejected = torch.tensor([2, 4]), torch.tensor([3, 1])
    delta = [(-3.0 + 3.5) - (-4.0 + 3.0), (-5.0 + 4.0) - (-2.0 + 2.5)]  # 1.5, -1.5
    beta, smoothing = 0.5, 0.2

    def logsigmoid(x: float) -> float:
        return -math.log1p(math.exp(-x))

    expected = {
        "sigmoid": [-logsigmoid(beta * d) for d in delta],
        "hinge": [max(0.0, 1 - beta * d) for d in delta],
        "ipo": [((0.5 / 2 - (-1.0) / 3) - 1 / (2 * beta)) ** 2, ((-1.0 / 4 - 0.5 / 1) - 1 / (2 * beta)) ** 2],
        "robust": [
            (-(1 - smoothing) * logsigmoid(beta * d) + smoothing * logsigmoid(-beta * d)) / (1 - 2 * smoothing)
            for d in delta
        ],
    }
    for loss_type, values in expected.items():
        smoothing_of_type = smoothing if loss_type == "robust" else 0.0  # inert elsewhere: refused
        args = VRPOConfig("unused", beta=beta, loss_type=loss_type, label_smoothing=smoothing_of_type, use_cpu=True)
        losses, chosen_rewards, rejected_rewards = preference_losses(
            policy_chosen, policy_rejected, reference_chosen, reference_rejected, args, lengths_chosen, lengths_rejected
        )
        torch.testing.assert_close(losses, torch.tensor(values), rtol=1e-6, atol=1e-6)
        torch.testing.assert_close(chosen_rewards, torch.tensor([0.25, -0.5]))
        torch.testing.assert_close(rejected_rewards, torch.tensor([-0.5, 0.25]))
    mixed = VRPOConfig("unused", beta=beta, loss_type=["sigmoid", "hinge"], loss_weights=[1.0, 0.5], use_cpu=True)
    losses, *_ = preference_losses(
        policy_chosen, policy_rejected, reference_chosen, reference_rejected, mixed, lengths_chosen, lengths_rejected
    )
    torch.testing.assert_close(losses, torch.tensor(expected["sigmoid"]) + 0.5 * torch.tensor(expected["hinge"]))


@pytest.mark.parametrize("use_lora", [False, True])
def test_policy_equal_to_reference_gives_exactly_log_2_and_zero_rewards_for_any_masks(tmp_path, use_lora):
    model = add_lora(make_model(seed=1), r=4) if use_lora else None
    trainer = make_trainer(str(tmp_path), model=model)
    assert (trainer.ref_model is None) == use_lora  # under LoRA the reference is the adapter-disabled model
    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(6)])
    trainer.model.train()  # dropout is off: training mode computes the same function as the reference
    for step in (0, 1, 17):  # different masks at each step
        trainer.state.global_step = step
        loss, outputs = trainer.compute_loss(trainer.model, batch, return_outputs=True)
        assert loss.item() == LOG_2
        assert torch.equal(outputs["policy_logps"], outputs["reference_logps"])
    trainer.log({})
    rewards = {k: v for k, v in trainer.state.log_history[-1].items() if k.startswith("rewards/")}
    assert rewards == {
        "rewards/chosen": 0.0,
        "rewards/rejected": 0.0,
        "rewards/accuracies": 0.0,
        "rewards/margins": 0.0,
    }


def test_independent_masks_would_not_give_log_2(tmp_path):
    """The contrast to the test above: the reference on other masks makes the loss noisy, not log 2."""
    trainer = make_trainer(str(tmp_path))
    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(6)])
    rows = (batch["input_ids"], batch["attention_mask"], batch["prompt_lengths"], batch["answer_lengths"])
    seeds = [[mask_seed(3, 0, i, a) + shift for a in (0, 1) for i in batch["index"].tolist()] for shift in (0, 1)]
    with torch.no_grad():
        policy, reference = (
            elbo_estimates(trainer.model, *rows, *draw_answer_masks(rows[3], 4, s), MASK_ID) for s in seeds
        )
    losses, *_ = preference_losses(*policy.chunk(2), *reference.chunk(2), trainer.args, *rows[3].chunk(2))
    assert (losses - LOG_2).abs().min() > 1e-4


# ------------------------------------------------------------------------------------------------ training


def test_gradient_accumulation_equals_one_big_batch(tmp_path):
    runs = [make_trainer(str(tmp_path / f"{p}x{a}"), per_device=p, accumulation=a) for p, a in ((4, 1), (2, 2), (1, 4))]
    for trainer in runs:
        trainer.train()
    reference = runs[0].model.state_dict()
    for trainer in runs[1:]:
        assert logged_losses(trainer) == pytest.approx(logged_losses(runs[0]), rel=1e-5)
        for name, tensor in trainer.model.state_dict().items():
            torch.testing.assert_close(tensor, reference[name], rtol=1e-4, atol=1e-5)


def test_activation_checkpointing_trains_the_same(tmp_path):
    plain, checkpointed = (
        make_trainer(str(tmp_path / str(flag)), activation_checkpointing=flag) for flag in (False, True)
    )
    for trainer in (plain, checkpointed):
        trainer.train()
    assert logged_losses(checkpointed) == pytest.approx(logged_losses(plain), rel=1e-6)


def test_training_changes_every_parameter_and_logs_trl_metrics(tmp_path):
    trainer = make_trainer(str(tmp_path))
    before = {name: p.detach().clone() for name, p in trainer.model.named_parameters()}
    trainer.train()
    for name, parameter in trainer.model.named_parameters():
        assert not torch.equal(parameter, before[name]), name
    for name, parameter in trainer.ref_model.named_parameters():
        assert torch.equal(parameter, before[name]), name  # the frozen reference stays the initial model
    last = [entry for entry in trainer.state.log_history if "loss" in entry][-1]
    assert {
        "rewards/chosen",
        "rewards/rejected",
        "rewards/accuracies",
        "rewards/margins",
        "logps/chosen",
        "logps/rejected",
    } <= set(last)
    assert last["rewards/margins"] == pytest.approx(last["rewards/chosen"] - last["rewards/rejected"], abs=1e-6)


def test_resume_equals_uninterrupted(tmp_path):
    whole = make_trainer(str(tmp_path / "whole"), max_steps=4)
    whole.train()
    first = make_trainer(str(tmp_path / "split"), max_steps=4, save_strategy="steps", save_steps=2)
    first.train()
    resumed = make_trainer(str(tmp_path / "split"), max_steps=4)
    resumed.train(resume_from_checkpoint=str(tmp_path / "split" / "checkpoint-2"))
    assert logged_losses(resumed)[-2:] == pytest.approx(logged_losses(whole)[-2:], rel=1e-5)
    for name, tensor in resumed.model.state_dict().items():
        torch.testing.assert_close(tensor, whole.model.state_dict()[name], rtol=1e-5, atol=1e-6)


def test_lora_changes_only_the_adapters(tmp_path):
    model = add_lora(make_model(seed=1), r=4)
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    trainer = make_trainer(str(tmp_path), model=model)
    trainer.train()
    for name, parameter in model.named_parameters():
        assert torch.equal(parameter, before[name]) != ("lora_" in name), name


def test_precomputed_reference_equals_the_initial_model_on_step_zero_masks(tmp_path):
    trainer = make_trainer(str(tmp_path), precompute_ref_log_probs=True)
    assert trainer.ref_model is None and set(REFERENCE_COLUMNS) <= set(trainer.train_dataset.column_names)
    initial = make_model(seed=1)
    batch = PreferenceCollator(PAD_ID)([trainer.train_dataset[i] for i in range(5)])
    rows = (batch["input_ids"], batch["attention_mask"], batch["prompt_lengths"], batch["answer_lengths"])
    seeds = [mask_seed(3, 0, i, a) for a in (0, 1) for i in batch["index"].tolist()]
    with torch.no_grad():
        expected = elbo_estimates(initial, *rows, *draw_answer_masks(rows[3], 4, seeds), MASK_ID)
    torch.testing.assert_close(torch.cat([batch[n] for n in REFERENCE_COLUMNS]).float(), expected)
    trainer.state.global_step = 9  # masks stay those of the precomputation: still exactly antithetic
    assert trainer.compute_loss(trainer.model, batch).item() == LOG_2
    trainer.train()
    assert logged_losses(trainer)[0] == LOG_2 and logged_losses(trainer)[1] != LOG_2


# ------------------------------------------------------------------------------------------------ data


def test_conversational_plain_and_implicit_prompts_tokenise_with_one_eos():
    tokenizer = make_tiny_tokenizer(chat_template=True)
    user, good, bad = "count 3 4", "cat", "dog red"
    explicit = {
        "prompt": [{"role": "user", "content": user}],
        "chosen": [{"role": "assistant", "content": good}],
        "rejected": [{"role": "assistant", "content": bad}],
    }
    implicit = Dataset.from_list([{name: explicit["prompt"] + explicit[name] for name in ("chosen", "rejected")}])
    built = build_preference_dataset(implicit, tokenizer, 64, MASK_ID)[0]
    ids = tokenize_preference(explicit, tokenizer)
    assert [built[k] for k in ids] == list(ids.values())
    words = tokenizer.convert_tokens_to_ids
    assert ids["prompt_ids"] == words(["<s>", "<|user|>", "count", "3", "4", "<|assistant|>"])
    assert ids["chosen_ids"] == words(["cat"]) + [EOS_ID]
    assert ids["rejected_ids"] == words(["dog", "red"]) + [EOS_ID]
    plain = tokenize_preference({"prompt": user, "chosen": " cat </s> </s>", "rejected": " dog red"}, tokenizer)
    assert plain == {
        "prompt_ids": words(["count", "3", "4"]),
        "chosen_ids": words(["cat"]) + [EOS_ID],
        "rejected_ids": words(["dog", "red"]) + [EOS_ID],
    }


def test_masks_depend_on_the_example_not_on_its_place_in_the_batch(tmp_path):
    trainer = make_trainer(str(tmp_path))
    rows = [trainer.train_dataset[i] for i in range(4)]
    together = trainer._draw_masks(trainer.data_collator(rows))
    alone = trainer._draw_masks(trainer.data_collator(rows[2:3]))
    for big, small in zip(together, alone):  # row 2 (chosen) and row 6 (rejected) of the batch of four
        assert torch.equal(big[[2, 6], ..., : small.shape[-1]], small)


# ------------------------------------------------------------------------------------------------ CLI and errors


def test_cli_trains_saves_a_loadable_folder_and_resumes(tmp_path):
    folder = tmp_path / "model"
    make_model(seed=1).save_pretrained(folder)
    make_tiny_tokenizer(chat_template=True).save_pretrained(folder)
    data = tmp_path / "prefs.jsonl"
    data.write_text("".join(json.dumps(row) + "\n" for row in preference_rows(8, conversational=False)))
    common = [
        "--model_name_or_path",
        str(folder),
        "--train_files",
        str(data),
        "--output_dir",
        str(tmp_path / "out"),
        "--use_cpu",
        "--report_to",
        "none",
        "--per_device_train_batch_size",
        "4",
        "--num_mc_samples",
        "2",
        "--learning_rate",
        "1e-3",
        "--save_steps",
        "2",
        "--disable_tqdm",
        "true",
    ]
    train_vrpo.main(common + ["--max_steps", "2"])
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path / "out", trust_remote_code=True)
    assert type(loaded).__name__ == "ILLaDAForCausalLM"
    # A marker in the checkpoint's state survives into the final state only if training resumed from it.
    checkpoint_state = tmp_path / "out" / "checkpoint-2" / "trainer_state.json"
    state = json.loads(checkpoint_state.read_text())
    checkpoint_state.write_text(json.dumps({**state, "log_history": [{"marker": 1, "step": 0}]}))
    train_vrpo.main(common + ["--max_steps", "3", "--resume"])
    state = json.loads((tmp_path / "out" / "trainer_state.json").read_text())
    assert state["global_step"] == 3 and state["log_history"][0] == {"marker": 1, "step": 0}
    lora = common[:5] + [str(tmp_path / "lora")] + common[6:] + ["--max_steps", "1", "--use_lora", "--merge_lora"]
    train_vrpo.main(lora)
    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "lora", trust_remote_code=True)
    assert not any("lora" in name for name in merged.state_dict())


def test_cli_reads_a_saved_datasets_folder(tmp_path):
    rows = preference_rows(4)
    rows.save_to_disk(tmp_path / "saved")
    arguments = train_vrpo.PreferenceDataArguments(dataset_name=str(tmp_path / "saved"))
    train, evaluation = train_vrpo.load_preferences(arguments)
    assert train.to_list() == rows.to_list() and evaluation is None


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(loss_type="dpo"), "`loss_type` must be one of"),
        (dict(beta=0.0), r"`beta` must be in \(0"),
        (dict(num_mc_samples=0), "`num_mc_samples` must be a positive integer"),
        (dict(label_smoothing=0.5), "`label_smoothing` must be in"),
        (dict(loss_type=["sigmoid", "ipo"], loss_weights=[1.0]), "`loss_weights` has 1 values for 2"),
        (dict(max_length=0), "`max_length` must be a positive integer"),
    ],
)
def test_config_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        VRPOConfig("unused", use_cpu=True, **kwargs)


def test_trainer_and_data_errors(tmp_path):
    tokenizer, model = make_tiny_tokenizer(chat_template=True), make_model()
    with pytest.raises(TypeError, match="`args` must be a `VRPOConfig`"):
        VRPOTrainer(model, args=object(), processing_class=tokenizer)
    with pytest.raises(ValueError, match="`max_length`=999 exceeds the model's `max_position_embeddings`=256"):
        VRPOTrainer(model, args=VRPOConfig(str(tmp_path), use_cpu=True, max_length=999), processing_class=tokenizer)
    with pytest.raises(ValueError, match="`processing_class`"):
        VRPOTrainer(model, args=VRPOConfig(str(tmp_path), use_cpu=True))
    with pytest.raises(ValueError, match=r"no `rejected` column"):
        build_preference_dataset(Dataset.from_list([{"prompt": "a", "chosen": "b"}]), tokenizer, 64, MASK_ID)
    with pytest.raises(ValueError, match="over `max_length`=4"):
        build_preference_dataset(preference_rows(2), tokenizer, 4, MASK_ID)
    with pytest.raises(ValueError, match="holds the mask token"):
        build_preference_dataset(
            Dataset.from_list([{"prompt": "a", "chosen": " <[MASK]>", "rejected": " b"}]), tokenizer, 64, MASK_ID
        )
    with pytest.raises(ValueError, match="exactly one of `train_files` and `dataset_name`"):
        train_vrpo.PreferenceDataArguments()


def test_antithetic_masks_lower_the_loss_and_gradient_variance_near_the_reference(tmp_path):
    """A policy a few small steps from the reference (the regime of DPO's small learning rates): sharing the
    masks makes the loss almost noise-free and lowers the gradient's variance (β = 5, where the sigmoid's weight
    varies most). Figures for the demo model: `bench/bench_vrpo.py` (bench/RESULTS.md)."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
    from bench_vrpo import variances

    trainer = make_trainer(str(tmp_path), max_steps=3, learning_rate=1e-4)
    trainer.train()
    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(6)])
    result = variances(trainer.model, trainer.ref_model, batch, beta=5.0, draws=12, samples=4)
    (loss_antithetic, gradient_antithetic), (loss_independent, gradient_independent) = result.values()
    assert loss_antithetic * 10 < loss_independent
    assert gradient_antithetic < gradient_independent


# ------------------------------------------------------------------------------------------------ issue 25


def test_a_non_finite_loss_stops_training_before_the_weights_change(tmp_path):
    """A NaN in the model used to turn every parameter into NaN while the logged loss read 0.0."""
    model = make_model(seed=1)
    with torch.no_grad():
        model.model.layers[0].mlp.up_proj.weight[0, 0] = float("nan")
    trainer = make_trainer(str(tmp_path / "out"), model=model, precompute_ref_log_probs=False)
    before = {name: tensor.clone() for name, tensor in model.state_dict().items()}
    with pytest.raises(ValueError, match=r"The VRPO loss is not finite .* ELBO estimates"):
        trainer.train()
    for name, tensor in model.state_dict().items():
        torch.testing.assert_close(tensor, before[name], rtol=0, atol=0, equal_nan=True, msg=name)


@pytest.mark.parametrize(
    "override, field",
    [
        (dict(vocab_size=120), "vocab_size"),
        (dict(hidden_size=64), "hidden_size"),
        (dict(mask_token_id=4), "mask_token_id"),
    ],
)
def test_a_reference_of_another_vocabulary_width_or_mask_is_refused(tmp_path, override, field):
    with pytest.raises(ValueError, match=rf"`ref_model` has {field}="):
        VRPOTrainer(
            make_model(seed=1),
            ref_model=make_model(seed=2, **override),
            args=VRPOConfig(str(tmp_path), use_cpu=True, report_to="none"),
            train_dataset=preference_rows(4),
            processing_class=make_tiny_tokenizer(chat_template=True),
        )


def test_a_copy_of_a_zero3_partitioned_model_is_not_taken_as_the_reference(tmp_path):
    """Under DeepSpeed ZeRO-3 with `zero3_init_flag`, `from_pretrained` partitions every weight as it loads (each
    process keeps a slice, the parameter carries DeepSpeed's `ds_id`); a deep copy of such a model is no model (its
    first forward fails deep in DeepSpeed). The trainer refuses to make that copy and names what to pass; the CLI
    loads the reference like the model instead (tests/test_training_sharded.py runs it under zero3.yaml). Setting
    `ds_id` stands for the partitioning here: a real one needs DeepSpeed's distributed launch."""
    tokenizer = make_tiny_tokenizer(chat_template=True)
    make_model(seed=1).save_pretrained(tmp_path / "init")
    model = make_model(seed=1)
    for parameter in model.parameters():
        parameter.ds_id = 0
    args = VRPOConfig(str(tmp_path / "out"), use_cpu=True, report_to="none")
    with pytest.raises(
        ValueError, match=r"partitioned by DeepSpeed ZeRO-3 .*, so a copy of it cannot be the reference"
    ):
        VRPOTrainer(model, args=args, train_dataset=preference_rows(4), processing_class=tokenizer)
    # The CLI's reference: loaded from the checkpoint for a partitioned model; none (the trainer copies) otherwise.
    model_args = train_vrpo.ModelArguments(model_name_or_path=str(tmp_path / "init"))
    reference = train_vrpo.load_partitioned_reference(model, model_args, model.config, args)
    for name, tensor in reference.state_dict().items():
        assert torch.equal(tensor, make_model(seed=1).state_dict()[name]), name
    assert train_vrpo.load_partitioned_reference(make_model(seed=1), model_args, model.config, args) is None
    with pytest.raises(ValueError, match="the reference is loaded from `--model_name_or_path`"):
        train_vrpo.load_partitioned_reference(model, train_vrpo.ModelArguments(config_name="c"), model.config, args)


def test_the_python_api_checks_the_tokenizer_as_the_cli_does(tmp_path):
    tokenizer = make_tiny_tokenizer(chat_template=True)
    with pytest.raises(ValueError, match=r"mask token has id 5, the config's `mask_token_id` is 7"):
        VRPOTrainer(
            make_model(seed=1, mask_token_id=7),
            args=VRPOConfig(str(tmp_path), use_cpu=True, report_to="none"),
            train_dataset=preference_rows(4),
            processing_class=tokenizer,
        )


@pytest.mark.parametrize(
    "settings, message",
    [
        (dict(loss_weights=[float("nan")]), r"`loss_weights\[0\]` must be a finite number"),
        (dict(loss_weights=[0.0]), "`loss_weights` .* are all 0"),
        (dict(beta=1e30), r"`beta` must be in \(0, 1000.0\]"),
        (dict(label_smoothing=0.1), "`label_smoothing`=0.1 has no effect without the `robust` loss type"),
        (dict(loss_type=[]), "`loss_type` must name one or more"),
    ],
)
def test_config_refuses_values_that_train_nothing(settings, message):
    with pytest.raises(ValueError, match=message):
        VRPOConfig("unused", use_cpu=True, **settings)


def test_cli_data_errors_name_the_file_line_or_split(tmp_path):
    rows = [
        {"prompt": "count 1", "chosen": " 2", "rejected": " 3"},
        {"prompt": "count 2", "chosen": None, "rejected": " 4"},
    ]
    path = tmp_path / "prefs.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    with pytest.raises(TypeError, match=r"prefs\.jsonl line 2: `chosen` must be a string or a list of"):
        train_vrpo.load_files([str(path)])
    Dataset.from_list(rows[:1]).save_to_disk(str(tmp_path / "saved"))
    args = train_vrpo.PreferenceDataArguments(dataset_name=str(tmp_path / "saved"), dataset_test_split="test")
    with pytest.raises(ValueError, match=r"`dataset_test_split`='test' is not a split of .*saved: it has \['train'\]"):
        train_vrpo.load_preferences(args)
