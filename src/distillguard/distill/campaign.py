"""A distillation campaign end to end, for the demo: harvest through the API, train, compare.

What an attacker does with an API key, in one call: harvest answers (with top-k logprobs when
asked) through any OpenAI-compatible endpoint, train a ``tiny`` student on them, and, for the
comparison the provider cares about, a same-size student trained *without* the teacher (SFT
on another model's real answers to the same prompts, from ``shared/data/outputs``). Both are
scored against the teacher on held-out prompts (agreement, KL, loss). ``learning_curve``
trains students on growing numbers of harvested samples and plots how close each gets.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from distillguard.distill.data import load_rows
from distillguard.distill.evaluate import (
    CurvePoint,
    EvalConfig,
    StudentReport,
    compare_on_rows,
    evaluate_students,
    plot_curves,
)
from distillguard.distill.harvest import HarvestConfig, HarvestResult, harvest
from distillguard.distill.records import HarvestRecord, Prompt, prompt_id, read_dataset
from distillguard.distill.trainers import INFO_FILE, DistillConfig, train_student
from distillguard.errors import InputError, NotFound
from distillguard.traffic import read_objects


@dataclass(frozen=True)
class CampaignResult:
    harvest: HarvestResult
    dataset: Path  # the harvested JSONL
    student_dir: Path  # distilled from the API's answers
    baseline_dir: Path  # same size, never saw the teacher
    student: StudentReport
    baseline: StudentReport


def other_model_answers(data_dir: Path, model: str = "gpt4") -> dict[str, str]:
    """instruction -> answer of another real model (alpaca_eval outputs in shared data)."""
    path = Path(data_dir) / "outputs" / f"{model}.jsonl"
    if not path.is_file():
        raise NotFound(f"no answers of {model} at {path} (the no-teacher baseline needs them)")
    reader = read_objects(path)
    answers = {r["instruction"]: r["output"] for r in reader if {"instruction", "output"} <= set(r)}
    reader.summary().raise_if_skipped()  # shipped data: a bad line is an error, not a gap
    return answers


def run_campaign(
    *,
    api_url: str,
    api_key: str,
    teacher_dir: Path,
    work_dir: Path,
    data_dir: Path,
    samples: int = 128,
    mode: str = "sft",
    top_logprobs: int = 0,
    concurrency: int = 8,
    config: DistillConfig = DistillConfig(max_steps=150, max_length=192),
    eval_samples: int = 48,
    progress: bool = True,
) -> CampaignResult:
    """Harvest ``samples`` alpaca_eval prompts through ``api_url``, distil a tiny student by
    ``mode`` (``sft`` or ``topk-kd``: what an API allows), train the no-teacher baseline, and
    evaluate both against ``teacher_dir`` on the last ``eval_samples`` prompts."""
    if mode not in ("sft", "topk-kd"):
        raise InputError("a campaign through an API can run sft or topk-kd, not white-box modes")
    if mode == "topk-kd" and top_logprobs < 1:
        raise InputError("topk-kd needs top_logprobs >= 1 in the harvest")
    answers = other_model_answers(data_dir)
    instructions = list(answers)
    if samples + eval_samples > len(instructions):
        raise InputError(f"at most {len(instructions) - eval_samples} samples available")
    work_dir = Path(work_dir)
    work_dir.mkdir(parents=True, exist_ok=True)
    dataset = work_dir / "harvest.jsonl"
    prompts = [Prompt(prompt_id(p), p) for p in instructions[:samples]]
    harvested = harvest(
        prompts,
        dataset,
        HarvestConfig(
            base_url=api_url,
            api_key=api_key,
            concurrency=concurrency,
            max_tokens=64,
            top_logprobs=top_logprobs,
        ),
    )
    rows = read_dataset(dataset)
    student_dir, baseline_dir = work_dir / f"student-{mode}", work_dir / "baseline-no-teacher"
    cut = max(len(r.answer) for r in rows)
    baseline_rows = [replace(r, answer=answers[r.prompt][:cut], logprobs=None) for r in rows]
    for out, data, how in ((student_dir, rows, mode), (baseline_dir, baseline_rows, "sft")):
        if (out / INFO_FILE).is_file():
            continue  # finished by an earlier run of the same campaign
        train_student(
            data,
            mode=how,
            out_dir=out,
            student_tokenizer_dir=teacher_dir,
            student_size="tiny",
            config=config,
            progress=progress,
            resume=out.exists(),
        )
    held = work_dir / "held-out-prompts.jsonl"
    held.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in instructions[-eval_samples:]))
    student_report, baseline_report = evaluate_students(
        [student_dir, baseline_dir],
        teacher_dir=teacher_dir,
        prompts_path=held,
        config=EvalConfig(samples=eval_samples, max_length=config.max_length),
    )
    return CampaignResult(
        harvested, dataset, student_dir, baseline_dir, student_report, baseline_report
    )


def learning_curve(
    data: Path | Sequence[HarvestRecord],
    *,
    teacher_dir: Path,
    mode: str,
    sample_counts: Sequence[int],
    student_size: str = "tiny",
    config: DistillConfig | None = None,
    eval_config: EvalConfig = EvalConfig(),
    plot_path: Path | None = None,
    progress: bool = False,
) -> list[CurvePoint]:
    """Students trained on the first n harvested samples for each n, scored on the last
    ``eval_config.samples`` rows (never trained on). Writes a PNG when ``plot_path`` is set."""
    from distillguard.models.llama import load_model

    rows = load_rows(data)
    counts = sorted({int(n) for n in sample_counts})
    if not counts or counts[0] < 2:
        raise InputError("sample counts must be >= 2")
    if counts[-1] + eval_config.samples > len(rows):
        raise InputError(
            f"the dataset has {len(rows)} rows; the curve needs {counts[-1]} for training "
            f"plus {eval_config.samples} held out"
        )
    held = rows[-eval_config.samples :]
    teacher, teacher_tok = load_model(Path(teacher_dir))
    config = config or DistillConfig()
    points = []
    with tempfile.TemporaryDirectory(prefix="dg-curve-") as scratch:
        for n in counts:
            out = Path(scratch) / f"n{n}"
            train_student(
                rows[:n],
                mode=mode,
                out_dir=out,
                teacher_dir=teacher_dir,
                student_size=student_size,
                config=config,
                progress=progress,
            )
            student, student_tok = load_model(out)
            report = compare_on_rows(
                student,
                student_tok,
                teacher,
                teacher_tok,
                held,
                student_dir=out,
                config=eval_config,
            )
            points.append(
                CurvePoint(
                    n, report.top1_agreement, report.kl_teacher_student, report.held_out_loss
                )
            )
    if plot_path is not None:
        plot_curves({mode: points}, plot_path)
    return points
