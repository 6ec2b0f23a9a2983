"""Exact one-sided tails of the detection statistics, in log space, and Holm's correction.

The binomial (KGW, SynthID) and Gamma (Gumbel) tails are computed with scipy's regularized
functions; where they underflow double precision the value is a conservative closed-form
bound, so ``log10 p`` stays finite and never smaller than the truth.
"""

from __future__ import annotations

import numpy as np
from scipy import special

LOG10 = np.log(10.0)


def binom_log10_sf(k: np.ndarray, n: np.ndarray, p: float) -> np.ndarray:
    """log10 P(Binomial(n, p) >= k), elementwise (k, n int arrays); exact unless it underflows.

    Where the double-precision tail underflows (< 1e-290) the value is the upper bound
    pmf(k) / (1 - r), r = (n-k)/(k+1) * p/(1-p) the ratio of consecutive terms: a conservative
    (never smaller) p-value, within a factor 1/(1-r) of the truth.
    """
    k = np.asarray(k, dtype=np.float64)
    n = np.asarray(n, dtype=np.float64)
    if k.size > 64:  # texts of a batch share few (k, n) pairs: evaluate each pair once
        stride = float(n.max()) + 1.0
        uniq, inverse = np.unique(k.ravel() * stride + n.ravel(), return_inverse=True)
        uk, un = np.divmod(uniq, stride)
        return _binom_log10_sf(uk, un, p)[inverse.ravel()].reshape(k.shape)
    return _binom_log10_sf(k, n, p)


def _binom_log10_sf(k: np.ndarray, n: np.ndarray, p: float) -> np.ndarray:
    with np.errstate(divide="ignore", invalid="ignore"):
        sf = np.where(k <= 0, 1.0, special.bdtrc(np.maximum(k - 1, 0), n, p))
        out = np.log10(np.clip(sf, 1e-300, 1.0))
        tiny = (sf < 1e-290) & (k > 0) & (k <= n)
        if tiny.any():
            kk, nn = k[tiny], n[tiny]
            logpmf = (
                special.gammaln(nn + 1)
                - special.gammaln(kk + 1)
                - special.gammaln(nn - kk + 1)
                + kk * np.log(p)
                + (nn - kk) * np.log1p(-p)
            )
            ratio = (nn - kk) / (kk + 1) * p / (1 - p)
            out[tiny] = (logpmf - np.log1p(-np.minimum(ratio, 1 - 1e-12))) / LOG10
    return np.minimum(out, 0.0)


def gamma_log10_sf(x: np.ndarray, n: np.ndarray) -> np.ndarray:
    """log10 P(Gamma(n, 1) >= x), elementwise (n integer >= 0); exact unless it underflows.

    The underflow fallback is the bound Q(n, x) <= t_{n-1} / (1 - (n-1)/x) with
    t_{n-1} = e^{-x} x^{n-1} / (n-1)! the largest term of the Poisson sum (valid for x > n-1).
    """
    x = np.asarray(x, dtype=np.float64)
    n = np.asarray(n, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        sf = np.where(n <= 0, 1.0, special.gammaincc(np.maximum(n, 1), x))
        out = np.log10(np.clip(sf, 1e-300, 1.0))
        tiny = (sf < 1e-290) & (n > 0) & (x > n)
        if tiny.any():
            xx, nn = x[tiny], n[tiny]
            log_t = (nn - 1) * np.log(xx) - xx - special.gammaln(nn)
            out[tiny] = (log_t - np.log1p(-(nn - 1) / xx)) / LOG10
    return np.minimum(out, 0.0)


def holm(p: np.ndarray) -> np.ndarray:
    """Holm step-down adjusted p-values along the last axis: (..., A) -> (..., A)."""
    a = p.shape[-1]
    if a == 0:
        return p.copy()
    order = np.argsort(p, axis=-1)
    ps = np.take_along_axis(p, order, axis=-1)
    adj = np.minimum(1.0, np.maximum.accumulate(ps * (a - np.arange(a)), axis=-1))
    out = np.empty_like(adj)
    np.put_along_axis(out, order, adj, axis=-1)
    return out
