"""A word-level tokenizer built in-process (no download) with iLLaDA's special ids: bos 0, pad 1, eos 2, mask 5.

Words are split on whitespace and decoded joined by single spaces (the `tokenizers` default), so that text round-trips exactly for the
toy evaluation task (`eval_tasks/illada_toy`), whose vocabulary it covers.
"""

import sys
from pathlib import Path

from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

SPECIAL_TOKENS = ("<s>", "<pad>", "</s>", "<unk>", "<reserved>", "<mask>")  # ids 0..5

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "eval_tasks" / "illada_toy"))
from toy_data import VOCABULARY  # noqa: E402


def make_word_tokenizer(words=VOCABULARY) -> PreTrainedTokenizerFast:
    vocab = {token: i for i, token in enumerate(SPECIAL_TOKENS)}
    for word in words:
        vocab.setdefault(word, len(vocab))
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(
        tokenizer_object=backend, bos_token="<s>", pad_token="<pad>", eos_token="</s>", unk_token="<unk>",
        mask_token="<mask>",
    )
