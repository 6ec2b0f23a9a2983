"""Shared machinery of the watermark schemes: keyed hashing, sampling helpers, the detector.

Keyed hashing lives in ``hashing.py`` (the same values at generation and detection), exact
tails in ``stats.py``.

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

import itertools
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from distillguard.errors import InputError, InsufficientData, WatermarkError
from distillguard.watermark import keys as keymod
from distillguard.watermark.hashing import (  # noqa: F401  (re-exported for the schemes)
    CONTEXT_MODES,
    TOKEN_HASH,
    U64,
    ContextHash,
    fraction_threshold,
    splitmix64,
)
from distillguard.watermark.stats import binom_log10_sf, gamma_log10_sf, holm  # noqa: F401

SENTINEL = U64(0xFFFFFFFFFFFFFFFF)  # padding in the row-sorted matrix (sorts last)
BLOCK_TOKENS = 1 << 15  # detection works on blocks of whole texts of about this many tokens


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
class BatchScores:
    """Provider test of R texts as arrays (``detect_arrays``): the fields of DetectionResult."""

    score: np.ndarray  # (R,) float64
    z_score: np.ndarray  # (R,) float64
    num_tokens: np.ndarray  # (R,) int64
    num_scored: np.ndarray  # (R,) int64
    num_repeated: np.ndarray  # (R,) int64
    num_prompt_copied: np.ndarray  # (R,) int64
    log10_p_value: np.ndarray  # (R,) float64 exact, finite

    @property
    def p_value(self) -> np.ndarray:
        return 10.0**self.log10_p_value


@dataclass(frozen=True)
class _RowStats:
    score: np.ndarray  # (R,) float64 sum of per-pair scores of kept pairs
    num_scored: np.ndarray  # (R,) int64
    num_prompt_copied: np.ndarray  # (R,) int64
    num_pairs: np.ndarray  # (R,) int64 pairs offered (before dedup / prompt exclusion)


@dataclass(frozen=True)
class Pairs:
    """The scorable (context, token) pairs of a batch of texts, token ids already hashed."""

    ctx_h: np.ndarray  # (N, h) uint64 TOKEN_HASH of the h previous tokens
    tok_h: np.ndarray  # (N,) uint64 TOKEN_HASH of the scored token
    rows: np.ndarray  # (N,) int64 text index, nondecreasing

    def select(self, mask: np.ndarray | None) -> Pairs:
        if mask is None:
            return self
        return Pairs(self.ctx_h[mask], self.tok_h[mask], self.rows[mask])


_EMPTY = np.zeros(0, dtype=np.int64)


def _segments(lengths: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(starts (R,), within-segment offsets (sum,)) of consecutive segments of ``lengths``."""
    starts = np.cumsum(lengths) - lengths
    offsets = np.arange(int(lengths.sum()), dtype=np.int64) - np.repeat(starts, lengths)
    return starts, offsets


def flatten_tokens(
    seqs: Sequence[Sequence[int] | np.ndarray | None], vocab_size: int
) -> tuple[np.ndarray, np.ndarray]:
    """Validate and concatenate token sequences: -> (flat (L,) int64, lengths (R,) int64)."""
    flat: np.ndarray | None = None
    lens: np.ndarray | None = None
    if isinstance(seqs, np.ndarray) and seqs.ndim == 2:  # (R, T): already rectangular
        flat, lens = seqs.ravel(), np.full(seqs.shape[0], seqs.shape[1], dtype=np.int64)
    elif len(seqs) and all(isinstance(x, np.ndarray) and x.ndim == 1 for x in seqs):
        arrays_1d = [x for x in seqs if isinstance(x, np.ndarray)]  # all of them (checked)
        lens = np.fromiter(map(len, arrays_1d), dtype=np.int64, count=len(arrays_1d))
        flat = np.concatenate(arrays_1d)
        if flat.size and flat.dtype.kind not in "iu":
            flat = None  # e.g. an empty float array promoted everything: take the slow path
    if flat is None:
        arrays = []
        for x in seqs:
            try:
                a = _EMPTY if x is None else np.asarray(x)
            except (ValueError, TypeError):  # ragged or nested input
                raise InputError("token ids must be flat sequences of integers") from None
            if a.ndim != 1:
                raise InputError("token ids must be flat sequences of integers")
            arrays.append(a if a.size else _EMPTY)
        lens = np.fromiter((a.size for a in arrays), dtype=np.int64, count=len(arrays))
        flat = np.concatenate(arrays) if arrays else _EMPTY
    assert lens is not None  # every branch above sets both
    if flat.size == 0:
        return _EMPTY, lens
    if flat.dtype.kind not in "iu":
        raise InputError("token ids must be integers")
    if int(flat.min()) < 0 or int(flat.max()) >= vocab_size:
        bad = int(np.flatnonzero((flat < 0) | (flat >= vocab_size))[0])
        row = int(np.searchsorted(np.cumsum(lens), bad, side="right"))
        raise InputError(
            f"text {row}: token id {int(flat[bad])} out of range [0, {vocab_size}) "
            "(not this tokenizer's ids?)"
        )
    return flat.astype(np.int64, copy=False), lens


def make_pairs(flat: np.ndarray, lens: np.ndarray, width: int) -> Pairs:
    """All (previous ``width`` tokens, token) pairs of each sequence, flattened and hashed."""
    th = TOKEN_HASH.of(flat)  # (L,) every token hashed once
    npairs = np.maximum(lens - width, 0)  # (R,)
    n = int(npairs.sum())
    rows = np.repeat(np.arange(lens.size, dtype=np.int64), npairs)
    shift = (np.cumsum(lens) - lens) + width - (np.cumsum(npairs) - npairs)  # (R,)
    pos = np.arange(n, dtype=np.int64) + np.repeat(shift, npairs)  # (N,) scored positions
    if width == 1:
        ctx_h = th[pos - 1][:, None]  # (N, 1)
    else:
        ctx_h = np.stack([th[pos - width + j] for j in range(width)], axis=1)  # (N, h)
    return Pairs(ctx_h=ctx_h, tok_h=th[pos], rows=rows)


def _row_stats(
    values: np.ndarray,
    rows: np.ndarray,
    pvalues: np.ndarray,
    prows: np.ndarray,
    num_rows: int,
    scorer: Any,
    chunk_rows: int = 256,
) -> _RowStats:
    """Deduplicate and prompt-exclude keyed values per row, then sum their scores.

    values (N,) uint64 with rows (N,) nondecreasing; pvalues (M,) prompt values with prows (M,).
    ``scorer(values (K,)) -> (K,) float`` turns values into per-pair scores.

    Rows become a padded (r, W) matrix: text values with bit 0 cleared, then prompt values with
    bit 0 set, then SENTINEL padding; one row-wise sort puts equal values (a group) side by
    side, text copies before prompt copies. The *last* element of a group is kept iff it is a
    text value (so: once per group, and never when the prompt has the same pair). When row
    widths are similar this is one matrix in row order; otherwise rows are sorted by width and
    done in chunks so that padding stays small.
    """
    n_text = np.bincount(rows, minlength=num_rows).astype(np.int64)  # (R,)
    n_prompt = np.bincount(prows, minlength=num_rows).astype(np.int64)  # (R,)
    total = n_text + n_prompt
    score = np.zeros(num_rows)
    scored = np.zeros(num_rows, dtype=np.int64)
    copied = np.zeros(num_rows, dtype=np.int64)
    width = int(total.max()) if num_rows else 0
    if width == 0:
        return _RowStats(score, scored, copied, n_text)
    one = U64(1)
    t_start = np.cumsum(n_text) - n_text
    p_start = np.cumsum(n_prompt) - n_prompt
    if num_rows * width <= 1.25 * int(total.sum()) + 4096:  # one matrix, rows in order
        mat = np.full(num_rows * width, SENTINEL, dtype=U64)
        row_base = np.arange(num_rows, dtype=np.int64) * width
        mat[np.arange(values.size) + np.repeat(row_base - t_start, n_text)] = values & ~one
        if pvalues.size:
            mat[np.arange(pvalues.size) + np.repeat(row_base + n_text - p_start, n_prompt)] = (
                pvalues | one
            )
        score[:], scored[:], copied[:] = _sorted_group_stats(mat.reshape(num_rows, width), scorer)
        return _RowStats(score, scored, copied, n_text)
    order = np.argsort(total, kind="stable")  # rows of similar width share a chunk
    for rows_c in _width_chunks(order, total[order], chunk_rows):  # (r,) each
        tl, pl = n_text[rows_c], n_prompt[rows_c]
        r, w = rows_c.size, max(int(total[rows_c].max()), 1)
        mat = np.full(r * w, SENTINEL, dtype=U64)  # (r * W,)
        base_lin = np.arange(r, dtype=np.int64) * w
        _, toff = _segments(tl)
        mat[np.repeat(base_lin, tl) + toff] = values[np.repeat(t_start[rows_c], tl) + toff] & ~one
        if pl.any():
            _, poff = _segments(pl)
            mat[np.repeat(base_lin + tl, pl) + poff] = (
                pvalues[np.repeat(p_start[rows_c], pl) + poff] | one
            )
        score[rows_c], scored[rows_c], copied[rows_c] = _sorted_group_stats(
            mat.reshape(r, w), scorer
        )
    return _RowStats(score=score, num_scored=scored, num_prompt_copied=copied, num_pairs=n_text)


def _width_chunks(order: np.ndarray, widths: np.ndarray, max_rows: int) -> list[np.ndarray]:
    """Split rows sorted by width into chunks whose padded size stays within 1.5x of their
    content (a Python loop over rows, not tokens)."""
    chunks, start, content = [], 0, 0
    for i, w in enumerate(widths.tolist()):
        count = i - start + 1
        if count > 1 and (count > max_rows or count * w > 1.5 * (content + w) + 1024):
            chunks.append(order[start:i])
            start, content = i, 0
        content += w
    chunks.append(order[start:])
    return chunks


def _sorted_group_stats(mat: np.ndarray, scorer: Any) -> tuple[np.ndarray, ...]:
    """Sort each row of mat (r, W) and return per-row (score sum, kept, prompt-copied)."""
    r, width = mat.shape
    mat.sort(axis=1)
    flat = mat.ravel()
    one = U64(1)
    from_prompt = (flat & one).astype(bool)
    end = np.empty(flat.size, dtype=bool)  # last element of its group
    np.not_equal(flat[1:] >> one, flat[:-1] >> one, out=end[:-1])
    end[-1] = True
    end[width - 1 :: width] = True  # groups never span rows
    keep = end & ~from_prompt  # (F,) SENTINEL counts as prompt: never kept
    # a text value directly followed by a prompt copy of itself: a copied distinct pair
    cop = np.zeros(flat.size, dtype=bool)
    np.logical_and(from_prompt[1:], ~end[:-1], out=cop[:-1])
    cop[:-1] &= ~from_prompt[:-1]
    keep2 = keep.reshape(r, width)
    idx = np.flatnonzero(keep)
    score = np.bincount(idx // width, weights=scorer(flat[idx]), minlength=r)
    return score, keep2.sum(axis=1), cop.reshape(r, width).sum(axis=1)


# ---------------------------------------------------------------------- the base class


class WatermarkScheme(ABC):
    """A keyed watermark: ``sample`` at generation (TokenSampler), ``detect`` at detection.

    Subclasses define the per-pair score of a keyed value, the exact tail of the score sum,
    which pairs carry the provider / account signal, and the sampling rule.
    """

    name: str = "base"

    def __init__(
        self,
        *,
        secret: bytes,
        key_id: int,
        vocab_size: int,
        context: ContextHash,
        zero_temperature: float = 0.0,
    ) -> None:
        if vocab_size < 2:
            raise InputError("vocab_size must be at least 2")
        self._secret = keymod.check_secret(secret)
        self.key_id = keymod.check_key_id(key_id)
        self.vocab_size = int(vocab_size)
        self.context = context
        self.zero_temperature = check_zero_temperature(zero_temperature)
        self._provider_key = keymod.derive_key(self._secret, self.name, key_id, "provider")
        # keys the T=0 draws (see ``zero_temperature_uniforms``); never used by detection
        self._zero_key = keymod.derive_key(self._secret, self.name, key_id, "zero-temperature")

    def __repr__(self) -> str:  # the secret never appears
        return f"{type(self).__name__}(key_id={self.key_id}, vocab_size={self.vocab_size})"

    def account_key(self, account: str | None) -> int:
        """Per-account key; ``None`` (no account) maps to the anonymous account ``""``."""
        return keymod.account_key(self._secret, self.name, self.key_id, account or "")

    def account_keys(self, accounts: Sequence[str | None]) -> np.ndarray:
        """Each row's account key: B accounts -> (B,) uint64 (one key per row, so a batch of
        many accounts is hashed in one vectorized pass)."""
        return np.fromiter(
            (self.account_key(a) for a in accounts), dtype=np.uint64, count=len(accounts)
        )

    # ---- per-scheme statistics (pure functions of the keyed values) ----
    @abstractmethod
    def pair_scores(self, values: np.ndarray) -> np.ndarray:
        """Provider per-pair score of keyed values: (K,) uint64 -> (K,) float64."""

    @abstractmethod
    def log10_pvalue(self, score: np.ndarray, n: np.ndarray) -> np.ndarray:
        """Exact log10 p-value of a provider score sum over n deduplicated pairs, (R,) -> (R,)."""

    @abstractmethod
    def z_score(self, score: np.ndarray, n: np.ndarray) -> np.ndarray: ...

    @property
    @abstractmethod
    def null_pair_mean(self) -> float:
        """Mean provider score of one pair under the null (for radioactivity tests)."""

    def account_pair_scores(self, values: np.ndarray) -> np.ndarray:
        return self.pair_scores(values)

    def account_log10_pvalue(self, score: np.ndarray, n: np.ndarray) -> np.ndarray:
        return self.log10_pvalue(score, n)

    def account_z_score(self, score: np.ndarray, n: np.ndarray) -> np.ndarray:
        return self.z_score(score, n)

    def provider_pair_mask(self, pairs: Pairs) -> np.ndarray | None:
        """Which pairs carry the provider signal: (N,) bool, or None for all."""
        return None

    def account_pair_mask(self, pairs: Pairs) -> np.ndarray | None:
        """Which pairs carry the account signal: (N,) bool, or None for all."""
        return None

    # ---- primitives for forensics (radioactivity, Sander et al. 2024) ----
    def score_pairs(
        self, contexts: np.ndarray, tokens: np.ndarray, *, account: str | None = None
    ) -> np.ndarray:
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
            self.context.pair_values(self.account_key(account), contexts, tokens)
        )

    def expected_pair_scores(
        self, contexts: np.ndarray, probs: np.ndarray, *, chunk: int = 64
    ) -> np.ndarray:
        """Expected provider score under a predicted next-token distribution.

        contexts (N, h) int, probs (N, V) float (rows sum to 1) -> (N,) float64; e.g. for KGW
        the predicted green mass. Under the null its mean is the per-pair null mean
        (gamma for KGW, 1 for Gumbel, m/2 for SynthID). Chunked: memory is chunk x V values.
        """
        contexts = np.asarray(contexts, dtype=np.int64)
        probs = np.asarray(probs, dtype=np.float64)
        out = np.empty(len(contexts))
        for i in range(0, len(contexts), chunk):
            u = self.context.vocab_values(
                self._provider_key, contexts[i : i + chunk], probs.shape[1]
            )  # (c, V)
            s = self.pair_scores(u.ravel()).reshape(u.shape)
            out[i : i + chunk] = (probs[i : i + chunk] * s).sum(axis=1)
        return out

    def pvalue(self, score: float, n: int) -> tuple[float, float]:
        """(p, log10 p) of a provider score sum over n deduplicated pairs."""
        lp = float(self.log10_pvalue(np.array([score]), np.array([n]))[0])
        return 10.0**lp, lp

    # ---- detection ----
    def detect(
        self,
        token_ids: Sequence[int] | np.ndarray,
        *,
        prompt_ids: Sequence[int] | np.ndarray | None = None,
        accounts: Sequence[str] = (),
    ) -> DetectionResult:
        """Detect one text; raises ``InsufficientData`` when no pair could be scored."""
        result = self.detect_many(
            [token_ids], prompts=None if prompt_ids is None else [prompt_ids], accounts=accounts
        )[0]
        if result.num_scored == 0:
            raise InsufficientData(
                f"no scorable token: {result.num_tokens} tokens, context width "
                f"{self.context.width}, {result.num_repeated} repeated, "
                f"{result.num_prompt_copied} copied from the prompt"
            )
        return result

    def detect_arrays(
        self,
        sequences: Sequence[Sequence[int] | np.ndarray] | np.ndarray,
        *,
        prompts: Sequence[Sequence[int] | np.ndarray | None] | None = None,
    ) -> BatchScores:
        """Provider test of a batch as arrays (no per-text objects): the fast path."""
        return self._score(sequences, prompts)[0]

    def detect_many(
        self,
        sequences: Sequence[Sequence[int] | np.ndarray] | np.ndarray,
        *,
        prompts: Sequence[Sequence[int] | np.ndarray | None] | None = None,
        accounts: Sequence[str] = (),
    ) -> list[DetectionResult]:
        """Detect a batch of texts at once (rows with 0 scored pairs get p = 1)."""
        b, all_pairs = self._score(sequences, prompts)
        R = b.score.size
        acc: list[tuple[AccountMatch, ...]] = [()] * R
        if len(accounts):
            pairs, ppairs = all_pairs()
            acc = self._detect_accounts(pairs, ppairs, R, tuple(accounts))
        cols = zip(
            b.score.tolist(),
            b.z_score.tolist(),
            b.num_tokens.tolist(),
            b.num_scored.tolist(),
            b.num_repeated.tolist(),
            b.num_prompt_copied.tolist(),
            (10.0**b.log10_p_value).tolist(),
            b.log10_p_value.tolist(),
            acc,
            strict=True,
        )
        return [
            DetectionResult(
                self.name,
                self.key_id,
                score,
                z,
                tokens,
                scored,
                repeated,
                copied,
                p,
                log10_p,
                accounts=matches,
            )
            for score, z, tokens, scored, repeated, copied, p, log10_p, matches in cols
        ]

    def _score(
        self, sequences: Any, prompts: Any
    ) -> tuple[BatchScores, Callable[[], tuple[Pairs, Pairs]]]:
        """Provider test, processed in blocks of whole texts of about ``BLOCK_TOKENS`` tokens so
        that every intermediate array stays in the CPU cache (on a busy machine, arrays of a
        few MB run several times slower than the same work in L2-sized pieces).
        Returns the scores and a function building the full pair sets (for account tests)."""
        h = self.context.width
        flat, lens = flatten_tokens(sequences, self.vocab_size)
        if prompts is not None:
            if len(prompts) != len(lens):
                raise InputError("prompts must be None or one per sequence")
            pflat, plens = flatten_tokens(prompts, self.vocab_size)
        else:
            pflat, plens = _EMPTY, np.zeros(len(lens), np.int64)
        R = lens.size
        score, scored = np.zeros(R), np.zeros(R, dtype=np.int64)
        copied, repeated = np.zeros(R, dtype=np.int64), np.zeros(R, dtype=np.int64)
        ends, pends = np.cumsum(lens), np.cumsum(plens)
        # block boundaries: rows whose cumulative token count crosses multiples of BLOCK_TOKENS
        cuts = np.unique(
            np.searchsorted(
                ends, np.arange(BLOCK_TOKENS, int(ends[-1]) if R else 0, BLOCK_TOKENS), side="right"
            )
        )
        bounds = [0, *[int(c) for c in cuts if 0 < c < R], R]
        for r0, r1 in itertools.pairwise(bounds):
            if r1 <= r0:
                continue
            t0, t1 = int(ends[r0] - lens[r0]), int(ends[r1 - 1])
            q0, q1 = int(pends[r0] - plens[r0]), int(pends[r1 - 1])
            pairs = make_pairs(flat[t0:t1], lens[r0:r1], h)
            ppairs = make_pairs(pflat[q0:q1], plens[r0:r1], h)
            st = self._provider_stats(pairs, ppairs, r1 - r0)
            score[r0:r1], scored[r0:r1] = st.score, st.num_scored
            copied[r0:r1] = st.num_prompt_copied
            repeated[r0:r1] = np.maximum(lens[r0:r1] - h, 0) - st.num_scored - st.num_prompt_copied
        batch = BatchScores(
            score=score,
            z_score=self.z_score(score, scored),
            num_tokens=lens,
            num_scored=scored,
            num_repeated=repeated,
            num_prompt_copied=copied,
            log10_p_value=self.log10_pvalue(score, scored),
        )

        def all_pairs() -> tuple[Pairs, Pairs]:
            return make_pairs(flat, lens, h), make_pairs(pflat, plens, h)

        return batch, all_pairs

    def _provider_stats(self, pairs: Pairs, ppairs: Pairs, rows: int) -> _RowStats:
        pk = self._provider_key
        mine = pairs.select(self.provider_pair_mask(pairs))
        return _row_stats(
            self.context.pair_hashed(pk, mine.ctx_h, mine.tok_h),
            mine.rows,
            self.context.pair_hashed(pk, ppairs.ctx_h, ppairs.tok_h),
            ppairs.rows,
            rows,
            self.pair_scores,
        )

    def _detect_accounts(
        self, pairs: Pairs, ppairs: Pairs, R: int, accounts: tuple[str, ...]
    ) -> list[tuple[AccountMatch, ...]]:
        accounts = tuple(dict.fromkeys(str(a) for a in accounts))
        mine = pairs.select(self.account_pair_mask(pairs))
        A = len(accounts)
        score, n = np.zeros((R, A)), np.zeros((R, A), dtype=np.int64)
        for j, a in enumerate(accounts):
            key = self.account_key(a)
            st = _row_stats(
                self.context.pair_hashed(key, mine.ctx_h, mine.tok_h),
                mine.rows,
                self.context.pair_hashed(key, ppairs.ctx_h, ppairs.tok_h),
                ppairs.rows,
                R,
                self.account_pair_scores,
            )
            score[:, j], n[:, j] = st.score, st.num_scored
        log10p = self.account_log10_pvalue(score.ravel(), n.ravel()).reshape(R, A)
        z = self.account_z_score(score.ravel(), n.ravel()).reshape(R, A)
        p = 10.0**log10p
        adj = holm(p)
        result = []
        for i in range(R):
            order = np.argsort(log10p[i], kind="stable")
            result.append(
                tuple(
                    AccountMatch(
                        account=accounts[j],
                        score=float(score[i, j]),
                        num_scored=int(n[i, j]),
                        z_score=float(z[i, j]),
                        p_value=float(p[i, j]),
                        p_value_corrected=float(adj[i, j]),
                        log10_p_value=float(log10p[i, j]),
                    )
                    for j in order
                )
            )
        return result

    # ---- generation (TokenSampler) ----
    def contexts_of(self, input_ids: Any) -> np.ndarray:
        """Last h tokens of each row: input_ids (B, T) long tensor -> (B, h) int64 numpy."""
        h = self.context.width
        ids = input_ids[:, -h:].detach().cpu().numpy().astype(np.int64)
        if ids.shape[1] < h:  # shorter than the context: pad on the left with token 0
            ids = np.concatenate([np.zeros((ids.shape[0], h - ids.shape[1]), np.int64), ids], 1)
        return ids

    def effective_sampling(
        self, temperature: float, input_ids: Any, generators: Sequence[Any]
    ) -> tuple[float, Any]:
        """What a requested temperature means for this scheme: (temperature to sample at,
        keyed uniforms (B,) float64 tensor or None to draw from ``generators``).

        T = 0 requested (see ``docs/watermark-engines.md``, "Temperature 0"): with
        ``zero_temperature`` > 0 the answer is *marked low-temperature sampling*: the scheme
        samples at ``zero_temperature`` from its marked distribution, with randomness drawn
        from the key and the text so far instead of an RNG, so the same prompt still gets the
        same answer (what T = 0 callers rely on) and the answer carries the mark. With
        ``zero_temperature`` = 0 it is plain greedy decoding (on KGW's biased logits).
        """
        if temperature > 0 or self.zero_temperature == 0:
            return temperature, None
        return self.zero_temperature, self.zero_temperature_uniforms(input_ids)

    def zero_temperature_uniforms(self, input_ids: Any) -> Any:
        """Keyed uniforms for T = 0 draws: input_ids (B, T) -> (B,) float64 tensor in (0, 1).

        A row's uniform is a keyed hash of its last ``ZERO_T_WINDOW`` tokens and of how often
        that window already occurred in the row: deterministic for a given text (and
        independent of left padding), and a repeated window draws fresh randomness, so a
        deterministic sampler cannot lock into a loop."""
        import torch

        ids = input_ids.detach().cpu().numpy().astype(np.int64)  # (B, T)
        width = min(ZERO_T_WINDOW, ids.shape[1])
        last = ids[:, ids.shape[1] - width :]  # (B, w)
        if ids.shape[1] > width:
            windows = np.lib.stride_tricks.sliding_window_view(ids[:, :-1], width, axis=1)
            seen = (windows == last[:, None, :]).all(axis=-1).sum(axis=-1)  # (B,)
        else:
            seen = np.zeros(ids.shape[0], dtype=np.int64)
        h = splitmix64(seen.astype(U64) ^ U64(self._zero_key))  # (B,)
        for col in TOKEN_HASH.of(last).T:  # chain over the window, (B,) each
            h = splitmix64(h ^ col)
        return torch.from_numpy(((h >> U64(11)).astype(np.float64) + 0.5) * 2.0**-53)

    @abstractmethod
    def sample(
        self,
        logits: Any,
        input_ids: Any,
        *,
        temperature: float,
        top_p: float,
        generators: Sequence[Any],
        tags: Sequence[str | None],
    ) -> Any:
        """TokenSampler hook: logits (B, V), input_ids (B, T) -> SampleOutput."""


# ---------------------------------------------------------------- sampling helpers (torch)
# Thin wrappers over distillguard.models.sampling (imported lazily: detection needs no torch),
# so a watermarked row draws with the same per-row seeded inverse-CDF rule as a plain one.


ZERO_T_WINDOW = 8  # tokens keying a T = 0 draw: a window this long rarely recurs by chance


def check_zero_temperature(value: float) -> float:
    """The temperature a T = 0 request is sampled at: 0 (plain greedy) or in (0, 1]."""
    if not 0.0 <= value <= 1.0:
        raise InputError(f"zero_temperature must be in [0, 1], got {value}")
    return float(value)


def draw_keyed(logprobs: Any, generators: Sequence[Any], uniforms: Any) -> Any:
    """``draw_logprobs`` with the scheme's keyed uniforms (B,) when given (T = 0 requests)."""
    if uniforms is None:
        return draw_logprobs(logprobs, generators)
    from distillguard.models.sampling import sample_from_logprobs

    return sample_from_logprobs(logprobs, uniforms.to(logprobs.dtype))


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
    return draw_logprobs(probs.log(), generators)


def draw_logprobs(logprobs: Any, generators: Sequence[Any]) -> Any:
    """``draw`` from log-probabilities (B, V), without a round trip through probabilities."""
    from distillguard.models.sampling import sample_from_logprobs, uniform_per_row

    return sample_from_logprobs(logprobs, uniform_per_row(generators))


def sample_output(tokens: Any, logprobs: Any) -> Any:
    """The engine's ``SampleOutput`` (the models room owns it)."""
    from distillguard.models.sampling import SampleOutput

    return SampleOutput(tokens=tokens, logprobs=logprobs.float())


def check_generators(generators: Sequence[Any], tags: Sequence[str | None], batch: int) -> None:
    if len(generators) != batch or len(tags) != batch:
        raise WatermarkError("generators and tags must have one entry per row")
