"""Under the null the p-values are uniform (valid): random token sequences (property test,
fixed seeds) and real LLM answers tokenized with a real tokenizer."""

from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats

from distillguard.watermark import build_scheme

from .conftest import SECRET


def _fpr_ok(p: np.ndarray, alpha: float, *, discrete: bool) -> bool:
    """FPR within 3.5 binomial standard errors of alpha (discrete tests may be conservative)."""
    fpr, se = (p <= alpha).mean(), np.sqrt(alpha * (1 - alpha) / p.size)
    return fpr <= alpha + 3.5 * se and (discrete or fpr >= alpha - 3.5 * se)


@settings(max_examples=6, deadline=None, derandomize=True)
@given(
    name=st.sampled_from(["kgw", "gumbel", "synthid"]),
    seed=st.integers(0, 2**31),
    vocab=st.sampled_from([300, 4096, 131072]),
    length=st.integers(20, 300),
    key_id=st.integers(1, 5),
)
def test_pvalues_of_random_sequences_are_uniform(name, seed, vocab, length, key_id) -> None:
    s = build_scheme(name, secret=SECRET, key_id=key_id, vocab_size=vocab)
    rng = np.random.default_rng(seed)
    p = np.array([r.p_value for r in s.detect_many(list(rng.integers(0, vocab, (1500, length))))])
    discrete = name != "gumbel"
    assert _fpr_ok(p, 0.05, discrete=discrete) and _fpr_ok(p, 0.01, discrete=discrete)
    if not discrete:  # continuous statistic: the whole distribution is uniform
        assert stats.kstest(p, "uniform").pvalue > 1e-3


def _real_answers(shared_data, count: int) -> list[str]:
    texts = []
    for path in sorted((shared_data / "outputs").glob("*.jsonl")):
        with path.open() as f:
            texts += [json.loads(line)["output"] for line in f][: count // 13 + 1]
    return texts[:count]


@pytest.mark.parametrize("name", ["kgw", "gumbel", "synthid"])
def test_real_answers_are_not_flagged(name, shared_data, tiny_model_dir) -> None:
    from distillguard.models.llama import load_model
    from distillguard.watermark.detect import TextDetector
    from distillguard.watermark.keys import KeyRing

    _, tokenizer = load_model(tiny_model_dir)
    det = TextDetector(tokenizer=tokenizer, keyring=KeyRing(SECRET, current_key_id=2), scheme=name)
    res = det.detect_batch(_real_answers(shared_data, 400))
    p = np.array([r.p_value for r in res if hasattr(r, "p_value")])
    assert p.size > 350 and all(r.keys_tried == 2 for r in res if hasattr(r, "keys_tried"))
    assert _fpr_ok(p, 0.05, discrete=True) and _fpr_ok(p, 0.01, discrete=True)
    assert p.min() > 1e-4  # no real answer looks strongly marked
