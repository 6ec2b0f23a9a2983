"""SynthID-Text tournament sampling (Dathathri et al. 2024), binary g-values, exact mean test.

Generation: m layers, each with a keyed binary g-value g_l(context, v) in {0, 1}. A tournament
draws 2^m candidates from p and, layer after layer, keeps the winner of each pair (higher
g_l, a fair coin on ties). With two candidates per match and binary g, the winner's
distribution after layer l has the closed form of the paper's vectorized implementation:

    p_l(v) = p_{l-1}(v) * (1 + g_l(v) - G_l),   G_l = sum_w p_{l-1}(w) g_l(w),

so the whole tournament is m elementwise updates of a (B, V) tensor, then one draw from p_m with
the row's generator (temperature and top_p shape p first; a T = 0 request samples at
``zero_temperature`` with keyed draws, ``base.effective_sampling``).
All m g-values of a (context, token) come from *one* 64-bit keyed value u: g_l is bit 63 - l
of u (``base.py``), so the hashing cost does not grow with m.

Cost: m sequential passes over the candidates. Over a whole 4k-128k vocabulary that is
several milliseconds per decode step, so the tournament runs over the ``candidate_pool`` most
likely tokens (renormalized; for a trained model they hold nearly all the mass) and the rest
keep their plain probability. Detection does not care how the text was generated (the null
law only needs the text to be independent of the key), so this changes strength by the tail
mass, never validity; with ``candidate_pool >= V`` the tournament is over the full vocabulary.

Detection (mean g-value test): with g-values fair bits independent across layers and pairs
under the null, the number of ones over m layers and n deduplicated pairs is
Binomial(m * n, 1/2): the exact one-sided binomial tail is the p-value. (The paper's weighted
mean and Bayesian detector can be more powerful but have no exact null law without
calibration; the unweighted count does.)

Accounts: the first ``provider_layers`` layers are keyed by the provider key, the last
``account_layers`` by the requesting account's key. The provider test counts provider bits
only, exactly as a single-key tournament of that depth; the account test counts the account
bits (Binomial(m_a * n, 1/2) under "not this account"), Holm-corrected over accounts. The
account layers come last so the provider layers act on the untouched distribution, where the
tournament's push is strongest.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from distillguard.errors import InputError
from distillguard.watermark.base import (
    U64,
    ContextHash,
    WatermarkScheme,
    binom_log10_sf,
    check_generators,
    check_sampling,
    check_zero_temperature,
    draw_keyed,
    nucleus,
    sample_output,
    tempered_logprobs,
)


@dataclass(frozen=True)
class SynthIDParams:
    provider_layers: int = 24  # tournament depth keyed by the provider (paper uses m = 30)
    account_layers: int = 6  # extra layers keyed by the account; 0 disables accounts
    context: str = "lefthash"  # lefthash | minhash | selfhash
    context_width: int = 4  # h = ngram_len - 1 of the paper's default (ngram_len 5)
    candidate_pool: int = 256  # tournament over the K most likely tokens (see module doc)
    # T used when a request asks for T = 0 (marked low-temperature sampling, keyed draws; see
    # base.effective_sampling): 0 = plain greedy, which carries almost no mark on a confident
    # model. 0.5: TPR 1.00 at 200 tokens on both test models, at the perplexity cost of
    # sampling at 0.5 (docs/benchmarks.md, "Watermark in the engines").
    zero_temperature: float = 0.5

    def __post_init__(self) -> None:
        if not 1 <= self.provider_layers <= 48:
            raise InputError("provider_layers must be in 1..48 (bits of one 64-bit value)")
        if not 0 <= self.account_layers <= 48:
            raise InputError("account_layers must be in 0..48")
        if self.candidate_pool < 2:
            raise InputError("candidate_pool must be at least 2")
        ContextHash(self.context, self.context_width)
        check_zero_temperature(self.zero_temperature)


def top_bits(values: np.ndarray, m: int) -> np.ndarray:
    """The m g-values of each keyed value, bit 63 first: (...,) uint64 -> (m, ...) float64
    (the tournament's dtype: mixing dtypes there would convert every layer again)."""
    big = np.ascontiguousarray(values).astype(">u8").view(np.uint8)  # MSB byte first
    bits = np.unpackbits(big.reshape(-1, 8)[:, : (m + 7) // 8], axis=-1)  # (N, 8 * bytes)
    return bits[:, :m].T.astype(np.float64).reshape(m, *values.shape)


def top_candidates(lp: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The k largest entries of each row: lp (B, V) float32 -> (token ids (B, k) int64 in id
    order, their values (B, k) float32). Ties at the k-th value go to the lowest ids.

    A full selection (``topk``, ``partition``) over 4k-128k entries per row costs more than
    the whole tournament, so the k-th value is found among far fewer: a strided sample of
    the row gives a value v with, in expectation, 1.5 k entries >= v; those entries (checked:
    at least k per row, else the whole row) are gathered into a small padded matrix where the
    exact k-th value is selected. A real model's likely tokens cluster in the low ids (bytes,
    frequent merges), so the guess is widened (4 k, 8 k) for rows where it falls short."""
    B, V = lp.shape
    step = V // (2 * k)
    if step < 4:  # a small vocabulary: select over the whole row
        order = np.argsort(-lp, axis=1, kind="stable")[:, :k]  # ties: lowest id first
        ids = np.sort(order, axis=1)
        return ids, np.take_along_axis(lp, ids, axis=1)
    sub = np.sort(lp[:, ::step], axis=1)  # (B, n) strided sample, ascending
    n = sub.shape[1]
    mask = np.zeros(lp.shape, dtype=bool)
    todo = np.arange(B)
    for want in (2 * k, 4 * k, 8 * k):  # entries expected above the guess; widen if short
        ks = min(n, -(-want // step))
        rows_mask = lp[todo] >= sub[todo, n - ks][:, None]  # (b, V)
        ok = rows_mask.sum(axis=1) >= k
        mask[todo[ok]] = rows_mask[ok]
        todo = todo[~ok]
        if not todo.size:
            break
    mask[todo] = True  # still short (ties, -inf): the whole row
    flat = np.flatnonzero(mask)  # (S,) row-major: ids ascending within a row
    rows, cols = np.divmod(flat, V)
    vals = lp.ravel()[flat]  # (S,)
    counts = np.bincount(rows, minlength=B)  # (B,) >= k each
    starts = np.cumsum(counts) - counts
    within = np.arange(flat.size) - np.repeat(starts, counts)  # (S,) position in its row
    width = int(counts.max())
    pad = np.full((B, width), -np.inf, dtype=lp.dtype)
    pad[rows, within] = vals
    kth = np.partition(pad, width - k, axis=1)[:, width - k]  # (B,) exact k-th largest
    above = vals > kth[rows]
    tie = vals == kth[rows]
    need = k - np.bincount(rows, weights=above, minlength=B).astype(np.int64)  # (B,)
    tie_rank = np.cumsum(tie) - tie  # ties before this one, over the whole batch ...
    tie_rank -= np.repeat(tie_rank[starts], counts)  # ... made per row
    keep = above | (tie & (tie_rank < need[rows]))  # exactly k per row
    return cols[keep].reshape(B, k), vals[keep].reshape(B, k)


def tournament(probs: np.ndarray, g: np.ndarray) -> np.ndarray:
    """Apply the tournament layers: probs (B, K), g (m, B, K) in {0,1} -> (B, K).

    numpy, in place on a copy: at these sizes per-operation overhead dominates and numpy's
    is several times lower than torch's."""
    probs = probs.copy()
    factor = np.empty_like(probs)
    mass = np.empty((probs.shape[0], 1), dtype=probs.dtype)
    for layer in g:
        mass[:, 0] = np.einsum("bk,bk->b", probs, layer)  # G_l
        np.subtract(layer, mass, out=factor)
        factor += 1.0
        probs *= factor  # p * (1 + g - G)
    return probs


class SynthIDScheme(WatermarkScheme):
    name = "synthid"

    def __init__(
        self, *, secret: bytes, key_id: int, vocab_size: int, params: SynthIDParams | None = None
    ) -> None:
        self.params = params or SynthIDParams()
        super().__init__(
            secret=secret,
            key_id=key_id,
            vocab_size=vocab_size,
            context=ContextHash(self.params.context, self.params.context_width),
            zero_temperature=self.params.zero_temperature,
        )

    # ---- statistics ----
    @property
    def null_pair_mean(self) -> float:
        return self.params.provider_layers / 2

    @staticmethod
    def _count_top(values: np.ndarray, m: int) -> np.ndarray:
        return np.bitwise_count(values >> U64(64 - m)).astype(np.float64)

    def pair_scores(self, values: np.ndarray) -> np.ndarray:
        return self._count_top(values, self.params.provider_layers)  # ones among m_p g-values

    def log10_pvalue(self, score: np.ndarray, n: np.ndarray) -> np.ndarray:
        return binom_log10_sf(np.rint(score), np.asarray(n) * self.params.provider_layers, 0.5)

    def z_score(self, score: np.ndarray, n: np.ndarray) -> np.ndarray:
        m = np.asarray(n) * self.params.provider_layers
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.nan_to_num((score - m / 2) / np.sqrt(m / 4))

    def account_pair_scores(self, values: np.ndarray) -> np.ndarray:
        return self._count_top(values, max(self.params.account_layers, 1))

    def account_log10_pvalue(self, score: np.ndarray, n: np.ndarray) -> np.ndarray:
        return binom_log10_sf(np.rint(score), np.asarray(n) * self.params.account_layers, 0.5)

    def account_z_score(self, score: np.ndarray, n: np.ndarray) -> np.ndarray:
        m = np.asarray(n) * self.params.account_layers
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.nan_to_num((score - m / 2) / np.sqrt(m / 4))

    # ---- generation ----
    def tournament_probs(
        self,
        probs: np.ndarray,
        contexts: np.ndarray,
        candidates: np.ndarray,
        tags: Sequence[str | None],
    ) -> np.ndarray:
        """Tournament over given candidates: probs (B, K) summing to 1, candidates (B, K)."""
        p = self.params
        contexts = np.asarray(contexts, dtype=np.int64)
        u = self.context.candidate_values(self._provider_key, contexts, candidates)
        out = tournament(probs, top_bits(u, p.provider_layers))
        if p.account_layers:  # every row under its own account's key, all rows at once
            ua = self.context.candidate_values(self.account_keys(tags), contexts, candidates)
            out = tournament(out, top_bits(ua, p.account_layers))
        return np.maximum(out, 0.0)

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
        lp = tempered_logprobs(logits, temperature)
        if temperature == 0:
            return sample_output(lp.argmax(dim=-1), lp)
        lp = nucleus(lp, top_p)  # (B, V) float32
        K = min(self.params.candidate_pool, V)
        head_idx, head_lp = top_candidates(lp.numpy(), K)  # (B, K) the K most likely
        head_p = np.exp(head_lp.astype(np.float64))
        head_mass = head_p.sum(axis=-1, keepdims=True)  # (B, 1)
        marked = self.tournament_probs(
            head_p / head_mass, self.contexts_of(input_ids), head_idx, tags
        )  # (B, K), sums to 1
        with np.errstate(divide="ignore"):
            marked_lp = np.log(marked) + np.log(head_mass)
        # the tail keeps its plain log-probs; head mass is unchanged, so no renormalization
        lp = lp.scatter(
            -1, torch.from_numpy(head_idx), torch.from_numpy(marked_lp.astype(np.float32))
        )
        return sample_output(draw_keyed(lp, generators, keyed), lp)
