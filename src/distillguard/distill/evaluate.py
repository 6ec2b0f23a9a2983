"""How close is a student to its teacher? Measured on held-out prompts.

On each held-out sequence (a prompt + the teacher's answer) and at every answer position:

* **top-1 agreement**: the student's most likely next token is the teacher's;
* **KL(teacher || student)** of the two full next-token distributions (nats per position),
  the quantity forward-KL distillation minimises;
* **held-out loss**: the student's mean negative log-likelihood of the teacher's answer tokens
  (nats per token), the quantity SFT minimises.

Agreement and KL need one shared vocabulary (a student with its own tokenizer gets NaN for
both and still a loss). ``campaign.learning_curve`` trains students on growing numbers of
harvested samples and plots both metrics against that number with ``plot_curves``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from distillguard.distill.data import Example, collate, encode_example, load_rows
from distillguard.distill.losses import (
    masked_mean,
    shift_for_next_token,
    token_cross_entropy,
    token_forward_kl,
)
from distillguard.distill.records import HarvestRecord
from distillguard.errors import ConfigError, InputError


@dataclass(frozen=True)
class EvalConfig:
    samples: int = 64  # held-out sequences scored: enough for agreement +-0.01 on ~3k tokens
    max_new_tokens: int = 48  # length of teacher answers generated for held-out prompts
    max_length: int = 256  # tokens per scored sequence (the tiny context)
    batch_size: int = 8  # sequences per forward pass
    seed: int = 1  # teacher sampling seed, not the training seed: answers are fresh text
    num_threads: int = 1  # two shared cores

    def __post_init__(self) -> None:
        if self.samples < 1 or self.max_new_tokens < 1 or self.batch_size < 1:
            raise ConfigError("samples, max_new_tokens and batch_size must be >= 1")
        if self.max_length < 16 or self.num_threads < 1:
            raise ConfigError("max_length must be >= 16 and num_threads >= 1")


@dataclass(frozen=True)
class StudentReport:
    student: Path
    top1_agreement: float  # share of answer positions where both argmax tokens agree
    kl_teacher_student: float  # mean KL(teacher || student) per answer position, nats
    held_out_loss: float  # student NLL of the teacher's answer tokens, nats/token
    positions: int  # answer positions scored
    samples: int  # held-out sequences
    skipped_prompts: int = 0  # held-out prompts longer than the teacher's context (not scored)


@dataclass(frozen=True)
class CurvePoint:
    samples: int  # harvested samples the student was trained on
    top1_agreement: float
    kl_teacher_student: float
    held_out_loss: float


def _batches(examples: Sequence[Example], size: int, pad_id: int) -> Any:
    for start in range(0, len(examples), size):
        yield collate(examples[start : start + size], pad_id=pad_id)


def answer_loss(
    model: Any,
    tokenizer: Any,
    rows: Sequence[HarvestRecord],
    *,
    max_length: int = 256,
    batch_size: int = 8,
) -> float:
    """Mean NLL (nats/token) of ``model`` on the answer tokens of ``rows`` (its tokenizer)."""
    import torch

    examples = [
        encode_example(tokenizer, r.prompt, r.answer, max_length=max_length)
        for r in rows
        if r.answer.strip()
    ]
    if not examples:
        return float("nan")
    total, count = 0.0, 0
    with torch.inference_mode():
        for batch in _batches(examples, batch_size, int(tokenizer.pad_token_id)):
            logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
            shifted, mask = shift_for_next_token(logits, batch.answer_mask)  # (B, T-1, V)
            nll = token_cross_entropy(shifted, batch.input_ids[:, 1:])  # (B, T-1)
            total += float((nll * mask).sum())
            count += int(mask.sum())
    return total / max(count, 1)


def compare_on_rows(
    student: Any,
    student_tok: Any,
    teacher: Any,
    teacher_tok: Any,
    rows: Sequence[HarvestRecord],
    *,
    student_dir: Path,
    config: EvalConfig,
) -> StudentReport:
    """Agreement, KL and loss of one loaded student against a loaded teacher on ``rows``."""
    import torch

    torch.set_num_threads(config.num_threads)
    loss = answer_loss(student, student_tok, rows, max_length=config.max_length)
    shared = student_tok.get_vocab() == teacher_tok.get_vocab()
    if not shared:
        return StudentReport(student_dir, math.nan, math.nan, loss, 0, len(rows))
    examples = [
        encode_example(teacher_tok, r.prompt, r.answer, max_length=config.max_length)
        for r in rows
        if r.answer.strip()
    ]
    agree_sum = kl_sum = 0.0
    positions = 0
    with torch.inference_mode():
        for batch in _batches(examples, config.batch_size, int(teacher_tok.pad_token_id)):
            kwargs = {"input_ids": batch.input_ids, "attention_mask": batch.attention_mask}
            t_logits, mask = shift_for_next_token(teacher(**kwargs).logits, batch.answer_mask)
            s_logits, _ = shift_for_next_token(student(**kwargs).logits, batch.answer_mask)
            vocab = min(t_logits.shape[-1], s_logits.shape[-1])
            t_logits, s_logits = t_logits[..., :vocab], s_logits[..., :vocab]
            n = int(mask.sum())
            same = (t_logits.argmax(-1) == s_logits.argmax(-1)).float()  # (B, T-1)
            agree_sum += float(masked_mean(same, mask)) * n
            kl_sum += float(masked_mean(token_forward_kl(s_logits, t_logits), mask)) * n
            positions += n
    return StudentReport(
        student_dir,
        agree_sum / max(positions, 1),
        kl_sum / max(positions, 1),
        loss,
        positions,
        len(examples),
    )


@dataclass(frozen=True)
class HeldOut:
    rows: list[HarvestRecord]
    skipped_prompts: int  # prompts that do not fit the teacher's context with the answer


def held_out_rows(
    teacher_dir: Path, *, data_path: Path | None, prompts_path: Path | None, config: EvalConfig
) -> HeldOut:
    """Held-out sequences: the dataset's last ``samples`` rows, or the teacher's fresh answers
    to the *last* ``samples`` prompts of ``prompts_path`` (the CLI's default is the shared honest
    set, whose first prompts are what ``train_student`` uses when it has no dataset)."""
    if data_path is not None:
        rows = load_rows(data_path)
        return HeldOut(rows[-config.samples :], 0)
    from distillguard.distill.harvest import LocalHarvestParams, harvest_local, read_prompts
    from distillguard.models.engine import GenerationEngine

    if prompts_path is None:
        raise InputError("held-out answers need a dataset or prompts for the teacher: --prompts")
    prompts = list(read_prompts(Path(prompts_path)).prompts)[-config.samples :]
    engine = GenerationEngine.from_dir(Path(teacher_dir), num_threads=config.num_threads)
    # A prompt that leaves no room for the answer in the teacher's context cannot be answered
    # (the engine refuses it): skipped and counted, never the end of the evaluation.
    room = engine.context_length - config.max_new_tokens
    fitting = [
        p for p in prompts if len(engine.encode_chat([{"role": "user", "content": p.text}])) <= room
    ]
    params = LocalHarvestParams(max_new_tokens=config.max_new_tokens, seed=config.seed)
    return HeldOut(harvest_local(engine, fitting, params), len(prompts) - len(fitting))


def evaluate_students(
    student_dirs: Sequence[Path],
    *,
    teacher_dir: Path,
    data_path: Path | None = None,
    prompts_path: Path | None = None,
    config: EvalConfig = EvalConfig(),
) -> list[StudentReport]:
    """One report per student, all on the same held-out sequences."""
    from distillguard.models.llama import load_model

    teacher, teacher_tok = load_model(Path(teacher_dir))
    held_out = held_out_rows(
        teacher_dir, data_path=data_path, prompts_path=prompts_path, config=config
    )
    rows = held_out.rows
    if not rows:
        raise InputError(
            "no held-out sample to evaluate on"
            + (
                f" ({held_out.skipped_prompts} prompts longer than the teacher's context)"
                if held_out.skipped_prompts
                else ""
            )
        )
    reports = []
    for student_dir in student_dirs:
        student, student_tok = load_model(Path(student_dir))
        report = compare_on_rows(
            student,
            student_tok,
            teacher,
            teacher_tok,
            rows,
            student_dir=Path(student_dir),
            config=config,
        )
        reports.append(replace(report, skipped_prompts=held_out.skipped_prompts))
    return reports


def plot_curves(curves: dict[str, Sequence[CurvePoint]], path: Path) -> Path:
    """Agreement and KL against harvested samples, one line per mode (PNG)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(9, 3.6))
    for label, points in curves.items():
        xs = [p.samples for p in points]
        left.plot(xs, [p.top1_agreement for p in points], marker="o", label=label)
        right.plot(xs, [p.kl_teacher_student for p in points], marker="o", label=label)
    for axis, title in ((left, "top-1 agreement with teacher"), (right, "KL(teacher || student)")):
        axis.set_xscale("log", base=2)
        ticks = sorted({p.samples for points in curves.values() for p in points})
        axis.set_xticks(ticks, [str(t) for t in ticks])
        axis.minorticks_off()
        axis.set_xlabel("harvested samples")
        axis.set_title(title)
        axis.grid(alpha=0.3)
    left.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
