"""Keyed 64-bit hashing of (context, token) pairs, shared by generation and detection.

Hashing
-------
Every scheme needs a keyed pseudo-random value ``u(key, context, token)`` (64 bits): KGW's
green test is ``u < gamma * 2^64``, Gumbel's uniform is the top 53 bits of ``u``, SynthID's
g-values are its top bits. It is computed with splitmix64's finalizer on ``uint64`` numpy
arrays, so both sides vectorize and agree bit for bit:

* generation: ``vocab_values(key, contexts)`` -> ``(B, V)``: one mix per vocabulary entry
  and row, no ``V x V`` table, so a 128k vocabulary costs 128k mixes per row per step. The key
  may be one per row (a (B,) array: each row's account key), so a batch of many accounts is
  hashed in one vectorized pass, never a Python loop over accounts; the final mix runs in
  place (``mix_inplace``: one scratch array, no temporaries of size B x V);
* detection: ``pair_values(key, contexts, tokens)`` -> ``(N,)``: one value per scored pair.

The context seed comes in three variants (Kirchenbauer et al. 2023b, "On the reliability"):
``lefthash`` (chain hash of the previous h tokens; h=1 is the original KGW), ``minhash``
(minimum of the per-token hashes of the previous h tokens: one edit changes it only if it hits
the minimum) and ``selfhash`` (anchored min-hash whose window also contains the candidate token
itself, plus the previous token as anchor).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from distillguard.errors import InputError
from distillguard.mixing import splitmix64

U64 = np.uint64
_TOKEN_SALT = U64(0x243F6A8885A308D3)  # digits of pi: separates token and key domains
_ANCHOR_SALT = U64(0x13198A2E03707344)
_CONTEXT_SALT = U64(0xA4093822299F31D0)
CONTEXT_MODES = ("lefthash", "minhash", "selfhash")
_GOLDEN, _MUL1, _MUL2 = U64(0x9E3779B97F4A7C15), U64(0xBF58476D1CE4E5B9), U64(0x94D049BB133111EB)
_S30, _S27, _S31 = U64(30), U64(27), U64(31)


def mix_inplace(z: np.ndarray, scratch: np.ndarray | None = None) -> np.ndarray:
    """splitmix64 of z (uint64, any shape), overwriting z; ``scratch`` (same shape) is reused
    when given. The same function as ``splitmix64``, without allocating the result."""
    t = np.empty_like(z) if scratch is None else scratch
    z += _GOLDEN
    np.right_shift(z, _S30, out=t)
    z ^= t
    z *= _MUL1
    np.right_shift(z, _S27, out=t)
    z ^= t
    z *= _MUL2
    np.right_shift(z, _S31, out=t)
    z ^= t
    return z


Key = int | np.ndarray  # one key for every row, or one per row ((N,) uint64)


def _key(key: Key, ndim: int) -> np.ndarray | U64:
    """A key as something that broadcasts against (N, ...) arrays of ``ndim`` dimensions."""
    if isinstance(key, np.ndarray):
        k = key.astype(U64, copy=False)
        return k.reshape(k.shape + (1,) * (ndim - 1))
    return U64(key)


class _TokenTable:
    """Unkeyed per-token hashes ``mix(v ^ salt)`` for v < size, grown on demand."""

    def __init__(self) -> None:
        self._table = splitmix64(np.arange(1024, dtype=U64) ^ _TOKEN_SALT)

    def get(self, size: int) -> np.ndarray:  # (size,) uint64
        if size > self._table.size:
            self._table = splitmix64(
                np.arange(max(size, 2 * self._table.size), dtype=U64) ^ _TOKEN_SALT
            )
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

    # The *_hashed methods take token hashes (TOKEN_HASH.of(ids)): detection hashes every
    # token of a batch once and reuses it for all h context slots, keys and accounts.
    def seed_hashed(self, key: Key, ctx_h: np.ndarray) -> np.ndarray:
        """Keyed seed of hashed contexts (N, h) -> (N,) uint64, independent of the token.
        ``key``: one key, or one per row (N,)."""
        if self.mode == "lefthash":
            seed = splitmix64(ctx_h[:, 0] ^ _key(key, 1))
            for j in range(1, self.width):
                seed = splitmix64(seed ^ ctx_h[:, j])
            return seed
        # minhash / selfhash window minimum, (N,)
        return splitmix64(ctx_h ^ _key(key, 2)).min(axis=1)

    def pair_hashed(self, key: Key, ctx_h: np.ndarray, tok_h: np.ndarray) -> np.ndarray:
        """u(key, context, token) from hashed contexts (N, h) and tokens (N,) -> (N,) uint64.
        ``key``: one key, or one per pair (N,)."""
        seed = self.seed_hashed(key, ctx_h)
        if self.mode == "selfhash":
            k = _key(key, 1)
            seed = np.minimum(seed, splitmix64(tok_h ^ k))
            seed = splitmix64(seed ^ splitmix64(ctx_h[:, -1] ^ k ^ _ANCHOR_SALT))
        return splitmix64(seed ^ tok_h)

    def flag_hashed(self, key: int, ctx_h: np.ndarray) -> np.ndarray:
        """A keyed value of the context alone (N,) uint64 (e.g. to pick account contexts)."""
        seed = splitmix64(ctx_h[:, 0] ^ U64(key) ^ _CONTEXT_SALT)
        for j in range(1, ctx_h.shape[1]):
            seed = splitmix64(seed ^ ctx_h[:, j])
        return seed

    def pair_values(self, key: int, contexts: np.ndarray, tokens: np.ndarray) -> np.ndarray:
        """u(key, context, token) for pairs: contexts (N, h) int64, tokens (N,) -> (N,) uint64."""
        return self.pair_hashed(key, TOKEN_HASH.of(contexts), TOKEN_HASH.of(tokens))

    def context_flag_values(self, key: int, contexts: np.ndarray) -> np.ndarray:
        """``flag_hashed`` of token-id contexts (N, h) -> (N,) uint64."""
        return self.flag_hashed(key, TOKEN_HASH.of(contexts))

    def vocab_values(self, key: Key, contexts: np.ndarray, vocab: int) -> np.ndarray:
        """u for every candidate token: contexts (B, h) -> (B, V) uint64 (generation side).
        Equal to ``pair_values`` of each (context, v), computed without a V x V table.
        ``key``: one key, or one per row (B,) (e.g. each row's account key)."""
        return self._candidates_hashed(key, contexts, TOKEN_HASH.get(vocab)[None, :])

    def candidate_values(
        self, key: Key, contexts: np.ndarray, candidates: np.ndarray
    ) -> np.ndarray:
        """u for some candidates per row: contexts (B, h), candidates (B, K) -> (B, K)."""
        return self._candidates_hashed(key, contexts, TOKEN_HASH.of(candidates))

    def ragged_values(
        self, key: Key, contexts: np.ndarray, rows: np.ndarray, tokens: np.ndarray
    ) -> np.ndarray:
        """u for a different number of candidates per row: contexts (B, h), key one or (B,)
        per row, candidates as (row (N,), token (N,)) -> (N,) uint64. The context seed is
        hashed once per row, then one mix per candidate (``selfhash`` seeds per candidate)."""
        ctx_h = TOKEN_HASH.of(np.asarray(contexts, dtype=np.int64))  # (B, h)
        tok_h = TOKEN_HASH.of(tokens)  # (N,)
        if self.mode == "selfhash":
            k = key[rows] if isinstance(key, np.ndarray) else key
            return self.pair_hashed(k, ctx_h[rows], tok_h)
        seed = self.seed_hashed(key, ctx_h)  # (B,)
        return mix_inplace(seed[rows] ^ tok_h)

    def _candidates_hashed(self, key: Key, contexts: np.ndarray, tv: np.ndarray) -> np.ndarray:
        ctx_h = TOKEN_HASH.of(np.asarray(contexts, dtype=np.int64))  # (B, h)
        seed = self.seed_hashed(key, ctx_h)[:, None]  # (B, 1)
        if self.mode == "selfhash":
            k = _key(key, 2)  # scalar or (B, 1)
            seed = np.minimum(seed, splitmix64(tv ^ k))  # (B, K)
            seed = splitmix64(seed ^ splitmix64(ctx_h[:, -1:] ^ k ^ _ANCHOR_SALT))
        return mix_inplace(seed ^ tv)  # (B, K): one fresh array, mixed in place


def fraction_threshold(fraction: float) -> U64:
    """uint64 threshold t with P(u < t) = fraction for uniform u; even, so bit 0 never matters."""
    return U64(int(fraction * 2.0**64) & ~1 & 0xFFFFFFFFFFFFFFFF)
