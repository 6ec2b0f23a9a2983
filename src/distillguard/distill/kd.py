"""Token-level KD on fixed sequences: white box (logit-kd) and gray box (topk-kd).

* ``logit-kd`` (Hinton et al. 2015; Sanh et al. 2019): the teacher's full next-token
  distribution at every answer position of the teacher's answers is the target, under
  forward KL, reverse KL or generalized JSD, softened by a temperature (loss times T^2 so
  gradients keep their scale). Needs the teacher's weights and one shared vocabulary.
* ``topk-kd``: what an API that returns ``top_logprobs`` leaks. The target at each position
  is the top-k log-probs plus one "rest" bucket (``losses.token_topk_forward_kl``), mapped
  onto the student's vocabulary from the token strings the API returned.

Both run :func:`distillguard.distill.loop.run_loop` with seeded batches (resume replays
them exactly) and count non-padding sequence tokens, as the SFT trainer does.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from distillguard.distill.data import (
    Example,
    TokenMapper,
    batch_indices,
    collate,
    encode_example,
    encode_topk_example,
)
from distillguard.distill.loop import DistillConfig, LoopOutcome, run_loop
from distillguard.distill.losses import (
    distillation_loss,
    shift_for_next_token,
    topk_distillation_loss,
)
from distillguard.distill.records import HarvestRecord
from distillguard.errors import InputError, ModelError


def encode_rows(tokenizer: Any, rows: Sequence[HarvestRecord], max_length: int) -> list[Example]:
    examples = [
        encode_example(tokenizer, r.prompt, r.answer, max_length=max_length)
        for r in rows
        if r.answer.strip()
    ]
    if not examples:
        raise InputError("no sample with a non-empty answer to train on")
    return examples


def train_logit_kd(
    student: Any,
    tokenizer: Any,
    teacher: Any,
    rows: Sequence[HarvestRecord],
    *,
    config: DistillConfig,
    out_dir: Path,
    resume: bool,
    progress: bool,
) -> LoopOutcome:
    """White-box KD on the dataset's answers with the teacher's full distributions."""
    import torch

    examples = encode_rows(tokenizer, rows, config.max_length)
    pad_id = int(tokenizer.pad_token_id)
    scale = config.temperature**2

    def step_loss(step: int) -> tuple[Any, int]:
        chosen = batch_indices(len(examples), config.batch_size, seed=config.seed, step=step)
        batch = collate([examples[i] for i in chosen], pad_id=pad_id)
        with torch.no_grad():
            teacher_logits = teacher(
                input_ids=batch.input_ids, attention_mask=batch.attention_mask
            ).logits  # (B, T, V)
        student_logits = student(
            input_ids=batch.input_ids, attention_mask=batch.attention_mask
        ).logits  # (B, T, V)
        s_logits, mask = shift_for_next_token(student_logits, batch.answer_mask)
        t_logits, _ = shift_for_next_token(teacher_logits, batch.answer_mask)
        loss = distillation_loss(
            s_logits,
            t_logits,
            mask,
            divergence=config.divergence,  # type: ignore[arg-type]
            beta=config.beta,
            temperature=config.temperature,
        )
        return loss * scale, int(batch.attention_mask.sum())

    steps, tokens, seconds, resumed = run_loop(
        student,
        step_loss,
        config=config,
        out_dir=out_dir,
        resume=resume,
        progress=progress,
        label="logit-kd",
    )
    skipped = len(rows) - len(examples)
    return LoopOutcome(steps, tokens, seconds, resumed, skipped, "empty answers" if skipped else "")


def train_topk_kd(
    student: Any,
    tokenizer: Any,
    rows: Sequence[HarvestRecord],
    *,
    config: DistillConfig,
    out_dir: Path,
    resume: bool,
    progress: bool,
) -> LoopOutcome:
    """Gray-box KD from the top-k log-probs harvested with each answer token."""
    with_logprobs = [r for r in rows if r.logprobs]
    if not with_logprobs:
        raise InputError(
            "topk-kd needs a dataset harvested with logprobs (distill harvest --logprobs K)"
        )
    mapper = TokenMapper(tokenizer)
    examples: list[Example] = []
    for record in with_logprobs:
        example = encode_topk_example(
            tokenizer, mapper, record, k=config.topk, max_length=config.max_length
        )
        if example is not None:
            examples.append(example)
    unmapped = len(with_logprobs) - len(examples)
    if len(examples) < max(1, len(with_logprobs) // 2):
        raise ModelError(
            f"the student's tokenizer cannot express the teacher's tokens in {unmapped} of "
            f"{len(with_logprobs)} samples: topk-kd needs the teacher's vocabulary (pass "
            "--student-tokenizer with the teacher's tokenizer) or use --mode sft"
        )
    pad_id = int(tokenizer.pad_token_id)
    vocab = int(student.get_output_embeddings().weight.shape[0])
    if any(i >= vocab for e in examples for slot in e.topk_ids for i in slot):
        raise ModelError(f"harvested token ids exceed the student's {vocab} logits")

    def step_loss(step: int) -> tuple[Any, int]:
        chosen = batch_indices(len(examples), config.batch_size, seed=config.seed, step=step)
        batch = collate([examples[i] for i in chosen], pad_id=pad_id, with_topk=True)
        logits = student(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
        s_logits, mask = shift_for_next_token(logits, batch.answer_mask)  # (B, T-1, V)
        # The top-k arrays describe the token at each position; logits at t predict t + 1.
        loss = topk_distillation_loss(
            s_logits,
            batch.topk_ids[:, 1:],  # type: ignore[index]
            batch.topk_logprobs[:, 1:],  # type: ignore[index]
            batch.topk_valid[:, 1:],  # type: ignore[index]
            mask,
            temperature=config.temperature,
        )
        return loss, int(batch.attention_mask.sum())

    steps, tokens, seconds, resumed = run_loop(
        student,
        step_loss,
        config=config,
        out_dir=out_dir,
        resume=resume,
        progress=progress,
        label="topk-kd",
    )
    skipped = len(rows) - len(examples)
    reason = ""
    if skipped:
        reason = (
            f"{len(rows) - len(with_logprobs)} without logprobs, "
            f"{unmapped} with tokens outside the student's vocabulary"
        )
    return LoopOutcome(steps, tokens, seconds, resumed, skipped, reason)
