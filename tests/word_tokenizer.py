"""A word-level tokenizer built in-process (no download) with iLLaDA's special ids: bos 0, pad 1, eos 2, mask 5.

Words are split on whitespace and decoded joined by single spaces (the `tokenizers` default), so that text round-trips
exactly for the small word problems of `VOCABULARY` ("Tom has 3 apples and gets 4 more . How many apples does Tom have
now ?"), used by the scoring and lm-eval tests.
"""

from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

SPECIAL_TOKENS = ("<s>", "<pad>", "</s>", "<unk>", "<reserved>", "<mask>")  # ids 0..5

TEMPLATE = "{name} has {a} {fruit} and gets {b} more . How many {fruit} does {name} have now ?"
# Every word of such a problem: names, fruits, and numbers up to 22 (answers and their near misses).
VOCABULARY = sorted(
    set(TEMPLATE.format(name="x", a=0, b=0, fruit="x").split()) - {"x", "0"}
    | {"Tom", "Ann", "Sam", "Mia"}
    | {"apples", "pears", "plums"}
    | {str(n) for n in range(23)}
)


def make_word_tokenizer(words=VOCABULARY) -> PreTrainedTokenizerFast:
    vocab = {token: i for i, token in enumerate(SPECIAL_TOKENS)}
    for word in words:
        vocab.setdefault(word, len(vocab))
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token="<s>",
        pad_token="<pad>",
        eos_token="</s>",
        unk_token="<unk>",
        mask_token="<mask>",
    )
