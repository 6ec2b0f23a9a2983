"""Shared machinery of the watermark schemes: keyed hashing, sampling helpers, the detector.

Hashing
-------
Every scheme needs a keyed pseudo-random value ``u(key, context, token)`` (64 bits): KGW's
green test is ``u < gamma * 2^64``, Gumbel's uniform is the top 53 bits of ``u``, SynthID's
g-values are its top bits. It is computed with splitmix64's finalizer on ``uint64`` numpy
arrays, so both sides vectorize and agree bit for bit:

* generation: ``vocab_values(key, contexts)`` -> ``(B, V)``: one mix per vocabulary entry
  and row, no ``V x V`` table, so a 128k vocabulary costs 128k mixes per row per step;
* detection: ``pair_values(key, contexts, tokens)`` -> ``(N,)``: one value per scored pair.

The context seed comes in three variants (Kirchenbauer et al. 2023b, "On the reliability"):
``lefthash`` (chain hash of the previous h tokens; h=1 is the original KGW), ``minhash``
(minimum of the per-token hashes of the previous h tokens: one edit changes it only if it hits
the minimum) and ``selfhash`` (anchored min-hash whose window also contains the candidate token
itself, plus the previous token as anchor).

Detection
---------
``WatermarkScheme.detect_many`` scores a batch of token sequences without a per-token Python
loop:

1. all (context, token) pairs of all texts are flattened and hashed at once;
2. **deduplication** (Fernandez et al. 2023, "Three Bricks"): a pair is scored once per text.
   Identical pairs have identical keyed values ``u`` (distinct pairs collide with probability
   2^-64), so deduplicating on ``u`` is deduplicating on (watermark seed, token) -- exactly the
   unit whose score is independent of the others under the null;
3. **prompt-copy exclusion**: pairs whose ``u`` also occurs among the prompt's pairs are not
   scored (copying the prompt is not evidence);
4. steps 2-3 are one row-wise ``np.sort`` of a padded (texts x pairs) matrix where the lowest
   bit of each value marks "from the prompt" (short rows sort in cache, much faster than one
   global sort or an argsort; the scores only use the top bits of ``u``);
5. each scheme turns the kept values into scores and an **exact** p-value of the score sum
   (binomial tail, Gamma tail), computed in log space so that strong marks do not underflow to
   0 (``log10_p_value`` is always finite).

Under the null hypothesis (a text produced without the key), deduplicated distinct values are
i.i.d. uniform (random-oracle model of the hash), which is what makes the p-values exact.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
from scipy import special

from distillguard.errors import InputError, InsufficientData, WatermarkError
from distillguard.watermark import keys as keymod

U64 = np.uint64
SENTINEL = U64(0xFFFFFFFFFFFFFFFF)  # padding in the row-sorted matrix (sorts last)
_TOKEN_SALT = U64(0x243F6A8885A308D3)  # digits of pi: separates token and key domains
_ANCHOR_SALT = U64(0x13198A2E03707344)
_CONTEXT_SALT = U64(0xA4093822299F31D0)
CONTEXT_MODES = ("lefthash", "minhash", "selfhash")
LOG10 = np.log(10.0)


def splitmix64(x: np.ndarray) -> np.ndarray:
    """splitmix64 finalizer, elementwise on uint64 (wrapping arithmetic); same shape out."""
    z = x + U64(0x9E3779B97F4A7C15)
    z = (z ^ (z >> U64(30))) * U64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> U64(27))) * U64(0x94D049BB133111EB)
    return z ^ (z >> U64(31))


class _TokenTable:
    """Unkeyed per-token hashes ``mix(v ^ salt)`` for v < size, grown on demand."""

    def __init__(self) -> None:
        self._table = splitmix64(np.arange(1024, dtype=U64) ^ _TOKEN_SALT)

    def get(self, size: int) -> np.ndarray:  # (size,) uint64
        if size > self._table.size:
            self._table = splitmix64(np.arange(max(size, 2 * self._table.size), dtype=U64)
                                     ^ _TOKEN_SALT)
        return self._table[:size]

    def of(self, tokens: np.ndarray) -> np.ndarray:  # same shape as tokens, uint64
        top = int(tokens.max()) + 1 if tokens.size else 0
        return self.get(max(top, 1))[tokens]


TOKEN_HASH = _TokenTable()


@dataclass(frozen=True)
class ContextHash:
    """How the keyed seed of a position is computed from its context (and maybe the token)."""

    mode: str = "lefthash"  # lefthash | minhash | selfhash (see module docstring)
    width: int = 1  # h previous tokens; larger h = more distinct seeds, less robust to edits

    def __post_init__(self) -> None:
        if self.mode not in CONTEXT_MODES:
            raise InputError(f"unknown context mode {self.mode!r}; choose {CONTEXT_MODES}")
        if not 1 <= self.width <= 16:
            raise InputError(f"context width must be in 1..16, got {self.width}")

    def context_seed(self, key: int, contexts: np.ndarray) -> np.ndarray:
        """Keyed seed of each context (N, h) -> (N,) uint64, independent of the token."""
        th = TOKEN_HASH.of(contexts)  # (N, h)
        k = U64(key)
        if self.mode == "lefthash":
            seed = np.full(contexts.shape[0], k, dtype=U64)
            for j in range(self.width):
                seed = splitmix64(seed ^ th[:, j])
            return seed
        return splitmix64(th ^ k).min(axis=1)  # minhash / selfhash window minimum, (N,)

    def pair_values(self, key: int, contexts: np.ndarray, tokens: np.ndarray) -> np.ndarray:
        """u(key, context, token) for pairs: contexts (N, h) int64, tokens (N,) -> (N,) uint64."""
        tt = TOKEN_HASH.of(tokens)  # (N,)
        seed = self.context_seed(key, contexts)
        if self.mode == "selfhash":
            k = U64(key)
            seed = np.minimum(seed, splitmix64(tt ^ k))
            seed = splitmix64(seed ^ splitmix64(TOKEN_HASH.of(contexts[:, -1]) ^ k ^ _ANCHOR_SALT))
        return splitmix64(seed ^ tt)

    def vocab_values(self, key: int, contexts: np.ndarray, vocab: int) -> np.ndarray:
        """u for every candidate token: contexts (B, h) -> (B, V) uint64 (generation side)."""
        tv = TOKEN_HASH.get(vocab)[None, :]  # (1, V)
        seed = self.context_seed(key, contexts)[:, None]  # (B, 1)
        if self.mode == "selfhash":
            k = U64(key)
            seed = np.minimum(seed, splitmix64(tv ^ k))  # (B, V)
            anchor = splitmix64(TOKEN_HASH.of(contexts[:, -1]) ^ k ^ _ANCHOR_SALT)[:, None]
            seed = splitmix64(seed ^ anchor)
        return splitmix64(seed ^ tv)

    def context_flag_values(self, key: int, contexts: np.ndarray) -> np.ndarray:
        """A keyed value of the context alone (N,) uint64 (e.g. to pick account contexts)."""
        th = TOKEN_HASH.of(contexts)
        seed = np.full(contexts.shape[0], U64(key) ^ _CONTEXT_SALT, dtype=U64)
        for j in range(contexts.shape[1]):
            seed = splitmix64(seed ^ th[:, j])
        return seed


def fraction_threshold(fraction: float) -> U64:
    """uint64 threshold t with P(u < t) = fraction for uniform u; even, so bit 0 never matters."""
    return U64(int(fraction * 2.0**64) & ~1 & 0xFFFFFFFFFFFFFFFF)


# ---------------------------------------------------------------- exact tails in log space

def binom_log10_sf(k: np.ndarray, n: np.ndarray, p: float) -> np.ndarray:
    """log10 P(Binomial(n, p) >= k), elementwise (k, n int arrays); exact unless it underflows.

    Where the double-precision tail underflows (< 1e-290) the value is the upper bound
    pmf(k) / (1 - r), r = (n-k)/(k+1) * p/(1-p) the ratio of consecutive terms: a conservative
    (never smaller) p-value, within a factor 1/(1-r) of the truth.
    """
    k = np.asarray(k, dtype=np.float64)
    n = np.asarray(n, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        sf = np.where(k <= 0, 1.0, special.bdtrc(np.maximum(k - 1, 0), n, p))
        out = np.log10(np.clip(sf, 1e-300, 1.0))
        tiny = (sf < 1e-290) & (k > 0) & (k <= n)
        if tiny.any():
            kk, nn = k[tiny], n[tiny]
            logpmf = (special.gammaln(nn + 1) - special.gammaln(kk + 1)
                      - special.gammaln(nn - kk + 1) + kk * np.log(p) + (nn - kk) * np.log1p(-p))
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


# ---------------------------------------------------------------------------- results

@dataclass(frozen=True)
class AccountMatch:
    account: str
    score: float  # the scheme's account statistic (sum of per-pair scores)
    num_scored: int  # deduplicated pairs carrying this account's signal
    z_score: float
    p_value: float  # raw one-sided p-value for this account
    p_value_corrected: float  # Holm-corrected over all accounts tried
    log10_p_value: float


@dataclass(frozen=True)
class DetectionResult:
    scheme: str
    key_id: int
    score: float  # the scheme's statistic: green count, sum of -log(1-r), or sum of g-values
    z_score: float  # standardized score, for reading only (the p-value is exact)
    num_tokens: int  # tokens in the text
    num_scored: int  # deduplicated pairs that entered the test
    num_repeated: int  # pairs dropped as repeats of an earlier (context, token)
    num_prompt_copied: int  # distinct pairs dropped because they occur in the prompt
    p_value: float  # provider-wide, exact, Bonferroni-corrected over keys_tried
    log10_p_value: float  # log10 of p_value, finite even when p_value underflows to 0
    keys_tried: int = 1
    accounts: tuple[AccountMatch, ...] = field(default=())  # best first

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class _RowStats:
    score: np.ndarray  # (R,) float64 sum of per-pair scores of kept pairs
    num_scored: np.ndarray  # (R,) int64
    num_prompt_copied: np.ndarray  # (R,) int64
    num_pairs: np.ndarray  # (R,) int64 pairs offered (before dedup / prompt exclusion)


@dataclass(frozen=True)
class _Pairs:
    contexts: np.ndarray  # (N, h) int64
    tokens: np.ndarray  # (N,) int64
    rows: np.ndarray  # (N,) int64 text index, nondecreasing


def _segments(lengths: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(starts (R,), within-segment offsets (sum,)) of consecutive segments of ``lengths``."""
    starts = np.cumsum(lengths) - lengths
    total = int(lengths.sum())
    offsets = np.arange(total, dtype=np.int64) - np.repeat(starts, lengths)
    return starts, offsets


def make_pairs(seqs: Sequence[np.ndarray], width: int) -> _Pairs:
    """All (previous ``width`` tokens, token) pairs of each sequence, flattened."""
    lens = np.fromiter((len(s) for s in seqs), dtype=np.int64, count=len(seqs))
    flat = np.concatenate(seqs).astype(np.int64, copy=False) if len(seqs) else np.zeros(0, np.int64)
    npairs = np.maximum(lens - width, 0)
    _, offs = _segments(npairs)
    rows = np.repeat(np.arange(len(seqs), dtype=np.int64), npairs)
    pos = (np.cumsum(lens) - lens)[rows] + width + offs  # (N,) position of the scored token
    contexts = flat[pos[:, None] - width + np.arange(width)]  # (N, h)
    return _Pairs(contexts=contexts, tokens=flat[pos], rows=rows)


def _row_stats(values: np.ndarray, rows: np.ndarray, pvalues: np.ndarray, prows: np.ndarray,
               num_rows: int, scorer: Any, chunk_rows: int = 256) -> _RowStats:
    """Deduplicate and prompt-exclude keyed values per row, then sum their scores.

    values (N,) uint64 with rows (N,) nondecreasing; pvalues (M,) prompt values with prows (M,).
    ``scorer(kept_values (K,)) -> (K,) float`` turns values into per-pair scores.
    """
    n_text = np.bincount(rows, minlength=num_rows).astype(np.int64)  # (R,)
    n_prompt = np.bincount(prows, minlength=num_rows).astype(np.int64)  # (R,)
    t_start = np.cumsum(n_text) - n_text
    p_start = np.cumsum(n_prompt) - n_prompt
    score = np.zeros(num_rows)
    scored = np.zeros(num_rows, dtype=np.int64)
    copied = np.zeros(num_rows, dtype=np.int64)
    order = np.argsort(n_text + n_prompt, kind="stable")  # similar widths share a chunk
    for c in range(0, num_rows, chunk_rows):
        rows_c = order[c:c + chunk_rows]  # (r,)
        tl, pl = n_text[rows_c], n_prompt[rows_c]
        width = int((tl + pl).max()) if rows_c.size else 0
        if width == 0:
            continue
        r = rows_c.size
        mat = np.full((r, width), SENTINEL, dtype=U64)  # (r, W)
        _, toff = _segments(tl)
        lr = np.repeat(np.arange(r), tl)
        mat[lr, toff] = values[np.repeat(t_start[rows_c], tl) + toff] & ~U64(1)
        if pl.any():
            _, poff = _segments(pl)
            lp = np.repeat(np.arange(r), pl)
            mat[lp, tl[lp] + poff] = pvalues[np.repeat(p_start[rows_c], pl) + poff] | U64(1)
        mat.sort(axis=1)
        flat = mat.ravel()
        hi = flat >> U64(1)
        start = np.empty(flat.size, dtype=bool)
        start[0] = True
        np.not_equal(hi[1:], hi[:-1], out=start[1:])
        start[::width] = True  # a group never spans two rows
        first = np.flatnonzero(start)  # (G,) first index of each group
        last = np.empty_like(first)
        last[:-1] = first[1:] - 1
        last[-1] = flat.size - 1
        is_text = (flat[first] & U64(1)) == 0  # text values sort before prompt copies
        in_prompt = (flat[last] & U64(1)).astype(bool)  # (sentinel groups: is_text False)
        keep = first[is_text & ~in_prompt]
        cop = first[is_text & in_prompt]
        krow = keep // width
        score[rows_c] = np.bincount(krow, weights=scorer(flat[keep]), minlength=r)
        scored[rows_c] = np.bincount(krow, minlength=r)
        copied[rows_c] = np.bincount(cop // width, minlength=r)
    return _RowStats(score=score, num_scored=scored, num_prompt_copied=copied, num_pairs=n_text)


# ---------------------------------------------------------------------- the base class

def _as_tokens(seq: Sequence[int] | np.ndarray, vocab_size: int) -> np.ndarray:
    arr = np.asarray(seq)
    if arr.ndim != 1:
        raise InputError("token ids must be a flat sequence")
    if arr.size == 0:
        return np.zeros(0, dtype=np.int64)
    if not np.issubdtype(arr.dtype, np.integer):
        raise InputError("token ids must be integers")
    if int(arr.min()) < 0 or int(arr.max()) >= vocab_size:
        raise InputError(f"token id out of range [0, {vocab_size}): not this tokenizer's ids?")
    return arr.astype(np.int64, copy=False)


class WatermarkScheme(ABC):
    """A keyed watermark: ``sample`` at generation (TokenSampler), ``detect`` at detection.

    Subclasses define the per-pair score of a keyed value, the exact tail of the score sum,
    which pairs carry the provider / account signal, and the sampling rule.
    """

    name: str = "base"

    def __init__(self, *, secret: bytes, key_id: int, vocab_size: int,
                 context: ContextHash) -> None:
        if vocab_size < 2:
            raise InputError("vocab_size must be at least 2")
        self._secret = keymod.check_secret(secret)
        self.key_id = keymod.check_key_id(key_id)
        self.vocab_size = int(vocab_size)
        self.context = context
        self._provider_key = keymod.derive_key(self._secret, self.name, key_id, "provider")

    def __repr__(self) -> str:  # the secret never appears
        return f"{type(self).__name__}(key_id={self.key_id}, vocab_size={self.vocab_size})"

    def account_key(self, account: str | None) -> int:
        """Per-account key; ``None`` (no account) maps to the anonymous account ``""``."""
        return keymod.account_key(self._secret, self.name, self.key_id, account or "")

    # ---- per-scheme statistics (pure functions of the keyed values) ----
    @abstractmethod
    def pair_scores(self, values: np.ndarray) -> np.ndarray:
        """Provider per-pair score of keyed values: (K,) uint64 -> (K,) float64."""

    @abstractmethod
    def log10_pvalue(self, score: np.ndarray, n: np.ndarray) -> np.ndarray:
        """Exact log10 p-value of a provider score sum over n deduplicated pairs, (R,) -> (R,)."""

    @abstractmethod
    def z_score(self, score: np.ndarray, n: np.ndarray) -> np.ndarray: ...

    def account_pair_scores(self, values: np.ndarray) -> np.ndarray:
        return self.pair_scores(values)

    def account_log10_pvalue(self, score: np.ndarray, n: np.ndarray) -> np.ndarray:
        return self.log10_pvalue(score, n)

    def account_z_score(self, score: np.ndarray, n: np.ndarray) -> np.ndarray:
        return self.z_score(score, n)

    def provider_pair_mask(self, contexts: np.ndarray) -> np.ndarray | None:
        """Which pairs carry the provider signal (None = all); contexts (N, h) -> (N,) bool."""
        return None

    def account_pair_mask(self, contexts: np.ndarray, tokens: np.ndarray) -> np.ndarray | None:
        """Which pairs carry the account signal (None = all)."""
        return None

    # ---- primitives for forensics (radioactivity, Sander et al. 2024) ----
    def score_pairs(self, contexts: np.ndarray, tokens: np.ndarray, *,
                    account: str | None = None) -> np.ndarray:
        """Per-pair scores, contexts (N, h) int, tokens (N,) int -> (N,) float64.

        No deduplication here: callers that sum scores must deduplicate (context, token) pairs
        and then use ``log10_pvalue(sum, n)`` (provider) for an exact test. With ``account``
        the account-keyed score is returned (meaningful on ``account_pair_mask`` pairs).
        """
        contexts = np.asarray(contexts, dtype=np.int64).reshape(len(tokens), self.context.width)
        tokens = np.asarray(tokens, dtype=np.int64)
        if account is None:
            return self.pair_scores(self.context.pair_values(self._provider_key, contexts, tokens))
        return self.account_pair_scores(
            self.context.pair_values(self.account_key(account), contexts, tokens))

    def expected_pair_scores(self, contexts: np.ndarray, probs: np.ndarray, *,
                             chunk: int = 64) -> np.ndarray:
        """Expected provider score under a predicted next-token distribution.

        contexts (N, h) int, probs (N, V) float (rows sum to 1) -> (N,) float64; e.g. for KGW
        the predicted green mass. Under the null its mean is the per-pair null mean
        (gamma for KGW, 1 for Gumbel, m/2 for SynthID). Chunked: memory is chunk x V values.
        """
        contexts = np.asarray(contexts, dtype=np.int64)
        probs = np.asarray(probs, dtype=np.float64)
        out = np.empty(len(contexts))
        for i in range(0, len(contexts), chunk):
            u = self.context.vocab_values(self._provider_key, contexts[i:i + chunk],
                                          probs.shape[1])  # (c, V)
            s = self.pair_scores(u.ravel()).reshape(u.shape)
            out[i:i + chunk] = (probs[i:i + chunk] * s).sum(axis=1)
        return out

    def pvalue(self, score: float, n: int) -> tuple[float, float]:
        """(p, log10 p) of a provider score sum over n deduplicated pairs."""
        lp = float(self.log10_pvalue(np.array([score]), np.array([n]))[0])
        return 10.0 ** lp, lp

    # ---- detection ----
    def detect(self, token_ids: Sequence[int] | np.ndarray, *,
               prompt_ids: Sequence[int] | np.ndarray | None = None,
               accounts: Sequence[str] = ()) -> DetectionResult:
        """Detect one text; raises ``InsufficientData`` when no pair could be scored."""
        result = self.detect_many([token_ids], prompts=None if prompt_ids is None
                                  else [prompt_ids], accounts=accounts)[0]
        if result.num_scored == 0:
            raise InsufficientData(
                f"no scorable token: {result.num_tokens} tokens, context width "
                f"{self.context.width}, {result.num_repeated} repeated, "
                f"{result.num_prompt_copied} copied from the prompt")
        return result

    def detect_many(self, sequences: Sequence[Sequence[int] | np.ndarray], *,
                    prompts: Sequence[Sequence[int] | np.ndarray | None] | None = None,
                    accounts: Sequence[str] = ()) -> list[DetectionResult]:
        """Detect a batch of texts at once (rows with 0 scored pairs get p = 1)."""
        seqs = [_as_tokens(s, self.vocab_size) for s in sequences]
        if prompts is not None and len(prompts) != len(seqs):
            raise InputError("prompts must be None or one per sequence")
        h = self.context.width
        pairs = make_pairs(seqs, h)
        if prompts is not None:
            pseqs = [_as_tokens([] if p is None else p, self.vocab_size) for p in prompts]
            ppairs = make_pairs(pseqs, h)
        else:
            ppairs = make_pairs([], h)
        R = len(seqs)
        pk = self._provider_key
        pmask = self.provider_pair_mask(pairs.contexts)
        sel = (slice(None) if pmask is None else pmask)
        values = self.context.pair_values(pk, pairs.contexts[sel], pairs.tokens[sel])
        pvals = self.context.pair_values(pk, ppairs.contexts, ppairs.tokens)
        st = _row_stats(values, pairs.rows[sel], pvals, ppairs.rows, R, self.pair_scores)
        log10p = self.log10_pvalue(st.score, st.num_scored)
        z = self.z_score(st.score, st.num_scored)
        n_total = np.bincount(pairs.rows, minlength=R)
        acc = self._detect_accounts(pairs, ppairs, R, tuple(accounts)) if accounts else None
        out = []
        for i, s in enumerate(seqs):
            out.append(DetectionResult(
                scheme=self.name, key_id=self.key_id, score=float(st.score[i]),
                z_score=float(z[i]), num_tokens=int(s.size), num_scored=int(st.num_scored[i]),
                num_repeated=int(n_total[i] - st.num_scored[i] - st.num_prompt_copied[i]),
                num_prompt_copied=int(st.num_prompt_copied[i]),
                p_value=float(10.0 ** log10p[i]), log10_p_value=float(log10p[i]),
                accounts=() if acc is None else acc[i]))
        return out

    def _detect_accounts(self, pairs: _Pairs, ppairs: _Pairs, R: int,
                         accounts: tuple[str, ...]) -> list[tuple[AccountMatch, ...]]:
        accounts = tuple(dict.fromkeys(str(a) for a in accounts))
        amask = self.account_pair_mask(pairs.contexts, pairs.tokens)
        sel = slice(None) if amask is None else amask
        ctx, tok, rows = pairs.contexts[sel], pairs.tokens[sel], pairs.rows[sel]
        A = len(accounts)
        score, n = np.zeros((R, A)), np.zeros((R, A), dtype=np.int64)
        for j, a in enumerate(accounts):
            key = self.account_key(a)
            st = _row_stats(self.context.pair_values(key, ctx, tok), rows,
                            self.context.pair_values(key, ppairs.contexts, ppairs.tokens),
                            ppairs.rows, R, self.account_pair_scores)
            score[:, j], n[:, j] = st.score, st.num_scored
        log10p = self.account_log10_pvalue(score.ravel(), n.ravel()).reshape(R, A)
        z = self.account_z_score(score.ravel(), n.ravel()).reshape(R, A)
        p = 10.0 ** log10p
        adj = holm(p)
        result = []
        for i in range(R):
            order = np.argsort(log10p[i], kind="stable")
            result.append(tuple(AccountMatch(
                account=accounts[j], score=float(score[i, j]), num_scored=int(n[i, j]),
                z_score=float(z[i, j]), p_value=float(p[i, j]),
                p_value_corrected=float(adj[i, j]), log10_p_value=float(log10p[i, j]))
                for j in order))
        return result

    # ---- generation (TokenSampler) ----
    def contexts_of(self, input_ids: Any) -> np.ndarray:
        """Last h tokens of each row: input_ids (B, T) long tensor -> (B, h) int64 numpy."""
        h = self.context.width
        ids = input_ids[:, -h:].detach().cpu().numpy().astype(np.int64)
        if ids.shape[1] < h:  # shorter than the context: pad on the left with token 0
            ids = np.concatenate([np.zeros((ids.shape[0], h - ids.shape[1]), np.int64), ids], 1)
        return ids

    @abstractmethod
    def sample(self, logits: Any, input_ids: Any, *, temperature: float, top_p: float,
               generators: Sequence[Any], tags: Sequence[str | None]) -> Any:
        """TokenSampler hook: logits (B, V), input_ids (B, T) -> SampleOutput."""


# ---------------------------------------------------------------- sampling helpers (torch)
# Thin wrappers over distillguard.models.sampling (imported lazily: detection needs no torch),
# so a watermarked row draws with the same per-row seeded inverse-CDF rule as a plain one.

def check_sampling(temperature: float, top_p: float) -> None:
    if temperature < 0:
        raise InputError("temperature must be >= 0")
    if not 0 < top_p <= 1:
        raise InputError("top_p must be in (0, 1]")


def tempered_logprobs(logits: Any, temperature: float) -> Any:
    """log-softmax of logits / T (T = 0 keeps the logits' scale: greedy callers argmax)."""
    import torch

    scaled = logits.float() / temperature if temperature > 0 else logits.float()
    return torch.log_softmax(scaled, dim=-1)


def nucleus(logprobs: Any, top_p: float) -> Any:
    """Keep the smallest set of tokens with mass >= top_p, renormalized; (B, V) -> (B, V)."""
    from distillguard.models.sampling import nucleus_logits

    if top_p >= 1.0:
        return logprobs
    return nucleus_logits(logprobs, top_p).log_softmax(dim=-1)


def draw(probs: Any, generators: Sequence[Any]) -> Any:
    """One token per row from probs (B, V) (need not be normalized), row i seeded by
    ``generators[i]`` (the request seed) as in the plain sampler."""
    from distillguard.models.sampling import sample_from_logprobs, uniform_per_row

    return sample_from_logprobs(probs.log(), uniform_per_row(generators))


def sample_output(tokens: Any, logprobs: Any) -> Any:
    """The engine's ``SampleOutput`` (the models room owns it)."""
    from distillguard.models.sampling import SampleOutput

    return SampleOutput(tokens=tokens, logprobs=logprobs.float())


def check_generators(generators: Sequence[Any], tags: Sequence[str | None], batch: int) -> None:
    if len(generators) != batch or len(tags) != batch:
        raise WatermarkError("generators and tags must have one entry per row")
