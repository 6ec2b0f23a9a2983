"""vLLM V1: the schemes as a logits processor, the account per request.

Install distillguard into vLLM's environment and the entry point in ``pyproject.toml``
(``[project.entry-points."vllm.logits_processors"]``) makes vLLM load
``DistillGuardLogitsProcessor`` in every engine it starts. It reads the provider's
``DISTILLGUARD_WATERMARK_SECRET`` (required: without it the engine does not start),
``DISTILLGUARD_WATERMARK_SCHEME`` and ``_KEY_ID`` from the engine's environment -- the same
values the gateway has. A request names its account in ``SamplingParams.extra_args``
(``{"distillguard_account": "acct_..."}``), over HTTP in ``vllm_xargs``; the gateway sends it.
A request without one is marked under the anonymous account (the provider signal is intact).

Written against vLLM's documented V1 interface (``vllm.v1.sample.logits_processor``:
``LogitsProcessor``, ``BatchUpdate`` with removed / added ``(index, params, prompt ids, output
ids)`` / moved ``(i, j, directionality)``), and NOT run here: no GPU, no vLLM wheel on this
machine. ``benchmarks/gpu/vllm_watermark_check.sh`` runs it where there is one.

The vLLM class is built on first access (module ``__getattr__``), so importing this module,
and testing ``RequestTable`` -- all the bookkeeping, vLLM-free -- needs no vLLM.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from distillguard.watermark.engines.core import (
    ACCOUNT_ARG,
    EngineMarker,
    RowRequest,
    row_generator,
)

GREEDY_EPS = 1e-5  # vLLM samples greedily below this temperature (its _SAMPLING_EPS)


def row_request(params: Any) -> RowRequest:
    """A vLLM ``SamplingParams`` (temperature, top_p, seed, extra_args) -> RowRequest.
    Raises InputError (a ValueError for vLLM's ``validate_params``: a 400) on a bad account."""
    extra = getattr(params, "extra_args", None) or {}
    temperature = float(getattr(params, "temperature", 1.0) or 0.0)
    return RowRequest(
        account=extra.get(ACCOUNT_ARG),
        temperature=0.0 if temperature < GREEDY_EPS else temperature,
        top_p=float(getattr(params, "top_p", 1.0) or 1.0),
        seed=getattr(params, "seed", None),
    )


@dataclass
class _Row:
    request: RowRequest
    prompt: Sequence[int]  # the prompt's token ids (vLLM's list; may be None -> [])
    output: list[int]  # vLLM's live list of output ids (vLLM appends to it)
    generator: Any


class RequestTable:
    """The persistent batch as the processor sees it: batch index -> request state, kept in
    step with vLLM's ``BatchUpdate`` (removed, then added, then moved)."""

    def __init__(self, marker: EngineMarker) -> None:
        self.marker = marker
        self.rows: dict[int, _Row] = {}

    def update(
        self, removed: Sequence[int], added: Sequence[tuple], moved: Sequence[tuple]
    ) -> None:
        for index in removed:
            self.rows.pop(index, None)
        for entry in added:
            if len(entry) == 4:  # (index, params, prompt ids, output ids)
                index, params, prompt, output = entry
            else:  # older V1 releases: (index, params, output ids)
                index, params, output = entry
                prompt = None
            req = row_request(params)
            self.rows[index] = _Row(req, prompt or [], output, row_generator(req.seed))
        for a, b, direction in moved:
            row_a, row_b = self.rows.pop(a, None), self.rows.pop(b, None)
            if row_a is not None:
                self.rows[b] = row_a
            if row_b is not None and getattr(direction, "name", str(direction)) == "SWAP":
                self.rows[a] = row_b

    def apply(self, logits: Any) -> Any:
        """logits (B, V) -> (B, V): every row with a request gets its marked token forced."""
        import torch

        index = sorted(i for i in self.rows if i < logits.shape[0])
        if not index:
            return logits
        rows = [self.rows[i] for i in index]
        forced = self.marker.apply(
            logits[index],
            [[*r.prompt, *r.output] for r in rows],
            [r.request for r in rows],
            [r.generator for r in rows],
        )
        logits[torch.tensor(index, device=logits.device)] = forced
        return logits


def _build_class() -> type:
    from vllm.v1.sample.logits_processor import LogitsProcessor

    class DistillGuardLogitsProcessor(LogitsProcessor):
        """distillguard's watermark in vLLM (see the module docstring)."""

        @classmethod
        def validate_params(cls, sampling_params: Any) -> None:
            try:
                row_request(sampling_params)
            except Exception as exc:  # vLLM turns ValueError into a 400 for the request
                raise ValueError(str(exc)) from None

        def __init__(self, vllm_config: Any, device: Any, is_pin_memory: bool) -> None:
            vocab = int(vllm_config.model_config.get_vocab_size())
            self.table = RequestTable(EngineMarker.from_environment(os.environ, vocab_size=vocab))

        def is_argmax_invariant(self) -> bool:
            return False  # it chooses the token: greedy requests must see it too

        def update_state(self, batch_update: Any) -> None:
            if batch_update is not None:
                self.table.update(batch_update.removed, batch_update.added, batch_update.moved)

        def apply(self, logits: Any) -> Any:
            return self.table.apply(logits)

    DistillGuardLogitsProcessor.__qualname__ = "DistillGuardLogitsProcessor"
    return DistillGuardLogitsProcessor


_CLASS: type | None = None


def __getattr__(name: str) -> Any:
    global _CLASS
    if name == "DistillGuardLogitsProcessor":
        if _CLASS is None:
            _CLASS = _build_class()
        return _CLASS
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
