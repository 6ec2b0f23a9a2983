"""CLI for distillation: ``distillguard distill harvest | train | eval | curve``.

Parses arguments and calls ``distillguard.distill``; heavy imports happen inside commands.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from distillguard.progress import tracked

if TYPE_CHECKING:
    from rich.console import Console

distill_app = typer.Typer(
    help="Distil a student from a teacher: harvest through an API, train, evaluate.",
    no_args_is_help=True,
)

MODES = ("sft", "logit-kd", "topk-kd", "gkd")


def _honest_prompts(prompts: Path | None, data: Path | None) -> Path | None:
    """--prompts, else (when no dataset is given) the shared honest prompts of the data sets."""
    if prompts is not None or data is not None:
        return prompts
    from distillguard.config import get_settings

    return get_settings().require_data_dir() / "prompts" / "honest.jsonl"


def _console() -> Console:
    from rich.console import Console

    return Console(stderr=True)


@distill_app.command("harvest")
def distill_harvest(
    base_url: Annotated[
        str, typer.Option(help="OpenAI-compatible API root, e.g. http://127.0.0.1:8000/v1")
    ],
    api_key: Annotated[str, typer.Option(envvar="OPENAI_API_KEY", help="API key of the account")],
    prompts: Annotated[
        Path, typer.Option(help="prompts: JSONL (see --field) or plain text, one a line")
    ],
    out: Annotated[Path, typer.Option(help="dataset JSONL; an existing file is resumed")],
    field: Annotated[
        str | None,
        typer.Option(
            help="JSONL field holding the prompt "
            "(default: prompt, instruction, question, text, input)"
        ),
    ] = None,
    id_field: Annotated[
        str | None,
        typer.Option(help="JSONL field holding a stable prompt id (default: a hash of the text)"),
    ] = None,
    model: Annotated[
        str | None, typer.Option(help="model name (default: the first /v1/models lists)")
    ] = None,
    concurrency: Annotated[int, typer.Option(help="requests in flight")] = 4,
    logprobs: Annotated[
        int, typer.Option(help="ask for the top-K logprobs per token (0: none)")
    ] = 0,
    cot: Annotated[bool, typer.Option("--cot", help="append a step-by-step instruction")] = False,
    max_tokens: Annotated[int, typer.Option(help="answer length in tokens")] = 128,
    temperature: Annotated[float, typer.Option()] = 1.0,
    seed: Annotated[int | None, typer.Option()] = None,
    max_retries: Annotated[int, typer.Option(help="retries per prompt on 429/5xx/time-outs")] = 6,
    limit: Annotated[int | None, typer.Option(help="only the first N prompts")] = None,
    progress: Annotated[bool, typer.Option("--progress/--no-progress")] = True,
) -> None:
    """Collect a teacher's answers through an API into a resumable JSONL dataset."""
    from distillguard.distill.harvest import HarvestConfig, harvest, read_prompts

    console = _console()
    prompt_set = read_prompts(prompts, field=field, id_field=id_field)
    if prompt_set.bad_lines:
        console.print(
            f"[yellow]{prompt_set.bad_lines} bad prompt lines skipped[/] "
            f"(first: {', '.join(map(str, prompt_set.bad_line_numbers[:10]))})"
        )
    if prompt_set.duplicates:
        console.print(f"{prompt_set.duplicates} duplicate prompts harvested once")
    items = prompt_set.prompts[:limit] if limit else prompt_set.prompts
    config = HarvestConfig(
        base_url=base_url.rstrip("/"),
        api_key=api_key,
        model=model,
        concurrency=concurrency,
        max_tokens=max_tokens,
        temperature=temperature,
        top_logprobs=logprobs,
        cot=cot,
        seed=seed,
        max_retries=max_retries,
    )
    with tracked("harvest", console=_console(), enabled=progress) as update:
        result = harvest(list(items), out, config, on_progress=update)
    console.print(
        f"[green]{result.written} new[/], {result.already_done} already there, "
        f"{result.failed} rejected, {result.retries} retries, "
        f"{result.completion_tokens} answer tokens in {result.seconds:.1f} s -> {out}"
    )
    if result.bad_lines:
        console.print(f"{result.bad_lines} bad prompt lines were skipped")
    if result.truncated_bytes:
        console.print(f"removed a half-written last line ({result.truncated_bytes} bytes)")
    if result.failed or result.previously_rejected:
        from distillguard.distill.harvest import rejected_path

        console.print(
            f"[yellow]{result.failed + result.previously_rejected} prompts rejected by the "
            f"server (a permanent 4xx), recorded in {rejected_path(out)}; delete that file to "
            "try them again[/]"
        )


@distill_app.command("train")
def distill_train(
    out: Annotated[Path, typer.Option(help="output: a Hugging Face model directory")],
    mode: Annotated[str, typer.Option(help="sft | logit-kd | topk-kd | gkd")] = "sft",
    data: Annotated[Path | None, typer.Option(help="harvested dataset JSONL")] = None,
    teacher: Annotated[
        Path | None, typer.Option(help="teacher model dir (logit-kd, gkd; or to generate data)")
    ] = None,
    prompts: Annotated[
        Path | None,
        typer.Option(help="prompts the teacher answers when no --data (default: shared honest)"),
    ] = None,
    student_size: Annotated[str, typer.Option(help="tiny | small | base")] = "tiny",
    student_tokenizer: Annotated[
        Path | None,
        typer.Option(
            help="tokenizer dir for the student (default: the teacher's, else trained on the data)"
        ),
    ] = None,
    max_steps: Annotated[int, typer.Option(help="optimizer steps")] = 200,
    batch_size: Annotated[int, typer.Option()] = 8,
    lr: Annotated[float, typer.Option()] = 2e-3,
    divergence: Annotated[
        str, typer.Option(help="forward_kl | reverse_kl | jsd (logit-kd, gkd)")
    ] = "forward_kl",
    beta: Annotated[float, typer.Option(help="JSD interpolation")] = 0.5,
    temperature: Annotated[float, typer.Option(help="KD softmax temperature")] = 1.0,
    lmbda: Annotated[
        float, typer.Option(help="gkd: share of on-policy (student-generated) batches")
    ] = 0.5,
    limit: Annotated[int | None, typer.Option(help="use only the first N samples")] = None,
    seed: Annotated[int, typer.Option()] = 0,
    checkpoint_every: Annotated[int, typer.Option(help="steps between checkpoints")] = 50,
    resume: Annotated[
        bool, typer.Option("--resume", help="continue from the last checkpoint in --out")
    ] = False,
    progress: Annotated[bool, typer.Option("--progress/--no-progress")] = True,
) -> None:
    """Train a student by one of four distillation modes."""
    from distillguard.distill.trainers import DistillConfig, train_student
    from distillguard.errors import InputError

    if mode not in MODES:
        raise InputError(f"unknown mode {mode!r}; choose one of {', '.join(MODES)}")
    config = DistillConfig(
        max_steps=max_steps,
        batch_size=batch_size,
        lr=lr,
        divergence=divergence,
        beta=beta,
        temperature=temperature,
        lmbda=lmbda,
        seed=seed,
        checkpoint_every=checkpoint_every,
    )
    result = train_student(
        data if data is not None else None,
        mode=mode,
        teacher_dir=teacher,
        prompts_path=_honest_prompts(prompts, data),
        student_size=student_size,
        student_tokenizer_dir=student_tokenizer,
        out_dir=out,
        config=config,
        limit=limit,
        resume=resume,
        progress=progress,
    )
    console = _console()
    console.print(
        f"[green]{mode}[/] student ({result.parameters:,} params) -> {result.out_dir}: "
        f"{result.steps} steps, {result.tokens_seen:,} tokens in {result.train_seconds:.1f} s "
        f"({result.tokens_per_second:,.0f} tok/s); held-out loss {result.held_out_loss:.3f}"
    )
    if result.resumed_from_step:
        console.print(f"resumed from step {result.resumed_from_step}")
    if result.skipped_samples:
        console.print(f"[yellow]{result.skipped_samples} samples skipped[/] ({result.skip_reason})")


@distill_app.command("eval")
def distill_eval(
    student: Annotated[Path, typer.Option(help="student model dir")],
    teacher: Annotated[Path, typer.Option(help="teacher model dir")],
    data: Annotated[
        Path | None, typer.Option(help="held-out dataset JSONL (teacher's answers)")
    ] = None,
    prompts: Annotated[
        Path | None, typer.Option(help="held-out prompts (default: shared honest prompts)")
    ] = None,
    samples: Annotated[int, typer.Option(help="held-out prompts to score")] = 64,
    max_new_tokens: Annotated[int, typer.Option(help="teacher answer length when no --data")] = 48,
    baseline: Annotated[
        list[Path] | None, typer.Option(help="other student dirs for the same table")
    ] = None,
) -> None:
    """Agreement and KL(teacher || student) on held-out prompts; loss on the teacher's answers."""
    from rich.table import Table

    from distillguard.distill.evaluate import EvalConfig, evaluate_students

    config = EvalConfig(samples=samples, max_new_tokens=max_new_tokens)
    reports = evaluate_students(
        [student, *(baseline or [])],
        teacher_dir=teacher,
        data_path=data,
        prompts_path=_honest_prompts(prompts, data),
        config=config,
    )
    table = Table(title=f"vs teacher {teacher.name}")
    for column in ("student", "top-1 agreement", "KL(teacher||student)", "loss on teacher answers"):
        table.add_column(column)
    for report in reports:
        table.add_row(
            report.student.name,
            f"{report.top1_agreement:.3f}",
            f"{report.kl_teacher_student:.3f}",
            f"{report.held_out_loss:.3f}",
        )
    _console().print(table)
    if reports and reports[0].skipped_prompts:
        _console().print(
            f"[yellow]{reports[0].skipped_prompts} held-out prompts skipped: longer than the "
            "teacher's context with room for the answer[/]"
        )


@distill_app.command("curve")
def distill_curve(
    data: Annotated[Path, typer.Option(help="harvested dataset JSONL")],
    teacher: Annotated[Path, typer.Option(help="teacher model dir (for the evaluation)")],
    out: Annotated[Path, typer.Option(help="PNG plot")] = Path(
        "docs/img/distill_learning_curve.png"
    ),
    mode: Annotated[str, typer.Option()] = "sft",
    sizes: Annotated[str, typer.Option(help="numbers of harvested samples")] = "25,50,100,200",
    student_size: Annotated[str, typer.Option()] = "tiny",
    max_steps: Annotated[int, typer.Option()] = 100,
    samples: Annotated[int, typer.Option(help="held-out prompts per evaluation")] = 48,
) -> None:
    """Learning curve: agreement and KL against the number of harvested samples."""
    from distillguard.distill.campaign import learning_curve
    from distillguard.distill.evaluate import EvalConfig
    from distillguard.distill.trainers import DistillConfig

    points = learning_curve(
        data,
        teacher_dir=teacher,
        mode=mode,
        sample_counts=[int(s) for s in sizes.split(",") if s.strip()],
        student_size=student_size,
        config=DistillConfig(max_steps=max_steps),
        eval_config=EvalConfig(samples=samples),
        plot_path=out,
    )
    for point in points:
        _console().print(
            f"n={point.samples:>5}  agreement {point.top1_agreement:.3f}  "
            f"KL {point.kl_teacher_student:.3f}  loss {point.held_out_loss:.3f}"
        )
    _console().print(f"plot -> {out}")


def register(root: typer.Typer) -> None:
    """Attach this capability's commands to the root app."""
    root.add_typer(distill_app, name="distill")
