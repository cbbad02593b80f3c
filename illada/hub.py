"""Sharing a trained iLLaDA on the Hub: the model card of a training run, and `trainer.push_to_hub()` (which
`--push_to_hub` calls) with an error that says what happened. What a push uploads: docs/hub.md.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

from huggingface_hub import ModelCardData
from transformers import TrainingArguments
from transformers.utils.hub import hf_api

from illada.modeling_illada import MODEL_CARD_TAGS
from illada.utils_illada import as_tag_list, is_one_line


class HubPushMixin:
    """[`Trainer`] mixin (`class MyTrainer(HubPushMixin, Trainer)`) for what `push_to_hub` uploads and says.

    - `create_model_card` writes `README.md` in `output_dir` with [`build_model_card`]: the tags (`custom_code`
      among them), the base model, how to load the model, and the trainer's `card_training()` paragraph and
      settings. `Trainer.push_to_hub` calls it before uploading `output_dir` (all but `_*` and `checkpoint-*`).
    - `push_to_hub` is Trainer's; an error it raises (the network, the server, a permission) keeps its type and
      gets a note naming the repo, the endpoint and the local folder, and saying what is left.
    """

    card_tags: ClassVar[tuple[str, ...]] = ()  # the training method's tags, after `MODEL_CARD_TAGS`

    def card_training(self) -> tuple[str, tuple[str, ...]]:
        """The model card's "Training" paragraph and the `args` fields its settings table lists."""
        raise NotImplementedError(f"{type(self).__name__} must say how it trains: define `card_training`.")

    def create_model_card(
        self, model_name: str | None = None, dataset_name: str | None = None, tags: str | list[str] | None = None
    ) -> None:
        """Writes `README.md` in `output_dir` (on the main process): see [`build_model_card`]."""
        if not self.is_world_process_zero():
            return
        training, settings = self.card_training()
        tags = [*self.card_tags, *as_tag_list("tags", tags)]
        card = build_model_card(self.model, self.args, training, settings, model_name, dataset_name, tags)
        Path(self.args.output_dir).mkdir(parents=True, exist_ok=True)
        (Path(self.args.output_dir) / "README.md").write_text(card, encoding="utf-8")

    def push_to_hub(self, *args: Any, **kwargs: Any) -> Any:
        try:
            return super().push_to_hub(*args, **kwargs)
        except Exception as error:
            error.add_note(self._push_failure_note())
            raise

    def _push_failure_note(self) -> str:
        folder = self.args.output_dir
        repo = getattr(self, "hub_model_id", None) or self.args.hub_model_id or Path(folder).absolute().name
        return (
            f"Pushing `{folder}` to the Hub repo `{repo}` at {hf_api().endpoint} failed. A commit is all or nothing: "
            f"the repo holds all of this push's files or none of them. The local folder is unchanged; push it again "
            f"with `trainer.push_to_hub()` or `hf upload {repo} {folder}`."
        )


def build_model_card(
    model: Any,
    args: TrainingArguments,
    training: str,
    settings: tuple[str, ...],
    model_name: str | None = None,
    dataset_name: str | None = None,
    tags: list[str] | None = None,
) -> str:
    """The README.md of a trained iLLaDA model: YAML metadata (tags, base model, library, pipeline), how to load and
    generate with `trust_remote_code=True`, how it was trained and the settings.

    Args:
        model: The trained model (or its PEFT wrapper: the card then describes an adapter).
        args (`TrainingArguments`): The training settings.
        training (`str`): The "Training" paragraph: the trainer and its objective.
        settings (`tuple[str, ...]`): The `args` fields listed in the settings table.
        model_name (`str`, *optional*): Title; defaults to the name of `hub_model_id`, else of `output_dir`.
        dataset_name (`str`, *optional*): Training dataset, listed in the metadata.
        tags (`list[str]`, *optional*): Extra tags (the training method's, e.g. `["trl", "sft"]`), after
            `MODEL_CARD_TAGS` (`custom_code` among them).
    """
    for name, value in (("model_name", model_name), ("dataset_name", dataset_name)):
        if value is not None and not is_one_line(value):
            raise TypeError(f"`{name}` must be a non-blank one-line string or None, got {value!r}.")
    tags = as_tag_list("tags", tags)
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    base_model = getattr(base.config, "_name_or_path", "") or getattr(base.config, "name_or_path", "")
    is_adapter = hasattr(model, "peft_config")
    all_tags = list(dict.fromkeys([*MODEL_CARD_TAGS, *(["lora", "peft"] if is_adapter else []), *(tags or [])]))
    name = model_name or Path(args.hub_model_id or args.output_dir).name
    metadata = ModelCardData(
        library_name="peft" if is_adapter else "transformers",
        pipeline_tag="text-generation",
        base_model=base_model if base_model and not Path(base_model).is_dir() else None,
        datasets=[dataset_name] if dataset_name else None,
        tags=all_tags,
    )
    load = (
        "from peft import AutoPeftModelForCausalLM\n"
        'model = AutoPeftModelForCausalLM.from_pretrained("REPO_OR_FOLDER", trust_remote_code=True)'
        if is_adapter
        else 'model = AutoModelForCausalLM.from_pretrained("REPO_OR_FOLDER", trust_remote_code=True)'
    )
    table = "\n".join(f"| `{key}` | {getattr(args, key)!r} |" for key in settings)
    body = f"""
# {name}

A fine-tune of {f"`{base_model}`" if base_model else "an iLLaDA model"}: iLLaDA is a masked *diffusion* language
model (bidirectional attention, generation by block-wise low-confidence remasking), so it is not an autoregressive
model and its code ships with the weights (`trust_remote_code=True`).

## How to load and generate

```python
from transformers import AutoModelForCausalLM, AutoTokenizer

tokenizer = AutoTokenizer.from_pretrained("REPO_OR_FOLDER", trust_remote_code=True)
{load}
messages = [{{"role": "user", "content": "What is 2 plus 3?"}}]
inputs = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt", return_dict=True)
output = model.generate(**inputs, max_new_tokens=64)  # diffusion sampling: block-wise low-confidence remasking
print(tokenizer.decode(output[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True))
```

## Training

{training}

| setting | value |
|---|---|
{table}
"""
    return f"---\n{metadata.to_yaml()}\n---\n{body}"
