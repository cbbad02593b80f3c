"""transformers' text-generation pipeline for iLLaDA, keeping empty prompts in their batch.

`ILLaDAConfig.custom_pipelines` names it (through `generation_illada`), so
`pipeline("text-generation", model=path, trust_remote_code=True)` builds it; docs/generation.md.
"""

import torch
from transformers import TextGenerationPipeline


class ILLaDATextGenerationPipeline(TextGenerationPipeline):
    """transformers' text-generation pipeline, keeping empty prompts in their batch. `config.json` names it under
    `custom_pipelines`, so `pipeline("text-generation", model=path, trust_remote_code=True)` builds it (a model
    passed as an object gets it with `pipeline_class=ILLaDATextGenerationPipeline`).

    transformers' own (5.23) replaces a batch of empty prompts by one `generate` call without `input_ids`, giving
    one answer for the whole batch, and cannot left-pad an empty prompt beside others. Here an empty prompt becomes
    one padding column with attention mask 0, which `generate` decodes as the empty prompt alone.
    """

    def preprocess(self, prompt_text, *args, **kwargs):
        inputs = super().preprocess(prompt_text, *args, **kwargs)
        if inputs["input_ids"].shape[-1] == 0:
            pad = self.tokenizer.pad_token_id
            pad = self.model.generation_config.pad_token_id if pad is None else pad
            inputs["input_ids"] = torch.full((1, 1), pad, dtype=torch.long)
            inputs["attention_mask"] = torch.zeros((1, 1), dtype=torch.long)
        return inputs


__all__ = ["ILLaDATextGenerationPipeline"]
