"""Antidistillation sampling (Savani et al. 2025, arXiv 2504.13146) as a logits hook.

The teacher samples its next token from ``log p_teacher(x) + lambda * delta(x)`` where
``delta(x)`` estimates how much training a student on token ``x`` would *raise* that
student's loss on the task: one SGD step on ``x`` moves the student by ``eta * grad log
p_S(x)``, which changes its downstream loss ``L`` by ``eta * <grad L, grad log p_S(x)>``. That
inner product, for every candidate ``x`` at once, is the directional derivative of ``log
p_S(. | context)`` along ``g = grad L``, estimated by a central finite difference of two
copies of a small **proxy student**:

    delta(x) = (log p_{theta + eps g}(x) - log p_{theta - eps g}(x)) / (2 eps)    # (B, V)

``g`` is computed once, when the proxy is built, from the proxy's loss on held-out task
text (``build_proxy_pair``); per token the hook costs the two proxies' forward passes over
the last ``window`` tokens of context (no KV cache: the window bounds the cost), run as one
batched pass over stacked weights (``PairedProxy``), and the proxy is small (by default the
teacher's first block with its embeddings and head).

The hook runs in the generation engine before the sampler (``GenerationParams.logits_hook``),
so a watermark scheme biases or samples the already-steered distribution: the watermark
composes on top and stays detectable.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from distillguard.errors import ConfigError
from distillguard.models.fast_llama import FastLlama


@dataclass(frozen=True)
class AntidistillConfig:
    """How hard and how far the sampler is steered."""

    # lambda: weight of delta against the teacher's log-probabilities. 0 samples as the
    # teacher does; the paper's useful range is ~0.1-10 relative to a unit-norm g.
    lam: float = 1.0
    # Finite-difference step along the unit gradient: small enough that the difference is a
    # derivative, large enough that float32 rounding does not swamp it.
    epsilon: float = 0.01
    # Context tokens the proxy reads each step: bounds the per-token cost (no KV cache).
    window: int = 16

    def __post_init__(self) -> None:
        if not (math.isfinite(self.lam) and self.lam >= 0.0):
            raise ConfigError(f"antidistill lambda must be >= 0, not {self.lam}")
        if not (math.isfinite(self.epsilon) and 0.0 < self.epsilon <= 1.0):
            raise ConfigError(f"antidistill epsilon must be in (0, 1], not {self.epsilon}")
        if not 1 <= self.window <= 4096:
            raise ConfigError(f"antidistill window must be in [1, 4096], not {self.window}")


def truncated_proxy(model: Any, layers: int = 1) -> Any:
    """A proxy student cut from a Llama ``model``: its embeddings, first ``layers`` blocks,
    final norm and head (a copy; the served model is untouched). Same tokenizer and vocabulary
    as the teacher, which the hook needs, at a fraction of its cost."""
    total = len(model.model.layers)
    if not 1 <= layers <= total:
        raise ConfigError(f"proxy layers must be in [1, {total}], not {layers}")
    proxy = copy.deepcopy(model)
    proxy.model.layers = torch.nn.ModuleList(list(proxy.model.layers)[:layers])
    proxy.config.num_hidden_layers = layers
    return proxy.eval()


def proxy_loss_gradient(proxy: Any, heldout_ids: Sequence[Sequence[int]]) -> list[Tensor]:
    """Unit-norm gradient of the proxy's mean next-token NLL on ``heldout_ids`` (the
    downstream loss a student is trained to lower), one tensor per parameter."""
    texts = [list(t) for t in heldout_ids if len(t) >= 2]
    if not texts:
        raise ConfigError("antidistill needs held-out text of at least 2 tokens")
    params = [p for p in proxy.parameters()]
    grads = [torch.zeros_like(p) for p in params]
    with torch.enable_grad(), torch.inference_mode(False):
        for ids in texts:
            x = torch.tensor([ids[: proxy.config.max_position_embeddings]], dtype=torch.long)
            logits = proxy(input_ids=x, use_cache=False).logits[0, :-1].float()  # (T-1, V)
            loss = torch.nn.functional.cross_entropy(logits, x[0, 1:], reduction="sum")
            for acc, grad in zip(grads, torch.autograd.grad(loss, params), strict=True):
                acc += grad
    norm = math.sqrt(sum(float((g.double() ** 2).sum()) for g in grads))
    if not math.isfinite(norm) or norm == 0.0:
        raise ConfigError("the proxy's loss gradient on the held-out text is zero or not finite")
    return [g / norm for g in grads]


class PairedProxy:
    """Both perturbed proxies in one forward pass: their weights stacked on a leading axis of
    2 and one batched matrix product per layer where two ``FastLlama`` passes would each run
    their own. At this scale the cost is per operation, not per FLOP, so this roughly halves
    the hook's overhead. Same computation as ``FastLlama.forward`` without a cache."""

    def __init__(self, plus: FastLlama, minus: FastLlama) -> None:
        def pair(a: Tensor, b: Tensor, transpose: bool = False) -> Tensor:
            both = torch.stack([a, b])
            return both.transpose(1, 2).contiguous() if transpose else both

        self.shape = plus  # heads, sizes, RoPE tables: identical in both
        self.embed = pair(plus.embed, minus.embed)  # (2, V, H)
        self.final_norm = pair(plus.final_norm, minus.final_norm)  # (2, H)
        self.lm_head_t = pair(plus.lm_head, minus.lm_head, transpose=True)  # (2, H, V)
        self.layers = [
            (
                pair(p[0], m[0]),  # input norm (2, H)
                pair(p[1], m[1], transpose=True),  # qkv (2, H, q + 2kv)
                pair(p[2], m[2], transpose=True),  # o (2, q, H)
                pair(p[3], m[3]),  # post-attention norm (2, H)
                pair(p[4], m[4], transpose=True),  # gate|up (2, H, 2F)
                pair(p[5], m[5], transpose=True),  # down (2, F, H)
            )
            for p, m in zip(plus.layers, minus.layers, strict=True)
        ]

    def _norm(self, x: Tensor, weight: Tensor) -> Tensor:
        """x (2, ..., H) RMS-normalized with each copy's weight (2, H)."""
        shape = (2,) + (1,) * (x.dim() - 2) + (weight.shape[-1],)
        return F.rms_norm(x, (x.shape[-1],), None, self.shape.eps) * weight.view(shape)

    def forward(self, ids: Tensor, mask: Tensor, pos: Tensor) -> Tensor:
        """ids, mask, pos (B, T) -> next-token logits (2, B, V) of the +eps and -eps proxies."""
        f = self.shape
        b, t = ids.shape
        k_at = torch.arange(t)
        causal = k_at.unsqueeze(0) <= k_at.unsqueeze(-1)  # (T, T)
        allowed = (mask.bool()[:, None, None, :] & causal) | torch.eye(t, dtype=torch.bool)
        allowed = allowed.repeat(2, 1, 1, 1)  # (2B, 1, T, T)
        cos = f.cos[pos].unsqueeze(1).repeat(2, 1, 1, 1)  # (2B, 1, T, D)
        sin = f.sin[pos].unsqueeze(1).repeat(2, 1, 1, 1)
        x = torch.stack([F.embedding(ids, self.embed[0]), F.embedding(ids, self.embed[1])])
        hidden = x.shape[-1]  # x: (2, B, T, H)
        for ln1, w_qkv, w_o, ln2, w_gate_up, w_down in self.layers:
            qkv = (self._norm(x, ln1).reshape(2, b * t, hidden) @ w_qkv).view(2 * b, t, -1)
            q, k, v = qkv.split([f.q_size, f.kv_size, f.kv_size], dim=-1)
            q = f._rope(q.view(2 * b, t, f.heads, f.head_dim).transpose(1, 2), cos, sin)
            k = f._rope(k.view(2 * b, t, f.kv_heads, f.head_dim).transpose(1, 2), cos, sin)
            v = v.view(2 * b, t, f.kv_heads, f.head_dim).transpose(1, 2)  # (2B, h, T, D)
            att = F.scaled_dot_product_attention(
                q, k, v, attn_mask=allowed, enable_gqa=f.kv_heads != f.heads
            )
            att = att.transpose(1, 2).reshape(2, b * t, f.q_size)
            x = x + (att @ w_o).view(2, b, t, hidden)
            gate_up = self._norm(x, ln2).reshape(2, b * t, hidden) @ w_gate_up
            gate, up = gate_up.split(f.ffn, dim=-1)
            x = x + ((F.silu(gate) * up) @ w_down).view(2, b, t, hidden)
        last = self._norm(x[:, :, -1], self.final_norm)  # (2, B, H)
        return last @ self.lm_head_t  # (2, B, V)


@dataclass(frozen=True)
class ProxyPair:
    """The proxy student moved by +eps and -eps along its unit loss gradient."""

    plus: FastLlama
    minus: FastLlama
    paired: PairedProxy
    epsilon: float
    vocab_size: int
    _models: tuple[Any, Any]  # the perturbed copies FastLlama reads its weights from

    def delta(self, input_ids: Tensor, mask: Tensor, window: int) -> Tensor:
        """input_ids, mask (B, T) left padded -> delta (B, V): the finite-difference change of
        the proxy's next-token log-probabilities along its loss gradient."""
        ids = input_ids[:, -window:]  # (B, W)
        m = mask[:, -window:]
        pos = (m.cumsum(-1) - 1).clamp_(min=0)  # (B, W) positions restart at the window
        both = self.paired.forward(ids, m, pos).log_softmax(-1)  # (2, B, V)
        return (both[0] - both[1]) / (2.0 * self.epsilon)


def build_proxy_pair(
    proxy: Any, heldout_ids: Sequence[Sequence[int]], epsilon: float = 0.01
) -> ProxyPair:
    """The two perturbed copies of ``proxy`` for the finite difference."""
    if not FastLlama.supports(proxy):
        raise ConfigError("the antidistill proxy must be a float32 Llama model")
    grads = proxy_loss_gradient(proxy, heldout_ids)
    copies = []
    for sign in (1.0, -1.0):
        moved = copy.deepcopy(proxy).eval().requires_grad_(False)  # inference only
        with torch.no_grad():
            for p, g in zip(moved.parameters(), grads, strict=True):
                p.add_(g, alpha=sign * epsilon)
        copies.append(moved)
    vocab = int(proxy.get_input_embeddings().weight.shape[0])
    plus, minus = FastLlama(copies[0]), FastLlama(copies[1])
    return ProxyPair(plus, minus, PairedProxy(plus, minus), epsilon, vocab, (copies[0], copies[1]))


def antidistill_logits(teacher_logits: Tensor, delta: Tensor, lam: float) -> Tensor:
    """teacher_logits (B, V), delta (B, V) -> (B, V): ``log_softmax(teacher) + lam * delta``.
    Tokens the teacher rules out (-inf) stay ruled out; a teacher vocabulary wider than the
    proxy's (padding rows) keeps its own scores there."""
    base = teacher_logits.float().log_softmax(-1)  # (B, V)
    if lam == 0.0:
        return base
    v = min(base.shape[-1], delta.shape[-1])
    out = base.clone()
    out[:, :v] = base[:, :v] + lam * delta[:, :v]
    return out


@dataclass(frozen=True, eq=False)
class AntidistillHook:
    """``GenerationParams.logits_hook``: steers a row's next-token logits away from what a
    student would learn from. One object per (proxy, config): rows sharing it are steered in
    one proxy call per step."""

    pair: ProxyPair
    config: AntidistillConfig

    def __call__(self, logits: Tensor, input_ids: Tensor, mask: Tensor) -> Tensor:
        """logits (B, V), input_ids and mask (B, T) -> steered logits (B, V)."""
        if self.config.lam == 0.0:
            return logits
        delta = self.pair.delta(input_ids, mask, self.config.window)  # (B, V')
        return antidistill_logits(logits, delta, self.config.lam)
