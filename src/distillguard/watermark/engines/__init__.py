"""The watermark schemes inside the engines providers run.

* ``core``         -- the pure per-step function every adapter calls (``EngineMarker``);
* ``transformers`` -- a Hugging Face ``LogitsProcessor`` for ``model.generate``;
* ``vllm``         -- a vLLM V1 logits processor (entry point ``vllm.logits_processors``),
  the account per request in ``SamplingParams.extra_args`` (``vllm_xargs`` over HTTP);
* ``sglang``       -- an SGLang ``CustomLogitProcessor``, the account in ``custom_params``.

Each engine module imports its engine lazily or at its own import only: importing this package
needs neither transformers, vLLM nor SGLang. See ``docs/watermark-engines.md``.
"""

from distillguard.watermark.engines.core import (
    ACCOUNT_ARG,
    EngineMarker,
    MarkingInfo,
    RowRequest,
    force,
)

__all__ = ["ACCOUNT_ARG", "EngineMarker", "MarkingInfo", "RowRequest", "force"]
