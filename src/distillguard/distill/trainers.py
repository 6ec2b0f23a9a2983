"""Student training: one entry point for the four modes.

``train_student`` picks the data (harvested rows, or the teacher's own answers), builds a
fresh student, and hands over to the mode's family module: ``sft.py`` (TRL SFTTrainer,
black box), ``kd.py`` (logit-kd white box, topk-kd gray box), ``gkd.py`` (on-policy). The
token-level modes share ``loop.run_loop`` (seeded batches that a resumed run replays exactly,
a rich progress bar, atomic checkpoints); a held-out loss is measured at the end.

The output directory is a standard Hugging Face model directory (config, safetensors,
tokenizer with its chat template) that the gateway serves as it is.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Literal, TypedDict

from distillguard.distill.evaluate import answer_loss
from distillguard.distill.gkd import train_gkd
from distillguard.distill.kd import train_logit_kd, train_topk_kd
from distillguard.distill.loop import (
    CHECKPOINTS,
    DistillConfig,
    LoopOutcome,
    latest_checkpoint,
    run_loop,
    save_checkpoint,
)
from distillguard.distill.records import HarvestRecord
from distillguard.distill.sft import train_sft
from distillguard.errors import ConfigError, InputError, ModelError

Mode = Literal["sft", "logit-kd", "topk-kd", "gkd"]
MODES: tuple[str, ...] = ("sft", "logit-kd", "topk-kd", "gkd")
INFO_FILE = "distillguard.json"  # same name models/ uses for build metadata
# The loop's names stay importable from here: this module is the room's entry point.
__all__ = [
    "CHECKPOINTS",
    "INFO_FILE",
    "MODES",
    "DistillConfig",
    "LoopOutcome",
    "TrainResult",
    "latest_checkpoint",
    "run_loop",
    "save_checkpoint",
    "train_student",
]


class LoopArgs(TypedDict):
    """What every family module's train function takes besides the model and rows."""

    config: DistillConfig
    out_dir: Path
    resume: bool
    progress: bool


@dataclass(frozen=True)
class TrainResult:
    out_dir: Path
    mode: str
    parameters: int
    steps: int
    tokens_seen: int  # answer tokens that carried a loss
    train_seconds: float
    held_out_loss: float  # student's mean NLL (nats/token) on held-out teacher answers
    train_samples: int
    held_out_samples: int
    resumed_from_step: int = 0
    skipped_samples: int = 0  # rows that could not be used (reason below)
    skip_reason: str = ""

    @property
    def tokens_per_second(self) -> float:
        return self.tokens_seen / self.train_seconds if self.train_seconds > 0 else 0.0


def save_student(out_dir: Path, model: Any, tokenizer: Any, info: dict) -> None:
    """The final model dir: files written beside, then moved in (checkpoints/ left alone)."""
    tmp = out_dir.with_name(f".{out_dir.name}.final-{os.getpid()}")
    try:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        model.generation_config.eos_token_id = tokenizer.eos_token_id
        model.generation_config.pad_token_id = tokenizer.pad_token_id
        model.save_pretrained(str(tmp))
        tokenizer.save_pretrained(str(tmp))
        (tmp / INFO_FILE).write_text(json.dumps(info, indent=2, default=str))
        out_dir.mkdir(parents=True, exist_ok=True)
        for item in tmp.iterdir():
            os.replace(item, out_dir / item.name)
    except OSError as exc:
        raise ModelError(f"could not save the student to {out_dir}: {exc}") from exc
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


# --- students and teachers -----------------------------------------------------------------
def load_teacher(teacher_dir: Path) -> tuple[Any, Any]:
    from distillguard.models.llama import load_model

    model, tokenizer = load_model(Path(teacher_dir))
    model.requires_grad_(False)
    return model, tokenizer


def same_vocabulary(a: Any, b: Any) -> bool:
    return a.get_vocab() == b.get_vocab()


def require_shared_vocabulary(
    teacher: Any, teacher_tok: Any, student: Any, student_tok: Any, mode: str
) -> None:
    """Logit modes compare distributions id by id: both sides need one vocabulary."""
    teacher_rows = teacher.get_output_embeddings().weight.shape[0]
    student_rows = student.get_output_embeddings().weight.shape[0]
    if not same_vocabulary(teacher_tok, student_tok) or teacher_rows != student_rows:
        raise ModelError(
            f"{mode} needs the teacher's and the student's vocabularies to be identical "
            f"(teacher: {len(teacher_tok)} tokens / {teacher_rows} logits, student: "
            f"{len(student_tok)} tokens / {student_rows} logits); use the teacher's tokenizer "
            "for the student (omit --student-tokenizer) or distil with --mode sft"
        )


def build_student(
    size: str,
    tokenizer: Any,
    *,
    seed: int,
    vocab_size: int | None = None,
) -> Any:
    """A fresh Llama of ``size`` for ``tokenizer`` (``vocab_size`` to match a teacher)."""
    from distillguard.models.llama import SIZES, new_model

    if size not in SIZES:
        raise ConfigError(f"unknown student size {size!r}; choose one of {sorted(SIZES)}")
    shape = SIZES[size]
    if vocab_size is not None:
        shape = replace(shape, vocab_size=vocab_size)
    return new_model(shape, tokenizer, seed=seed)


def student_tokenizer(
    rows: Sequence[HarvestRecord], *, size: str, tokenizer_dir: Path | None, teacher_tok: Any
) -> Any:
    """The student's tokenizer: given dir > the teacher's > a new BPE trained on the data."""
    if tokenizer_dir is not None:
        from transformers import AutoTokenizer

        try:
            tok = AutoTokenizer.from_pretrained(str(tokenizer_dir), local_files_only=True)
        except Exception as exc:  # HF raises OSError/ValueError variously
            raise ModelError(f"no usable tokenizer in {tokenizer_dir}: {exc}") from exc
        if tok.pad_token_id is None:
            tok.pad_token = tok.eos_token
        return tok
    if teacher_tok is not None:
        return teacher_tok
    from distillguard.models.llama import SIZES
    from distillguard.models.tokenizer import format_chat_pair, train_tokenizer

    texts = [format_chat_pair(r.prompt, r.answer) for r in rows]
    return train_tokenizer(texts, vocab_size=SIZES[size].vocab_size)


# --- the entry point -----------------------------------------------------------------------
def train_student(
    data: Path | str | Sequence[HarvestRecord | dict] | None,
    *,
    mode: str,
    out_dir: Path,
    teacher_dir: Path | None = None,
    prompts_path: Path | None = None,
    student_size: str = "tiny",
    student_tokenizer_dir: Path | None = None,
    config: DistillConfig = DistillConfig(),
    limit: int | None = None,
    resume: bool = False,
    progress: bool = True,
) -> TrainResult:
    """Train a student by ``mode`` and save it as a HF model directory at ``out_dir``.

    ``data`` is a harvested JSONL path or rows (dicts need ``prompt`` and ``answer``); with no
    data the teacher answers ``prompts_path`` first.
    sft needs only data; logit-kd and gkd need ``teacher_dir``; topk-kd needs rows harvested
    with logprobs and a student tokenizer that covers the teacher's tokens.
    """
    from distillguard.distill.data import load_rows, split_rows

    if mode not in MODES:
        raise InputError(f"unknown mode {mode!r}; choose one of {', '.join(MODES)}")
    if mode in ("logit-kd", "gkd") and teacher_dir is None:
        raise InputError(f"{mode} is white-box distillation: it needs --teacher DIR")
    out_dir = Path(out_dir)
    holds_model = (out_dir / CHECKPOINTS).exists() or (out_dir / "config.json").exists()
    if holds_model and not resume:
        raise InputError(f"{out_dir} already holds a model; pass --resume or another --out")
    teacher = teacher_tok = None
    if teacher_dir is not None:
        teacher, teacher_tok = load_teacher(teacher_dir)
    if data is not None:
        rows = load_rows(data)
    elif teacher is not None:
        rows = teacher_rows(teacher_dir, prompts_path, config)
    else:
        raise InputError("give a dataset (--data) or a teacher to answer prompts (--teacher)")
    if limit is not None:
        rows = rows[:limit]
    rows = [r for r in rows if r.answer.strip() or r.logprobs]
    if len(rows) < 2:
        raise InputError(f"need at least 2 non-empty samples to train, got {len(rows)}")
    train_rows, held_rows = split_rows(
        rows, held_out_fraction=config.held_out_fraction, seed=config.seed
    )
    tokenizer = student_tokenizer(
        rows, size=student_size, tokenizer_dir=student_tokenizer_dir, teacher_tok=teacher_tok
    )
    vocab = None
    if teacher is not None and same_vocabulary(tokenizer, teacher_tok):
        vocab = int(teacher.get_output_embeddings().weight.shape[0])
    student = build_student(student_size, tokenizer, seed=config.seed, vocab_size=vocab)
    if mode in ("logit-kd", "gkd"):
        require_shared_vocabulary(teacher, teacher_tok, student, tokenizer, mode)

    common: LoopArgs = {
        "config": config,
        "out_dir": out_dir,
        "resume": resume,
        "progress": progress,
    }
    if mode == "sft":
        outcome = train_sft(student, tokenizer, train_rows, **common)
    elif mode == "logit-kd":
        outcome = train_logit_kd(student, tokenizer, teacher, train_rows, **common)
    elif mode == "topk-kd":
        outcome = train_topk_kd(student, tokenizer, train_rows, **common)
    else:
        outcome = train_gkd(student, tokenizer, teacher, train_rows, **common)

    from distillguard.models.llama import count_parameters

    held_loss = answer_loss(student, tokenizer, held_rows, max_length=config.max_length)
    result = TrainResult(
        out_dir=out_dir,
        mode=mode,
        parameters=count_parameters(student),
        steps=outcome.steps,
        tokens_seen=outcome.tokens_seen,
        train_seconds=outcome.seconds,
        held_out_loss=held_loss,
        train_samples=len(train_rows) - outcome.skipped,
        held_out_samples=len(held_rows),
        resumed_from_step=outcome.resumed_from_step,
        skipped_samples=outcome.skipped,
        skip_reason=outcome.skip_reason,
    )
    info = {
        "distilled": True,
        "mode": mode,
        "student_size": student_size,
        "teacher_dir": str(teacher_dir) if teacher_dir else None,
        "config": asdict(config),
        **{k: v for k, v in asdict(result).items() if k not in ("out_dir", "mode")},
    }
    save_student(out_dir, student, tokenizer, info)
    return result


def teacher_rows(
    teacher_dir: Path | None, prompts_path: Path | None, config: DistillConfig
) -> list[HarvestRecord]:
    """The teacher's own answers to prompts (white-box runs without a harvested dataset)."""
    from distillguard.distill.harvest import LocalHarvestParams, harvest_local, read_prompts
    from distillguard.models.engine import GenerationEngine

    if prompts_path is None:
        raise InputError("without a dataset the teacher needs prompts to answer: --prompts FILE")
    prompts = list(read_prompts(Path(prompts_path)).prompts)[: config.teacher_answers]
    if teacher_dir is None:
        raise InputError("the teacher's answers need the teacher: --teacher DIR")
    engine = GenerationEngine.from_dir(Path(teacher_dir), num_threads=config.num_threads)
    params = LocalHarvestParams(
        max_new_tokens=config.teacher_max_new_tokens, seed=config.seed, temperature=1.0
    )
    return harvest_local(engine, prompts, params)
