"""bench/demo_stop_probe.py: the probe's canvas is the trained chat format, and its P(EOS) is the model's."""

import sys
from pathlib import Path

import pytest
import torch

from illada.demo.data import make_examples

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
import demo_stop_probe  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")

REPO = Path(__file__).resolve().parents[1]
SHIPPED = REPO / "illada-demo"


@pytest.mark.skipif(not (SHIPPED / "config.json").is_file(), reason="no shipped demo model")
def test_probe_reads_the_model_right_after_the_answer_of_the_rendered_conversation():
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(SHIPPED, trust_remote_code=True).eval()
    tokenizer = AutoTokenizer.from_pretrained(SHIPPED, trust_remote_code=True)
    examples = [e for e in make_examples("heldout", 60) if e.task == "count_up"][:3]
    rows = demo_stop_probe.stop_predictions(model, tokenizer, examples, masks=8)
    for example, row in zip(examples, rows):
        # independent canvas: the whole conversation as the chat template renders it for training (answer + EOS),
        # with the EOS and 7 more positions masked
        conversation = [{"role": "user", "content": example.prompt}, {"role": "assistant", "content": example.response}]
        ids = tokenizer.apply_chat_template(conversation, return_tensors="pt")["input_ids"][0].tolist()
        assert ids[-1] == tokenizer.eos_token_id
        canvas = torch.tensor(ids[:-1] + [tokenizer.mask_token_id] * 8)[None]
        with torch.no_grad():
            probs = torch.softmax(model(canvas).logits[0, len(ids) - 1].double(), -1)
        assert row["p_eos"] == pytest.approx(probs[tokenizer.eos_token_id].item(), abs=1e-5)
        assert row["eos"] == (int(probs.argmax()) == tokenizer.eos_token_id)
        assert row["length"] == len(example.response.split())


@pytest.mark.skipif(not (SHIPPED / "config.json").is_file(), reason="no shipped demo model")
@pytest.mark.parametrize("drop_last", [False, True])
def test_boundary_probe_is_two_streamed_training_conversations_with_one_mask_between(drop_last):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(SHIPPED, trust_remote_code=True).eval()
    tokenizer = AutoTokenizer.from_pretrained(SHIPPED, trust_remote_code=True)
    examples = [e for e in make_examples("heldout", 60) if e.task == "count_up"][:2]
    rows = demo_stop_probe.stop_predictions(model, tokenizer, examples, masks=4, boundary=True, drop_last=drop_last)
    for index, (example, row) in enumerate(zip(examples, rows)):
        # independent canvas: this conversation rendered for training (the answer, possibly one number short, and
        # its EOS), the EOS masked, then the next conversation's prompt as the template renders it, then 4 masks
        shown = " ".join(example.response.split()[:-1] if drop_last else example.response.split())
        first = tokenizer.apply_chat_template(
            [{"role": "user", "content": example.prompt}, {"role": "assistant", "content": shown}], return_dict=True
        )["input_ids"]
        following = examples[(index + 1) % len(examples)]
        second = tokenizer.apply_chat_template(
            [{"role": "user", "content": following.prompt}], add_generation_prompt=True, return_dict=True
        )["input_ids"]
        assert second[0] == tokenizer.bos_token_id and first[-1] == tokenizer.eos_token_id
        canvas = torch.tensor(first[:-1] + [tokenizer.mask_token_id] + second + [tokenizer.mask_token_id] * 4)[None]
        with torch.no_grad():
            probs = torch.softmax(model(canvas).logits[0, len(first) - 1].double(), -1)
        assert row["p_eos"] == pytest.approx(probs[tokenizer.eos_token_id].item(), abs=1e-5)
        assert row["eos"] == (int(probs.argmax()) == tokenizer.eos_token_id)
