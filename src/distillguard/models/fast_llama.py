"""A lean inference forward pass for Llama models, used by the generation engine.

At this model scale (a few million parameters) HF's module stack costs more than the matrix
products: each decode step walks dozens of ``nn.Module`` calls, config lookups and mask
builders. This path reads the same weights once (fusing q/k/v and gate/up into one matrix
each), keeps a preallocated KV cache that grows by doubling instead of re-concatenating every
step, and runs the Llama block as a dozen tensor ops. It is used only for configurations it
reproduces exactly (checked in ``FastLlama.supports``); any other model runs through HF.
The test suite checks its logits against HF's forward pass.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

SUPPORTED_ROPE = ("default", "linear", "llama3")  # static tables; "dynamic" depends on length


class KVLayer:
    """One layer's keys and values (B, H, L, D) in a buffer with spare capacity on L."""

    def __init__(self) -> None:
        self._k: Tensor | None = None  # (B, H, capacity, D)
        self._v: Tensor | None = None
        self.length = 0  # positions filled (keys and values alike)
        self._v_length = 0  # tracked apart so that replacing keys never re-slices values

    @property
    def keys(self) -> Tensor:
        assert self._k is not None
        return self._k[:, :, : self.length]

    @keys.setter
    def keys(self, value: Tensor) -> None:  # batch surgery (merge / trim) replaces the buffer
        self._k, self.length = value.contiguous(), value.shape[2]

    @property
    def values(self) -> Tensor:
        assert self._v is not None
        return self._v[:, :, : self._v_length]

    @values.setter
    def values(self, value: Tensor) -> None:
        self._v, self._v_length = value.contiguous(), value.shape[2]

    def append(self, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        """Write k, v (B, H, T, D) after the current length; return all keys and values."""
        need = self.length + k.shape[2]
        if self._k is None or self._v is None or need > self._k.shape[2]:
            capacity = max(need, 2 * (self._k.shape[2] if self._k is not None else 0), 32)
            shape = (k.shape[0], k.shape[1], capacity, k.shape[3])
            new_k, new_v = k.new_zeros(shape), v.new_zeros(shape)
            if self._k is not None and self._v is not None and self.length:
                new_k[:, :, : self.length] = self._k[:, :, : self.length]
                new_v[:, :, : self.length] = self._v[:, :, : self.length]
            self._k, self._v = new_k, new_v
        self._k[:, :, self.length : need] = k
        self._v[:, :, self.length : need] = v
        self.length = self._v_length = need
        return self.keys, self.values

    def batch_select_indices(self, index: Tensor) -> None:
        if self._k is not None and self._v is not None:
            self._k, self._v = self._k[index], self._v[index]


class KVCache:
    """Per-layer KV buffers with the two operations batch surgery needs."""

    def __init__(self, layers: int):
        self.layers = [KVLayer() for _ in range(layers)]

    def batch_select_indices(self, index: Tensor) -> None:
        for layer in self.layers:
            layer.batch_select_indices(index)


class FastLlama:
    """Inference-only forward over a ``LlamaForCausalLM``'s weights (shared, not copied)."""

    def __init__(self, model: Any):
        cfg = model.config
        inner = model.model
        self.heads = cfg.num_attention_heads
        self.kv_heads = cfg.num_key_value_heads or cfg.num_attention_heads
        self.head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // self.heads
        self.eps = cfg.rms_norm_eps
        self.embed = inner.embed_tokens.weight  # (V, H)
        self.final_norm = inner.norm.weight
        self.lm_head = model.lm_head.weight  # (V, H), the embedding when tied
        self.layers = []
        with torch.no_grad():
            for block in inner.layers:
                att, mlp = block.self_attn, block.mlp
                self.layers.append(
                    (
                        block.input_layernorm.weight,
                        torch.cat([att.q_proj.weight, att.k_proj.weight, att.v_proj.weight]),
                        att.o_proj.weight,
                        block.post_attention_layernorm.weight,
                        torch.cat([mlp.gate_proj.weight, mlp.up_proj.weight]),
                        mlp.down_proj.weight,
                    )
                )
            positions = torch.arange(cfg.max_position_embeddings).unsqueeze(0)  # (1, P)
            probe = torch.zeros(1, dtype=self.embed.dtype)
            cos, sin = inner.rotary_emb(probe, positions)  # (1, P, D) each
        self.cos, self.sin = cos[0], sin[0]  # (P, D)
        self.q_size = self.heads * self.head_dim
        self.kv_size = self.kv_heads * self.head_dim
        self.ffn = block.mlp.gate_proj.weight.shape[0]

    @staticmethod
    def supports(model: Any) -> bool:
        """True when this path computes exactly what HF's Llama forward computes."""
        cfg = getattr(model, "config", None)
        if cfg is None or getattr(cfg, "model_type", None) != "llama":
            return False
        rotary = getattr(getattr(model, "model", None), "rotary_emb", None)
        return (
            getattr(cfg, "hidden_act", None) == "silu"
            and not getattr(cfg, "attention_bias", False)
            and not getattr(cfg, "mlp_bias", False)
            and getattr(cfg, "pretraining_tp", 1) == 1
            and rotary is not None
            and getattr(rotary, "rope_type", "default") in SUPPORTED_ROPE
            and next(model.parameters()).dtype == torch.float32
        )

    def new_cache(self) -> KVCache:
        return KVCache(len(self.layers))

    def _norm(self, x: Tensor, weight: Tensor) -> Tensor:
        return F.rms_norm(x, weight.shape, weight, self.eps)  # one fused op, HF's formula

    @staticmethod
    def _rope(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
        half = x.shape[-1] // 2
        rotated = torch.cat([-x[..., half:], x[..., :half]], dim=-1)
        return x * cos + rotated * sin

    def forward(self, ids: Tensor, mask: Tensor, pos: Tensor, cache: KVCache) -> Tensor:
        """ids (B, T) new tokens at positions pos (B, T); mask (B, L) over every cached token
        plus these T (1 = real); returns next-token logits (B, V) of the last position."""
        b, t = ids.shape
        total = mask.shape[1]
        # (B, 1, T, L) who may attend to whom: real keys, causally, and always itself (so a
        # padding query never has an empty row, which would put NaN into the cache).
        key_ok = mask.bool()[:, None, None, :]  # (B, 1, 1, L)
        if t == 1:
            allowed = key_ok
        else:
            q_at = torch.arange(total - t, total).unsqueeze(-1)  # (T, 1)
            k_at = torch.arange(total).unsqueeze(0)  # (1, L)
            allowed = (key_ok & (k_at <= q_at)) | (k_at == q_at)
        cos = self.cos[pos].unsqueeze(1)  # (B, 1, T, D)
        sin = self.sin[pos].unsqueeze(1)
        x = F.embedding(ids, self.embed)  # (B, T, H)
        for layer, (ln1, w_qkv, w_o, ln2, w_gate_up, w_down) in zip(
            cache.layers, self.layers, strict=True
        ):
            qkv = F.linear(self._norm(x, ln1), w_qkv)  # (B, T, q + 2 kv)
            q, k, v = qkv.split([self.q_size, self.kv_size, self.kv_size], dim=-1)
            q = self._rope(q.view(b, t, self.heads, self.head_dim).transpose(1, 2), cos, sin)
            k = self._rope(k.view(b, t, self.kv_heads, self.head_dim).transpose(1, 2), cos, sin)
            v = v.view(b, t, self.kv_heads, self.head_dim).transpose(1, 2)  # (B, h, T, D)
            keys, values = layer.append(k, v)  # (B, h, L, D)
            att = F.scaled_dot_product_attention(
                q, keys, values, attn_mask=allowed, enable_gqa=self.kv_heads != self.heads
            )
            x = x + F.linear(att.transpose(1, 2).reshape(b, t, self.q_size), w_o)
            gate, up = F.linear(self._norm(x, ln2), w_gate_up).split(self.ffn, dim=-1)
            x = x + F.linear(F.silu(gate) * up, w_down)
        last = self._norm(x[:, -1], self.final_norm)  # (B, H)
        return F.linear(last, self.lm_head)  # (B, V)
