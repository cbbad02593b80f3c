"""A small byte-level BPE tokenizer for the iLLaDA demo model, trained in seconds with `tokenizers`.

The special tokens sit where iLLaDA's vocabulary has them (`<bos>` 0, `<pad>` 1, `<eos>` 2, `<[MASK]>` 5), so
every algorithm of the package runs on the demo model with the ids it reads from the config. Ids 3 and 4
hold the chat-turn markers. Every digit is a token of its own (with the space before it, if any), which keeps
arithmetic positional; every text between special tokens gets a leading space, so that a word is one and the same
token wherever it stands (tokenised alone as an answer, or inside the question). Bytes make every string
encodable, so the tokenizer needs no unknown token. Decoded text therefore starts with a space: strip it.

Example:

```python
>>> from illada.demo.data import tokenizer_texts
>>> from illada.demo.tokenizer import train_tokenizer
>>> tokenizer = train_tokenizer(tokenizer_texts())
>>> tokenizer.mask_token_id, tokenizer.convert_ids_to_tokens(tokenizer("12 + 7").input_ids)
(5, ['Ġ1', '2', 'Ġ+', 'Ġ7'])
```
"""

from collections.abc import Iterable

from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

# Ordered so that the ids match iLLaDA's: bos 0, pad 1, eos 2, mask 5 (the model card of the released checkpoints).
BOS_TOKEN, PAD_TOKEN, EOS_TOKEN, MASK_TOKEN = "<bos>", "<pad>", "<eos>", "<[MASK]>"
USER_TOKEN, ASSISTANT_TOKEN = "<|user|>", "<|assistant|>"
SPECIAL_TOKENS = (BOS_TOKEN, PAD_TOKEN, EOS_TOKEN, USER_TOKEN, ASSISTANT_TOKEN, MASK_TOKEN)
DEFAULT_VOCAB_SIZE = 2048
# Batched diffusion generation needs left padding (every answer starts in the same column), as decoder-only
# generation does.
PADDING_SIDE = "left"
# Byte-level BPE starts from the 256 byte symbols; the vocabulary must hold them and the special tokens.
_MIN_VOCAB_SIZE = 256 + len(SPECIAL_TOKENS)
# A pair must occur this often to become a merge: single occurrences only waste vocabulary on noise.
_MIN_MERGE_FREQUENCY = 2

# A digit and the space before it form one piece, so `"1 3 5"` is three tokens and a number's digits stay apart.
_DIGIT_PIECE = Regex(r" ?\d")

# One EOS closes every assistant turn: SFT trains on `prompt + response + EOS`, and generation stops there. Each
# turn's text directly follows its marker: the tokenizer puts a space before every text between special tokens, so
# a word is the same token at the start of an answer as inside the question (`dog` in "Copy: dog" -> `Ġdog`).
# A `system` turn (which the demo model never saw in training) is its text on a line of its own, without a marker,
# so that user and assistant turns render exactly as in training.
CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{% if message['role'] == 'system' %}{{ message['content'] + '\n' }}"
    "{% elif message['role'] == 'user' %}{{ '<|user|>' + message['content'] + '\n' }}"
    "{% elif message['role'] == 'assistant' %}{{ '<|assistant|>' + message['content'] + eos_token }}"
    "{% else %}{{ raise_exception('Only `system`, `user` and `assistant` roles are supported, got ' + "
    "message['role']) }}"
    "{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>' }}{% endif %}"
)


def _check_vocab_size(vocab_size: int) -> None:
    if not isinstance(vocab_size, int) or isinstance(vocab_size, bool) or vocab_size < _MIN_VOCAB_SIZE:
        raise ValueError(
            f"`vocab_size` must be an integer >= {_MIN_VOCAB_SIZE} (256 bytes + {len(SPECIAL_TOKENS)} special "
            f"tokens), got {vocab_size!r}."
        )


def _bpe_tokenizer() -> Tokenizer:
    tokenizer = Tokenizer(models.BPE())
    # Every text between special tokens starts with a space (as a word inside a sentence does): the first word of
    # an answer, tokenised on its own, is then the same token as that word in the question.
    tokenizer.normalizer = normalizers.Prepend(" ")
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Split(_DIGIT_PIECE, behavior="isolated"), pre_tokenizers.ByteLevel(add_prefix_space=False)]
    )
    tokenizer.decoder = decoders.ByteLevel()
    return tokenizer


def train_tokenizer(
    texts: Iterable[str], vocab_size: int = DEFAULT_VOCAB_SIZE, model_max_length: int | None = None
) -> PreTrainedTokenizerFast:
    """Trains the demo tokenizer on `texts` and wraps it for `transformers`.

    Training is deterministic for the same texts and `tokenizers` version.

    Args:
        texts (`Iterable[str]`): Training documents, e.g. `pretraining_texts()` plus rendered SFT chats.
        vocab_size (`int`, *optional*, defaults to `DEFAULT_VOCAB_SIZE`): Total vocabulary size, special
            tokens included; the result may be smaller when the texts have too few frequent pairs.
        model_max_length (`int`, *optional*): Passed to `wrap_tokenizer`.

    Returns:
        `PreTrainedTokenizerFast`: With `bos`/`pad`/`eos`/`mask` tokens at ids 0/1/2/5, `CHAT_TEMPLATE` and left
        padding.
        No special token is added by plain `tokenizer(text)` calls: the chat template adds `<bos>`.
    """
    _check_vocab_size(vocab_size)
    tokenizer = _bpe_tokenizer()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=_MIN_MERGE_FREQUENCY,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(texts, trainer=trainer)
    return wrap_tokenizer(tokenizer, model_max_length)


def wrap_tokenizer(tokenizer: Tokenizer, model_max_length: int | None = None) -> PreTrainedTokenizerFast:
    """Wraps a trained `tokenizers.Tokenizer` with the demo's special tokens and chat template.

    Args:
        tokenizer (`tokenizers.Tokenizer`): A tokenizer whose ids 0-5 are `SPECIAL_TOKENS`.
        model_max_length (`int`, *optional*): Longest input the model takes (its `max_position_embeddings`).

    Raises:
        ValueError: If the special tokens are not at ids 0-5 in the order of `SPECIAL_TOKENS`.
    """
    for expected_id, token in enumerate(SPECIAL_TOKENS):
        if tokenizer.token_to_id(token) != expected_id:
            raise ValueError(
                f"`tokenizer` has {token!r} at id {tokenizer.token_to_id(token)}, expected {expected_id}: the "
                f"special tokens must be the first ids, in the order {SPECIAL_TOKENS}."
            )
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        bos_token=BOS_TOKEN,
        pad_token=PAD_TOKEN,
        eos_token=EOS_TOKEN,
        mask_token=MASK_TOKEN,
        additional_special_tokens=[USER_TOKEN, ASSISTANT_TOKEN],
        chat_template=CHAT_TEMPLATE,
        padding_side=PADDING_SIDE,
        **({} if model_max_length is None else {"model_max_length": model_max_length}),
    )


__all__ = [
    "BOS_TOKEN",
    "PAD_TOKEN",
    "EOS_TOKEN",
    "MASK_TOKEN",
    "USER_TOKEN",
    "ASSISTANT_TOKEN",
    "SPECIAL_TOKENS",
    "DEFAULT_VOCAB_SIZE",
    "PADDING_SIDE",
    "CHAT_TEMPLATE",
    "train_tokenizer",
    "wrap_tokenizer",
]
