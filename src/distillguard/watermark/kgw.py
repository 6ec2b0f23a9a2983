"""KGW "green list" watermark (Kirchenbauer et al. 2023) with a nested per-account list.

Generation: a keyed hash of the previous h tokens (and, for ``selfhash``, of the candidate
itself) splits the vocabulary into a green fraction ``gamma`` and the rest; ``delta`` is added
to the green logits before sampling. The green test of a (context, token) pair is
``u(provider key, context, token) < gamma * 2^64`` (see ``base.py``), so no green-list
permutation is ever built: generation hashes the V candidates of a row, detection hashes only
the observed pairs, and a 128k vocabulary costs nothing extra at detection.

Detection: the number k of green pairs among n deduplicated, non-prompt pairs is
Binomial(n, gamma) under the null (text written without the key), so the p-value is the exact
binomial tail P(X >= k).

Accounts (attribution without weakening the provider test)
----------------------------------------------------------
Every token gets the full provider bias ``delta`` on the provider green list G_p. Inside
G_p, a second, account-keyed list G_a (fraction ``account_gamma``) gets an extra
``account_delta``. Hence:

* the provider test is the single-key KGW test on every token, with no correction for
  accounts: the extra bias only moves mass *within* G_p, so the provider green rate can only
  rise (measured in ``benchmarks/watermark_eval.py``);
* the account test of account a counts, among the provider-green pairs of the text, those in
  G_a: Binomial(n_green, account_gamma) under "not account a" (G_a is independent of G_p and
  of every other account's list), so the per-account p-value is exact, and on text mixing many
  accounts each account's statistic grows with its own share. Per-account p-values are
  Holm-corrected over the accounts tried.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from distillguard.errors import InputError
from distillguard.watermark.base import (
    ContextHash,
    Pairs,
    WatermarkScheme,
    binom_log10_sf,
    check_generators,
    check_sampling,
    check_zero_temperature,
    draw_keyed,
    fraction_threshold,
    nucleus,
    sample_output,
)


@dataclass(frozen=True)
class KGWParams:
    gamma: float = 0.25  # green fraction; 0.25 gives more z per green token than 0.5 (paper)
    delta: float = 2.0  # logit bonus of green tokens; 2 = the paper's quality/strength balance
    context: str = "lefthash"  # lefthash | minhash | selfhash (base.ContextHash)
    context_width: int = 1  # h; 1 = original KGW (most robust to edits), 4 for min/self-hash
    account_gamma: float = 0.5  # fraction of G_p that is also account-green
    account_delta: float = 1.0  # extra bonus inside G_p ∩ G_a; 0 disables accounts
    # T used when a request asks for T = 0 (marked low-temperature sampling, keyed draws; see
    # base.effective_sampling): 0 = plain greedy, which carries almost no mark on a confident
    # model. 0.5: TPR 1.00 at 200 tokens on both test models, at the perplexity cost of
    # sampling at 0.5 (docs/benchmarks.md, "Watermark in the engines").
    zero_temperature: float = 0.5

    def __post_init__(self) -> None:
        for name in ("gamma", "account_gamma"):
            v = getattr(self, name)
            if not 0.0 < v < 1.0:
                raise InputError(f"{name} must be in (0, 1), got {v}")
        if not 0.0 <= self.delta <= 20.0 or not 0.0 <= self.account_delta <= 20.0:
            raise InputError("delta and account_delta must be in [0, 20]")
        ContextHash(self.context, self.context_width)  # validates both
        check_zero_temperature(self.zero_temperature)


CODE_ROWS = 16_384  # (account, context) code rows kept for generation: V bytes each, 64 MB at 4k


class KGWScheme(WatermarkScheme):
    name = "kgw"

    def __init__(
        self, *, secret: bytes, key_id: int, vocab_size: int, params: KGWParams | None = None
    ) -> None:
        self.params = params or KGWParams()
        super().__init__(
            secret=secret,
            key_id=key_id,
            vocab_size=vocab_size,
            context=ContextHash(self.params.context, self.params.context_width),
            zero_temperature=self.params.zero_temperature,
        )
        self._thr = fraction_threshold(self.params.gamma)
        self._thr_account = fraction_threshold(self.params.account_gamma)
        # Generation cache (``bias``): code rows per (account, context), allocated on first
        # use. A decode step would otherwise hash every candidate of every row twice; contexts
        # repeat a lot, so most steps only gather rows. Detection never uses it.
        self._codes: np.ndarray | None = None  # (CODE_ROWS, V) uint8
        self._slots: dict[tuple, int] = {}

    # ---- statistics ----
    @property
    def null_pair_mean(self) -> float:
        return self.params.gamma

    def pair_scores(self, values: np.ndarray) -> np.ndarray:
        return (values < self._thr).astype(np.float64)  # 1 = green

    def log10_pvalue(self, score: np.ndarray, n: np.ndarray) -> np.ndarray:
        return binom_log10_sf(np.rint(score), n, self.params.gamma)

    def z_score(self, score: np.ndarray, n: np.ndarray) -> np.ndarray:
        g = self.params.gamma
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.nan_to_num((score - g * n) / np.sqrt(n * g * (1 - g)))

    def account_pair_scores(self, values: np.ndarray) -> np.ndarray:
        return (values < self._thr_account).astype(np.float64)

    def account_log10_pvalue(self, score: np.ndarray, n: np.ndarray) -> np.ndarray:
        return binom_log10_sf(np.rint(score), n, self.params.account_gamma)

    def account_z_score(self, score: np.ndarray, n: np.ndarray) -> np.ndarray:
        g = self.params.account_gamma
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.nan_to_num((score - g * n) / np.sqrt(n * g * (1 - g)))

    def account_pair_mask(self, pairs: Pairs) -> np.ndarray:
        """The account signal lives on provider-green pairs only."""
        return self.context.pair_hashed(self._provider_key, pairs.ctx_h, pairs.tok_h) < self._thr

    def green_mask(self, contexts: np.ndarray, vocab: int | None = None) -> np.ndarray:
        """Provider green lists of contexts (B, h) -> (B, V) bool (generation and forensics)."""
        return (
            self.context.vocab_values(
                self._provider_key, np.asarray(contexts, np.int64), vocab or self.vocab_size
            )
            < self._thr
        )

    def bias(self, contexts: np.ndarray, vocab: int, tags: Sequence[str | None]) -> np.ndarray:
        """Logit bias for a batch: contexts (B, h) -> (B, V) float32.

        Each (account, context) row is hashed once and kept as a row of small codes
        (2 * provider-green + account-green) in one preallocated (CODE_ROWS, V) uint8 array:
        a decode step whose contexts were seen before (most steps: contexts repeat, h = 1 has at
        most V of them) is one row gather and one table lookup."""
        p = self.params
        if p.account_delta == 0:
            tags = [None] * len(contexts)  # no account signal: one code row per context
        names = [(tag, *row) for tag, row in zip(tags, contexts.tolist(), strict=True)]
        if self._codes is None or self._codes.shape != (CODE_ROWS, vocab):
            self._codes, self._slots = np.empty((CODE_ROWS, vocab), dtype=np.uint8), {}
        table = np.array([0.0, 0.0, p.delta, p.delta + p.account_delta], dtype=np.float32)
        if len(names) > CODE_ROWS:  # a batch larger than the cache: no caching
            return table[self._code_rows(contexts, tags, vocab)]
        slots = self._slots
        index = [slots.get(n, -1) for n in names]
        missing = [i for i, s in enumerate(index) if s < 0]
        if missing:
            if len(slots) + len(missing) > CODE_ROWS:  # simple bound: rows are cheap to redo
                slots.clear()
                missing = list(range(len(names)))
            fresh = self._code_rows(contexts[missing], [tags[i] for i in missing], vocab)
            for i, row in zip(missing, fresh, strict=True):
                slot = slots.setdefault(names[i], len(slots))
                self._codes[slot] = row
                index[i] = slot
        return table[self._codes[index]]

    def _code_rows(
        self, contexts: np.ndarray, tags: Sequence[str | None], vocab: int
    ) -> np.ndarray:
        """2 * provider-green + account-green for contexts (m, h) -> (m, V) uint8."""
        code = (self.context.vocab_values(self._provider_key, contexts, vocab) < self._thr).view(
            np.uint8
        ) << 1
        if self.params.account_delta == 0:
            return code
        for tag in dict.fromkeys(tags):
            rows = [i for i, t in enumerate(tags) if t == tag]
            acc = self.context.vocab_values(self.account_key(tag), contexts[rows], vocab)
            code[rows] |= (acc < self._thr_account).view(np.uint8)
        return code

    # ---- generation ----
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
        import torch

        check_sampling(temperature, top_p)
        B, V = logits.shape
        check_generators(generators, tags, B)
        temperature, keyed = self.effective_sampling(temperature, input_ids, generators)
        bias = torch.from_numpy(self.bias(self.contexts_of(input_ids), V, tags))
        if temperature == 0:  # greedy on the biased logits (HF's processor-then-argmax order)
            lp = torch.log_softmax(logits.float() + bias, dim=-1)
            return sample_output(lp.argmax(dim=-1), lp)
        # logits / T + bias: delta keeps its meaning in the distribution actually sampled
        lp = nucleus(torch.log_softmax(logits.float() / temperature + bias, dim=-1), top_p)
        return sample_output(draw_keyed(lp, generators, keyed), lp)
