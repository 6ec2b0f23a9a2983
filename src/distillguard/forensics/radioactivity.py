"""Radioactivity tests (Sander et al. 2024): did a suspect model learn from our watermarked answers?

A student fine-tuned on watermarked text inherits a faint preference for the tokens the key
favours after each context. Three tests look for it, each with a p-value that is exact (or
a CLT z-test with an *analytic* null variance) under "the suspect never saw text marked with
this key":

1. ``top1-binomial`` (open weights; the paper's test): run the suspect on text, take its top
   prediction after every scored context, deduplicate (context, prediction) pairs, count the
   key's green pairs: Binomial(n, gamma), exact.
2. ``full-distribution`` (open weights; stronger): for every distinct scored context c, the
   suspect's predicted distribution q_c (averaged over the positions where c was scored) gives
   the expected per-pair score ``m_c = sum_v q_c(v) s(c, v)`` (the green mass for KGW). Under
   the null the keyed scores s(c, v) are i.i.d. across v and c with the scheme's per-pair mean
   mu0 and variance var0 (random-oracle hash), independent of q_c, so
   ``E m_c = mu0`` and ``Var m_c = var0 * ||q_c||^2`` exactly; the per-context z's are
   independent with mean 0 and variance 1 and their Stouffer sum is N(0, 1) by the CLT. The
   test uses the whole distribution instead of one bit per context, which is what low
   watermarked shares need. Calibration is shown by re-running it under random keys. The
   per-context z's are combined with equal weights (Stouffer), by raw mass, or ``precision``
   weighted by their expected size under the alternative, (1 - ||q_c||^2) / ||q_c||: any
   weights computed from the suspect's own q leave the null N(0, 1).
3. ``text-binomial`` (API only, or a suspect with another tokenizer): the suspect's *answers*,
   re-tokenised with our tokenizer, deduplicated over the whole corpus, exact binomial.

Calibration re-scores the same predictions / answers under random keys (``rekeyed_*``: the
suspect runs once, only the keyed hashing is repeated), so 10,000 keys cost seconds for the
binomial tests and K x C x V hashes for the full-distribution test.

Validity details:
- **Deduplication** (Fernandez et al. 2023): each (context, token) pair / context counts once.
- **No copying**: when the suspect reads our watermarked text, a context is only scored at its
  first occurrence in each sequence, so the suspect cannot copy a green continuation it has
  just read (the scored prediction depends only on tokens generated under *other* contexts).
- **Served contexts** (optional): only contexts that occur in the answers we served, where the
  student can have learnt anything, are scored: fewer units, larger lift.
- **Accounts** (KGW; ``radioactivity_accounts.py``): among provider-green mass, the
  account-green share is ``account_gamma`` under "not trained on this account's answers",
  conditionally on everything else, so each account gets an exact (top-1/text) or
  analytic-variance (full-distribution) test; Holm over the accounts tested.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
from scipy import stats

from distillguard.errors import InputError, InsufficientData, ModelError
from distillguard.watermark import build_scheme
from distillguard.watermark.base import WatermarkScheme
from distillguard.watermark.hashing import TOKEN_HASH
from distillguard.watermark.keys import derive_key

LOG10 = np.log(10.0)
WEIGHTINGS = ("stouffer", "mass", "precision")


@dataclass
class RadioactivityConfig:
    # Stouffer weighs every context's z equally (high-entropy contexts, whose green mass has
    # tiny null variance, count as much as peaked ones); "mass" sums raw green-mass excesses;
    # "precision" weighs each z by its expected size under the alternative, (1 - ||q||^2) /
    # ||q|| (a learnt mark moves only the mass a context spreads, against a null sd of
    # ||q||), which is the optimal linear combination and, being a function of the suspect's
    # own q, independent of the key under the null.
    weighting: str = "stouffer"
    # Score a context only at its first occurrence in each sequence (no copying from the input).
    first_occurrence_only: bool = True
    # Standardised lift per scored unit we want to be able to see; sets the minimum data size.
    min_effect_size: float = 0.2
    # Level at which that lift should be visible (for the minimum-data check only).
    power_alpha: float = 1e-3
    # Random keys of the calibration run (0: none); each gives one null p-value per test.
    random_keys: int = 0
    # Sequences per forward pass of the suspect.
    batch_size: int = 8
    # Cap on distinct contexts whose mean distribution is kept (memory: cap x vocab floats).
    max_contexts: int = 20_000
    # Torch threads: 2 shared cores oversubscribe fast (machine-facts).
    num_threads: int = 1
    # Seed of the random calibration keys.
    seed: int = 0

    def __post_init__(self) -> None:
        if self.weighting not in WEIGHTINGS:
            raise InputError(f"weighting must be one of {WEIGHTINGS}, got {self.weighting!r}")
        if not 0.0 < self.min_effect_size <= 5.0:
            raise InputError("min_effect_size must be in (0, 5]")
        if not 0.0 < self.power_alpha < 0.5:
            raise InputError("power_alpha must be in (0, 0.5)")
        if self.random_keys < 0 or self.batch_size < 1 or self.max_contexts < 1:
            raise InputError("random_keys >= 0, batch_size >= 1, max_contexts >= 1 required")

    def minimum_units(self) -> int:
        """Scored units below which the wanted lift can never reach ``power_alpha``."""
        z = stats.norm.isf(self.power_alpha)
        return int(np.ceil((z / self.min_effect_size) ** 2))


@dataclass(frozen=True)
class TestResult:
    test: str  # top1-binomial | full-distribution | text-binomial
    statistic: float  # green count (binomial tests) or the combined z (full-distribution)
    expected: float  # the statistic's null expectation
    num_scored: int  # deduplicated pairs / distinct contexts that entered the test
    z_score: float
    p_value: float
    log10_p_value: float  # finite even when p underflows
    exact: bool  # exact tail (binomial) vs CLT with an analytic null variance
    null_log10_p: tuple[float, ...] = ()  # the same test under random keys (calibration)

    @property
    def calibration(self) -> dict[str, float] | None:
        """KS test of the random-key p-values against U(0, 1), and their FPR at 0.05/1e-3."""
        if len(self.null_log10_p) < 5:
            return None
        p = 10.0 ** np.asarray(self.null_log10_p)
        return {
            "keys": float(p.size),
            "ks_p": float(stats.kstest(p, "uniform").pvalue),
            "fpr_0.05": float((p < 0.05).mean()),
            "fpr_0.001": float((p < 1e-3).mean()),
        }


@dataclass(frozen=True)
class AccountEvidence:
    account: str
    test: str
    num_scored: int  # provider-green units carrying this account's signal
    z_score: float
    log10_p_value: float
    p_value: float
    p_holm: float  # Holm-corrected over the accounts tested
    cluster_id: str | None = None


@dataclass(frozen=True)
class RadioactivityReport:
    suspect: str
    mode: str  # open-weights | api | local-generation
    scheme: str
    key_id: int
    tests: tuple[TestResult, ...]
    accounts: tuple[AccountEvidence, ...] = ()
    texts: int = 0  # sequences read or answers scored
    tokens: int = 0  # tokens read by / received from the suspect
    served_contexts: int | None = None  # contexts of our served answers (None: no filter)
    settings: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["test"] = "radioactivity"
        for t, d in zip(self.tests, out["tests"], strict=True):
            d["calibration"] = t.calibration
        return out


# --------------------------------------------------------------------------- null moments


def null_moments(scheme: WatermarkScheme, *, account: bool = False) -> tuple[float, float]:
    """Per-pair score mean and variance under the null, from the score of uniform hashes.

    The scores are functions of a uniform 64-bit value, so 2^20 draws give both to ~1e-3;
    for KGW they are exactly gamma and gamma (1 - gamma), returned exactly.
    """
    params = getattr(scheme, "params", None)
    gamma = getattr(params, "account_gamma" if account else "gamma", None)
    if scheme.name == "kgw" and gamma is not None:
        return float(gamma), float(gamma * (1.0 - gamma))
    u = np.random.default_rng(12345).integers(0, 2**63, size=2**20, dtype=np.uint64) * np.uint64(2)
    s = scheme.account_pair_scores(u) if account else scheme.pair_scores(u)
    return float(s.mean()), float(s.var())


def random_schemes(scheme: WatermarkScheme, count: int, seed: int) -> list[WatermarkScheme]:
    """Schemes like ``scheme`` under ``count`` random master secrets (calibration keys)."""
    rng = np.random.default_rng(seed)
    params = asdict(scheme.params) if hasattr(scheme, "params") else {}
    return [
        build_scheme(
            scheme.name, secret=rng.bytes(32), key_id=1, vocab_size=scheme.vocab_size, **params
        )
        for _ in range(count)
    ]


# --------------------------------------------------------------------------- scored units


@dataclass(frozen=True)
class Predictions:
    """What the suspect predicted after each scored context (open-weights mode)."""

    contexts: np.ndarray  # (C, h) int64 distinct contexts
    mean_probs: np.ndarray  # (C, V) float32 mean predicted distribution per context
    top1_contexts: np.ndarray  # (N, h) int64 deduplicated (context, top-1) pairs ...
    top1_tokens: np.ndarray  # (N,) int64 ... and their predicted tokens
    positions: int  # positions scored (before per-context averaging)
    tokens: int  # tokens read


def context_keys(contexts: np.ndarray, vocab: int) -> np.ndarray:
    """One int64 per context row (N, h) -> (N,), exact (base-``vocab`` digits)."""
    h = contexts.shape[1]
    if vocab**h >= 2**62:
        raise InputError(f"context width {h} too large for exact keys with vocab {vocab}")
    keys = np.zeros(len(contexts), dtype=np.int64)
    for j in range(h):
        keys = keys * vocab + contexts[:, j]
    return keys


def sliding_contexts(ids: np.ndarray, width: int) -> tuple[np.ndarray, np.ndarray]:
    """Contexts and next tokens of one sequence: ids (L,) -> ((L-h, h), (L-h,))."""
    n = ids.size - width
    if n <= 0:
        return np.zeros((0, width), np.int64), np.zeros(0, np.int64)
    ctx = np.stack([ids[j : j + n] for j in range(width)], axis=1)
    return ctx.astype(np.int64), ids[width:].astype(np.int64)


def served_context_keys(answers: Sequence[Sequence[int]], width: int, vocab: int) -> np.ndarray:
    """Sorted distinct keys of the contexts that occur in our served answers (token ids)."""
    keys = [
        context_keys(sliding_contexts(np.asarray(a, np.int64), width)[0], vocab)
        for a in answers
        if len(a) > width
    ]
    return np.unique(np.concatenate(keys)) if keys else np.zeros(0, np.int64)


def collect_predictions(
    model: Any,
    sequences: Sequence[Sequence[int]],
    *,
    width: int,
    vocab: int,
    config: RadioactivityConfig,
    served: np.ndarray | None = None,
    progress: Any = None,
) -> Predictions:
    """Run the suspect on token sequences (our tokenizer's ids) and keep its predictions.

    Position t (t >= h) has context ids[t-h:t] and prediction softmax(logits[t-1])[:vocab].
    """
    import torch

    torch.set_num_threads(config.num_threads)
    limit = int(getattr(model.config, "max_position_embeddings", 512) or 512)
    seqs = [np.asarray(s, np.int64)[:limit] for s in sequences if len(s) > width]
    index: dict[int, int] = {}
    sums = np.zeros((min(config.max_contexts, 1024), vocab), np.float64)
    counts: list[int] = []
    ctx_rows: list[np.ndarray] = []
    top_pairs: list[np.ndarray] = []
    positions = tokens = 0
    for start in range(0, len(seqs), config.batch_size):
        batch = seqs[start : start + config.batch_size]
        length = max(s.size for s in batch)
        ids = torch.zeros((len(batch), length), dtype=torch.long)
        mask = torch.zeros((len(batch), length), dtype=torch.long)
        for i, s in enumerate(batch):  # right padding: positions stay 0..L-1
            ids[i, : s.size] = torch.from_numpy(s)
            mask[i, : s.size] = 1
        with torch.no_grad():
            logits = model(input_ids=ids, attention_mask=mask).logits  # (B, T, V_model)
        if logits.shape[-1] < vocab:
            raise ModelError(
                f"suspect predicts {logits.shape[-1]} tokens, our vocabulary has "
                f"{vocab}: not the same tokenizer"
            )
        for i, s in enumerate(batch):
            tokens += int(s.size)
            ctx = np.stack([s[j : s.size - width + j + 1] for j in range(width)], axis=1)
            keys = context_keys(ctx, vocab)  # (L-h+1,) contexts of positions h..L
            keep = np.ones(keys.size, bool)
            if config.first_occurrence_only:
                _, first = np.unique(keys, return_index=True)
                keep[:] = False
                keep[first] = True
            if served is not None:
                keep &= np.isin(keys, served)
            rows = np.flatnonzero(keep)
            if rows.size == 0:
                continue
            probs = torch.softmax(logits[i, rows + width - 1, :vocab].double(), dim=-1).numpy()
            positions += rows.size
            top = probs.argmax(axis=1)
            top_pairs.append(np.concatenate([ctx[rows], top[:, None]], axis=1))
            for r, key in enumerate(keys[rows].tolist()):
                slot = index.get(key)
                if slot is None:
                    if len(index) >= config.max_contexts:
                        continue
                    slot = index[key] = len(index)
                    counts.append(0)
                    ctx_rows.append(ctx[rows[r]])
                    if slot >= sums.shape[0]:
                        sums = np.concatenate([sums, np.zeros_like(sums)])
                sums[slot] += probs[r]
                counts[slot] += 1
        if progress is not None:
            progress(min(start + config.batch_size, len(seqs)), len(seqs))
    num = len(index)
    mean = (sums[:num] / np.maximum(np.asarray(counts, np.float64), 1)[:, None]).astype(np.float32)
    pairs = (
        np.unique(np.concatenate(top_pairs), axis=0)
        if top_pairs
        else np.zeros((0, width + 1), np.int64)
    )
    return Predictions(
        contexts=np.asarray(ctx_rows, np.int64).reshape(num, width),
        mean_probs=mean,
        top1_contexts=pairs[:, :width],
        top1_tokens=pairs[:, width],
        positions=positions,
        tokens=tokens,
    )


# --------------------------------------------------------------------------- the tests


def _require(units: int, what: str, config: RadioactivityConfig) -> None:
    need = config.minimum_units()
    if units < need:
        raise InsufficientData(
            f"only {units} {what} could be scored; at least {need} are needed to see a "
            f"standardised lift of {config.min_effect_size} at alpha={config.power_alpha:g}. "
            "Give the suspect more text (--harvest, --prompts, more queries)."
        )


def binomial_test(
    scheme: WatermarkScheme, contexts: np.ndarray, tokens: np.ndarray, name: str
) -> TestResult:
    """Exact test on deduplicated (context, token) pairs: contexts (N, h), tokens (N,)."""
    scores = scheme.score_pairs(contexts, tokens)  # (N,)
    n = int(scores.size)
    total = float(scores.sum())
    log10p = float(scheme.log10_pvalue(np.array([total]), np.array([n]))[0])
    mu, var = null_moments(scheme)
    z = (total - mu * n) / np.sqrt(max(var * n, 1e-12))
    return TestResult(name, total, mu * n, n, float(z), 10.0**log10p, log10p, exact=True)


def unit_weights(
    variance: np.ndarray, weighting: str, spread: np.ndarray | None = None
) -> np.ndarray:
    """Coefficients a (C,) with combined z = sum_c a_c (m_c - mu0) for per-unit null
    variances (C,); units with no null variance get 0.

    ``spread`` (C,): 1 - ||q_c||^2 of each unit's distribution, for the precision weighting.
    The coefficients depend on the suspect's q only, never on the key, so the combined z is
    N(0, 1) under the null for every weighting, and re-keying (calibration) re-uses them.
    """
    ok = variance > 1e-15
    a = np.zeros(variance.shape, np.float64)
    if not ok.any():
        return a
    sd = np.sqrt(variance[ok])
    if weighting == "stouffer":  # every unit's z equally
        a[ok] = 1.0 / (sd * np.sqrt(ok.sum()))
    elif weighting == "precision":
        if spread is None:
            raise InputError("the precision weighting needs each unit's spread 1 - ||q||^2")
        w = spread[ok] / sd  # (C,) expected z under the alternative
        norm = np.sqrt((w**2).sum())
        a[ok] = w / sd / norm if norm > 0 else 0.0
    else:  # mass: raw excesses over their pooled sd
        a[ok] = 1.0 / np.sqrt(variance[ok].sum())
    return a


def combined_z(
    excess: np.ndarray, variance: np.ndarray, weighting: str, spread: np.ndarray | None = None
) -> float:
    """Combined z from per-unit excesses (C,) over their null variances (C,).

    Any weights that do not depend on the key keep the sum N(0, 1) under the null.
    """
    return float((unit_weights(variance, weighting, spread) * excess).sum())


def full_distribution_z(
    scheme: WatermarkScheme, preds: Predictions, weighting: str, chunk: int = 256
) -> float:
    """Combined z of the expected per-pair score of the suspect's distributions."""
    mu, var = null_moments(scheme)
    excess, variance, spread = [], [], []
    for i in range(0, len(preds.contexts), chunk):
        q = preds.mean_probs[i : i + chunk].astype(np.float64)  # (c, V)
        q /= q.sum(axis=1, keepdims=True)
        m = scheme.expected_pair_scores(preds.contexts[i : i + chunk], q)  # (c,)
        excess.append(m - mu)
        variance.append(var * (q * q).sum(axis=1))
        spread.append(1.0 - (q * q).sum(axis=1))
    return combined_z(
        np.concatenate(excess), np.concatenate(variance), weighting, np.concatenate(spread)
    )


def _normal_result(name: str, z: float, n: int, null: Sequence[float] = ()) -> TestResult:
    log10p = float(stats.norm.logsf(z) / LOG10)
    return TestResult(
        name, z, 0.0, n, z, 10.0**log10p, log10p, exact=False, null_log10_p=tuple(null)
    )


def open_weights_tests(
    scheme: WatermarkScheme, preds: Predictions, config: RadioactivityConfig
) -> tuple[TestResult, ...]:
    """top1-binomial and full-distribution tests, each calibrated under random keys."""
    _require(len(preds.contexts), "distinct contexts", config)
    top1 = binomial_test(scheme, preds.top1_contexts, preds.top1_tokens, "top1-binomial")
    full = _normal_result(
        "full-distribution",
        full_distribution_z(scheme, preds, config.weighting),
        len(preds.contexts),
    )
    if config.random_keys:  # the same predictions, re-scored under each random key
        keys = random_keys(scheme, config.random_keys, config.seed)
        null_top = rekeyed_binomial(scheme, keys, preds.top1_contexts, preds.top1_tokens)
        z = rekeyed_full_distribution(scheme, keys, preds, config.weighting)
        top1 = _with_null(top1, null_top)
        full = _with_null(full, stats.norm.logsf(z) / LOG10)
    return top1, full


def _with_null(result: TestResult, null: Sequence[float] | np.ndarray) -> TestResult:
    from dataclasses import replace

    return replace(result, null_log10_p=tuple(float(x) for x in null))


# --------------------------------------------------------------------------- re-keyed nulls
# Calibration re-scores the *same* predictions / answers under many random keys: the suspect
# is run once, and only the keyed hashing is repeated, vectorised per key. The keys are the
# provider keys ``random_schemes`` would build (same seed, same keys), without the schemes.


def random_keys(scheme: WatermarkScheme, count: int, seed: int) -> np.ndarray:
    """Provider keys of ``random_schemes(scheme, count, seed)``: (K,) uint64."""
    rng = np.random.default_rng(seed)
    return np.array(
        [derive_key(rng.bytes(32), scheme.name, 1, "provider") for _ in range(count)],
        dtype=np.uint64,
    )


def rekeyed_binomial(
    scheme: WatermarkScheme, keys: np.ndarray, contexts: np.ndarray, tokens: np.ndarray
) -> np.ndarray:
    """log10 p of the exact pair test under each key: keys (K,), pairs (N, h), (N,) -> (K,).

    The pairs must be deduplicated already (as ``binomial_test`` takes them)."""
    ctx_h = TOKEN_HASH.of(np.asarray(contexts, np.int64).reshape(len(tokens), -1))  # (N, h)
    tok_h = TOKEN_HASH.of(np.asarray(tokens, np.int64))  # (N,)
    totals = np.array(
        [scheme.pair_scores(scheme.context.pair_hashed(int(k), ctx_h, tok_h)).sum() for k in keys]
    )
    return np.asarray(scheme.log10_pvalue(totals, np.full(totals.size, len(tok_h))), np.float64)


def rekeyed_full_distribution(
    scheme: WatermarkScheme,
    keys: np.ndarray,
    preds: Predictions,
    weighting: str,
    chunk: int = 512,
) -> np.ndarray:
    """Combined z of ``full_distribution_z`` under each key: keys (K,) -> (K,).

    z = sum_c a_c (sum_v q_c(v) s_k(c, v) - mu0) with key-independent a_c, so per key only the
    (C, V) keyed scores are computed: K x C x V hashes, no model call."""
    mu, var = null_moments(scheme)
    q = preds.mean_probs.astype(np.float64)
    q /= q.sum(axis=1, keepdims=True)  # (C, V)
    sq = (q * q).sum(axis=1)  # (C,)
    a = unit_weights(var * sq, weighting, 1.0 - sq)  # (C,)
    used = np.flatnonzero(a != 0.0)
    weighted = (q[used] * a[used, None]).astype(np.float64)  # (C', V)
    contexts = preds.contexts[used]
    offset = mu * a.sum()
    vocab = q.shape[1]
    z = np.empty(len(keys))
    for j, key in enumerate(keys.tolist()):
        total = 0.0
        for i in range(0, len(used), chunk):
            u = scheme.context.vocab_values(int(key), contexts[i : i + chunk], vocab)  # (c, V)
            s = scheme.pair_scores(u.ravel()).reshape(u.shape)
            total += float(np.einsum("cv,cv->", weighted[i : i + chunk], s))
        z[j] = total - offset
    return z


def text_pairs(
    sequences: Sequence[Sequence[int]], width: int, vocab: int, served: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray, int]:
    """Corpus-wide deduplicated (context, token) pairs of texts: -> ((N, h), (N,), tokens)."""
    ctxs, toks, total = [], [], 0
    for seq in sequences:
        ids = np.asarray(seq, np.int64)
        total += ids.size
        if ids.size and (ids.min() < 0 or ids.max() >= vocab):
            raise InputError("token id out of our vocabulary: texts must be re-tokenised")
        c, t = sliding_contexts(ids, width)
        if served is not None and c.size:
            keep = np.isin(context_keys(c, vocab), served)
            c, t = c[keep], t[keep]
        ctxs.append(c)
        toks.append(t)
    if not ctxs:
        return np.zeros((0, width), np.int64), np.zeros(0, np.int64), 0
    pairs = np.unique(
        np.concatenate([np.concatenate(ctxs), np.concatenate(toks)[:, None]], 1), axis=0
    )
    return pairs[:, :width], pairs[:, width], total


def text_tests(
    scheme: WatermarkScheme,
    sequences: Sequence[Sequence[int]],
    config: RadioactivityConfig,
    served: np.ndarray | None = None,
) -> tuple[TestResult, np.ndarray, np.ndarray, int]:
    """Exact test on the suspect's own answers (re-tokenised with our tokenizer)."""
    ctx, tok, total = text_pairs(sequences, scheme.context.width, scheme.vocab_size, served)
    _require(len(tok), "distinct (context, token) pairs of the suspect's answers", config)
    result = binomial_test(scheme, ctx, tok, "text-binomial")
    if config.random_keys:
        keys = random_keys(scheme, config.random_keys, config.seed)
        result = _with_null(result, rekeyed_binomial(scheme, keys, ctx, tok))
    return result, ctx, tok, total
