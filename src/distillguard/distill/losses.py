"""Distillation losses: pure, typed tensor functions (no model, no I/O).

Conventions shared by every function here:

* ``student_logits`` and ``teacher_logits`` are *aligned*: position ``t`` of both holds the
  distribution over the token at ``t + 1`` (the trainer does the causal shift once, see
  :func:`shift_for_next_token`), shape ``(B, T, V)``.
* ``mask`` is ``(B, T)`` bool, ``True`` where a position counts. Prompt tokens and padding are
  ``False``: a student is taught to answer, not to predict the user's prompt or pad tokens.
* A divergence is computed per position over the vocabulary, then averaged over the counted
  positions (a token mean, so long and short answers weigh by their length, as in SFT).
* ``temperature`` divides logits before the softmax (Hinton et al. 2015). Trainers multiply a
  softened loss by ``temperature**2`` to keep gradient scale comparable; that factor is not
  applied here so the functions stay exact divergences.

Directions (``p`` = teacher, ``q`` = student):
forward KL = KL(p || q) (mean-seeking, the classic KD loss); reverse KL = KL(q || p)
(mode-seeking, MiniLLM); generalized JSD with ``beta``: ``beta * KL(p || m) + (1 - beta) *
KL(q || m)`` with ``m = beta * p + (1 - beta) * q`` (Agarwal et al. 2024, GKD eq. 1;
``beta = 0`` is forward KL, ``beta = 1`` reverse KL, the limits of the scaled form).
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

Divergence = Literal["forward_kl", "reverse_kl", "jsd"]
DIVERGENCES: tuple[str, ...] = ("forward_kl", "reverse_kl", "jsd")


def shift_for_next_token(logits: Tensor, labels_mask: Tensor) -> tuple[Tensor, Tensor]:
    """Align causal-LM outputs with the tokens they predict.

    logits: (B, T, V) model output at every input position.
    labels_mask: (B, T) bool, True where the *input token* is one the student must learn
    (answer tokens). Returns logits (B, T-1, V) and mask (B, T-1): position t now predicts
    token t+1 and counts when token t+1 is an answer token.
    """
    return logits[:, :-1, :], labels_mask[:, 1:]


def scale_logits(logits: Tensor, temperature: float) -> Tensor:
    """(..., V) logits divided by a positive temperature (> 1 softens, < 1 sharpens)."""
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    return logits if temperature == 1.0 else logits / temperature


def masked_mean(values: Tensor, mask: Tensor | None) -> Tensor:
    """Mean of (B, T) per-position values over positions where mask (B, T) is True.

    An all-False mask gives 0 (with a gradient path), never NaN: a batch made only of prompt
    tokens must not poison training.
    """
    if mask is None:
        return values.mean()
    weights = mask.to(values.dtype)  # (B, T)
    return (values * weights).sum() / weights.sum().clamp_min(1.0)


def _kl_from_log_probs(log_p: Tensor, log_q: Tensor) -> Tensor:
    """KL(p || q) per position: (..., V) log-probs -> (...). 0 * log 0 counts as 0."""
    p = log_p.exp()
    terms = p * (log_p - log_q)  # (..., V)
    # Where p == 0 exactly, log_p is -inf and the product NaN; such terms are 0 by convention.
    terms = torch.where(p > 0, terms, torch.zeros_like(terms))
    return terms.sum(dim=-1)


def token_forward_kl(
    student_logits: Tensor, teacher_logits: Tensor, *, temperature: float = 1.0
) -> Tensor:
    """KL(teacher || student) per position: (B, T, V) x2 -> (B, T)."""
    log_q = F.log_softmax(scale_logits(student_logits, temperature), dim=-1)  # (B, T, V)
    log_p = F.log_softmax(scale_logits(teacher_logits, temperature), dim=-1)  # (B, T, V)
    return _kl_from_log_probs(log_p, log_q)


def token_reverse_kl(
    student_logits: Tensor, teacher_logits: Tensor, *, temperature: float = 1.0
) -> Tensor:
    """KL(student || teacher) per position: (B, T, V) x2 -> (B, T)."""
    log_q = F.log_softmax(scale_logits(student_logits, temperature), dim=-1)  # (B, T, V)
    log_p = F.log_softmax(scale_logits(teacher_logits, temperature), dim=-1)  # (B, T, V)
    return _kl_from_log_probs(log_q, log_p)


def token_generalized_jsd(
    student_logits: Tensor, teacher_logits: Tensor, *, beta: float = 0.5, temperature: float = 1.0
) -> Tensor:
    """Generalized JSD per position: (B, T, V) x2 -> (B, T).

    ``beta * KL(p || m) + (1 - beta) * KL(q || m)``, ``m = beta p + (1 - beta) q``. At the
    end points the mixture collapses onto one side and the divergence vanishes, so (like
    TRL's GKD) ``beta == 0`` returns forward KL and ``beta == 1`` reverse KL instead.
    """
    if not 0.0 <= beta <= 1.0:
        raise ValueError(f"beta must be in [0, 1], got {beta}")
    if beta == 0.0:
        return token_forward_kl(student_logits, teacher_logits, temperature=temperature)
    if beta == 1.0:
        return token_reverse_kl(student_logits, teacher_logits, temperature=temperature)
    log_q = F.log_softmax(scale_logits(student_logits, temperature), dim=-1)  # (B, T, V)
    log_p = F.log_softmax(scale_logits(teacher_logits, temperature), dim=-1)  # (B, T, V)
    # log m computed in log space: logsumexp of the two weighted log-probs (stable for tiny p, q).
    log_m = torch.logsumexp(
        torch.stack([log_p + math.log(beta), log_q + math.log1p(-beta)]), dim=0
    )  # (B, T, V)
    return beta * _kl_from_log_probs(log_p, log_m) + (1.0 - beta) * _kl_from_log_probs(log_q, log_m)


def distillation_loss(
    student_logits: Tensor,  # (B, T, V)
    teacher_logits: Tensor,  # (B, T, V)
    mask: Tensor | None = None,  # (B, T) bool
    *,
    divergence: Divergence = "forward_kl",
    beta: float = 0.5,
    temperature: float = 1.0,
) -> Tensor:
    """Scalar white-box KD loss: the chosen divergence averaged over counted positions."""
    if student_logits.shape != teacher_logits.shape:
        raise ValueError(
            f"student logits {tuple(student_logits.shape)} and teacher logits "
            f"{tuple(teacher_logits.shape)} differ: logit distillation needs one vocabulary"
        )
    if divergence == "forward_kl":
        per_token = token_forward_kl(student_logits, teacher_logits, temperature=temperature)
    elif divergence == "reverse_kl":
        per_token = token_reverse_kl(student_logits, teacher_logits, temperature=temperature)
    elif divergence == "jsd":
        per_token = token_generalized_jsd(
            student_logits, teacher_logits, beta=beta, temperature=temperature
        )
    else:
        raise ValueError(f"unknown divergence {divergence!r}; choose one of {DIVERGENCES}")
    return masked_mean(per_token, mask)


def token_topk_forward_kl(
    student_logits: Tensor,  # (B, T, V)
    topk_ids: Tensor,  # (B, T, K) long: token ids the API returned as the teacher's top-k
    topk_logprobs: Tensor,  # (B, T, K) float: the teacher's log-probs of those tokens
    topk_valid: Tensor | None = None,  # (B, T, K) bool: False for padding slots (fewer than K)
    *,
    temperature: float = 1.0,
) -> Tensor:
    """Forward KL over K + 1 buckets from a top-k API answer: -> (B, T).

    An API returns only the teacher's k most likely tokens. The remaining probability
    ``rest = 1 - sum(top-k)`` is one more bucket; the student's matching bucket is its mass
    on every token *outside* those k ids. KL is then exact on this coarser partition
    (a lower bound of the full KL by the data-processing inequality, equal to it when k = V
    or when the teacher puts no mass outside the k tokens). Dropping the tail instead (and
    renormalising the top-k) would teach the student to be over-confident.

    ``temperature`` scales the *student* only: the teacher's log-probs are what the API
    returned (already at its sampling temperature), so pass the temperature the answers were
    sampled at to compare like with like. Slots with ``topk_valid`` False (padding, or a
    token the student's vocabulary cannot map) count toward the rest bucket on both sides.
    """
    if topk_ids.shape != topk_logprobs.shape:
        raise ValueError(
            f"topk_ids {tuple(topk_ids.shape)} != topk_logprobs {tuple(topk_logprobs.shape)}"
        )
    if topk_valid is None:
        topk_valid = torch.ones_like(topk_ids, dtype=torch.bool)
    log_q = F.log_softmax(scale_logits(student_logits, temperature).float(), dim=-1)  # (B, T, V)
    safe_ids = torch.where(topk_valid, topk_ids, torch.zeros_like(topk_ids))  # (B, T, K)
    log_q_k = log_q.gather(-1, safe_ids)  # (B, T, K)
    p_k = torch.where(
        topk_valid, topk_logprobs.float().exp(), torch.zeros_like(log_q_k)
    )  # (B, T, K)

    # Teacher rest: rounding in an API's logprobs can push the sum a hair above 1.
    p_rest = (1.0 - p_k.sum(-1)).clamp_min(0.0)  # (B, T)
    # Student rest in log space: log sum_{v not in top-k} q_v. Mark the top-k ids in the
    # vocabulary (scatter, so a duplicated id is excluded once) and logsumexp the others.
    hits = torch.zeros_like(log_q, dtype=torch.long)  # (B, T, V)
    hits.scatter_add_(-1, safe_ids, topk_valid.long())
    # A large finite fill instead of -inf: when k = V every entry is excluded and logsumexp
    # of all -inf would give NaN gradients (0 * inf) even though the tail bucket is empty.
    log_q_rest = torch.logsumexp(log_q.masked_fill(hits > 0, -1e30), dim=-1)  # (B, T)
    # With every vocabulary id among the top-k there is no tail: what 1 - sum leaves is
    # float rounding, and it must not meet a student tail of exactly zero.
    p_rest = torch.where((hits == 0).any(-1), p_rest, torch.zeros_like(p_rest))

    log_p_k = torch.where(topk_valid, topk_logprobs.float(), torch.zeros_like(log_q_k))
    head = torch.where(p_k > 0, p_k * (log_p_k - log_q_k), torch.zeros_like(p_k)).sum(-1)  # (B, T)
    tail = torch.where(
        p_rest > 0,
        p_rest * (torch.log(p_rest.clamp_min(1e-30)) - log_q_rest),
        torch.zeros_like(p_rest),
    )  # (B, T)
    return head + tail


def topk_distillation_loss(
    student_logits: Tensor,  # (B, T, V)
    topk_ids: Tensor,  # (B, T, K)
    topk_logprobs: Tensor,  # (B, T, K)
    topk_valid: Tensor | None = None,  # (B, T, K)
    mask: Tensor | None = None,  # (B, T)
    *,
    temperature: float = 1.0,
) -> Tensor:
    """Scalar gray-box KD loss: :func:`token_topk_forward_kl` averaged over counted positions."""
    per_token = token_topk_forward_kl(
        student_logits, topk_ids, topk_logprobs, topk_valid, temperature=temperature
    )
    return masked_mean(per_token, mask)


def token_cross_entropy(logits: Tensor, target_ids: Tensor) -> Tensor:
    """Negative log-likelihood of each target token: (B, T, V), (B, T) -> (B, T)."""
    log_q = F.log_softmax(logits.float(), dim=-1)  # (B, T, V)
    return -log_q.gather(-1, target_ids.unsqueeze(-1)).squeeze(-1)


def top1_agreement(
    student_logits: Tensor, teacher_logits: Tensor, mask: Tensor | None = None
) -> Tensor:
    """Fraction of counted positions where both argmax tokens agree: (B, T, V) x2 -> scalar."""
    same = (student_logits.argmax(-1) == teacher_logits.argmax(-1)).to(torch.float32)  # (B, T)
    return masked_mean(same, mask)
