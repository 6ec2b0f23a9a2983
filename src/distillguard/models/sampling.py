"""Next-token sampling: the ``TokenSampler`` hook and the plain sampler every scheme can reuse.

Sampling is inverse-CDF with one uniform draw per row from that row's own ``torch.Generator``
(the request's seed), so a seeded request gets the same tokens whatever else shares its batch.
Watermark schemes implement ``TokenSampler``: they may bias the logits and call
``sample_plain``, or draw their own keyed randomness and return the distribution they used.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import torch
from torch import Tensor


@dataclass(frozen=True)
class SampleOutput:
    tokens: Tensor  # (B,) long: the chosen next tokens
    logprobs: Tensor  # (B, V) float32: log-probs of the distribution actually sampled from


@runtime_checkable
class TokenSampler(Protocol):
    def sample(
        self,
        logits: Tensor,
        input_ids: Tensor,
        *,
        temperature: float,
        top_p: float,
        generators: Sequence[torch.Generator | None],
        tags: Sequence[str | None],
    ) -> SampleOutput:
        """logits (B, V) raw next-token logits; input_ids (B, T) left-padded context so far;
        generators / tags one per row (request seed / requesting account id)."""
        ...


@runtime_checkable
class LogitsHook(Protocol):
    """Changes one group of rows' next-token logits before the sampler sees them (e.g.
    antidistillation sampling, ``prevent.antidistill``). Runs before the watermark scheme, so
    the watermark composes on top of whatever the hook did."""

    def __call__(self, logits: Tensor, input_ids: Tensor, mask: Tensor) -> Tensor:
        """logits (B, V); input_ids and mask (B, T) left padded (mask 1 on real tokens)
        -> logits (B, V)."""
        ...


def uniform_per_row(generators: Sequence[torch.Generator | None]) -> Tensor:
    """One U[0, 1) draw per row (B,), each from its row's generator (global RNG for None)."""
    return torch.stack([torch.rand((), generator=g) for g in generators])


def nucleus_logits(logits: Tensor, top_p: float) -> Tensor:
    """Mask (-inf) every token outside the smallest set whose probability reaches ``top_p``.
    logits (B, V) -> (B, V); the most likely token always stays."""
    if top_p >= 1.0:
        return logits
    sorted_logits, order = logits.sort(dim=-1, descending=True)  # (B, V)
    probs = sorted_logits.softmax(dim=-1)
    before = probs.cumsum(dim=-1) - probs  # mass strictly before each token
    sorted_logits = sorted_logits.masked_fill(before >= top_p, float("-inf"))
    return torch.empty_like(logits).scatter_(-1, order, sorted_logits)


def sample_from_logprobs(logprobs: Tensor, uniforms: Tensor) -> Tensor:
    """Inverse-CDF draw: logprobs (B, V), uniforms (B,) in [0, 1) -> tokens (B,) long.
    Zero-probability tokens are never chosen (``right=True`` skips flat CDF steps)."""
    cdf = logprobs.exp().cumsum(dim=-1)  # (B, V)
    target = (uniforms * cdf[:, -1]).unsqueeze(-1)  # (B, 1), scaled: the sum is not exactly 1
    tokens = torch.searchsorted(cdf, target, right=True).squeeze(-1)
    return tokens.clamp_(max=logprobs.shape[-1] - 1)


def sample_plain(
    logits: Tensor,
    *,
    temperature: float,
    top_p: float,
    generators: Sequence[torch.Generator | None],
) -> SampleOutput:
    """The default sampler. temperature 0 is greedy and reports the untempered distribution;
    otherwise logits / temperature, nucleus ``top_p``, one seeded inverse-CDF draw per row."""
    logits = logits.float()  # (B, V)
    if temperature <= 0.0:
        return SampleOutput(tokens=logits.argmax(dim=-1), logprobs=logits.log_softmax(dim=-1))
    scaled = nucleus_logits(logits / temperature, top_p)
    logprobs = scaled.log_softmax(dim=-1)  # (B, V)
    return SampleOutput(
        tokens=sample_from_logprobs(logprobs, uniform_per_row(generators)), logprobs=logprobs
    )


class PlainSampler:
    """``TokenSampler`` that ignores context and tags: ordinary, unwatermarked sampling."""

    def sample(
        self,
        logits: Tensor,
        input_ids: Tensor,
        *,
        temperature: float,
        top_p: float,
        generators: Sequence[torch.Generator | None],
        tags: Sequence[str | None],
    ) -> SampleOutput:
        return sample_plain(logits, temperature=temperature, top_p=top_p, generators=generators)
