"""Llama causal LMs built from scratch on the CPU: sizes, training loop, saving and loading.

A build trains a byte-level BPE tokenizer (``tokenizer.py``) and a ``LlamaForCausalLM`` with
tied embeddings on packed token windows, then saves a standard Hugging Face directory that
``AutoModelForCausalLM`` / ``AutoTokenizer`` load, chat template included. On this 2-core
machine a ~1M-parameter model is what a few minutes buy (see shared machine-facts): larger
ones are still far from converged when the budget ends.
"""

from __future__ import annotations

import json
import math
import os
import random
import shutil
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from distillguard.errors import ConfigError, InputError, ModelError
from distillguard.models.tokenizer import END, format_chat_pair, train_tokenizer
from distillguard.progress import progress_bar

BUILD_INFO_FILE = "distillguard.json"  # build metadata written next to the weights


@dataclass(frozen=True)
class ModelSize:
    hidden: int  # residual width
    layers: int  # transformer blocks
    heads: int  # attention heads (no grouped-query sharing at this scale)
    ffn: int  # SwiGLU inner width
    vocab_size: int  # BPE vocabulary, special tokens included
    context_length: int  # max positions (RoPE); prompt + new tokens must fit


SIZES: dict[str, ModelSize] = {
    # ~0.15M params: trains in seconds, for tests of every room.
    "tiny": ModelSize(hidden=64, layers=2, heads=2, ffn=128, vocab_size=1024, context_length=256),
    # ~1.2M params: the best held-out loss a few CPU minutes buy here (machine-facts).
    "small": ModelSize(hidden=128, layers=4, heads=4, ffn=256, vocab_size=4096, context_length=512),
    # ~5M params: overtakes `small` only after 30-60 minutes of training.
    "base": ModelSize(hidden=256, layers=6, heads=8, ffn=512, vocab_size=4096, context_length=512),
}


@dataclass
class TrainConfig:
    size: str = "tiny"  # key of SIZES; fixes the architecture and vocabulary
    max_steps: int = 200  # optimizer steps; the deterministic stopping rule
    max_seconds: float | None = None  # wall-clock cap; when it binds the run is not reproducible
    batch_size: int = 8  # windows per step: small batches (more steps) win at this scale
    lr: float = 3e-3  # peak AdamW rate; tiny models tolerate (and need) high rates
    seq_len: int | None = None  # window length; None -> the size's context length
    seed: int = 0  # fixes init, data split and window order
    held_out_fraction: float = 0.05  # documents kept out of training for the held-out loss
    warmup_fraction: float = 0.05  # linear warm-up share of the schedule, avoids early blow-ups
    min_lr_ratio: float = 0.1  # cosine decays to this share of `lr`
    weight_decay: float = 0.1  # AdamW decoupled decay on matrices
    eval_windows: int = 32  # held-out windows scored (fixed set, so losses compare across runs)
    num_threads: int = 1  # torch intra-op threads: 2 shared cores oversubscribe quickly

    def __post_init__(self) -> None:
        if self.size not in SIZES:
            raise ConfigError(f"unknown model size {self.size!r}; choose one of {sorted(SIZES)}")
        if self.max_steps < 1:
            raise ConfigError("max_steps must be >= 1")
        if self.max_seconds is not None and self.max_seconds <= 0:
            raise ConfigError("max_seconds must be > 0")
        if self.batch_size < 1 or self.lr <= 0 or self.num_threads < 1 or self.eval_windows < 1:
            raise ConfigError("batch_size, lr, num_threads and eval_windows must be positive")
        if self.seq_len is not None and not 8 <= self.seq_len <= self.model_size.context_length:
            raise ConfigError(f"seq_len must be in [8, {self.model_size.context_length}]")
        if not 0.0 < self.held_out_fraction < 0.5:
            raise ConfigError("held_out_fraction must be in (0, 0.5)")
        if not 0.0 <= self.warmup_fraction < 1.0 or not 0.0 <= self.min_lr_ratio <= 1.0:
            raise ConfigError("warmup_fraction must be in [0, 1), min_lr_ratio in [0, 1]")

    @property
    def model_size(self) -> ModelSize:
        return SIZES[self.size]

    @property
    def window(self) -> int:
        return self.seq_len or self.model_size.context_length


@dataclass(frozen=True)
class BuildResult:
    out_dir: Path
    parameters: int
    held_out_loss: float
    train_seconds: float
    tokens_seen: int


def llama_config(size: ModelSize, tokenizer: Any) -> Any:
    """A LlamaConfig for ``size`` whose special ids match ``tokenizer``."""
    from transformers import LlamaConfig

    return LlamaConfig(
        vocab_size=max(size.vocab_size, len(tokenizer)),
        hidden_size=size.hidden,
        intermediate_size=size.ffn,
        num_hidden_layers=size.layers,
        num_attention_heads=size.heads,
        num_key_value_heads=size.heads,
        max_position_embeddings=size.context_length,
        tie_word_embeddings=True,
        rms_norm_eps=1e-5,
        bos_token_id=None,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )


def count_parameters(model: Any) -> int:
    """Distinct parameters (tied embeddings counted once)."""
    return sum(p.numel() for p in model.parameters())


def _documents(texts: Sequence[str], chat_pairs: Sequence[tuple[str, str]]) -> list[str]:
    docs = [t + END for t in texts if t and t.strip()]
    docs += [format_chat_pair(q, a) for q, a in chat_pairs if q.strip() and a.strip()]
    if not docs:
        raise InputError("the training corpus is empty (no non-blank text or chat pair)")
    return docs


def _token_streams(tokenizer: Any, docs: list[str], config: TrainConfig) -> tuple[Any, Any]:
    """Split documents into train / held-out (seeded), tokenize, and concatenate each side into
    one 1-D stream of token ids that windows are cut from."""
    import torch

    order = list(range(len(docs)))
    random.Random(config.seed).shuffle(order)
    n_held = max(1, round(len(docs) * config.held_out_fraction)) if len(docs) > 1 else 0
    held_docs = [docs[i] for i in order[:n_held]]
    train_docs = [docs[i] for i in order[n_held:]] or held_docs

    def stream(part: list[str]) -> Any:
        backend = getattr(tokenizer, "backend_tokenizer", None)
        if backend is not None:  # Rust batch encoding: ~10x faster than the Python wrapper
            rows = [e.ids for e in backend.encode_batch(part, add_special_tokens=False)]
        else:
            rows = tokenizer(part, add_special_tokens=False)["input_ids"]
        flat = [i for row in rows for i in row]
        return torch.tensor(flat, dtype=torch.long)  # (N,)

    train, held = stream(train_docs), stream(held_docs or train_docs)
    if train.numel() < 2 or held.numel() < 2:
        raise InputError("the training corpus is too small (fewer than two tokens)")
    return train, held


def _eval_windows(held: Any, window: int, count: int) -> Any:
    """A fixed set of held-out windows (B, T+1): evenly spaced, so every run scores the same."""
    import torch

    span = min(window + 1, held.numel())
    starts = torch.linspace(0, held.numel() - span, steps=count).long().unique()
    return torch.stack([held[s : s + span] for s in starts.tolist()])


def held_out_loss(model: Any, windows: Any, *, batch_size: int = 8) -> float:
    """Mean next-token cross-entropy (nats) of ``model`` on ``windows`` (B, T+1)."""
    import torch
    import torch.nn.functional as F

    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    with torch.inference_mode():
        for chunk in windows.split(batch_size):
            logits = model(input_ids=chunk[:, :-1]).logits  # (b, T, V)
            loss = F.cross_entropy(
                logits.reshape(-1, logits.shape[-1]).float(),
                chunk[:, 1:].reshape(-1),
                reduction="sum",
            )
            total += float(loss)
            count += chunk[:, 1:].numel()
    model.train(was_training)
    return total / max(count, 1)


def _lr_at(progress: float, config: TrainConfig) -> float:
    """Linear warm-up then cosine decay to ``min_lr_ratio * lr``; progress in [0, 1]."""
    if progress < config.warmup_fraction:
        return config.lr * (progress / config.warmup_fraction if config.warmup_fraction else 1.0)
    tail = (progress - config.warmup_fraction) / max(1e-9, 1.0 - config.warmup_fraction)
    cos = 0.5 * (1.0 + math.cos(math.pi * min(1.0, tail)))
    return config.lr * (config.min_lr_ratio + (1.0 - config.min_lr_ratio) * cos)


def train_causal_lm(
    model: Any,
    tokenizer: Any,
    *,
    texts: Sequence[str] = (),
    chat_pairs: Sequence[tuple[str, str]] = (),
    config: TrainConfig,
    progress: bool = True,
) -> float:
    """Train ``model`` in place on packed windows of ``texts`` + ``chat_pairs`` (whole sequences,
    prompt included) and return its held-out loss. Reused by distill for SFT baselines."""
    return _train(
        model, tokenizer, texts=texts, chat_pairs=chat_pairs, config=config, progress=progress
    )[0]


def _train(
    model: Any,
    tokenizer: Any,
    *,
    texts: Sequence[str],
    chat_pairs: Sequence[tuple[str, str]],
    config: TrainConfig,
    progress: bool,
) -> tuple[float, int, float]:
    import torch
    import torch.nn.functional as F

    torch.set_num_threads(config.num_threads)
    train, held = _token_streams(tokenizer, _documents(texts, chat_pairs), config)
    window = min(config.window, train.numel() - 1)
    eval_set = _eval_windows(held, window, config.eval_windows)
    gen = torch.Generator().manual_seed(config.seed)
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    opt = torch.optim.AdamW(
        [
            {"params": decay, "weight_decay": config.weight_decay},
            {"params": no_decay, "weight_decay": 0.0},
        ],
        lr=config.lr,
        betas=(0.9, 0.95),
    )
    offsets = torch.arange(window + 1)  # (T+1,)
    model.train()
    start, tokens_seen, last_loss = time.perf_counter(), 0, float("nan")
    bar = progress_bar(enabled=progress, loss=True)
    with bar:
        task = bar.add_task("training", total=config.max_steps, loss=float("nan"))
        for step in range(config.max_steps):
            elapsed = time.perf_counter() - start
            if config.max_seconds is not None and elapsed >= config.max_seconds:
                break
            frac = step / config.max_steps
            if config.max_seconds is not None:
                frac = max(frac, elapsed / config.max_seconds)
            for group in opt.param_groups:
                group["lr"] = _lr_at(frac, config)
            starts = torch.randint(0, train.numel() - window, (config.batch_size,), generator=gen)
            batch = train[starts[:, None] + offsets]  # (B, T+1)
            logits = model(input_ids=batch[:, :-1]).logits  # (B, T, V)
            loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), batch[:, 1:].reshape(-1))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            tokens_seen += batch[:, 1:].numel()
            value = float(loss.detach())
            last_loss = 0.9 * last_loss + 0.1 * value if step else value
            bar.update(task, advance=1, loss=last_loss)
    seconds = time.perf_counter() - start
    model.eval()
    return held_out_loss(model, eval_set), tokens_seen, seconds


def new_model(size: ModelSize, tokenizer: Any, *, seed: int = 0) -> Any:
    """An untrained LlamaForCausalLM for ``size`` (seeded init)."""
    import torch
    from transformers import LlamaForCausalLM

    torch.manual_seed(seed)
    return LlamaForCausalLM(llama_config(size, tokenizer))


def build_model(
    *,
    out_dir: Path,
    config: TrainConfig,
    texts: Sequence[str] = (),
    chat_pairs: Sequence[tuple[str, str]] = (),
    tokenizer_dir: Path | None = None,
    progress: bool = True,
) -> BuildResult:
    """Train a tokenizer (unless ``tokenizer_dir`` is given) and a Llama LM from scratch, and
    save both as one HF model directory at ``out_dir``. The directory appears atomically (built
    beside it, then renamed), so a cache check never sees half a model."""
    _quiet_transformers()
    docs = _documents(texts, chat_pairs)
    size = config.model_size
    if tokenizer_dir is not None:
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(str(tokenizer_dir), local_files_only=True)
    else:
        tokenizer = train_tokenizer(docs, vocab_size=size.vocab_size)
    model = new_model(size, tokenizer, seed=config.seed)
    loss, tokens_seen, seconds = _train(
        model, tokenizer, texts=texts, chat_pairs=chat_pairs, config=config, progress=progress
    )
    out_dir = Path(out_dir)
    result = BuildResult(
        out_dir=out_dir,
        parameters=count_parameters(model),
        held_out_loss=loss,
        train_seconds=seconds,
        tokens_seen=tokens_seen,
    )
    info = {
        "size": config.size,
        "config": asdict(config),
        "parameters": result.parameters,
        "held_out_loss": loss,
        "train_seconds": seconds,
        "tokens_seen": tokens_seen,
        "documents": len(docs),
    }
    save_model_dir(model, tokenizer, out_dir, info)
    return result


def save_model_dir(model: Any, tokenizer: Any, out_dir: Path, info: dict[str, Any]) -> None:
    """Write a standard HF model directory with its build info, all at once: staged beside
    ``out_dir`` and renamed into place, so a killed build never leaves half a model."""
    out_dir = Path(out_dir)
    tmp = out_dir.with_name(f".{out_dir.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.save_pretrained(str(tmp))
    tokenizer.save_pretrained(str(tmp))
    (tmp / BUILD_INFO_FILE).write_text(json.dumps(info, indent=2))
    if out_dir.exists():
        shutil.rmtree(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp.rename(out_dir)


def _quiet_transformers() -> None:
    """No per-shard progress bars from transformers: ours is the one people should read."""
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()


def load_model(model_dir: Path) -> tuple[Any, Any]:
    """Load any HF causal-LM directory (ours or another) for inference, in eval mode.
    Raises ModelError naming the directory when it is not a usable model."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    _quiet_transformers()
    model_dir = Path(model_dir)
    if not model_dir.is_dir():
        raise ModelError(f"model directory {model_dir} does not exist")
    if not (model_dir / "config.json").is_file():
        raise ModelError(f"{model_dir} is not a Hugging Face model directory (no config.json)")
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(model_dir), local_files_only=True)
        model = AutoModelForCausalLM.from_pretrained(str(model_dir), local_files_only=True)
    except Exception as exc:  # HF raises OSError/ValueError/KeyError variously
        raise ModelError(f"cannot load a causal LM from {model_dir}: {exc}") from exc
    model.eval()
    if tokenizer.pad_token_id is None:  # batching needs a pad id; eos is the usual stand-in
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "left"
    vocab = int(model.get_input_embeddings().weight.shape[0])  # type: ignore[index]
    if len(tokenizer) > vocab:
        raise ModelError(
            f"{model_dir}: tokenizer has {len(tokenizer)} tokens but the model's "
            f"embedding has only {vocab} rows"
        )
    return model, tokenizer


def read_build_info(model_dir: Path) -> dict:
    """Build metadata written by ``build_model`` ({} for directories built elsewhere)."""
    path = Path(model_dir) / BUILD_INFO_FILE
    if not path.is_file():
        return {}
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
