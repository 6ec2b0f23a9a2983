"""Each scheme: marks what it samples, leaves other text alone, composes with the sampling
options, attributes accounts, and detects with deduplication and prompt exclusion."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from distillguard.errors import InputError, InsufficientData
from distillguard.watermark import build_scheme
from distillguard.watermark.base import make_pairs

from .conftest import SECRET, VOCAB

SCHEMES = ["kgw", "gumbel", "synthid"]
KGW_VARIANTS = [
    dict(context="lefthash", context_width=1),
    dict(context="minhash", context_width=3),
    dict(context="selfhash", context_width=3),
]


def scheme(name: str, **kw):
    return build_scheme(name, secret=SECRET, key_id=1, vocab_size=VOCAB, **kw)


@pytest.mark.parametrize("name", SCHEMES)
def test_marked_text_is_detected_and_plain_text_is_not(name, sample_rows) -> None:
    s = scheme(name)
    marked = s.detect_many(list(sample_rows(s, rows=4, steps=120)))
    plain = s.detect_many(list(sample_rows(None, rows=4, steps=120, seed=7)))
    assert all(r.log10_p_value < -6 for r in marked), [r.log10_p_value for r in marked]
    assert all(r.p_value > 1e-3 for r in plain), [r.p_value for r in plain]
    assert all(r.num_scored > 80 for r in marked + plain)


@pytest.mark.parametrize("variant", KGW_VARIANTS)
def test_kgw_context_variants_mark_and_detect(variant, sample_rows) -> None:
    s = scheme("kgw", **variant)
    assert all(r.log10_p_value < -6 for r in s.detect_many(list(sample_rows(s, steps=120))))
    other = build_scheme(
        "kgw", secret=b"another-secret-of-32-bytes-xxxxx", key_id=1, vocab_size=VOCAB, **variant
    )
    assert all(r.p_value > 1e-3 for r in other.detect_many(list(sample_rows(s, steps=120))))


@pytest.mark.parametrize("name", SCHEMES)
def test_seeded_rows_reproduce_and_top_p_is_respected(name, sample_rows, bigram_logits) -> None:
    s = scheme(name)
    a = sample_rows(s, rows=2, steps=30, seed=3, top_p=0.5)
    b = sample_rows(s, rows=2, steps=30, seed=3, top_p=0.5)
    assert np.array_equal(a, b)
    # every chosen token lies in the top_p nucleus: of the plain distribution for the
    # distribution-preserving schemes, of the biased one for KGW (bias, then top_p, as in HF)
    ids = torch.as_tensor(a)
    for t in range(1, a.shape[1]):
        out = s.sample(
            bigram_logits[ids[:, t - 1]],
            ids[:, :t],
            temperature=1.0,
            top_p=0.5,
            generators=[None] * 2,
            tags=[None] * 2,
        )
        assert bool(torch.isfinite(out.logprobs.gather(1, out.tokens[:, None])).all())
        support = torch.isfinite(out.logprobs)
        probs = torch.softmax(bigram_logits[ids[:, t - 1]], -1)
        if name != "kgw":
            probs_sorted = probs.sort(-1, descending=True).values
            needed = int(((probs_sorted.cumsum(-1) - probs_sorted) < 0.5).sum(-1).max())
            assert int(support.sum(-1).max()) <= needed


@pytest.mark.parametrize("name", SCHEMES)
def test_temperature_zero_with_zero_temperature_off_is_greedy(name, bigram_logits) -> None:
    s = scheme(name, zero_temperature=0.0)
    ids = torch.randint(0, VOCAB, (3, 8), generator=torch.Generator().manual_seed(0))
    out = s.sample(
        bigram_logits[ids[:, -1]],
        ids,
        temperature=0.0,
        top_p=1.0,
        generators=[None] * 3,
        tags=[None] * 3,
    )
    assert torch.allclose(out.logprobs.exp().sum(-1), torch.ones(3), atol=1e-4)
    assert torch.equal(out.tokens, out.logprobs.argmax(-1))
    out = s.sample(
        bigram_logits[ids[:, -1]],
        ids,
        temperature=0.7,
        top_p=0.9,
        generators=[None] * 3,
        tags=["a", "b", None],
    )
    assert out.tokens.shape == (3,) and out.logprobs.shape == (3, VOCAB)
    assert torch.allclose(out.logprobs.exp().sum(-1), torch.ones(3), atol=1e-4)


@pytest.mark.parametrize("name", SCHEMES)
def test_temperature_zero_is_marked_deterministic_and_does_not_loop(name, sample_rows) -> None:
    """T = 0 requested: keyed low-temperature sampling, no RNG (the generators are unseeded,
    so any use of the global RNG would make the two runs differ)."""
    s = scheme(name)
    runs = [sample_rows(s, rows=4, steps=120, temperature=0.0, seeded=False) for _ in range(2)]
    assert np.array_equal(runs[0], runs[1])
    res = s.detect_many(list(runs[0]))
    assert all(r.p_value < 1e-3 for r in res), [r.p_value for r in res]
    assert all(r.num_scored > 60 for r in res)  # a loop would repeat its pairs
    greedy = sample_rows(scheme(name, zero_temperature=0.0), rows=4, steps=120, temperature=0.0)
    if name != "kgw":  # greedy without a bias carries no mark at all
        assert all(r.p_value > 1e-3 for r in s.detect_many(list(greedy)))
    with pytest.raises(InputError, match="zero_temperature"):
        scheme(name, zero_temperature=1.5)


@pytest.mark.parametrize("name", SCHEMES)
def test_accounts_are_attributed_on_mixed_text(name, sample_rows) -> None:
    s = scheme(name)
    rows = sample_rows(s, rows=4, steps=200, tags=["alice", "alice", "bob", "bob"])
    res = s.detect_many(list(rows), accounts=["carol", "alice", "bob", "dave"])
    for r, who in zip(res, ["alice", "alice", "bob", "bob"], strict=True):
        assert r.accounts[0].account == who
        assert r.accounts[0].p_value_corrected < 1e-3
        assert all(m.p_value_corrected > 1e-3 for m in r.accounts[1:])
    mixed = np.concatenate([rows[0], rows[2]])  # one text from two accounts
    top = {
        m.account
        for m in s.detect_many([mixed], accounts=["carol", "alice", "bob"])[0].accounts
        if m.p_value_corrected < 1e-3
    }
    assert top == {"alice", "bob"}


def test_kgw_account_bias_does_not_weaken_the_provider_test(sample_rows) -> None:
    with_acc = scheme("kgw")
    single = scheme("kgw", account_delta=0.0)
    a = with_acc.detect_many(list(sample_rows(with_acc, rows=8, steps=150, tags=["x"] * 8)))
    b = single.detect_many(list(sample_rows(single, rows=8, steps=150)))
    green_a = sum(r.score for r in a) / sum(r.num_scored for r in a)
    green_b = sum(r.score for r in b) / sum(r.num_scored for r in b)
    assert green_a >= green_b - 0.03


def test_repeated_pairs_count_once_and_prompt_copies_are_skipped() -> None:
    s = scheme("kgw")
    rng = np.random.default_rng(0)
    text = rng.integers(0, VOCAB, 60)
    base = s.detect(text)
    looped = s.detect(np.concatenate([text, text, text]))
    assert looped.num_scored == base.num_scored + 1  # only the seam pair is new
    assert looped.score - base.score in (0.0, 1.0)  # the seam pair is green or not
    assert looped.num_repeated == 3 * 59 + 2 - looped.num_scored  # 179 pairs, 60 distinct
    prompt = np.concatenate([rng.integers(0, VOCAB, 20), text[:30]])
    with_prompt = s.detect(text, prompt_ids=prompt)
    assert with_prompt.num_prompt_copied == 29  # pairs inside text[:30]
    assert with_prompt.num_scored == base.num_scored - 29


def test_too_short_empty_and_foreign_ids_are_clear_errors() -> None:
    s = scheme("synthid")  # context width 4
    with pytest.raises(InsufficientData):
        s.detect([])
    with pytest.raises(InsufficientData):
        s.detect([1, 2, 3, 4])
    with pytest.raises(InputError):
        s.detect([1, 2, 3, 4, VOCAB + 5])
    with pytest.raises(InputError):
        s.detect([[1, 2], [3, 4]])
    with pytest.raises(InputError):
        s.detect_many([[1, 2, 3, 4, 5.5]])  # floats are not token ids
    with pytest.raises(InputError):
        s.detect_many([[1, 2, [3]]])  # nested garbage
    r = s.detect_many([[], [1, 2, 3, 4, 5, 6]])
    assert r[0].num_scored == 0 and r[0].p_value == 1.0 and r[1].num_scored == 2


@pytest.mark.parametrize("name", SCHEMES)
def test_score_pairs_and_expected_scores_agree_with_detection(name) -> None:
    s = scheme(name)
    rng = np.random.default_rng(1)
    text = rng.integers(0, VOCAB, 50)
    h = s.context.width
    ctx = np.lib.stride_tricks.sliding_window_view(text[:-1], h)  # (N, h)
    toks = text[h:]
    scores = s.score_pairs(ctx, toks)
    r = s.detect_many([text])[0]
    mask = s.provider_pair_mask(make_pairs(text, np.array([len(text)]), h))
    kept = scores if mask is None else scores[mask]
    assert r.score == pytest.approx(kept.sum())  # random text: no repeats at V=512
    onehot = np.eye(VOCAB)[toks]
    assert np.allclose(s.expected_pair_scores(ctx, onehot), scores)
    uniform = np.full((len(toks), VOCAB), 1.0 / VOCAB)
    assert s.expected_pair_scores(ctx, uniform).mean() == pytest.approx(s.null_pair_mean, rel=0.1)
    assert s.null_pair_mean == {"kgw": 0.25, "gumbel": 1.0, "synthid": 12.0}[name]


@pytest.mark.parametrize("variant", KGW_VARIANTS, ids=lambda v: v["context"])
def test_kgw_bias_rows_from_the_generation_cache_equal_fresh_hashing(variant) -> None:
    """The generation caches (h = 1: the packed green table; wider contexts: the LRU of green
    lists with hits, misses, duplicates in a batch, overflow) give the bias the keyed hash
    defines: delta on provider-green, + account_delta on account-green inside it."""
    import distillguard.watermark.kgw as kgw_module

    s = scheme("kgw", **variant)
    rng = np.random.default_rng(0)
    contexts = rng.integers(0, VOCAB, (6, variant["context_width"]))
    contexts[3] = contexts[0]  # same context, other account; and a duplicate row below
    tags = ["a", "b", "a", "b", None, "a"]
    contexts[5] = contexts[0]
    green = s.green_mask(contexts)  # (6, V)
    expected = np.where(green, s.params.delta, 0.0)
    for i, tag in enumerate(tags):
        acc = s.context.vocab_values(s.account_key(tag), contexts[i : i + 1], VOCAB)[0]
        expected[i] += np.where(green[i] & (acc < s._thr_account), s.params.account_delta, 0.0)
    first = s.bias(contexts, VOCAB, tags)  # misses
    again = s.bias(contexts, VOCAB, tags)  # hits
    np.testing.assert_allclose(first, expected)
    np.testing.assert_allclose(again, expected)
    small = 4
    old, kgw_module.CODE_ROWS = kgw_module.CODE_ROWS, small
    try:
        overflow = scheme("kgw", **variant)
        overflow.bias(contexts[:3], VOCAB, tags[:3])
        # 4 rows, some new: the cache is full and starts over
        np.testing.assert_allclose(overflow.bias(contexts[2:], VOCAB, tags[2:]), expected[2:])
        # more rows than the cache holds: computed without it
        np.testing.assert_allclose(overflow.bias(contexts, VOCAB, tags), expected)
    finally:
        kgw_module.CODE_ROWS = old


def test_gumbel_argmax_picks_what_the_full_computation_picks() -> None:
    """The pruned Gumbel-max choice equals argmax over every candidate of log(r) / p (p > 0),
    on peaked, flat, nucleus-truncated and tied distributions and on r at its maximum."""
    import torch

    from distillguard.watermark.gumbel import gumbel_argmax, uniforms

    rng = np.random.default_rng(3)
    torch.manual_seed(3)
    for trial in range(120):
        B, V = int(rng.integers(1, 12)), int(rng.integers(2, 2000))
        lp = torch.log_softmax(torch.randn(B, V) * float(rng.choice([0.0, 0.3, 3, 30])), -1)
        if trial % 3 == 0:
            lp[:, rng.integers(0, V, V // 3)] = float("-inf")  # a nucleus cut
            lp = torch.log_softmax(lp, -1)
        probs = lp.exp()
        values = rng.integers(0, 2**63, (B, V)).astype(np.uint64) * np.uint64(2)
        if trial % 5 == 0:
            values[:, : min(V, 4)] = np.uint64(2**64 - 1)  # r = 1 - 2^-53
        r = torch.from_numpy(uniforms(values))
        full = torch.where(
            probs > 0,
            torch.log(r) / probs.double(),
            torch.tensor(float("-inf"), dtype=torch.float64),
        ).argmax(-1)
        assert torch.equal(gumbel_argmax(values, probs), full), trial


def test_synthid_candidate_pool_is_the_k_most_likely_tokens() -> None:
    """top_candidates returns, per row, the k largest values (ties to the lowest ids), ids
    ascending, for small and large vocabularies and rows with -inf entries."""
    from distillguard.watermark.synthid import top_candidates

    rng = np.random.default_rng(4)
    for trial in range(80):
        B, V = int(rng.integers(1, 10)), int(rng.integers(2, 20000))
        k = int(rng.integers(1, min(V, 600) + 1))
        a = (rng.standard_normal((B, V)) * rng.choice([0.01, 1, 5])).astype(np.float32)
        if trial % 4 == 0:
            a = np.round(a, 1)  # many ties
        if trial % 5 == 0:
            a[:, rng.integers(0, V, V // 2)] = -np.inf
        ids, vals = top_candidates(a, k)
        assert ids.shape == vals.shape == (B, k)
        assert (np.diff(ids, axis=1) > 0).all()
        np.testing.assert_array_equal(np.take_along_axis(a, ids, 1), vals)
        np.testing.assert_array_equal(np.sort(vals, 1), np.sort(a, 1)[:, V - k :])
        kth = np.sort(a, 1)[:, V - k]
        for i in range(B):  # ties at the k-th value: the lowest ids
            tied = np.flatnonzero(a[i] == kth[i])
            chosen = set(ids[i].tolist()) & set(tied.tolist())
            assert sorted(chosen) == tied[: len(chosen)].tolist()
