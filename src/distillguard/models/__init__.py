"""Models: byte-level BPE tokenizers, Llama LMs trained from scratch, the default teacher, and
a batched generation engine with a sampling hook for watermark schemes.

Heavy modules (torch, transformers) load on first use of a name, so importing the package
stays fast for the CLI.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "ModelSize": "llama",
    "SIZES": "llama",
    "TrainConfig": "llama",
    "BuildResult": "llama",
    "build_model": "llama",
    "load_model": "llama",
    "train_causal_lm": "llama",
    "held_out_loss": "llama",
    "read_build_info": "llama",
    "train_tokenizer": "tokenizer",
    "encode_chat": "tokenizer",
    "encode_text": "tokenizer",
    "read_chat_pairs": "teacher",
    "read_corpus": "teacher",
    "default_teacher_dir": "teacher",
    "TokenSampler": "sampling",
    "SampleOutput": "sampling",
    "sample_plain": "sampling",
    "PlainSampler": "sampling",
    "GenerationEngine": "engine",
    "GenerationParams": "engine",
    "TokenEvent": "engine",
    "Completion": "engine",
    "EngineStats": "engine",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'distillguard.models' has no attribute {name!r}")
    return getattr(importlib.import_module(f"distillguard.models.{module}"), name)
