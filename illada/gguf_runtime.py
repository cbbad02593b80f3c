"""iLLaDA's sampler on llama.cpp's forward pass: a GGUF file (from `python -m illada.gguf_export`) answers through
`model.generate` without PyTorch weights.

[`GGUFDenoiser`] loads the file with llama.cpp (its shared library, through llama-cpp-python's ctypes bindings)
and exposes what the sampler calls: `model(input_ids=..., attention_mask=..., position_ids=...,
logits_to_keep=...).logits`, a config read from the file's metadata, and the `generate` of the PyTorch model
(`ILLaDAGenerationMixin`), so every generation setting except the key-value cache works as there.

llama.cpp is not a dependency: `bench/build_llama_cpp.sh` builds the library and `llama-diffusion-cli` from the
pinned llama-cpp-python sdist into `$ILLADA_LLAMA_CPP_DIR` (default `~/.cache/illada/llama.cpp`), whose
bindings are used as they come with the sources (no install). See docs/llama_cpp.md.

Example:

```python
>>> denoiser = GGUFDenoiser("demo.gguf")
>>> out = denoiser.generate(input_ids, max_new_tokens=64, block_length=32)
```
"""

from __future__ import annotations

import ctypes
import importlib
import os
import sys
import types
import weakref
from pathlib import Path
from types import SimpleNamespace

import gguf
import numpy as np
import torch

from illada.configuration_illada import ILLaDAConfig
from illada.generation_config_illada import ILLaDAGenerationConfig
from illada.generation_illada import ILLaDAGenerationMixin

LLAMA_CPP_PYTHON_VERSION = "0.3.36"  # the sdist bench/build_llama_cpp.sh builds
BUILD_SCRIPT = "bench/build_llama_cpp.sh"


def llama_cpp_dir() -> Path:
    """Where `bench/build_llama_cpp.sh` builds: `$ILLADA_LLAMA_CPP_DIR`, else `~/.cache/illada/llama.cpp`."""
    return Path(os.environ.get("ILLADA_LLAMA_CPP_DIR", Path.home() / ".cache" / "illada" / "llama.cpp"))


def find_build(folder: str | Path | None = None) -> SimpleNamespace | None:
    """The build in `folder` (default `llama_cpp_dir()`): `lib_dir` (libllama.so), `cli` (llama-diffusion-cli) and
    `bindings` (the sdist's `llama_cpp` package); `None` when any is missing."""
    folder = Path(folder) if folder is not None else llama_cpp_dir()
    build = SimpleNamespace(
        lib_dir=folder / "build" / "bin",
        cli=folder / "build" / "bin" / "llama-diffusion-cli",
        bindings=folder / f"llama_cpp_python-{LLAMA_CPP_PYTHON_VERSION}",
    )
    found = (build.lib_dir / "libllama.so").is_file() and build.cli.is_file()
    return build if found and (build.bindings / "llama_cpp" / "llama_cpp.py").is_file() else None


def load_bindings(folder: str | Path | None = None):
    """llama-cpp-python's low-level ctypes module (`llama_cpp.llama_cpp`) on the build's library. The package's
    `__init__` (the high-level `Llama` class and its dependencies) is not run: only the bindings are needed."""
    build = find_build(folder)
    if build is None:
        raise ValueError(
            f"No llama.cpp build in {str(folder or llama_cpp_dir())!r}: run `bash {BUILD_SCRIPT}` (about 15 minutes) "
            "or set ILLADA_LLAMA_CPP_DIR to its folder."
        )
    os.environ["LLAMA_CPP_LIB_PATH"] = str(build.lib_dir)
    if "llama_cpp" not in sys.modules:
        package = types.ModuleType("llama_cpp")
        package.__path__ = [str(build.bindings / "llama_cpp")]
        sys.modules["llama_cpp"] = package
    return importlib.import_module("llama_cpp.llama_cpp")


def config_from_gguf(path: str | Path) -> ILLaDAConfig:
    """The model config the GGUF metadata describes (a `ValueError` for a file that is not `llada`)."""
    fields = gguf.GGUFReader(path).fields

    def value(key: str):
        if key not in fields:
            raise ValueError(
                f"{str(path)!r} lacks the metadata key `{key}`; export it with `python -m illada.gguf_export`."
            )
        return fields[key].contents()

    if value("general.architecture") != "llada":
        raise ValueError(f"{str(path)!r} is a `{value('general.architecture')}` model, not `llada`.")
    return ILLaDAConfig(
        vocab_size=value("llada.vocab_size"),
        hidden_size=value("llada.embedding_length"),
        intermediate_size=value("llada.feed_forward_length"),
        num_hidden_layers=value("llada.block_count"),
        num_attention_heads=value("llada.attention.head_count"),
        num_key_value_heads=value("llada.attention.head_count_kv"),
        head_dim=value("llada.attention.key_length"),
        max_position_embeddings=value("llada.context_length"),
        rms_norm_eps=value("llada.attention.layer_norm_rms_epsilon"),
        rope_parameters={"rope_type": "default", "rope_theta": value("llada.rope.freq_base")},
        bos_token_id=value("tokenizer.ggml.bos_token_id"),
        eos_token_id=value("tokenizer.ggml.eos_token_id"),
        pad_token_id=value("tokenizer.ggml.padding_token_id"),
        mask_token_id=value("tokenizer.ggml.mask_token_id"),
    )


class GGUFDenoiser(ILLaDAGenerationMixin):
    """A GGUF iLLaDA run by llama.cpp, with iLLaDA's `generate` (see the module docstring).

    Args:
        path (`str` or `Path`): The `.gguf` file.
        threads (`int`, *optional*): CPU threads of llama.cpp (default: all).
        flash_attn (`bool`, *optional*, defaults to `False`): llama.cpp's flash attention (its CPU path computes in
            F16: logits then differ from the PyTorch model's by about 1e-2 instead of 1e-5).
        llama_cpp_folder (`str` or `Path`, *optional*): The build folder (default `llama_cpp_dir()`).
    """

    def __init__(self, path, threads: int | None = None, flash_attn: bool = False, llama_cpp_folder=None):
        self.config = config_from_gguf(path)
        self.generation_config = ILLaDAGenerationConfig(
            bos_token_id=self.config.bos_token_id,
            eos_token_id=self.config.eos_token_id,
            pad_token_id=self.config.pad_token_id,
            mask_token_id=self.config.mask_token_id,
        )
        self.device = torch.device("cpu")
        self._lib = lib = load_bindings(llama_cpp_folder)
        lib.llama_log_set(_SILENT, None)
        lib.llama_backend_init()
        self._model = lib.llama_model_load_from_file(str(path).encode(), lib.llama_model_default_params())
        if not self._model:
            raise ValueError(f"llama.cpp could not load {str(path)!r}.")
        params = lib.llama_context_default_params()
        n_ctx = self.config.max_position_embeddings
        params.n_ctx = params.n_batch = params.n_ubatch = n_ctx  # a bidirectional canvas is one micro-batch
        params.n_seq_max = 1
        params.n_threads = params.n_threads_batch = threads or os.cpu_count()
        params.flash_attn_type = lib.LLAMA_FLASH_ATTN_TYPE_ENABLED if flash_attn else lib.LLAMA_FLASH_ATTN_TYPE_DISABLED
        self._context = lib.llama_init_from_model(self._model, params)
        if not self._context:
            lib.llama_model_free(self._model)
            raise ValueError(f"llama.cpp could not create a context of {n_ctx} tokens for {str(path)!r}.")
        self._batch = lib.llama_batch_init(n_ctx, 0, 1)
        weakref.finalize(self, _free, lib, self._batch, self._context, self._model)

    def __call__(
        self, input_ids, attention_mask=None, position_ids=None, logits_to_keep=None, kv_cache=None, return_dict=True
    ):
        """Logits `(rows, len(logits_to_keep), vocab)` (float32) of the columns `logits_to_keep` (all without it),
        one llama.cpp forward per row on its unpadded tokens at their positions. The sampler's call, as it calls the
        PyTorch model: `return_dict=True` is the only form the sampler asks for, and the one this returns."""
        if return_dict is not True:
            raise ValueError("A GGUF model returns its logits as an output object only: `return_dict` must be True.")
        if kv_cache is not None:
            raise ValueError(
                "`use_cache` must be 'none' with a GGUF model: llama.cpp's `llada` keeps no key-value cache."
            )
        columns = torch.arange(input_ids.shape[1]) if logits_to_keep is None else torch.as_tensor(logits_to_keep)
        rows = [
            self._row_logits(input_ids, attention_mask, position_ids, row, columns) for row in range(len(input_ids))
        ]
        return SimpleNamespace(logits=torch.stack(rows))

    def _row_logits(self, input_ids, attention_mask, position_ids, row: int, columns: torch.Tensor) -> torch.Tensor:
        real = (
            torch.ones(input_ids.shape[1], dtype=torch.bool) if attention_mask is None else attention_mask[row].bool()
        )
        tokens = input_ids[row][real].tolist()
        positions = range(len(tokens)) if position_ids is None else position_ids[row][real].tolist()
        index = torch.cumsum(real, 0) - 1  # column -> index among the real tokens
        wanted = set(index[columns].tolist())
        if not real[columns].all():
            raise ValueError("`logits_to_keep` names a padding column.")
        batch = self._batch
        batch.n_tokens = len(tokens)
        for i, (token, position) in enumerate(zip(tokens, positions, strict=True)):
            batch.token[i], batch.pos[i], batch.n_seq_id[i], batch.seq_id[i][0] = token, position, 1, 0
            batch.logits[i] = i in wanted
        status = self._lib.llama_decode(self._context, batch)
        if status != 0:
            raise RuntimeError(f"llama_decode failed with status {status}.")
        vocab = self.config.vocab_size
        rows = []
        for i in index[columns].tolist():  # llama_get_logits_ith maps a batch index to its output row
            pointer = self._lib.llama_get_logits_ith(self._context, i)
            rows.append(torch.from_numpy(np.ctypeslib.as_array(pointer, shape=(vocab,)).copy()))
        return torch.stack(rows)


def _free(lib, batch, context, model) -> None:
    """Frees llama.cpp's batch, context and model (a `weakref.finalize` callback: also runs at exit)."""
    lib.llama_batch_free(batch)
    lib.llama_free(context)
    lib.llama_model_free(model)


def _silent_log(level, text, user_data) -> None:
    """llama.cpp's log callback: silent."""


# Kept at module level: llama.cpp keeps calling the pointer after `llama_log_set`.
_SILENT = ctypes.CFUNCTYPE(None, ctypes.c_int, ctypes.c_char_p, ctypes.c_void_p)(_silent_log)
