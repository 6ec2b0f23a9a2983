"""Does the watermark survive each defence? TPR at a fixed FPR on what an account is served.

A defence rewrites or shortens what the teacher generated (withheld reasoning leaves
``#### 18``; the perturbation rewrites step lines), and the provider's watermark must still
be found in what a campaign harvested. The detector reads text, so what counts is the served
text: the answers one account received are concatenated, in order, into chunks of at least
``tokens`` tokens (a harvest is many short answers; the detector sees them together, as it
does in ``watermark detect`` over a dataset), each chunk is tested, and

* TPR: share of chunks of watermarked, served answers with p < ``alpha``;
* FPR: the same on the same problems answered by the unwatermarked teacher and served
  through the same defence (the null: identical text processing, no mark).

Pure over texts and a detector; the benchmark (``benchmarks/prevention.py --watermark``)
generates the answers.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from distillguard.errors import InputError


@dataclass(frozen=True)
class MarkRates:
    chunks: int  # chunks tested on each side
    tokens: int  # minimum tokens per chunk
    alpha: float  # the p-value threshold (the FPR target)
    tpr: float  # marked chunks detected
    fpr: float  # unmarked chunks detected
    median_log10_p: float  # of the marked chunks (more negative: stronger)


def chunk_texts(texts: Sequence[str], tokenizer: Any, tokens: int) -> list[str]:
    """Consecutive ``texts`` joined by newlines into chunks of at least ``tokens`` tokens;
    a short remainder at the end is dropped (it would be a weaker test than the others)."""
    if tokens < 1:
        raise InputError("tokens must be >= 1")
    chunks, current, count = [], [], 0
    for text in texts:
        current.append(text)
        count += len(tokenizer.encode(text, add_special_tokens=False)) + 1
        if count >= tokens:
            chunks.append("\n".join(current))
            current, count = [], 0
    return chunks


def mark_rates(
    detector: Any,
    marked: Sequence[str],
    clean: Sequence[str],
    *,
    tokens: int = 200,
    alpha: float = 1e-3,
) -> MarkRates:
    """TPR and FPR of ``detector`` (a ``watermark.detect.TextDetector``) at p < ``alpha`` on
    chunks of ``tokens`` tokens of ``marked`` and ``clean`` served answers."""
    import math

    if not 0 < alpha < 1:
        raise InputError("alpha must be in (0, 1)")
    pos = chunk_texts(marked, detector.tokenizer, tokens)
    neg = chunk_texts(clean, detector.tokenizer, tokens)
    if not pos or not neg:
        raise InputError(f"not enough served text for one chunk of {tokens} tokens")

    def log_ps(chunks: list[str]) -> list[float]:
        out = []
        for r in detector.detect_batch(chunks):
            # An error result (nothing scorable) is no detection: log10 p = 0.
            out.append(float(getattr(r, "log10_p_value", 0.0)))
        return out

    lp_pos, lp_neg = log_ps(pos), log_ps(neg)
    cut = math.log10(alpha)
    ordered = sorted(lp_pos)
    return MarkRates(
        chunks=min(len(pos), len(neg)),
        tokens=tokens,
        alpha=alpha,
        tpr=sum(x < cut for x in lp_pos) / len(lp_pos),
        fpr=sum(x < cut for x in lp_neg) / len(lp_neg),
        median_log10_p=ordered[len(ordered) // 2],
    )
