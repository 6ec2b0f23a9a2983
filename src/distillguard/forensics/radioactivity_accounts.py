"""Per-account radioactivity (KGW with account marking): which account's answers were learnt?

Among provider-green mass, the account-green share is ``account_gamma`` under "not trained on
this account's answers", conditionally on everything else, so each account gets an exact
(pairs) or analytic-variance (full-distribution) test; Holm over the accounts tested. The
provider-level tests and their calibration live in ``radioactivity.py``.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy import stats

from distillguard.errors import WatermarkError
from distillguard.forensics.radioactivity import (
    LOG10,
    AccountEvidence,
    Predictions,
    RadioactivityConfig,
    combined_z,
)
from distillguard.watermark.base import WatermarkScheme
from distillguard.watermark.kgw import KGWScheme
from distillguard.watermark.stats import holm


def _vocab_scores(
    scheme: WatermarkScheme, key: int, contexts: np.ndarray, vocab: int, *, account: bool = False
) -> np.ndarray:
    """Per-(context, token) scores for every token: contexts (c, h) -> (c, V) float64."""
    u = scheme.context.vocab_values(key, contexts, vocab)  # (c, V) uint64
    flat = u.ravel()
    s = scheme.account_pair_scores(flat) if account else scheme.pair_scores(flat)
    return s.reshape(u.shape)


def _require_kgw(scheme: WatermarkScheme) -> KGWScheme:
    if not isinstance(scheme, KGWScheme) or scheme.params.account_delta <= 0:
        raise WatermarkError(
            "per-account radioactivity needs the kgw scheme with account "
            "marking (account_delta > 0)"
        )
    return scheme


def account_tests_pairs(
    scheme: WatermarkScheme,
    contexts: np.ndarray,
    tokens: np.ndarray,
    accounts: Sequence[str],
    test: str,
) -> list[AccountEvidence]:
    """Exact per-account tests on deduplicated pairs: among provider-green pairs, the
    account-green count is Binomial(n_green, account_gamma) unless the account is the source."""
    kgw = _require_kgw(scheme)
    green = scheme.score_pairs(contexts, tokens) > 0.5  # (N,) provider-green
    ctx, tok = contexts[green], tokens[green]
    ag = kgw.params.account_gamma
    rows = []
    for account in accounts:
        k = float(scheme.score_pairs(ctx, tok, account=account).sum())
        n = int(green.sum())
        log10p = float(scheme.account_log10_pvalue(np.array([k]), np.array([n]))[0])
        z = (k - ag * n) / np.sqrt(max(n * ag * (1 - ag), 1e-12))
        rows.append((account, n, float(z), log10p))
    return _holm_accounts(rows, test)


def account_tests_distribution(
    scheme: WatermarkScheme,
    preds: Predictions,
    accounts: Sequence[str],
    config: RadioactivityConfig,
    chunk: int = 256,
) -> list[AccountEvidence]:
    """Per-account full-distribution tests: the provider-green mass w = q * G_p splits into
    account-green and the rest; under "not this account" each token of it is account-green
    with probability account_gamma independently, so excess and variance are analytic."""
    kgw = _require_kgw(scheme)
    ag = kgw.params.account_gamma
    vocab = preds.mean_probs.shape[1]
    rows = []
    greens, spreads = [], []
    for i in range(0, len(preds.contexts), chunk):
        q = preds.mean_probs[i : i + chunk].astype(np.float64)
        q /= q.sum(axis=1, keepdims=True)
        greens.append(q * kgw.green_mask(preds.contexts[i : i + chunk], vocab))
        spreads.append(1.0 - (q * q).sum(axis=1))
    spread = np.concatenate(spreads)
    for account in accounts:
        akey = scheme.account_key(account)
        excess, variance = [], []
        for j, i in enumerate(range(0, len(preds.contexts), chunk)):
            w = greens[j]  # (c, V) provider-green mass per token
            a = _vocab_scores(scheme, akey, preds.contexts[i : i + chunk], vocab, account=True)
            excess.append((w * a).sum(1) - ag * w.sum(1))
            variance.append(ag * (1 - ag) * (w * w).sum(1))
        z = combined_z(np.concatenate(excess), np.concatenate(variance), config.weighting, spread)
        rows.append((account, len(preds.contexts), z, float(stats.norm.logsf(z) / LOG10)))
    return _holm_accounts(rows, "full-distribution")


def _holm_accounts(rows: list[tuple[str, int, float, float]], test: str) -> list[AccountEvidence]:
    if not rows:
        return []
    p = np.array([10.0 ** r[3] for r in rows])
    adjusted = holm(p)
    out = [
        AccountEvidence(a, test, n, z, lp, 10.0**lp, float(adj))
        for (a, n, z, lp), adj in zip(rows, adjusted, strict=True)
    ]
    return sorted(out, key=lambda e: e.log10_p_value)
