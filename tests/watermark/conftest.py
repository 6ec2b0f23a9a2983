"""Watermark tests' fixtures: a secret, a random bigram "model" to sample from, a generator."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest

SECRET = b"watermark-test-secret-0123456789"
VOCAB = 512


@pytest.fixture(scope="session")
def bigram_logits():
    """(V, V) logits of a fixed random bigram model: enough entropy per step to mark."""
    import torch

    g = torch.Generator().manual_seed(1234)
    return torch.randn(VOCAB, VOCAB, generator=g) * 2.0


@pytest.fixture(scope="session")
def sample_rows(bigram_logits) -> Callable[..., np.ndarray]:
    """sample_rows(sampler | None, rows=4, steps=120, tags=None, seed=0, temperature=1.0,
    top_p=1.0) -> (rows, steps) token ids drawn through the TokenSampler hook."""
    import torch

    from distillguard.models.sampling import sample_plain

    def run(
        sampler,
        *,
        rows: int = 4,
        steps: int = 120,
        tags=None,
        seed: int = 0,
        temperature: float = 1.0,
        top_p: float = 1.0,
        seeded: bool = True,
    ) -> np.ndarray:
        g = torch.Generator().manual_seed(seed)
        ids = torch.randint(0, VOCAB, (rows, 6), generator=g)
        gens = [
            torch.Generator().manual_seed(seed * 1000 + i) if seeded else None for i in range(rows)
        ]
        tags = list(tags) if tags is not None else [None] * rows
        for _ in range(steps):
            logits = bigram_logits[ids[:, -1]]
            if sampler is None:
                out = sample_plain(logits, temperature=temperature, top_p=top_p, generators=gens)
            else:
                out = sampler.sample(
                    logits, ids, temperature=temperature, top_p=top_p, generators=gens, tags=tags
                )
            ids = torch.cat([ids, out.tokens[:, None]], dim=1)
        return ids[:, 6:].numpy()

    return run
