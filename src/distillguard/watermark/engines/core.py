"""The schemes as an engine plugin: one pure step every engine adapter calls.

An engine (transformers ``generate``, vLLM, SGLang) hands its logits processors the raw
next-token logits of a batch, then samples from what they return. The adapters make the
*scheme* choose the token, exactly as our own engine does (``WatermarkScheme.sample``: the same
keyed hashing, the account of each row, temperature, top_p, the T = 0 rule, the request seed),
and return logits that allow only that token (0 there, -inf elsewhere). Whatever the engine
does next -- temperature, top-k/top-p, greedy argmax or a random draw -- picks that token.

Why not return a bias and let the engine sample: only KGW is a bias; Gumbel and SynthID replace
the draw itself, and both transformers and vLLM apply temperature *after* the processors, so a
bias would not mean the same delta as in our engine. What this costs: sampling parameters the
engine applies after its processors are not applied again (the adapters read temperature,
top_p and seed from the request; top_k and min_p do not act on marked rows), and the engine's
own logprobs of marked rows are those of the raw logits (vLLM's default) or the one-hot ones
(transformers' ``output_scores``).

The step runs on the CPU (the keyed hashing is numpy): an engine on a GPU copies the (B, V)
logits of each step to the host and the chosen tokens back. Histories longer than
``MAX_HISTORY`` tokens are cut to their tail (the context hash needs only the last h tokens;
Gumbel's repeat check and the T = 0 loop breaker look no further back).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from distillguard.errors import ConfigError, InputError
from distillguard.watermark import build_scheme
from distillguard.watermark.base import WatermarkScheme
from distillguard.watermark.keys import fingerprint

MAX_HISTORY = 2048  # tokens of a row's history handed to the scheme (its tail)
ACCOUNT_ARG = "distillguard_account"  # the per-request field naming the account (extra_args)


@dataclass(frozen=True)
class RowRequest:
    """One row's request, as the engine knows it."""

    account: str | None  # who asked (keys the account signal); None = the anonymous account
    temperature: float  # as requested; 0 = the scheme's T = 0 rule
    top_p: float = 1.0  # nucleus mass, applied by the scheme
    seed: int | None = None  # request seed (the engine adapter keeps one generator per row)

    def __post_init__(self) -> None:
        if self.account is not None and not isinstance(self.account, str):
            raise InputError(f"{ACCOUNT_ARG} must be a string, got {type(self.account).__name__}")
        if not 0.0 <= self.temperature <= 2.0:
            raise InputError("temperature must be in [0, 2]", param="temperature")
        if not 0.0 < self.top_p <= 1.0:
            raise InputError("top_p must be in (0, 1]", param="top_p")


@dataclass(frozen=True)
class MarkingInfo:
    """What an engine applies, safe to log and to show: no secret, no derived key."""

    scheme: str  # kgw | gumbel | synthid
    key_id: int  # the key version answers are marked under
    fingerprint: str  # public name of (secret, key id), as ``distillguard keys`` prints it


def _secret_from(environ: Mapping[str, str]) -> bytes:
    secret = environ.get("DISTILLGUARD_WATERMARK_SECRET", "")
    if not secret:
        raise ConfigError(
            "the distillguard watermark plugin was loaded without its secret: set "
            "DISTILLGUARD_WATERMARK_SECRET in the engine's environment to the gateway's "
            "master secret (and DISTILLGUARD_WATERMARK_SCHEME / _KEY_ID to the gateway's), "
            "or do not load the plugin"
        )
    return secret.encode()


class EngineMarker:
    """A scheme packaged for an engine: ``apply`` is the whole per-step work."""

    def __init__(self, scheme: WatermarkScheme, *, secret: bytes) -> None:
        self.scheme = scheme
        self.info = MarkingInfo(scheme.name, scheme.key_id, fingerprint(secret, scheme.key_id))

    @classmethod
    def build(
        cls, *, secret: bytes, scheme: str, key_id: int, vocab_size: int, **params: Any
    ) -> EngineMarker:
        if scheme == "off":
            raise ConfigError("the watermark plugin is loaded with scheme 'off': unload it")
        return cls(
            build_scheme(scheme, secret=secret, key_id=key_id, vocab_size=vocab_size, **params),
            secret=secret,
        )

    @classmethod
    def from_environment(cls, environ: Mapping[str, str], *, vocab_size: int) -> EngineMarker:
        """The plugin's start inside an engine process (the edge where settings are read):
        ``DISTILLGUARD_WATERMARK_SECRET`` (required), ``_SCHEME`` (kgw), ``_KEY_ID`` (1)."""
        secret = _secret_from(environ)
        key_id_text = environ.get("DISTILLGUARD_WATERMARK_KEY_ID", "1")
        try:
            key_id = int(key_id_text)
        except ValueError:
            raise ConfigError(
                f"DISTILLGUARD_WATERMARK_KEY_ID must be an integer, got {key_id_text!r}"
            ) from None
        scheme = environ.get("DISTILLGUARD_WATERMARK_SCHEME", "kgw")
        return cls.build(secret=secret, scheme=scheme, key_id=key_id, vocab_size=vocab_size)

    # ---- the step ----
    def choose(
        self,
        logits: Any,
        histories: Sequence[Sequence[int]] | Any,
        rows: Sequence[RowRequest],
        generators: Sequence[Any],
    ) -> Any:
        """Marked next tokens: logits (B, V) any device, histories B token lists (prompt and
        output so far) or a left-padded (B, T) tensor, one RowRequest and generator per row
        -> tokens (B,) long, on CPU."""
        import torch

        B = logits.shape[0]
        if len(histories) != B or len(rows) != B or len(generators) != B:
            raise InputError("histories, rows and generators need one entry per logits row")
        host = logits.detach().float().cpu()  # (B, V)
        if isinstance(histories, torch.Tensor):  # already (B, T), left padded (transformers)
            ids = histories[:, -MAX_HISTORY:].detach().cpu().long()
        else:
            ids = padded_histories(histories)  # (B, T) on CPU
        tokens = torch.empty(B, dtype=torch.long)
        groups: dict[tuple[float, float], list[int]] = {}
        for i, r in enumerate(rows):
            groups.setdefault((r.temperature, r.top_p), []).append(i)
        for (temperature, top_p), idx in groups.items():
            index = torch.tensor(idx)
            out = self.scheme.sample(
                host[index],
                ids[index],
                temperature=temperature,
                top_p=top_p,
                generators=[generators[i] for i in idx],
                tags=[rows[i].account for i in idx],
            )
            tokens[index] = out.tokens.long()
        return tokens

    def apply(
        self,
        logits: Any,
        histories: Sequence[Sequence[int]] | Any,
        rows: Sequence[RowRequest],
        generators: Sequence[Any],
    ) -> Any:
        """``choose`` then ``force``: logits (B, V) -> (B, V) on the same device and dtype."""
        return force(logits, self.choose(logits, histories, rows, generators))


def force(logits: Any, tokens: Any) -> Any:
    """Logits that allow only ``tokens``: logits (B, V), tokens (B,) -> (B, V), 0 at the chosen
    token and -inf elsewhere (same device and dtype; any sampler then picks that token)."""
    import torch

    out = torch.full_like(logits, float("-inf"))
    rows = torch.arange(logits.shape[0], device=logits.device)
    out[rows, tokens.to(logits.device)] = 0.0
    return out


def padded_histories(histories: Sequence[Sequence[int]]) -> Any:
    """Token histories (their last MAX_HISTORY tokens) as one left-padded (B, T) long tensor.
    Padding is token 0, as ``WatermarkScheme.contexts_of`` pads short contexts."""
    import torch

    tails = [np.asarray(h[-MAX_HISTORY:], dtype=np.int64) for h in histories]
    width = max((t.size for t in tails), default=0)
    out = np.zeros((len(tails), max(width, 1)), dtype=np.int64)
    for i, t in enumerate(tails):
        if t.size:
            out[i, out.shape[1] - t.size :] = t
    return torch.from_numpy(out)


def row_generator(seed: int | None) -> Any:
    """The per-request generator (None: the global RNG), as our engine makes it."""
    import torch

    return torch.Generator().manual_seed(seed) if seed is not None else None
