"""Keyed 64-bit hashing of (context, token) pairs, shared by generation and detection.

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
    def seed_hashed(self, key: int, ctx_h: np.ndarray) -> np.ndarray:
        """Keyed seed of hashed contexts (N, h) -> (N,) uint64, independent of the token."""
        k = U64(key)
        if self.mode == "lefthash":
            seed = splitmix64(ctx_h[:, 0] ^ k)
            for j in range(1, self.width):
                seed = splitmix64(seed ^ ctx_h[:, j])
            return seed
        return splitmix64(ctx_h ^ k).min(axis=1)  # minhash / selfhash window minimum, (N,)

    def pair_hashed(self, key: int, ctx_h: np.ndarray, tok_h: np.ndarray) -> np.ndarray:
        """u(key, context, token) from hashed contexts (N, h) and tokens (N,) -> (N,) uint64."""
        seed = self.seed_hashed(key, ctx_h)
        if self.mode == "selfhash":
            k = U64(key)
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

    def vocab_values(self, key: int, contexts: np.ndarray, vocab: int) -> np.ndarray:
        """u for every candidate token: contexts (B, h) -> (B, V) uint64 (generation side).
        Equal to ``pair_values`` of each (context, v), computed without a V x V table."""
        return self._candidates_hashed(key, contexts, TOKEN_HASH.get(vocab)[None, :])

    def candidate_values(
        self, key: int, contexts: np.ndarray, candidates: np.ndarray
    ) -> np.ndarray:
        """u for some candidates per row: contexts (B, h), candidates (B, K) -> (B, K)."""
        return self._candidates_hashed(key, contexts, TOKEN_HASH.of(candidates))

    def _candidates_hashed(self, key: int, contexts: np.ndarray, tv: np.ndarray) -> np.ndarray:
        ctx_h = TOKEN_HASH.of(contexts)  # (B, h)
        seed = self.seed_hashed(key, ctx_h)[:, None]  # (B, 1)
        if self.mode == "selfhash":
            k = U64(key)
            seed = np.minimum(seed, splitmix64(tv ^ k))  # (B, K)
            seed = splitmix64(seed ^ splitmix64(ctx_h[:, -1:] ^ k ^ _ANCHOR_SALT))
        return splitmix64(seed ^ tv)


def fraction_threshold(fraction: float) -> U64:
    """uint64 threshold t with P(u < t) = fraction for uniform u; even, so bit 0 never matters."""
    return U64(int(fraction * 2.0**64) & ~1 & 0xFFFFFFFFFFFFFFFF)
