"""Gumbel-max / Aaronson watermark: distortion-free, keyed, with an exact Gamma test.

Generation: for the current context every candidate v gets a keyed uniform
r_v = top 53 bits of u(key, context, v) (``base.py``), and the token is
argmax_v log(r_v) / p_v. For r uniform this is exactly a sample from p (the Gumbel-max trick),
so each answer is distributed as without the watermark; the randomness is the key's, not the
request seed's. Temperature and top_p act on p first; a T = 0 request samples at the scheme's
``zero_temperature`` (``base.effective_sampling``; 0 there = plain greedy, unmarked).
Because the draw is a deterministic function of the context, a context that already
occurred in the same row is sampled plainly (with the row's generator) instead: this
stops the loops a deterministic sampler falls into, and the detector's deduplication ignores
the repeats anyway. A consequence worth knowing: ``n`` completions of the same prompt under
Gumbel coincide until a repeated context frees one of them (use KGW or SynthID for diverse n).

Detection: the chosen tokens have large r; the score is S = sum over n deduplicated pairs of
-log(1 - r). Under the null each term is Exp(1), so S ~ Gamma(n, 1) and the p-value is the
exact regularized upper incomplete gamma Q(n, S).

Accounts: the mechanism is deterministic, so account information must *replace* some provider
randomness -- there is no free choice left to carry it. A keyed fraction ``account_fraction``
of contexts (chosen by a provider-keyed hash of the context alone) draws its r from the
account key instead. The provider test scores the other contexts, the account test only
these, both exactly. Cost: the provider test sees (1 - account_fraction) of the pairs, i.e.
about sqrt(1 - 0.125) = 0.94 of its z at the default; measured in the eval benchmark.
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
    Pairs,
    WatermarkScheme,
    check_generators,
    check_sampling,
    check_zero_temperature,
    draw_keyed,
    fraction_threshold,
    gamma_log10_sf,
    nucleus,
    sample_output,
    tempered_logprobs,
)


@dataclass(frozen=True)
class GumbelParams:
    context: str = "lefthash"  # lefthash | minhash | selfhash
    context_width: int = 3  # h; > 1 because a deterministic sampler repeats short contexts
    account_fraction: float = 0.125  # contexts carrying the account key; 0 disables accounts
    # T used when a request asks for T = 0 (marked low-temperature sampling, keyed draws; see
    # base.effective_sampling): 0 = plain greedy, which carries almost no mark on a confident
    # model. 0.5: TPR 1.00 at 200 tokens on both test models, at the perplexity cost of
    # sampling at 0.5 (docs/benchmarks.md, "Watermark in the engines").
    zero_temperature: float = 0.5

    def __post_init__(self) -> None:
        if not 0.0 <= self.account_fraction < 1.0:
            raise InputError("account_fraction must be in [0, 1)")
        ContextHash(self.context, self.context_width)
        check_zero_temperature(self.zero_temperature)


def uniforms(values: np.ndarray) -> np.ndarray:
    """Keyed values (uint64) -> uniforms in (0, 1) from their top 52 bits (float64)."""
    return ((values >> U64(12)).astype(np.float64) + 0.5) * 2.0**-52


class GumbelScheme(WatermarkScheme):
    name = "gumbel"

    def __init__(
        self, *, secret: bytes, key_id: int, vocab_size: int, params: GumbelParams | None = None
    ) -> None:
        self.params = params or GumbelParams()
        super().__init__(
            secret=secret,
            key_id=key_id,
            vocab_size=vocab_size,
            context=ContextHash(self.params.context, self.params.context_width),
            zero_temperature=self.params.zero_temperature,
        )
        self._thr_account = fraction_threshold(self.params.account_fraction)

    # ---- statistics ----
    @property
    def null_pair_mean(self) -> float:
        return 1.0

    def pair_scores(self, values: np.ndarray) -> np.ndarray:
        return -np.log1p(-uniforms(values))

    def log10_pvalue(self, score: np.ndarray, n: np.ndarray) -> np.ndarray:
        return gamma_log10_sf(score, n)

    def z_score(self, score: np.ndarray, n: np.ndarray) -> np.ndarray:
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.nan_to_num((score - n) / np.sqrt(n))

    def account_contexts(self, contexts: np.ndarray) -> np.ndarray:
        """Contexts (N, h) whose randomness comes from the account key -> (N,) bool."""
        if self.params.account_fraction == 0:
            return np.zeros(len(contexts), dtype=bool)
        return self.context.context_flag_values(self._provider_key, contexts) < self._thr_account

    def _account_flags(self, pairs: Pairs) -> np.ndarray:
        if self.params.account_fraction == 0:
            return np.zeros(len(pairs.rows), dtype=bool)
        return self.context.flag_hashed(self._provider_key, pairs.ctx_h) < self._thr_account

    def provider_pair_mask(self, pairs: Pairs) -> np.ndarray:
        return ~self._account_flags(pairs)

    def account_pair_mask(self, pairs: Pairs) -> np.ndarray:
        return self._account_flags(pairs)

    # ---- generation ----
    def row_keys(self, contexts: np.ndarray, tags: Sequence[str | None]) -> np.ndarray:
        """The key each row draws its r from: contexts (B, h) -> (B,) uint64: the provider
        key, or the row's account key on account contexts."""
        keys = np.full(len(contexts), self._provider_key, dtype=U64)
        flagged = np.flatnonzero(self.account_contexts(contexts))
        if flagged.size:
            keys[flagged] = self.account_keys([tags[int(i)] for i in flagged])
        return keys

    def keyed_values(
        self, contexts: np.ndarray, vocab: int, tags: Sequence[str | None]
    ) -> np.ndarray:
        """u for every candidate: contexts (B, h) -> (B, V) uint64 (account rows re-keyed),
        all rows in one vectorized pass."""
        contexts = np.asarray(contexts, dtype=np.int64)
        return self.context.vocab_values(self.row_keys(contexts, tags), contexts, vocab)

    def keyed_uniforms(
        self, contexts: np.ndarray, vocab: int, tags: Sequence[str | None]
    ) -> np.ndarray:
        """r for every candidate: contexts (B, h) -> (B, V) float64 (account rows re-keyed)."""
        return uniforms(self.keyed_values(contexts, vocab, tags))

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
        check_sampling(temperature, top_p)
        B, V = logits.shape
        check_generators(generators, tags, B)
        temperature, keyed_u = self.effective_sampling(temperature, input_ids, generators)
        lp = tempered_logprobs(logits, temperature)
        if temperature == 0:
            return sample_output(lp.argmax(dim=-1), lp)
        lp = nucleus(lp, top_p)  # (B, V)
        probs = lp.exp()
        keyed = gumbel_argmax(self.keyed_values(self.contexts_of(input_ids), V, tags), probs)
        repeated = _context_repeated(input_ids, self.context.width)  # (B,) bool
        if bool(repeated.any()):
            import torch

            plain = draw_keyed(lp, generators, keyed_u)
            keyed = torch.where(repeated, plain, keyed)
        return sample_output(keyed, lp)


_C_BITS = 24  # bits of u read by gumbel_argmax's bound (exact integers in float32)
_C_MAX = float((1 << _C_BITS) - 1)


def gumbel_argmax(values: np.ndarray, probs: Any) -> Any:
    """The Gumbel-max choice argmax_v log(r_v) / p_v over p_v > 0 (r = ``uniforms(values)``):
    values (B, V) uint64, probs (B, V) float32 tensor -> (B,) long tensor.

    The token the full computation picks (the same float64 expression, ties to the lowest
    id), with the log taken only for candidates that can win. With E = -log r the winner
    minimises E_v / p_v; the most likely token j gives a bound b >= E_j / p_j, and a winner
    needs 1 - r_v <= E_v <= b p_v. 1 - r_v is bounded below by the top 24 bits t_v of u
    ((2^24 - 1 - t_v) 2^-24 < 1 - r_v), so one float32 test per candidate keeps about b + 1
    of them (a handful for a confident model, a few hundred for a flat one)."""
    import torch

    B, V = values.shape
    p = np.ascontiguousarray(probs.detach().float().numpy())  # (B, V) float32, a view
    ar = np.arange(B)
    ref = p.argmax(axis=1)  # (B,) the most likely token: p > 0
    p_ref = p[ar, ref].astype(np.float64)
    bound = -np.log(uniforms(values[ar, ref])) / p_ref  # (B,) E_j / p_j
    with np.errstate(over="ignore", invalid="ignore"):  # inf scale (unnormalized p): keep all
        scale = (bound * (1.0 + 1e-4) * 2.0**_C_BITS).astype(np.float32)[:, None]  # (B, 1)
        top = (values >> U64(64 - _C_BITS)).view(np.int64).astype(np.float32)  # (B, V) exact
        top += p * scale
    # >=: rounding is monotone, so a sum whose exact value passes still does after rounding
    idx = np.flatnonzero(top >= _C_MAX)  # (S,) flat ids of candidates, row-major
    rows, toks = np.divmod(idx, V)
    pv = torch.from_numpy(p.ravel()[idx])  # (S,) float32; p = 0 scores -inf below
    score = (torch.log(torch.from_numpy(uniforms(values.ravel()[idx]))) / pv.double()).numpy()
    starts = np.searchsorted(rows, ar)  # every row has a candidate: its reference token
    best = np.maximum.reduceat(score, starts)  # (B,)
    first = np.minimum.reduceat(np.where(score == best[rows], toks, V), starts)  # ties: lowest
    return torch.from_numpy(first.astype(np.int64))


def _context_repeated(input_ids: Any, width: int) -> Any:
    """Whether each row's last ``width`` tokens already occurred earlier in the row: (B,) bool."""
    if input_ids.shape[1] <= width:
        return input_ids.new_zeros(input_ids.shape[0], dtype=bool)
    last = input_ids[:, -width:]  # (B, h)
    windows = input_ids[:, :-1].unfold(1, width, 1)  # (B, T-h, h)
    return (windows == last[:, None, :]).all(dim=-1).any(dim=-1)
