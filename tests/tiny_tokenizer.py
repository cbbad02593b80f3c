"""A tiny word-level tokenizer built in-process (no download) with iLLaDA's special ids: bos 0, pad 1, eos 2, mask 5.

Words and punctuation are split by the `Whitespace` pre-tokenizer (`\\w+|[^\\w\\s]+`). The vocabulary holds
the special tokens, the chat-turn markers, 28 words and punctuation marks and the numbers 0-49: 85 tokens, so
it fits the shared tiny model (`vocab_size=97`). `make_tiny_tokenizer(chat_template=True)` adds a chat template
that closes every assistant turn with one EOS, like the demo model's.

Example:

```python
>>> tokenizer = make_tiny_tokenizer()
>>> tokenizer("user: count 3 4").input_ids
[6, 8, 28, 37, 38]
```
"""

from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

# Ordered so that the ids match iLLaDA's: bos 0, pad 1, eos 2, mask 5; ids 3 and 4 are the chat-turn markers.
SPECIAL_TOKENS = ("<s>", "<pad>", "</s>", "<|user|>", "<|assistant|>", "<[MASK]>")
NUMBERS = tuple(str(n) for n in range(50))
WORDS = (
    "user",
    "assistant",
    ":",
    "the",
    "a",
    "cat",
    "dog",
    "sat",
    "ran",
    "on",
    "mat",
    "to",
    "red",
    "blue",
    "big",
    "small",
    "what",
    "is",
    "plus",
    "equals",
    "yes",
    "no",
    "count",
    "reverse",
    "copy",
    "hello",
    "world",
    ".",
)
UNKNOWN_TOKEN = "<unk>"

CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{% if message['role'] == 'user' %}{{ '<|user|> ' + message['content'] + ' ' }}"
    "{% else %}{{ '<|assistant|> ' + message['content'] + eos_token }}{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|> ' }}{% endif %}"
)


def make_tiny_tokenizer(chat_template: bool = False) -> PreTrainedTokenizerFast:
    """Builds the tokenizer; with `chat_template=True` it also renders `messages` with `CHAT_TEMPLATE`."""
    tokens = (*SPECIAL_TOKENS, *WORDS, *NUMBERS, UNKNOWN_TOKEN)
    backend = Tokenizer(models.WordLevel({token: i for i, token in enumerate(tokens)}, unk_token=UNKNOWN_TOKEN))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token="<s>",
        pad_token="<pad>",
        eos_token="</s>",
        unk_token=UNKNOWN_TOKEN,
        mask_token="<[MASK]>",
        additional_special_tokens=["<|user|>", "<|assistant|>"],
    )
    if chat_template:
        tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer
