"""CLI for models: ``model build``, ``model teacher``, ``model info``, ``model generate``.

Parses options and calls ``distillguard.models``; torch and transformers load inside the
commands so that ``--help`` stays fast.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

model_app = typer.Typer(help="Build, inspect and try the language models.", no_args_is_help=True)
console = Console()

SizeOption = Annotated[str, typer.Option("--size", help="Model size: tiny | small | base.")]


def register(root: typer.Typer) -> None:
    """Attach this capability's commands to the root app."""
    root.add_typer(model_app, name="model")


@model_app.command("build")
def model_build(
    corpus: Annotated[
        list[Path],
        typer.Option(
            "--corpus",
            help="Training file (repeatable): .jsonl (instruction, output) pairs or plain text.",
        ),
    ],
    out: Annotated[Path, typer.Option("--out", help="Directory to write the model to.")],
    size: SizeOption = "tiny",
    max_steps: Annotated[
        int | None,
        typer.Option("--max-steps", help="Optimizer steps (default: per size; reproducible)."),
    ] = None,
    max_seconds: Annotated[
        float | None,
        typer.Option(
            "--max-seconds", help="Wall-clock budget; the run then depends on the machine."
        ),
    ] = None,
    seed: Annotated[int, typer.Option("--seed", help="Seed for init, split and order.")] = 0,
    batch_size: Annotated[int, typer.Option("--batch-size", help="Windows per step.")] = 8,
    lr: Annotated[float, typer.Option("--lr", help="Peak learning rate.")] = 3e-3,
    threads: Annotated[int, typer.Option("--threads", help="Torch threads.")] = 1,
) -> None:
    """Train a byte-level BPE tokenizer and a Llama LM from scratch; save a HF directory."""
    from distillguard.models.llama import TrainConfig, build_model
    from distillguard.models.teacher import TEACHER_STEPS, read_corpus

    data = read_corpus(corpus)
    if data.skipped_lines:
        console.print(
            f"[yellow]skipped {data.skipped_lines} unusable JSONL lines "
            f"(first: {', '.join(data.first_skipped)})"
        )
    steps = max_steps or (1_000_000 if max_seconds else TEACHER_STEPS.get(size, 500))
    config = TrainConfig(
        size=size,
        max_steps=steps,
        max_seconds=max_seconds,
        seed=seed,
        batch_size=batch_size,
        lr=lr,
        num_threads=threads,
    )
    console.print(f"corpus: {len(data.texts)} text paragraphs, {len(data.chat_pairs)} chat pairs")
    result = build_model(
        out_dir=out, config=config, texts=data.texts, chat_pairs=data.chat_pairs, progress=True
    )
    console.print(
        f"[green]saved[/green] {result.out_dir}: {result.parameters:,} parameters, "
        f"held-out loss {result.held_out_loss:.3f}, {result.tokens_seen:,} tokens "
        f"in {result.train_seconds:.0f} s"
    )


@model_app.command("teacher")
def model_teacher(
    size: SizeOption = "small",
    seed: Annotated[int, typer.Option("--seed", help="Seed of a fresh build.")] = 0,
) -> None:
    """Show the cached default teacher, building it first when missing (a few CPU minutes)."""
    from distillguard.config import get_settings
    from distillguard.models.teacher import default_teacher_dir, teacher_dir_path

    settings = get_settings()
    target = teacher_dir_path(settings, size=size)
    if not (target / "config.json").is_file():
        console.print(f"building the default {size} teacher at {target} ...")
    _show(default_teacher_dir(settings, size=size, seed=seed, progress=True))


@model_app.command("info")
def model_info(
    model_dir: Annotated[Path, typer.Argument(help="A Hugging Face model directory.")],
) -> None:
    """Architecture, size and build record of a model directory."""
    _show(model_dir)


@model_app.command("generate")
def model_generate(
    model_dir: Annotated[Path, typer.Argument(help="A Hugging Face model directory.")],
    prompt: Annotated[str, typer.Argument(help="User message sent through the chat template.")],
    max_tokens: Annotated[int, typer.Option("--max-tokens")] = 64,
    temperature: Annotated[float, typer.Option("--temperature")] = 0.8,
    top_p: Annotated[float, typer.Option("--top-p")] = 0.95,
    seed: Annotated[int | None, typer.Option("--seed")] = None,
) -> None:
    """Answer one chat message with a model (a quick look at what it writes)."""
    from distillguard.models.engine import GenerationEngine, GenerationParams

    engine = GenerationEngine.from_dir(model_dir)
    params = GenerationParams(
        max_new_tokens=max_tokens, temperature=temperature, top_p=top_p, seed=seed
    )
    prompt_ids = engine.encode_chat([{"role": "user", "content": prompt}])
    completion = engine.generate_batch([prompt_ids], params)[0]
    console.print(completion.text, markup=False, highlight=False)
    console.print(
        f"[dim]{completion.completion_tokens} tokens, finish_reason={completion.finish_reason}"
    )


def _show(model_dir: Path) -> None:
    from distillguard.models.llama import count_parameters, load_model, read_build_info

    model, tokenizer = load_model(model_dir)
    cfg = model.config
    table = Table(title=str(model_dir), show_header=False)
    rows = [
        ("architecture", type(model).__name__),
        ("parameters", f"{count_parameters(model):,}"),
        (
            "hidden / layers / heads",
            f"{cfg.hidden_size} / {cfg.num_hidden_layers} / {cfg.num_attention_heads}",
        ),
        ("vocabulary", f"{len(tokenizer):,}"),
        ("context length", str(getattr(cfg, "max_position_embeddings", "?"))),
        ("chat template", "yes" if getattr(tokenizer, "chat_template", None) else "no"),
    ]
    build_info = read_build_info(model_dir)
    if build_info:
        rows += [
            ("size", str(build_info.get("size"))),
            ("held-out loss", f"{build_info.get('held_out_loss', float('nan')):.3f}"),
            ("tokens seen", f"{build_info.get('tokens_seen', 0):,}"),
            ("train seconds", f"{build_info.get('train_seconds', 0):.0f}"),
        ]
    for key, value in rows:
        table.add_row(key, value)
    console.print(table)
