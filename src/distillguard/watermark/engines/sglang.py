"""SGLang: the schemes as a ``CustomLogitProcessor``, the account per request.

SGLang runs a custom logit processor that the *request* names: the server starts with
``--enable-custom-logit-processor``; each request carries ``custom_logit_processor`` (the
processor class, serialized as SGLang's ``CustomLogitProcessor.to_str()`` does: a JSON object
whose ``callable`` is a hex pickle) and ``custom_params`` (``{"distillguard_account": ...}``).
The class is pickled *by reference*, so SGLang's server imports it from its own environment
(where distillguard is installed) and the secret never travels: the processor reads
``DISTILLGUARD_WATERMARK_SECRET`` / ``_SCHEME`` / ``_KEY_ID`` from the server's environment on
its first call (without the secret every marked request fails with that message).

Limits of SGLang's interface: the processor cannot be forced on every request (a request that
does not name it is not marked: the gateway always names it), and it sees no request seed, so
seeded requests are not reproducible under the mark. ``processor_reference`` builds the
request field without importing SGLang (the gateway has no SGLang). NOT run here: SGLang needs
a GPU; ``docs/watermark-engines.md`` says what has run where.
"""

from __future__ import annotations

import json
import os
from collections import OrderedDict
from typing import Any

from distillguard.watermark.engines.core import ACCOUNT_ARG, EngineMarker, RowRequest

CLASS_NAME = "DistillGuardLogitProcessor"
MAX_GENERATORS = 4096  # per-request generators kept (requests end without telling us)


def _short_str(text: str) -> bytes:
    data = text.encode()
    if len(data) > 255:
        raise ValueError("name too long for SHORT_BINUNICODE")
    return b"\x8c" + bytes([len(data)]) + data


def processor_reference(module: str = __name__, name: str = CLASS_NAME) -> str:
    """The ``custom_logit_processor`` field: a protocol-4 pickle of the class *by reference*
    (PROTO 4, module and name as SHORT_BINUNICODE, STACK_GLOBAL, STOP), byte for byte what
    ``dill.dumps(cls)`` gives for an importable class, built without importing SGLang."""
    body = _short_str(module) + _short_str(name) + b"\x93."
    return json.dumps({"callable": (b"\x80\x04" + body).hex()})


def request_fields(account: str | None) -> dict[str, Any]:
    """What a request to SGLang's OpenAI API adds to be marked for ``account``."""
    return {
        "custom_logit_processor": processor_reference(),
        "custom_params": {ACCOUNT_ARG: account},
    }


class SGLangMarking:
    """The processor's work, SGLang-free: ``custom_param_list`` entries -> marked logits."""

    def __init__(self) -> None:
        self.marker: EngineMarker | None = None
        self.generators: OrderedDict[str, Any] = OrderedDict()

    def __call__(self, logits: Any, custom_param_list: list[dict[str, Any]] | None) -> Any:
        import torch

        if not custom_param_list:
            return logits
        if self.marker is None:
            self.marker = EngineMarker.from_environment(os.environ, vocab_size=logits.shape[1])
        index, histories, rows, gens = [], [], [], []
        for i, params in enumerate(custom_param_list):
            if not params or "__req__" not in params:
                continue
            req = params["__req__"]
            sampling = getattr(req, "sampling_params", None)
            temperature = float(getattr(sampling, "temperature", 1.0))
            if getattr(sampling, "top_k", -1) == 1:  # SGLang's form of a T = 0 request
                temperature = 0.0
            index.append(i)
            histories.append([*req.origin_input_ids, *req.output_ids])
            rows.append(
                RowRequest(
                    account=params.get(ACCOUNT_ARG),
                    temperature=temperature,
                    top_p=float(getattr(sampling, "top_p", 1.0)),
                )
            )
            gens.append(self._generator(str(getattr(req, "rid", i))))
        if not index:
            return logits
        forced = self.marker.apply(logits[index], histories, rows, gens)
        logits[torch.tensor(index, device=logits.device)] = forced
        return logits

    def _generator(self, rid: str) -> Any:
        import torch

        gen = self.generators.pop(rid, None) or torch.Generator().manual_seed(
            int.from_bytes(os.urandom(8), "little") >> 1
        )
        self.generators[rid] = gen
        while len(self.generators) > MAX_GENERATORS:
            self.generators.popitem(last=False)
        return gen


_MARKING = SGLangMarking()
_CLASS: type | None = None


def _build_class() -> type:
    from sglang.srt.sampling.custom_logit_processor import CustomLogitProcessor

    class DistillGuardLogitProcessor(CustomLogitProcessor):
        """distillguard's watermark in SGLang (see the module docstring)."""

        def __call__(self, logits: Any, custom_param_list: Any = None) -> Any:
            return _MARKING(logits, custom_param_list)

    DistillGuardLogitProcessor.__module__ = __name__
    DistillGuardLogitProcessor.__qualname__ = CLASS_NAME
    return DistillGuardLogitProcessor


def __getattr__(name: str) -> Any:
    global _CLASS
    if name == CLASS_NAME:
        if _CLASS is None:
            _CLASS = _build_class()
        return _CLASS
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
