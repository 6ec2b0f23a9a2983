"""On-policy distillation: generalized knowledge distillation (Agarwal et al., ICLR 2024).

Sequence-level and token-level KD both train on the teacher's sequences, but at inference a
student conditions on *its own* earlier tokens: errors compound on prefixes it never saw in
training (exposure bias). GKD fixes the distribution the loss is taken on: with probability
``lmbda`` a step's answers are sampled from the current student, otherwise they are the
dataset's (teacher's) answers; either way the teacher scores every answer position and the
student is pulled toward it by the generalized JSD with ``beta`` (``beta`` = 0 forward KL,
1 reverse KL).

A compact own loop rather than ``trl.experimental.gkd.GKDTrainer``: it shares the seeded
batches, atomic checkpoints and resume of the other token-level modes, and samples with the
student's ``generate`` on short answers (TRL's trainer is about 4x slower per step on this
CPU and needs ``max_length`` >= 512 to keep any prompt tokens, see machine-facts).
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from distillguard.distill.data import Example, batch_indices, collate, prompt_ids
from distillguard.distill.kd import encode_rows
from distillguard.distill.loop import DistillConfig, LoopOutcome, run_loop
from distillguard.distill.losses import distillation_loss, shift_for_next_token
from distillguard.distill.records import HarvestRecord


def sample_on_policy(
    student: Any,
    tokenizer: Any,
    prompts: Sequence[list[int]],
    *,
    max_new_tokens: int,
    max_length: int,
    seed: int,
) -> list[Example]:
    """The student answers ``prompts`` (left-padded batch, sampling at temperature 1);
    returns examples whose answer mask covers the sampled tokens up to and including eos."""
    import torch

    pad_id, eos_id = int(tokenizer.pad_token_id), int(tokenizer.eos_token_id)
    budget = [p[-(max_length - max_new_tokens) :] for p in prompts]  # room for the answer
    width = max(len(p) for p in budget)
    input_ids = torch.full((len(budget), width), pad_id, dtype=torch.long)  # (B, P)
    attention = torch.zeros_like(input_ids)
    for row, ids in enumerate(budget):
        input_ids[row, width - len(ids) :] = torch.tensor(ids)
        attention[row, width - len(ids) :] = 1
    was_training = student.training
    student.eval()
    torch.manual_seed(seed)
    with torch.no_grad():
        generated = student.generate(
            input_ids=input_ids,
            attention_mask=attention,
            max_new_tokens=max_new_tokens,
            do_sample=True,
            temperature=1.0,
            top_p=1.0,
            top_k=0,
            pad_token_id=pad_id,
            eos_token_id=eos_id,
        )[:, width:]  # (B, N)
    student.train(was_training)
    examples = []
    for ids, answer_row in zip(budget, generated.tolist(), strict=True):
        answer: list[int] = []
        for token in answer_row:
            answer.append(token)
            if token == eos_id:
                break
        examples.append(
            Example(
                input_ids=tuple(ids + answer),
                answer_mask=(False,) * len(ids) + (True,) * len(answer),
                prompt_length=len(ids),
            )
        )
    return examples


def train_gkd(
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
    """Mix on-policy (student-sampled) and off-policy (dataset) steps under the JSD."""
    import torch

    off_policy = encode_rows(tokenizer, rows, config.max_length)
    prompts = [prompt_ids(tokenizer, r.prompt) for r in rows if r.answer.strip()]
    pad_id = int(tokenizer.pad_token_id)
    scale = config.temperature**2

    def step_loss(step: int) -> tuple[Any, int]:
        chosen = batch_indices(len(off_policy), config.batch_size, seed=config.seed, step=step)
        on_policy = random.Random(config.seed * 7919 + step).random() < config.lmbda
        if on_policy:
            examples = sample_on_policy(
                student,
                tokenizer,
                [prompts[i] for i in chosen],
                max_new_tokens=config.gkd_max_new_tokens,
                max_length=config.max_length,
                seed=config.seed * 104_729 + step,
            )
        else:
            examples = [off_policy[i] for i in chosen]
        batch = collate(examples, pad_id=pad_id)
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
            divergence="jsd",
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
        label="gkd",
    )
    skipped = len(rows) - len(off_policy)
    return LoopOutcome(steps, tokens, seconds, resumed, skipped, "empty answers" if skipped else "")
