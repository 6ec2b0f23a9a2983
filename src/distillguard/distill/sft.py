"""Sequence-level KD (black box): fine-tune the student on the teacher's text with TRL.

This is what an API alone allows and what most distillation campaigns do (Kim & Rush 2016;
Alpaca, Vicuna): the teacher's answers become supervised targets. The student may use any
tokenizer and architecture, because only text crosses over.

TRL's ``SFTTrainer`` does the work on a dataset we tokenize ourselves
(:func:`distill.data.encode_example`): the prompt through the student's own chat template
(with the assistant header, exactly as at inference) and the answer *separately*, their ids
concatenated, with a completion mask so the loss covers the answer (and its eos) only. TRL's
own conversational path tokenizes prompt and prompt+completion as two strings and, when BPE
merges across the boundary or the template renders the pair differently, warns that "the
tokenized prompt is not a prefix of the tokenized prompt+completion" and trains on a context
that is not the one the student sees when it answers; separate tokenization rules that out,
and the radioactivity test reads our answers the same way (``forensics.suspects``). Two
additions: a rich progress bar (a ``TrainerCallback``; TRL's tqdm is turned off) and atomic
checkpoints: the trainer writes each checkpoint into a staging directory that is then
renamed into ``checkpoints/``, so a full disk never leaves a half-written checkpoint behind
the last good one.
"""

from __future__ import annotations

import os
import shutil
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from distillguard.distill.loop import (
    CHECKPOINTS,
    DistillConfig,
    LoopOutcome,
)
from distillguard.distill.records import HarvestRecord
from distillguard.errors import ModelError
from distillguard.progress import progress_bar


def _dataset(rows: Sequence[HarvestRecord], tokenizer: Any, max_length: int) -> Any:
    """Pre-tokenized rows (TRL skips its own tokenization when ``input_ids`` is present):
    prompt ids (template + assistant header) + answer ids + eos, completion mask on the answer."""
    from datasets import Dataset

    from distillguard.distill.data import encode_example

    examples = [
        encode_example(tokenizer, r.prompt, r.answer, max_length=max_length)
        for r in rows
        if r.answer.strip()
    ]
    return Dataset.from_list(
        [
            {
                "input_ids": list(e.input_ids),
                "completion_mask": [int(m) for m in e.answer_mask],
            }
            for e in examples
        ]
    )


def _make_trainer_class() -> type:
    """SFTTrainer with staged, renamed checkpoints (built lazily: TRL imports are slow)."""
    from trl import SFTTrainer

    class AtomicCheckpointSFTTrainer(SFTTrainer):
        def _save_checkpoint(self, model: Any, trial: Any) -> None:
            root = Path(str(self.args.output_dir))
            staging = root / ".staging"
            shutil.rmtree(staging, ignore_errors=True)
            self.args.output_dir = str(staging)
            try:
                super()._save_checkpoint(model, trial)
                produced = sorted(staging.glob("checkpoint-*"))
                for folder in produced:
                    os.replace(folder, root / folder.name)
            except OSError as exc:
                previous = sorted(
                    (p for p in root.glob("checkpoint-*") if p.is_dir()),
                    key=lambda p: int(p.name.split("-")[1]),
                )
                kept = f"{previous[-1].name} is intact" if previous else "no earlier checkpoint"
                raise ModelError(
                    f"could not write checkpoint step {self.state.global_step} under {root}: "
                    f"{exc.strerror or exc}; {kept}; free space and rerun with --resume"
                ) from exc
            finally:
                self.args.output_dir = str(root)
                shutil.rmtree(staging, ignore_errors=True)
            for old in root.glob("checkpoint-*"):
                if old.name != f"checkpoint-{self.state.global_step}":
                    shutil.rmtree(old, ignore_errors=True)

    return AtomicCheckpointSFTTrainer


def _progress_callback(enabled: bool, total: int) -> Any:
    from transformers import TrainerCallback

    class RichProgress(TrainerCallback):
        def __init__(self) -> None:
            self.bar = progress_bar(enabled=enabled, loss=True)
            self.task: Any = None

        def on_train_begin(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
            self.bar.start()
            self.task = self.bar.add_task(
                "sft", total=total, completed=state.global_step, loss=float("nan")
            )

        def on_step_end(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
            self.bar.update(self.task, completed=state.global_step)

        def on_log(self, args: Any, state: Any, control: Any, logs: Any = None, **kw: Any) -> None:
            if logs and "loss" in logs:
                self.bar.update(self.task, loss=float(logs["loss"]))

        def on_train_end(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
            self.bar.stop()

    return RichProgress()


def _sft_args(sft_config_cls: Any, config: DistillConfig, checkpoints: Path) -> Any:
    """TRL's SFTConfig for this run: CPU, fp32, the KD loop's schedule, staged checkpoints."""
    return sft_config_cls(
        output_dir=str(checkpoints),
        max_steps=config.max_steps,
        per_device_train_batch_size=config.batch_size,
        learning_rate=config.lr,
        weight_decay=config.weight_decay,
        warmup_steps=config.warmup_steps,
        lr_scheduler_type="constant_with_warmup",  # the same schedule as the KD loop
        adam_beta2=0.95,
        max_grad_norm=1.0,
        max_length=config.max_length,
        completion_only_loss=True,
        use_cpu=True,
        bf16=False,  # no bf16 hardware here: 20x slower (machine-facts)
        seed=config.seed,
        data_seed=config.seed,
        save_strategy="steps" if config.checkpoint_every else "no",
        save_steps=config.checkpoint_every or 1,
        save_total_limit=1,
        logging_steps=max(1, min(10, config.max_steps // 5)),
        report_to=[],
        disable_tqdm=True,
        dataloader_num_workers=0,
        dataset_num_proc=None,
        include_num_input_tokens_seen="non_padding",
    )


def train_sft(
    student: Any,
    tokenizer: Any,
    rows: Sequence[HarvestRecord],
    *,
    config: DistillConfig,
    out_dir: Path,
    resume: bool,
    progress: bool,
) -> LoopOutcome:
    """Supervised fine-tuning on (prompt, teacher answer) with completion-only loss."""
    import torch
    from transformers.trainer_utils import get_last_checkpoint
    from trl import SFTConfig

    torch.set_num_threads(config.num_threads)
    dataset = _dataset(rows, tokenizer, config.max_length)
    skipped = len(rows) - len(dataset)
    checkpoints = out_dir / CHECKPOINTS
    checkpoints.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings():
        # TRL itself still passes `gradient_checkpointing`, which transformers 5 renames.
        warnings.filterwarnings("ignore", message=".*gradient_checkpointing.*")
        args = _sft_args(SFTConfig, config, checkpoints)
    import datasets
    from transformers import PrinterCallback

    trainer_cls = _make_trainer_class()
    # TRL's dataset preparation shows tqdm bars of its own; the rich bar is the one progress.
    bars_were_on = datasets.is_progress_bar_enabled()
    datasets.disable_progress_bars()
    try:
        trainer = trainer_cls(
            model=student,
            args=args,
            train_dataset=dataset,
            processing_class=tokenizer,
            callbacks=[_progress_callback(progress, config.max_steps)],
        )
    finally:
        if bars_were_on:
            datasets.enable_progress_bars()
    trainer.remove_callback(PrinterCallback)  # it prints raw log dicts when tqdm is off
    last = get_last_checkpoint(str(checkpoints)) if resume else None
    resumed_from = int(Path(last).name.split("-")[1]) if last else 0
    output = trainer.train(resume_from_checkpoint=last)
    student.eval()
    return LoopOutcome(
        steps=int(trainer.state.global_step),
        tokens_seen=int(trainer.state.num_input_tokens_seen),
        seconds=float(output.metrics.get("train_runtime", 0.0)),
        resumed_from_step=resumed_from,
        skipped=skipped,
        skip_reason="empty answers" if skipped else "",
    )
