"""The training loop the token-level modes share, its configuration, and its checkpoints.

``run_loop`` runs seeded batches that a resumed run replays exactly, with the rich progress
bar every training loop shows, atomic checkpoints, and a linear warm-up. The family modules
(``sft.py``, ``kd.py``, ``gkd.py``) build on it and ``trainers.train_student`` dispatches to
them; keeping the loop here (below all three) is what keeps the imports one-way.

A checkpoint is written to a temporary directory and renamed into place, then the previous
one is removed; an OSError on the way (a full disk) removes the partial copy and raises a
ModelError saying the previous checkpoint is intact.
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from distillguard.distill.losses import DIVERGENCES
from distillguard.errors import ConfigError, ModelError
from distillguard.progress import progress_bar

CHECKPOINTS = "checkpoints"  # sub-directory of the output holding the resumable state


@dataclass(frozen=True)
class DistillConfig:
    max_steps: int = 200  # optimizer steps: the deterministic stopping rule
    batch_size: int = 8  # sequences per step; small batches win at this scale (machine-facts)
    lr: float = 2e-3  # AdamW peak rate; tiny students tolerate and need high rates
    weight_decay: float = 0.0  # little data, few steps: decay only slows learning here
    warmup_steps: int = 10  # linear warm-up avoids the first updates blowing up a fresh model
    max_length: int = 256  # tokens per sequence (prompt + answer); tiny context is 256
    divergence: str = "forward_kl"  # logit-kd/gkd: forward_kl | reverse_kl | jsd
    beta: float = 0.5  # JSD interpolation (GKD's default)
    temperature: float = 1.0  # KD softmax temperature; loss scaled by T^2 (Hinton)
    lmbda: float = 0.5  # gkd: share of steps trained on the student's own samples
    gkd_max_new_tokens: int = 48  # gkd: length of on-policy samples
    topk: int = 20  # topk-kd: at most this many alternatives per position are used
    held_out_fraction: float = 0.1  # rows kept out of training for the held-out loss
    checkpoint_every: int = 50  # steps between checkpoints (0: only the final model)
    seed: int = 0  # student init, split, batch order, on-policy sampling
    num_threads: int = 1  # torch threads: 2 shared cores oversubscribe quickly
    teacher_answers: int = 256  # prompts the teacher answers when no dataset is given
    teacher_max_new_tokens: int = 64  # length of those answers

    def __post_init__(self) -> None:
        if self.max_steps < 1 or self.batch_size < 1 or self.max_length < 16:
            raise ConfigError("max_steps, batch_size must be >= 1 and max_length >= 16")
        if self.lr <= 0 or self.weight_decay < 0 or self.warmup_steps < 0:
            raise ConfigError("lr must be > 0, weight_decay and warmup_steps >= 0")
        if self.divergence not in DIVERGENCES:
            raise ConfigError(f"divergence must be one of {DIVERGENCES}, got {self.divergence!r}")
        if not 0.0 <= self.beta <= 1.0 or not 0.0 <= self.lmbda <= 1.0:
            raise ConfigError("beta and lmbda must be in [0, 1]")
        if self.temperature <= 0:
            raise ConfigError("temperature must be > 0")
        if not 0.0 < self.held_out_fraction < 0.5:
            raise ConfigError("held_out_fraction must be in (0, 0.5)")
        if self.checkpoint_every < 0 or self.topk < 1 or self.num_threads < 1:
            raise ConfigError("checkpoint_every >= 0, topk >= 1, num_threads >= 1 required")
        if self.gkd_max_new_tokens < 1 or self.teacher_answers < 1:
            raise ConfigError("gkd_max_new_tokens and teacher_answers must be >= 1")


@dataclass(frozen=True)
class LoopOutcome:
    """What a family module hands back to :func:`train_student`."""

    steps: int
    tokens_seen: int
    seconds: float
    resumed_from_step: int = 0
    skipped: int = 0
    skip_reason: str = ""


# --- checkpoints ---------------------------------------------------------------------------
def _replace_dir(tmp: Path, final: Path) -> None:
    old = final.with_name(final.name + ".old")
    if final.exists():
        final.rename(old)
    tmp.rename(final)
    shutil.rmtree(old, ignore_errors=True)


def save_checkpoint(out_dir: Path, step: int, model: Any, optimizer: Any, state: dict) -> Path:
    """Atomically write ``checkpoints/step-N`` and drop older ones. Full disk -> ModelError."""
    import torch

    root = out_dir / CHECKPOINTS
    final = root / f"step-{step}"
    tmp = root / f".tmp-step-{step}"
    try:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        model.save_pretrained(str(tmp))
        torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
        (tmp / "state.json").write_text(json.dumps({**state, "step": step}))
        _replace_dir(tmp, final)
    except OSError as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        previous = latest_checkpoint(out_dir)
        kept = f"checkpoint {previous.name} is intact" if previous else "no earlier checkpoint"
        raise ModelError(
            f"could not write checkpoint step {step} under {root}: {exc.strerror or exc}; "
            f"{kept}; free space and rerun with --resume"
        ) from exc
    for other in root.glob("step-*"):
        if other != final:
            shutil.rmtree(other, ignore_errors=True)
    return final


def latest_checkpoint(out_dir: Path) -> Path | None:
    root = out_dir / CHECKPOINTS
    steps = [p for p in root.glob("step-*") if (p / "state.json").is_file()]
    return max(steps, key=lambda p: int(p.name.split("-")[1]), default=None)


# --- the shared loop -----------------------------------------------------------------------
StepFn = Callable[[int], tuple[Any, int]]  # step -> (scalar loss tensor, answer tokens)


def run_loop(
    model: Any,
    step_loss: StepFn,
    *,
    config: DistillConfig,
    out_dir: Path,
    resume: bool,
    progress: bool,
    label: str,
) -> tuple[int, int, float, int]:
    """Optimise ``model`` for ``config.max_steps`` steps of ``step_loss``.

    Returns (steps done this run + before, answer tokens seen, seconds, resumed-from step).
    ``step_loss(step)`` must build its batch from ``step`` alone (seeded), so a resumed run
    continues with the very batches the interrupted one would have used.
    """
    import torch

    torch.set_num_threads(config.num_threads)
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=config.lr, weight_decay=config.weight_decay, betas=(0.9, 0.95)
    )
    start_step, tokens_seen, seconds_before = 0, 0, 0.0
    checkpoint = latest_checkpoint(out_dir) if resume else None
    if checkpoint is not None:
        from safetensors.torch import load_file

        model.load_state_dict(load_file(str(checkpoint / "model.safetensors")), strict=False)
        optimizer.load_state_dict(torch.load(checkpoint / "optimizer.pt", weights_only=True))
        state = json.loads((checkpoint / "state.json").read_text())
        start_step, tokens_seen = int(state["step"]), int(state["tokens_seen"])
        seconds_before = float(state.get("seconds", 0.0))
        model.tie_weights()
    model.train()
    bar = progress_bar(enabled=progress, loss=True)
    started = time.perf_counter()
    smoothed = float("nan")
    with bar:
        task = bar.add_task(label, total=config.max_steps, completed=start_step, loss=smoothed)
        for step in range(start_step, config.max_steps):
            for group in optimizer.param_groups:
                group["lr"] = config.lr * min(1.0, (step + 1) / max(1, config.warmup_steps))
            loss, tokens = step_loss(step)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            tokens_seen += tokens
            value = float(loss.detach())
            smoothed = value if step == start_step else 0.9 * smoothed + 0.1 * value
            bar.update(task, advance=1, loss=smoothed)
            done = step + 1
            if (
                config.checkpoint_every
                and done % config.checkpoint_every == 0
                and done < config.max_steps
            ):
                elapsed = seconds_before + time.perf_counter() - started
                state = {"tokens_seen": tokens_seen, "seconds": elapsed, "config": asdict(config)}
                save_checkpoint(out_dir, done, model, optimizer, state)
    model.eval()
    seconds = seconds_before + time.perf_counter() - started
    return config.max_steps, tokens_seen, seconds, start_step
