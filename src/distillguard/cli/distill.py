"""CLI for distillation: ``distillguard distill harvest | train | eval | curve``.

Parses arguments and calls ``distillguard.distill``; heavy imports happen inside commands.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import typer

from distillguard.progress import tracked

if TYPE_CHECKING:
    from rich.console import Console

app = typer.Typer(
    help="Distil a student from a teacher: harvest through an API, train, evaluate.",
    no_args_is_help=True,
)

MODES = ("sft", "logit-kd", "topk-kd", "gkd")


def _console() -> Console:
    from rich.console import Console

    return Console(stderr=True)


@app.command("harvest")
def harvest_command(
    base_url: str = typer.Option(
        ..., help="OpenAI-compatible API root, e.g. http://127.0.0.1:8000/v1"
    ),
    api_key: str = typer.Option(..., envvar="OPENAI_API_KEY", help="API key of the account"),
    prompts: Path = typer.Option(
        ..., help="prompts: JSONL (see --field) or plain text, one a line"
    ),
    out: Path = typer.Option(..., help="dataset JSONL; an existing file is resumed"),
    field: str | None = typer.Option(
        None,
        help="JSONL field holding the prompt (default: prompt, instruction, question, text, input)",
    ),
    id_field: str | None = typer.Option(
        None, help="JSONL field holding a stable prompt id (default: a hash of the text)"
    ),
    model: str | None = typer.Option(None, help="model name (default: the first /v1/models lists)"),
    concurrency: int = typer.Option(4, help="requests in flight"),
    logprobs: int = typer.Option(0, help="ask for the top-K logprobs per token (0: none)"),
    cot: bool = typer.Option(False, "--cot", help="append a step-by-step instruction"),
    max_tokens: int = typer.Option(128, help="answer length in tokens"),
    temperature: float = typer.Option(1.0),
    seed: int | None = typer.Option(None),
    max_retries: int = typer.Option(6, help="retries per prompt on 429/5xx/time-outs"),
    limit: int | None = typer.Option(None, help="only the first N prompts"),
    progress: bool = typer.Option(True, "--progress/--no-progress"),
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
    if result.failed:
        console.print(f"[yellow]{result.failed} prompts rejected by the server; rerun to retry[/]")
        raise typer.Exit(1)


@app.command("train")
def train_command(
    out: Path = typer.Option(..., help="output: a Hugging Face model directory"),
    mode: str = typer.Option("sft", help="sft | logit-kd | topk-kd | gkd"),
    data: Path | None = typer.Option(None, help="harvested dataset JSONL"),
    teacher: Path | None = typer.Option(
        None, help="teacher model dir (logit-kd, gkd; or to generate data)"
    ),
    prompts: Path | None = typer.Option(None, help="prompts the teacher answers when no --data"),
    student_size: str = typer.Option("tiny", help="tiny | small | base"),
    student_tokenizer: Path | None = typer.Option(
        None,
        help="tokenizer dir for the student (default: the teacher's, else trained on the data)",
    ),
    max_steps: int = typer.Option(200, help="optimizer steps"),
    batch_size: int = typer.Option(8),
    lr: float = typer.Option(2e-3),
    divergence: str = typer.Option(
        "forward_kl", help="forward_kl | reverse_kl | jsd (logit-kd, gkd)"
    ),
    beta: float = typer.Option(0.5, help="JSD interpolation"),
    temperature: float = typer.Option(1.0, help="KD softmax temperature"),
    lmbda: float = typer.Option(0.5, help="gkd: share of on-policy (student-generated) batches"),
    limit: int | None = typer.Option(None, help="use only the first N samples"),
    seed: int = typer.Option(0),
    checkpoint_every: int = typer.Option(50, help="steps between checkpoints"),
    resume: bool = typer.Option(
        False, "--resume", help="continue from the last checkpoint in --out"
    ),
    progress: bool = typer.Option(True, "--progress/--no-progress"),
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
        divergence=divergence,  # type: ignore[arg-type]
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
        prompts_path=prompts,
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


@app.command("eval")
def eval_command(
    student: Path = typer.Option(..., help="student model dir"),
    teacher: Path = typer.Option(..., help="teacher model dir"),
    data: Path | None = typer.Option(None, help="held-out dataset JSONL (teacher's answers)"),
    prompts: Path | None = typer.Option(
        None, help="held-out prompts (default: shared honest prompts)"
    ),
    samples: int = typer.Option(64, help="held-out prompts to score"),
    max_new_tokens: int = typer.Option(48, help="teacher answer length when no --data"),
    baseline: list[Path] = typer.Option([], help="other student dirs for the same table"),
) -> None:
    """Agreement and KL(teacher || student) on held-out prompts; loss on the teacher's answers."""
    from rich.table import Table

    from distillguard.distill.evaluate import EvalConfig, evaluate_students

    config = EvalConfig(samples=samples, max_new_tokens=max_new_tokens)
    reports = evaluate_students(
        [student, *baseline], teacher_dir=teacher, data_path=data, prompts_path=prompts,
        config=config,
    )  # fmt: skip
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


@app.command("curve")
def curve_command(
    data: Path = typer.Option(..., help="harvested dataset JSONL"),
    teacher: Path = typer.Option(..., help="teacher model dir (for the evaluation)"),
    out: Path = typer.Option(Path("docs/img/distill_learning_curve.png"), help="PNG plot"),
    mode: str = typer.Option("sft"),
    sizes: str = typer.Option("25,50,100,200", help="numbers of harvested samples"),
    student_size: str = typer.Option("tiny"),
    max_steps: int = typer.Option(100),
    samples: int = typer.Option(48, help="held-out prompts per evaluation"),
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
    root.add_typer(app, name="distill")
