"""Keys (derivation, rotation, no secret leaks) and the exact statistics (tails, Holm)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import special, stats

from distillguard.errors import ConfigError, WatermarkError
from distillguard.watermark import build_scheme
from distillguard.watermark.base import ContextHash, binom_log10_sf, gamma_log10_sf, holm
from distillguard.watermark.keys import KeyRing, account_key, derive_key, fingerprint

from .conftest import SECRET


def test_derived_keys_are_deterministic_and_independent() -> None:
    k = derive_key(SECRET, "kgw", 1, "provider")
    assert k == derive_key(SECRET, "kgw", 1, "provider")
    others = {
        derive_key(SECRET, "kgw", 2, "provider"),
        derive_key(SECRET, "gumbel", 1, "provider"),
        account_key(SECRET, "kgw", 1, "alice"),
        account_key(SECRET, "kgw", 1, "bob"),
        derive_key(SECRET[::-1], "kgw", 1, "provider"),
    }
    assert k not in others and len(others) == 5


def test_short_secret_and_bad_key_ids_are_refused() -> None:
    with pytest.raises(ConfigError):
        KeyRing(secret=b"short")
    with pytest.raises(WatermarkError):
        KeyRing(secret=SECRET, current_key_id=0)
    ring = KeyRing(secret=SECRET, current_key_id=2)
    with pytest.raises(WatermarkError):
        ring.check([3])
    assert ring.check([2, 1, 2]) == (2, 1)


def test_secret_never_appears_in_repr_or_fingerprints() -> None:
    ring = KeyRing(secret=SECRET, current_key_id=3)
    scheme = build_scheme("kgw", secret=SECRET, key_id=1, vocab_size=100)
    text = repr(ring) + repr(scheme) + repr(ring.info())
    assert SECRET.decode() not in text and "0123456789" not in text
    assert [i.key_id for i in ring.info()] == [1, 2, 3]
    assert [i.current for i in ring.info()] == [False, False, True]
    assert len({fingerprint(SECRET, k) for k in (1, 2, 3)}) == 3


def test_unknown_scheme_and_bad_params_are_watermark_errors() -> None:
    with pytest.raises(WatermarkError):
        build_scheme("nope", secret=SECRET, key_id=1, vocab_size=100)
    with pytest.raises(WatermarkError):
        build_scheme("kgw", secret=SECRET, key_id=1, vocab_size=100, gamme=0.3)


@settings(max_examples=30, deadline=None, derandomize=True)
@given(
    mode=st.sampled_from(["lefthash", "minhash", "selfhash"]),
    width=st.integers(1, 5),
    seed=st.integers(0, 2**32 - 1),
)
def test_generation_and_detection_hash_agree(mode: str, width: int, seed: int) -> None:
    """vocab_values (generation, vectorized over V) equals pair_values (detection) bit for bit."""
    rng = np.random.default_rng(seed)
    ch = ContextHash(mode, width)
    ctx = rng.integers(0, 300, (3, width))
    full = ch.vocab_values(seed, ctx, 300)  # (3, V)
    tokens = rng.integers(0, 300, 3)
    assert np.array_equal(full[np.arange(3), tokens], ch.pair_values(seed, ctx, tokens))


@settings(max_examples=60, deadline=None, derandomize=True)
@given(n=st.integers(1, 400), frac=st.floats(0, 1), p=st.sampled_from([0.25, 0.5]))
def test_binomial_tail_matches_scipy(n: int, frac: float, p: float) -> None:
    k = round(frac * n)
    ref = stats.binom.sf(k - 1, n, p)
    got = 10 ** binom_log10_sf(np.array([k]), np.array([n]), p)[0]
    assert got == pytest.approx(ref, rel=1e-9, abs=1e-300)


def test_tails_stay_finite_and_conservative_when_they_underflow() -> None:
    n = np.array([5000, 5000])
    lp = binom_log10_sf(np.array([4000, 4500]), n, 0.25)
    assert np.all(np.isfinite(lp)) and lp[1] < lp[0] < -300
    # bound vs the exact log tail from a log-sum-exp over the terms
    ks = np.arange(4000, 5001)
    exact = special.logsumexp(stats.binom.logpmf(ks, 5000, 0.25)) / np.log(10)
    assert exact <= lp[0] <= exact + 0.5
    lg = gamma_log10_sf(np.array([3000.0, 150.0]), np.array([1000, 100]))
    assert np.isfinite(lg[0]) and lg[0] < -300
    assert 10 ** lg[1] == pytest.approx(special.gammaincc(100, 150.0), rel=1e-9)


def test_holm_matches_the_step_down_definition() -> None:
    p = np.array([[0.01, 0.04, 0.03, 0.5]])
    # sorted 0.01, 0.03, 0.04, 0.5 -> 0.04, 0.09, max(0.09, 0.08), 0.5
    assert np.allclose(holm(p), [[0.04, 0.09, 0.09, 0.5]])


def test_splitmix64_array_and_int_forms_agree() -> None:
    """One function in two forms: the watermark's uint64 arrays and the monitor's ints."""
    from distillguard.mixing import splitmix64, splitmix64_int

    xs = [0, 1, 2, 12345, 2**63 - 1, 2**64 - 1]
    arrays = splitmix64(np.array(xs, dtype=np.uint64)).tolist()
    assert arrays == [splitmix64_int(x) for x in xs]
    assert len(set(arrays)) == len(xs)  # a bijection: distinct inputs stay distinct
    assert splitmix64_int(0) == 0xE220A8397B1DCDAF  # splitmix64's first output from seed 0
