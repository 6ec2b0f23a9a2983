"""Distillation losses checked as mathematical properties, against torch's own F.kl_div."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from distillguard.distill import losses


def _logits(seed: int, shape: tuple[int, ...], scale: float = 3.0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=gen) * scale


seeds = st.integers(min_value=0, max_value=2**31 - 1)
temperatures = st.floats(min_value=0.5, max_value=4.0)


@settings(max_examples=25, deadline=None)
@given(seed=seeds, temperature=temperatures)
def test_forward_kl_matches_torch_kl_div(seed: int, temperature: float) -> None:
    student, teacher = _logits(seed, (2, 5, 11)), _logits(seed + 1, (2, 5, 11))
    ours = losses.distillation_loss(student, teacher, temperature=temperature)
    log_q = F.log_softmax(student / temperature, -1).reshape(-1, 11)
    log_p = F.log_softmax(teacher / temperature, -1).reshape(-1, 11)
    # F.kl_div(input=log q, target=log p) computes KL(p || q); batchmean over positions.
    reference = F.kl_div(log_q, log_p, reduction="batchmean", log_target=True)
    assert ours.item() == pytest.approx(reference.item(), rel=1e-5, abs=1e-6)


@settings(max_examples=25, deadline=None)
@given(seed=seeds)
def test_reverse_kl_matches_torch_kl_div_with_roles_swapped(seed: int) -> None:
    student, teacher = _logits(seed, (3, 4, 7)), _logits(seed + 7, (3, 4, 7))
    ours = losses.distillation_loss(student, teacher, divergence="reverse_kl")
    reference = F.kl_div(
        F.log_softmax(teacher, -1).reshape(-1, 7),
        F.log_softmax(student, -1).reshape(-1, 7),
        reduction="batchmean",
        log_target=True,
    )
    assert ours.item() == pytest.approx(reference.item(), rel=1e-5, abs=1e-6)


@settings(max_examples=25, deadline=None)
@given(seed=seeds, beta=st.floats(0.0, 1.0), temperature=temperatures)
def test_every_divergence_is_zero_on_identical_distributions(
    seed: int, beta: float, temperature: float
) -> None:
    same = _logits(seed, (2, 3, 13))
    for divergence in losses.DIVERGENCES:
        value = losses.distillation_loss(
            same, same.clone(), divergence=divergence, beta=beta, temperature=temperature
        )
        assert abs(value.item()) < 1e-6, divergence
    ids = same.topk(4, dim=-1).indices
    lp = F.log_softmax(same / temperature, -1).gather(-1, ids)
    assert abs(losses.topk_distillation_loss(same, ids, lp, temperature=temperature).item()) < 1e-5


@settings(max_examples=25, deadline=None)
@given(seed=seeds)
def test_jsd_at_half_is_symmetric_and_bounded_by_log2(seed: int) -> None:
    a, b = _logits(seed, (2, 4, 9), scale=6.0), _logits(seed + 3, (2, 4, 9), scale=6.0)
    ab = losses.token_generalized_jsd(a, b, beta=0.5)
    ba = losses.token_generalized_jsd(b, a, beta=0.5)
    torch.testing.assert_close(ab, ba, rtol=1e-5, atol=1e-6)
    assert (ab >= -1e-6).all() and (ab <= math.log(2) + 1e-6).all()


def test_jsd_end_points_are_the_two_kls() -> None:
    student, teacher = _logits(1, (2, 3, 8)), _logits(2, (2, 3, 8))
    torch.testing.assert_close(
        losses.token_generalized_jsd(student, teacher, beta=0.0),
        losses.token_forward_kl(student, teacher),
    )
    torch.testing.assert_close(
        losses.token_generalized_jsd(student, teacher, beta=1.0),
        losses.token_reverse_kl(student, teacher),
    )


def test_jsd_matches_its_definition_on_explicit_mixture() -> None:
    student, teacher, beta = _logits(5, (1, 2, 6)), _logits(6, (1, 2, 6)), 0.3
    p, q = teacher.softmax(-1), student.softmax(-1)
    m = beta * p + (1 - beta) * q
    expected = beta * (p * (p / m).log()).sum(-1) + (1 - beta) * (q * (q / m).log()).sum(-1)
    torch.testing.assert_close(
        losses.token_generalized_jsd(student, teacher, beta=beta), expected, rtol=1e-5, atol=1e-6
    )


@settings(max_examples=25, deadline=None)
@given(seed=seeds, temperature=temperatures)
def test_topk_loss_equals_full_forward_kl_when_k_is_the_vocabulary(
    seed: int, temperature: float
) -> None:
    vocab = 10
    student, teacher = _logits(seed, (2, 4, vocab)), _logits(seed + 11, (2, 4, vocab))
    teacher_lp = F.log_softmax(teacher / temperature, -1)
    ids = teacher_lp.argsort(-1, descending=True)  # all V ids, best first, like an API would
    topk = losses.topk_distillation_loss(
        student, ids, teacher_lp.gather(-1, ids), temperature=temperature
    )
    full = losses.distillation_loss(student, teacher, temperature=temperature)
    assert topk.item() == pytest.approx(full.item(), rel=1e-4, abs=1e-5)


def test_topk_tail_bucket_is_the_kl_on_the_coarse_partition_and_a_lower_bound() -> None:
    student, teacher = _logits(3, (1, 5, 12)), _logits(4, (1, 5, 12))
    k = 3
    log_p = F.log_softmax(teacher, -1)
    ids = log_p.topk(k, -1).indices
    value = losses.token_topk_forward_kl(student, ids, log_p.gather(-1, ids))  # (1, 5)
    # Explicit K+1-bucket distributions.
    p, q = teacher.softmax(-1), student.softmax(-1)
    p_k, q_k = p.gather(-1, ids), q.gather(-1, ids)
    p_buckets = torch.cat([p_k, 1 - p_k.sum(-1, keepdim=True)], -1)
    q_buckets = torch.cat([q_k, 1 - q_k.sum(-1, keepdim=True)], -1)
    expected = (p_buckets * (p_buckets / q_buckets).log()).sum(-1)
    torch.testing.assert_close(value, expected, rtol=1e-4, atol=1e-5)
    assert (value <= losses.token_forward_kl(student, teacher) + 1e-6).all()


def test_topk_invalid_slots_fall_into_the_rest_bucket() -> None:
    student, teacher = _logits(8, (1, 2, 9)), _logits(9, (1, 2, 9))
    log_p = F.log_softmax(teacher, -1)
    ids = log_p.topk(3, -1).indices
    lp = log_p.gather(-1, ids)
    valid = torch.tensor([[[True, True, False], [True, True, False]]])
    padded = losses.token_topk_forward_kl(student, ids, lp, valid)
    only_two = losses.token_topk_forward_kl(student, ids[..., :2], lp[..., :2])
    torch.testing.assert_close(padded, only_two)


def test_topk_loss_has_finite_gradients_even_with_an_empty_tail() -> None:
    student = _logits(1, (1, 3, 6)).requires_grad_(True)
    teacher_lp = F.log_softmax(_logits(2, (1, 3, 6)), -1)
    ids = teacher_lp.argsort(-1, descending=True)
    losses.topk_distillation_loss(student, ids, teacher_lp.gather(-1, ids)).backward()
    assert torch.isfinite(student.grad).all()


def test_mask_excludes_prompt_and_padding_positions() -> None:
    student, teacher = _logits(10, (2, 6, 7)), _logits(11, (2, 6, 7))
    mask = torch.tensor([[0, 0, 1, 1, 1, 0], [0, 1, 1, 0, 0, 0]], dtype=torch.bool)
    per_token = losses.token_forward_kl(student, teacher)
    expected = per_token[mask].mean()
    got = losses.distillation_loss(student, teacher, mask)
    assert got.item() == pytest.approx(expected.item(), rel=1e-6)
    # Changing logits at masked-out positions changes nothing.
    noisy = student.clone()
    noisy[~mask] += 100.0
    assert losses.distillation_loss(noisy, teacher, mask).item() == pytest.approx(got.item())
    # An all-False mask gives 0, not NaN.
    empty = torch.zeros_like(mask)
    assert losses.distillation_loss(student, teacher, empty).item() == 0.0


def test_shift_aligns_logits_with_the_next_token() -> None:
    logits = _logits(0, (1, 4, 5))
    answer_mask = torch.tensor([[False, False, True, True]])
    shifted_logits, shifted_mask = losses.shift_for_next_token(logits, answer_mask)
    assert shifted_logits.shape == (1, 3, 5)
    # Position 1 predicts token 2 (the first answer token), so it is the first counted one.
    assert shifted_mask.tolist() == [[False, True, True]]


def test_bad_arguments_are_refused() -> None:
    a, b = _logits(0, (1, 2, 5)), _logits(1, (1, 2, 6))
    with pytest.raises(ValueError, match="one vocabulary"):
        losses.distillation_loss(a, b)
    with pytest.raises(ValueError, match="temperature"):
        losses.token_forward_kl(a, a, temperature=0.0)
    with pytest.raises(ValueError, match="beta"):
        losses.token_generalized_jsd(a, a, beta=1.5)


def test_gradient_of_forward_kl_moves_student_toward_teacher() -> None:
    student = _logits(20, (1, 1, 8)).requires_grad_(True)
    teacher = _logits(21, (1, 1, 8))
    optimizer = torch.optim.SGD([student], lr=1.0)
    before = losses.distillation_loss(student, teacher).item()
    for _ in range(50):
        optimizer.zero_grad()
        losses.distillation_loss(student, teacher).backward()
        optimizer.step()
    assert losses.distillation_loss(student, teacher).item() < before / 10
