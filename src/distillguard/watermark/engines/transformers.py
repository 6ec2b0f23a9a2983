"""Hugging Face transformers: the schemes as a ``LogitsProcessor`` for ``model.generate``.

    processor = WatermarkLogitsProcessor(marker, accounts=["acct_1", "acct_2"], temperature=0.7)
    model.generate(**batch, logits_processor=[processor], do_sample=False, max_new_tokens=200)

The processor chooses each token with the scheme (``core.EngineMarker``: keyed like our own
engine, one account per batch row) and returns logits allowing only that token, so
``do_sample=False`` (no extra work) and ``do_sample=True`` give the same answer. Temperature,
top_p and seeds are the processor's, not ``generate``'s: ``generate`` applies its warpers after
the custom processors, where only one token is left to choose. One processor serves one
``generate`` call (it keeps the rows' generators); build a new one per call.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from transformers import LogitsProcessor

from distillguard.errors import InputError
from distillguard.watermark.engines.core import EngineMarker, RowRequest, row_generator


class WatermarkLogitsProcessor(LogitsProcessor):
    """Marks every row of a ``generate`` batch for its account (see the module docstring)."""

    def __init__(
        self,
        marker: EngineMarker,
        *,
        accounts: Sequence[str | None],
        temperature: float = 1.0,
        top_p: float = 1.0,
        seeds: Sequence[int | None] | None = None,
        num_return_sequences: int = 1,
    ) -> None:
        if num_return_sequences < 1:
            raise InputError("num_return_sequences must be >= 1")
        seeds = list(seeds) if seeds is not None else [None] * len(accounts)
        if len(seeds) != len(accounts):
            raise InputError("seeds must be None or one per account (batch row)")
        if not accounts:
            raise InputError("accounts must name one account (or None) per batch row")
        self.marker = marker
        # generate repeats each prompt row num_return_sequences times, consecutively
        k = num_return_sequences
        self.rows = [
            RowRequest(account=a, temperature=temperature, top_p=top_p, seed=s)
            for a, s in zip(accounts, seeds, strict=True)
            for _ in range(k)
        ]
        self.generators = [
            row_generator(None if s is None else s + j)
            for s in seeds
            for j in range(k)  # each returned sequence of a seeded row gets its own stream
        ]

    def __call__(self, input_ids: Any, scores: Any) -> Any:
        """input_ids (B, T) long, scores (B, V) float -> (B, V) float."""
        if input_ids.shape[0] != len(self.rows):
            raise InputError(
                f"the processor was built for {len(self.rows)} rows but generate runs "
                f"{input_ids.shape[0]} (one account per prompt row; beam search is not marked)"
            )
        return self.marker.apply(scores, input_ids, self.rows, self.generators)
