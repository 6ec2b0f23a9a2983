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

from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from distillguard.errors import InputError
from distillguard.watermark.base import (
    TOKEN_HASH,
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
from distillguard.watermark.hashing import mix_inplace


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


CODE_ROWS = 16_384  # contexts whose provider green list generation keeps (LRU)
CODE_BYTES = 64 << 20  # and about this much memory: 12 * gamma * V bytes a context
GREEN_TABLE_VOCAB = 16_384  # h = 1: all green lists as bits up to this V (32 MB at 16k)


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
        # Generation cache (``bias``): provider green token ids per context, LRU. A decode
        # step would otherwise hash every candidate of every row; contexts repeat a lot (h = 1
        # has at most V of them), so most steps hash only the account part. Detection never
        # uses it.
        self._green: OrderedDict[tuple, tuple[np.ndarray, np.ndarray]] = OrderedDict()
        self._green_vocab = 0
        self._table: np.ndarray | None = None  # (V, V / 8) packed green bits, h = 1

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
        """Logit bias for a batch: contexts (B, h) -> (B, V) float32: ``delta`` on the provider
        green list, ``delta + account_delta`` on its account-green part.

        The provider green list of a context is the same for every account: it is hashed once
        per context and kept (token ids and their token hashes) in a bounded LRU cache
        (``CODE_ROWS`` contexts, about ``CODE_BYTES``), so a step whose contexts were seen
        (h = 1 has at most V of them) hashes no full vocabulary. The account signal lives
        inside G_p only, so each row's account key hashes just its ~gamma V green candidates,
        all rows in one vectorized pass, whatever the number of accounts."""
        p = self.params
        contexts = np.asarray(contexts, dtype=np.int64)
        B = len(contexts)
        if not B:
            return np.zeros((0, vocab), dtype=np.float32)
        table = self._green_table(vocab)
        if table is not None:  # h = 1: every context's green list is one packed bit row
            bits = np.unpackbits(table[contexts[:, 0]], axis=1, count=vocab)  # (B, V) 0/1
            flat = np.flatnonzero(bits.view(bool))  # (N,) green positions in (B, V)
            rows, toks = np.divmod(flat, vocab)
            lens = np.bincount(rows, minlength=B)
            tok_h = TOKEN_HASH.get(vocab)[toks]  # (N,)
        else:
            lists = self._green_lists(contexts, vocab)  # B x (token ids, token hashes)
            lens = np.fromiter((len(t) for t, _ in lists), dtype=np.int64, count=B)
            flat = np.concatenate([t for t, _ in lists])  # (N,) green token ids
            flat += np.repeat(np.arange(B, dtype=np.int64) * vocab, lens)  # positions in (B, V)
            tok_h = np.concatenate([h for _, h in lists])
        out = np.zeros(B * vocab, dtype=np.float32)
        if p.account_delta == 0 or not flat.size:
            out[flat] = np.float32(p.delta)
            return out.reshape(B, vocab)
        keys = self.account_keys(tags)  # (B,) each row's account key
        if self.context.mode == "selfhash":  # the seed depends on the candidate too
            rows = np.repeat(np.arange(B), lens)
            u = self.context.ragged_values(keys, contexts, rows, flat - rows * vocab)
        else:  # one seed a row, one mix a green candidate: u = mix(seed ^ token hash)
            seeds = self.context.seed_hashed(keys, TOKEN_HASH.of(contexts))  # (B,)
            u = mix_inplace(np.repeat(seeds, lens) ^ tok_h)
        out[flat] = np.where(
            u < self._thr_account, np.float32(p.delta + p.account_delta), np.float32(p.delta)
        )
        return out.reshape(B, vocab)

    def _green_table(self, vocab: int) -> np.ndarray | None:
        """For h = 1 (lefthash) and V <= ``GREEN_TABLE_VOCAB``: the provider green list of
        every context, (V, ceil(V / 8)) packed bits (2 MB at V = 4k), hashed once (V^2 mixes,
        ~0.3 s) on first use; so no decode step ever hashes the vocabulary. Else None."""
        if self.context.mode != "lefthash" or self.context.width != 1:
            return None
        if vocab > GREEN_TABLE_VOCAB:
            return None
        if self._table is None or self._table.shape[0] != vocab:
            rows = []
            for start in range(0, vocab, 256):  # chunks of contexts: bounded scratch memory
                ctx = np.arange(start, min(start + 256, vocab), dtype=np.int64)[:, None]
                rows.append(np.packbits(self.green_mask(ctx, vocab), axis=1))
            self._table = np.concatenate(rows)
        return self._table

    def _green_lists(self, contexts: np.ndarray, vocab: int) -> list[tuple[np.ndarray, np.ndarray]]:
        """Provider green token ids of each context (B, h) and their token hashes, from the
        LRU cache or hashed (all missing contexts in one pass)."""
        names = [tuple(row) for row in contexts.tolist()]
        per = max(1, int(12 * vocab * self.params.gamma))  # bytes a context: ids + hashes
        cap = max(1, min(CODE_ROWS, CODE_BYTES // per))
        if self._green_vocab != vocab:
            self._green.clear()
            self._green_vocab = vocab
        cache = self._green
        found = [cache.get(n) for n in names]
        for n in names:  # recently used: evicted last
            if n in cache:
                cache.move_to_end(n)
        missing = [i for i, g in enumerate(found) if g is None]
        if missing:
            at = {names[i]: i for i in missing}  # distinct missing contexts
            mask = self.green_mask(contexts[list(at.values())], vocab)  # (m, V)
            table = TOKEN_HASH.get(vocab)
            fresh = {}
            for name, row in zip(at, mask, strict=True):
                ids = np.flatnonzero(row)
                fresh[name] = (ids, table[ids])
            for i in missing:
                found[i] = fresh[names[i]]
            if len(fresh) <= cap:  # a batch larger than the cache: not cached
                while len(cache) + len(fresh) > cap:
                    cache.popitem(last=False)
                cache.update(fresh)
        return [g for g in found if g is not None]

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
