"""Watermark rates under a defence: chunks of served answers, TPR/FPR at a threshold."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from distillguard.errors import InputError
from distillguard.prevent.marking import chunk_texts, mark_rates


class _CharTokenizer:
    def encode(self, text: str, add_special_tokens: bool = False) -> list[int]:
        return [ord(c) for c in text]


@dataclass
class _Result:
    log10_p_value: float


class _FakeDetector:
    """Marked chunks contain "M": p = 1e-6; others p = 0.5; a chunk with "?" is an error."""

    tokenizer = _CharTokenizer()

    def detect_batch(self, texts):
        return [
            ValueError("nothing to score") if "?" in t else _Result(-6.0 if "M" in t else -0.3)
            for t in texts
        ]


def test_chunks_reach_the_token_count_and_drop_a_short_tail():
    chunks = chunk_texts(["abcd"] * 7, _CharTokenizer(), 10)
    assert chunks == ["abcd\nabcd"] * 3  # 5 tokens each with the newline; the 7th is dropped
    with pytest.raises(InputError):
        chunk_texts(["a"], _CharTokenizer(), 0)


def test_rates_count_marked_and_clean_chunks_below_alpha():
    marked = ["M" * 10] * 8 + ["x" * 10] * 2
    clean = ["x" * 10] * 9 + ["?" * 10]
    rates = mark_rates(_FakeDetector(), marked, clean, tokens=10, alpha=1e-3)
    assert rates.tpr == pytest.approx(0.8) and rates.fpr == 0.0
    assert rates.chunks == 10 and rates.median_log10_p == -6.0
    with pytest.raises(InputError):
        mark_rates(_FakeDetector(), ["M"], ["x"], tokens=100)
