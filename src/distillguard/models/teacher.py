"""Corpora and the default teacher: a `small` Llama trained on real (instruction, answer) pairs.

The teacher is what the gateway serves when no ``--model`` is given. It is built once from
``{data_dir}/outputs/*.jsonl`` (real answers of 13 LLMs to the same 805 prompts) and cached
under ``{home}/models/teacher-{size}``; a fixed step count (not a time budget) makes the build
repeatable for a given seed.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from distillguard.config import Settings
from distillguard.errors import InputError, NotFound
from distillguard.traffic import JsonlReader

# Keys of a JSONL record that hold a prompt and its answer, in order of preference.
PROMPT_KEYS = ("instruction", "prompt", "question")
ANSWER_KEYS = ("output", "completion", "answer", "response")

# Steps that fit the default teacher in ~3-5 CPU minutes on one thread here: windows of the full
# 512-token context (so every position the gateway uses is trained), 4 per step (more steps beat
# bigger batches at this scale; measured ~0.4 s/step, ~5,000 tokens/s).
TEACHER_STEPS = {"tiny": 100, "small": 600, "base": 3000}
TEACHER_BATCH = 4


@dataclass
class Corpus:
    texts: list[str] = field(default_factory=list)  # plain documents
    chat_pairs: list[tuple[str, str]] = field(default_factory=list)  # (instruction, answer)
    skipped_lines: int = 0  # JSONL lines that were not a usable record
    first_skipped: list[str] = field(default_factory=list)  # "file:line" of the first few


def _pair_from_record(record: object) -> tuple[str, str] | None:
    if not isinstance(record, dict):
        return None
    prompt = next((record[k] for k in PROMPT_KEYS if isinstance(record.get(k), str)), None)
    answer = next((record[k] for k in ANSWER_KEYS if isinstance(record.get(k), str)), None)
    if not prompt or not answer or not prompt.strip() or not answer.strip():
        return None
    return prompt, answer


def _chat_pair(record: dict) -> tuple[str, str]:
    pair = _pair_from_record(record)
    if pair is None:
        raise ValueError(f"no non-empty prompt ({'/'.join(PROMPT_KEYS)}) and answer")
    return pair


def read_corpus(paths: Sequence[Path]) -> Corpus:
    """Read training files: ``.jsonl`` records become chat pairs (bad lines are counted, never
    fatal), any other file is plain text split into paragraphs (blank-line separated)."""
    corpus = Corpus()
    if not paths:
        raise InputError("no corpus file given")
    for path in map(Path, paths):
        if not path.is_file():
            raise NotFound(f"corpus file {path} does not exist")
        if path.suffix == ".jsonl":
            reader = JsonlReader(path, _chat_pair)
            corpus.chat_pairs += list(reader)
            corpus.skipped_lines += reader.skipped
            room = max(0, 5 - len(corpus.first_skipped))
            corpus.first_skipped += [f"{path.name}:{s.line_no}" for s in reader.examples[:room]]
        else:
            raw = path.read_bytes().decode("utf-8", errors="replace")
            corpus.texts += [p.strip() for p in raw.split("\n\n") if p.strip()]
    if not corpus.texts and not corpus.chat_pairs:
        raise InputError(
            f"no usable text in {', '.join(map(str, paths))} "
            f"({corpus.skipped_lines} unusable lines)"
        )
    return corpus


def read_chat_pairs(data_dir: Path) -> list[tuple[str, str]]:
    """All (instruction, output) pairs of ``{data_dir}/outputs/*.jsonl``, files in name order."""
    files = sorted((Path(data_dir) / "outputs").glob("*.jsonl"))
    if not files:
        raise NotFound(
            f"no outputs/*.jsonl under {data_dir}: the teacher's training data is "
            "missing (set DISTILLGUARD_DATA_DIR)"
        )
    return read_corpus(files).chat_pairs


def teacher_dir_path(settings: Settings, *, size: str = "small") -> Path:
    return settings.home / "models" / f"teacher-{size}"


def default_teacher_dir(
    settings: Settings, *, size: str = "small", progress: bool = True, seed: int = 0
) -> Path:
    """Directory of the default teacher, building it first when it is missing.

    A lock file keeps two processes (gateway replicas, a demo and a test) from training it
    twice; the build itself appears atomically (see ``build_model``)."""
    from distillguard.models.llama import TrainConfig, build_model

    target = teacher_dir_path(settings, size=size)
    if (target / "config.json").is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    lock = target.with_name(f".{target.name}.lock")
    with _FileLock(lock):
        if (target / "config.json").is_file():  # built by another process meanwhile
            return target
        pairs = read_chat_pairs(settings.require_data_dir())
        config = TrainConfig(
            size=size, max_steps=TEACHER_STEPS.get(size, 600), batch_size=TEACHER_BATCH, seed=seed
        )
        build_model(out_dir=target, config=config, chat_pairs=pairs, progress=progress)
    return target


class _FileLock:
    """An exclusive advisory lock on a file (POSIX flock), released on exit."""

    def __init__(self, path: Path):
        self.path = path
        self.fd: int | None = None

    def __enter__(self) -> _FileLock:
        import fcntl

        self.fd = os.open(self.path, os.O_CREAT | os.O_RDWR, 0o644)
        fcntl.flock(self.fd, fcntl.LOCK_EX)
        return self

    def __exit__(self, *exc: object) -> None:
        import fcntl

        if self.fd is not None:
            fcntl.flock(self.fd, fcntl.LOCK_UN)
            os.close(self.fd)
            self.fd = None


# A few sentences of plain English for building a tiny model where the real data is absent.
FALLBACK_TEXT = """The gateway answers every request with text from its model. Each account sends
questions and receives answers, and every exchange is written to the log.

A small language model learns which words follow which. Trained for a few seconds it writes
words that look like English, and that is enough to test the software around it.

Watermarks hide a signal in the choice of words. A detector counts how often the signal
appears and computes a p-value under the hypothesis that the text carries no watermark.

Students trained on a teacher's answers inherit some of the teacher's habits. Careful tests
can find those habits again in the student's own answers."""


def fallback_texts(*, seed: int = 0, count: int = 400) -> list[str]:
    """Varied training text when the real data is absent: sentences of words drawn from
    ``FALLBACK_TEXT``'s vocabulary with Zipf-like weights.

    Five paragraphs repeated would be memorised, leaving a model with almost no entropy to
    carry a watermark; drawn sentences keep many plausible next words at every step, as real
    text does, so the tests that need a watermark to show behave as they do on real data.
    """
    import random

    words = sorted({w.strip(".,").lower() for w in FALLBACK_TEXT.split()} - {""})
    rng = random.Random(seed)
    rng.shuffle(words)  # the Zipf rank of a word is arbitrary but fixed by the seed
    weights = [1.0 / (rank + 1) ** 0.8 for rank in range(len(words))]
    texts = []
    for _ in range(count):
        sentence = rng.choices(words, weights=weights, k=rng.randint(8, 24))
        texts.append(" ".join(sentence).capitalize() + ".")
    return texts


def build_tiny_model(
    out_dir: Path,
    *,
    data_dir: Path | None = None,
    seed: int = 0,
    max_steps: int = 150,
    progress: bool = False,
) -> Path:
    """A real `tiny` chat model for tests, built in seconds: 600 real (instruction, answer)
    pairs spread over every ``outputs/*.jsonl`` file, or ``fallback_texts()`` without the data."""
    from distillguard.models.llama import TrainConfig, build_model

    pairs: list[tuple[str, str]] = []
    if data_dir is not None and any((Path(data_dir) / "outputs").glob("*.jsonl")):
        pairs = read_chat_pairs(Path(data_dir))[::16][:600]
    texts = [] if pairs else fallback_texts(seed=seed)
    config = TrainConfig(size="tiny", max_steps=max_steps, seq_len=128, seed=seed)
    build_model(
        out_dir=Path(out_dir), config=config, texts=texts, chat_pairs=pairs, progress=progress
    )
    return Path(out_dir)
