"""The arithmetic teacher: a small Llama trained here on ``task``'s problems, and its grader.

Built with the project's own model code (``models.llama``: a byte-level tokenizer and a Llama
from scratch) and saved as an ordinary Hugging Face directory, so the gateway's local backend
serves it with ``--model DIR`` and the distillation room distils it like any teacher. The
tokenizer is the byte-level BPE of ``models.tokenizer`` with no merges (vocabulary = bytes +
special tokens): one token per character, so digits are tokens and a sum is learnable.

The teacher learns three answer styles (``task.STYLES``): full reasoning (the default), the
final answer only, and a summary (its steps, a ``Summary:`` line, the answer), so a defence
can serve "reasoning replaced by a summary the teacher writes itself". It is cached under
``{home}/models/teacher-arith`` like the default teacher, behind the same file lock.
"""

from __future__ import annotations

import random
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from distillguard.config import Settings
from distillguard.errors import ConfigError
from distillguard.models.llama import ModelSize, save_model_dir
from distillguard.prevent.task import (
    STYLES,
    Problem,
    Style,
    TaskConfig,
    generate,
    is_correct,
    prompt_for,
    solution,
)

TEACHER_NAME = "teacher-arith-v2"  # directory under {home}/models (v2: the terse 2-3 step task)


@dataclass(frozen=True)
class ArithTeacherConfig:
    hidden: int = 96  # residual width: 0.36M parameters, ~0.17 CPU s a step (measured)
    layers: int = 3  # find the operand, add with carry, write: a few layers of composition
    heads: int = 4  # 24-dim heads
    ffn: int = 256  # SwiGLU width
    context_length: int = 128  # a problem and its answer take ~50 characters
    train_problems: int = 20_000  # distinct train structures: far more than it can memorise
    answer_only_share: float = 0.15  # share of training pairs in the answer-only style
    summary_share: float = 0.15  # share in the summary style (the rest: full reasoning)
    steps: int = 1500  # optimizer steps: the deterministic stopping rule (~4.5 CPU minutes)
    batch_size: int = 32  # (prompt, answer) pairs per step: 16 left step sums noisy (28 %)
    lr: float = 4e-3  # peak AdamW rate; tiny models need (and tolerate) high rates
    seed: int = 0  # problems, style mix, init and window order
    eval_problems: int = 200  # held-out problems graded after the build

    def __post_init__(self) -> None:
        if min(self.hidden, self.layers, self.heads, self.ffn) < 1 or self.hidden % self.heads:
            raise ConfigError("hidden, layers, heads, ffn must be positive; heads divide hidden")
        if not 64 <= self.context_length <= 1024:
            raise ConfigError("context_length must be in [64, 1024]")
        if self.train_problems < 10 or self.steps < 1 or self.batch_size < 1 or self.lr <= 0:
            raise ConfigError("train_problems >= 10, steps >= 1, batch_size >= 1, lr > 0")
        shares = (self.answer_only_share, self.summary_share)
        if min(shares) < 0 or sum(shares) >= 1:
            raise ConfigError("style shares must be >= 0 and leave room for full reasoning")
        if self.eval_problems < 0:
            raise ConfigError("eval_problems must be >= 0")

    @property
    def model_size(self) -> ModelSize:
        from distillguard.models.tokenizer import MIN_VOCAB

        return ModelSize(
            hidden=self.hidden,
            layers=self.layers,
            heads=self.heads,
            ffn=self.ffn,
            vocab_size=MIN_VOCAB,  # bytes + specials: no merges, one token per character
            context_length=self.context_length,
        )


# A config small enough for tests: learns the format and easy one-operation sums in seconds.
TINY_TEACHER = ArithTeacherConfig(
    hidden=64, layers=2, heads=2, ffn=128, train_problems=2000, steps=300, eval_problems=40
)


@dataclass(frozen=True)
class StyleAccuracy:
    style: str
    correct: int
    total: int

    @property
    def accuracy(self) -> float:
        return self.correct / self.total if self.total else 0.0


@dataclass(frozen=True)
class ArithTeacherResult:
    out_dir: Path
    parameters: int
    final_train_loss: float  # answer-token NLL over the last tenth of training (nats)
    train_seconds: float
    accuracy: tuple[StyleAccuracy, ...]  # greedy, on held-out problems, one per style


def training_pairs(
    config: ArithTeacherConfig, task: TaskConfig = TaskConfig()
) -> list[tuple[str, str]]:
    """(prompt, answer) pairs of the train split in the configured mix of styles."""
    rng = random.Random(config.seed)
    pairs = []
    for problem in generate(config.train_problems, split="train", seed=config.seed, config=task):
        u = rng.random()
        style: Style = (
            "answer_only"
            if u < config.answer_only_share
            else "summary"
            if u < config.answer_only_share + config.summary_share
            else "reasoning"
        )
        pairs.append((prompt_for(problem, style), solution(problem, style)))
    return pairs


def build_arith_teacher(
    out_dir: Path,
    config: ArithTeacherConfig = ArithTeacherConfig(),
    *,
    task: TaskConfig = TaskConfig(),
    progress: bool = True,
) -> ArithTeacherResult:
    """Train the teacher and save it at ``out_dir`` (atomically: built beside, then renamed);
    grade it on held-out problems in every style."""
    from distillguard.models.llama import count_parameters, new_model
    from distillguard.models.tokenizer import format_chat_pair, train_tokenizer

    pairs = training_pairs(config, task)
    size = config.model_size
    tokenizer = train_tokenizer(
        [format_chat_pair(q, a) for q, a in pairs[:2000]], vocab_size=size.vocab_size
    )
    tokenizer.model_max_length = config.context_length
    model = new_model(size, tokenizer, seed=config.seed)
    start = time.perf_counter()
    loss = train_on_answers(model, tokenizer, pairs, config, progress=progress)
    seconds = time.perf_counter() - start

    out_dir = Path(out_dir)
    held = generate(config.eval_problems, split="held_out", seed=config.seed, config=task)
    accuracy = (
        tuple(grade(_engine(model, tokenizer), held, style) for style in STYLES) if held else ()
    )
    info = {
        "size": "arith",
        "task": "prevent.task v2: 2-3 step arithmetic chains",
        "config": asdict(config),
        "task_config": asdict(task),
        "parameters": count_parameters(model),
        "final_train_loss": loss,
        "train_seconds": seconds,
        "accuracy": {a.style: a.accuracy for a in accuracy},
    }
    save_model_dir(model, tokenizer, out_dir, info)
    return ArithTeacherResult(
        out_dir=out_dir,
        parameters=count_parameters(model),
        final_train_loss=loss,
        train_seconds=seconds,
        accuracy=accuracy,
    )


def train_on_answers(
    model: Any,
    tokenizer: Any,
    pairs: Sequence[tuple[str, str]],
    config: ArithTeacherConfig,
    *,
    progress: bool = True,
) -> float:
    """Train ``model`` in place on the answer tokens of ``pairs`` (the prompt is context, not
    a target: its numbers are random, so a loss on them is noise that costs capacity). Linear
    warm-up, cosine decay to a tenth; returns the mean answer-token loss of the last tenth."""
    import math

    import torch
    import torch.nn.functional as F

    from distillguard.distill.data import batch_indices, collate, encode_example
    from distillguard.progress import progress_bar

    torch.set_num_threads(1)  # 2 shared cores: one thread each is what scales here
    torch.manual_seed(config.seed)
    examples = [encode_example(tokenizer, q, a, max_length=config.context_length) for q, a in pairs]
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=config.lr, weight_decay=0.0, betas=(0.9, 0.95)
    )
    warmup = max(1, config.steps // 20)
    tail: list[float] = []
    model.train()
    bar = progress_bar(enabled=progress, loss=True)
    with bar:
        task = bar.add_task("teacher", total=config.steps, loss=float("nan"))
        for step in range(config.steps):
            decay = 0.5 * (1 + math.cos(math.pi * step / config.steps))
            rate = min(1.0, (step + 1) / warmup) * (0.1 + 0.9 * decay)
            for group in optimizer.param_groups:
                group["lr"] = config.lr * rate
            chosen = batch_indices(len(examples), config.batch_size, seed=config.seed, step=step)
            batch = collate([examples[i] for i in chosen], pad_id=int(tokenizer.pad_token_id))
            logits = model(
                input_ids=batch.input_ids, attention_mask=batch.attention_mask
            ).logits  # (B, T, V)
            target = batch.input_ids[:, 1:]  # (B, T-1): next tokens
            mask = batch.answer_mask[:, 1:]  # (B, T-1): answer tokens carry the loss
            loss = F.cross_entropy(logits[:, :-1][mask], target[mask])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            value = float(loss.detach())
            if step >= config.steps - max(1, config.steps // 10):
                tail.append(value)
            bar.update(task, advance=1, loss=value)
    model.eval()
    return sum(tail) / len(tail)


def _engine(model: Any, tokenizer: Any) -> Any:
    from distillguard.models.engine import GenerationEngine

    return GenerationEngine(model, tokenizer, max_batch_size=32, num_threads=1)


# --- grading -------------------------------------------------------------------------------
def answer(
    engine: Any,
    problems: Sequence[Problem],
    style: Style = "reasoning",
    *,
    temperature: float = 0.0,
    seed: int = 0,
    max_new_tokens: int = 96,
) -> list[str]:
    """The engine's answers to ``problems`` asked in ``style`` (greedy by default)."""
    from distillguard.models.engine import GenerationParams

    prompts = [
        engine.encode_chat([{"role": "user", "content": prompt_for(p, style)}]) for p in problems
    ]
    params = [
        GenerationParams(
            max_new_tokens=max(1, min(max_new_tokens, engine.context_length - len(ids))),
            temperature=temperature,
            seed=None if temperature == 0 else seed + i,
        )
        for i, ids in enumerate(prompts)
    ]
    return [c.text for c in engine.generate_batch(prompts, params)]


def grade(engine: Any, problems: Sequence[Problem], style: Style = "reasoning") -> StyleAccuracy:
    """Greedy accuracy of the engine's final answers on ``problems`` asked in ``style``."""
    texts = answer(engine, problems, style)
    correct = sum(is_correct(p, t) for p, t in zip(problems, texts, strict=True))
    return StyleAccuracy(style=style, correct=correct, total=len(problems))


# --- the cached teacher --------------------------------------------------------------------
def arith_teacher_path(settings: Settings) -> Path:
    return settings.home / "models" / TEACHER_NAME


def arith_teacher_dir(
    settings: Settings,
    config: ArithTeacherConfig = ArithTeacherConfig(),
    *,
    rebuild: bool = False,
    progress: bool = True,
) -> Path:
    """Directory of the cached arithmetic teacher, building it first when it is missing (or
    ``rebuild``). The models room's file lock keeps two processes from training it twice."""
    from distillguard.models.teacher import _FileLock

    target = arith_teacher_path(settings)
    if (target / "config.json").is_file() and not rebuild:
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with _FileLock(target.with_name(f".{target.name}.lock")):
        if (target / "config.json").is_file() and not rebuild:
            return target
        build_arith_teacher(target, config, progress=progress)
    return target
