"""Content of the organisations world: the real prompt sources, split in two, and answer text.

Every real item (a chat prompt, a GSM8K question, a templated T0 prompt, a news article) is
assigned to split ``a`` or ``b`` by a salted hash of its normalised text, so the two halves are
disjoint and the assignment differs from any other generator's split (the salt is ours). A
multi-news prompt is keyed by its article body, so the news app and a harvest that sends the
same article always land on the same side.

Answers are cheap stand-ins: a real model output for the same instruction when one exists,
otherwise a real output (or GSM8K solution) cut to the length the request would produce. The
detector must not depend on answers being exact; lengths and token counts are what matter.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path
from random import Random
from typing import Any

from distillguard.errors import NotFound
from distillguard.traffic import JsonlReader

SPLITS = ("a", "b")
# Our own salt: changing it re-deals every item; no other generator uses it.
_SPLIT_SALT = b"distillguard/sim-orgs/split/v1\x00"
_WS = re.compile(r"\s+")
_ARTICLE = re.compile(r"(?:Document|Article):\s*(.+?)(?=\n\s*\n\s*(?:Document|Article):|\Z)", re.S)


def normalise(text: str) -> str:
    """Lower case, one space between words: the split key ignores formatting only."""
    return _WS.sub(" ", text).strip().lower()


def split_of(key_text: str) -> str:
    """The split (``"a"`` or ``"b"``) an item with this key text belongs to."""
    digest = hashlib.blake2b(_SPLIT_SALT + normalise(key_text).encode(), digest_size=8).digest()
    return SPLITS[digest[0] & 1]


def news_body(prompt: str) -> str | None:
    """The first article of a multi-news prompt (its split key), or None for other prompts."""
    m = _ARTICLE.search(prompt)
    if m is None:
        return None
    body = _WS.sub(" ", m.group(1)).strip()
    return body or None


@dataclass(frozen=True)
class Sources:
    """The real texts of one split, ready to be drawn from (all tuples: immutable, shared)."""

    split: str
    chat_prompts: tuple[str, ...]  # people's requests (alpaca_eval, self-instruct seeds)
    gsm8k_train: tuple[tuple[str, str], ...]  # (question, solution with #### answer)
    gsm8k_test: tuple[tuple[str, str], ...]  # the public benchmark half an eval team runs
    t0_prompts: tuple[str, ...]  # templated task prompts (QA, wiki-hop, news)
    news_articles: tuple[str, ...]  # article bodies for the news digest app
    passages: tuple[str, ...]  # document-store passages (Shakespeare + long model answers)
    answers: tuple[str, ...]  # real model outputs, any prompt: the answer-length pool
    answer_for: dict[str, tuple[str, ...]]  # prompt (as sent) -> its real outputs/solution

    def answer(self, rng: Random, prompt: str | None, max_chars: int) -> str:
        """A plausible answer no longer than ``max_chars`` (a real one for a known prompt)."""
        pool = self.answer_for.get(prompt) if prompt else None
        text = rng.choice(pool) if pool else rng.choice(self.answers)
        return clip(text, max_chars)


def clip(text: str, max_chars: int) -> str:
    """Cut at a sentence or word boundary at most ``max_chars`` long (never empty)."""
    if len(text) <= max_chars:
        return text
    cut = text[:max_chars]
    for sep in (". ", "\n", " "):
        i = cut.rfind(sep)
        if i > max_chars // 2:
            return cut[: i + 1].rstrip()
    return cut


def _jsonl(path: Path, fields: tuple[str, ...]) -> list[dict[str, Any]]:
    """Every record of a data file through the project's one JSON Lines reader.

    A data set is read whole or not at all: a malformed line (or one without a text field this
    generator needs) is an error naming the file and the line, never a silent gap.
    """
    if not path.is_file():
        raise NotFound(f"data file not found: {path} (the shared data directory is incomplete)")

    def parse(d: dict[str, Any]) -> dict[str, Any]:
        for name in fields:
            if not isinstance(d.get(name), str):
                raise ValueError(f"field {name!r} must be a string")
        return d

    reader = JsonlReader(path, parse)  # the one JSONL reader; a shipped data file must be clean
    out = list(reader)
    reader.summary().raise_if_skipped()
    return out


def _passages(text: str, size: int) -> list[str]:
    """Consecutive speeches of a play, packed into passages of about ``size`` characters."""
    blocks = [b.strip() for b in text.split("\n\n") if b.strip()]
    out: list[str] = []
    cur: list[str] = []
    n = 0
    for b in blocks:
        cur.append(b)
        n += len(b)
        if n >= size:
            out.append("\n".join(cur))
            cur, n = [], 0
    return out


def load_sources(data_dir: Path, split: str) -> Sources:
    """Read shared/data and keep the items of ``split``; raises NotFound naming a missing file."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        raise NotFound(f"data directory not found: {data_dir}")

    chat: dict[str, str] = {}
    for d in _jsonl(data_dir / "prompts" / "honest.jsonl", ("prompt",)):
        chat.setdefault(normalise(d["prompt"]), d["prompt"])
    answer_for: dict[str, list[str]] = {}
    answers: list[str] = []
    outputs_dir = data_dir / "outputs"
    if not outputs_dir.is_dir():
        raise NotFound(f"data directory not found: {outputs_dir}")
    for f in sorted(outputs_dir.glob("*.jsonl")):
        for d in _jsonl(f, ("instruction",)):
            key = normalise(d["instruction"])
            chat.setdefault(key, d["instruction"])
            out = d.get("output")
            if isinstance(out, str) and len(out) >= 20:
                answer_for.setdefault(key, []).append(out)
                # The answer pool is split like the prompts, so no text crosses the halves.
                if split_of(d["instruction"]) == split:
                    answers.append(out)

    t0: list[str] = []
    news: list[str] = []
    for d in _jsonl(data_dir / "prompts" / "campaign.jsonl", ("prompt", "source")):
        if not d["source"].startswith("t0/"):
            continue  # GSM8K questions are read with their solutions below
        body = news_body(d["prompt"]) if "multi_news" in d["source"] else None
        if split_of(body or d["prompt"]) != split:
            continue
        t0.append(d["prompt"])
        if body is not None and body not in news:
            news.append(body)

    def gsm(name: str) -> tuple[tuple[str, str], ...]:
        rows = _jsonl(data_dir / "gsm8k" / name, ("question", "answer"))
        return tuple((r["question"], r["answer"]) for r in rows if split_of(r["question"]) == split)

    train, test = gsm("train.jsonl"), gsm("test.jsonl")
    answers_by_prompt = {
        chat[k]: tuple(v) for k, v in answer_for.items() if split_of(chat[k]) == split
    }
    # a math question is answered with its worked solution, whoever asks it
    answers_by_prompt.update((q, (a,)) for q, a in (*train, *test))

    corpus = data_dir / "corpora" / "tinyshakespeare.txt"
    if not corpus.is_file():
        raise NotFound(f"data file not found: {corpus}")
    passages = [p for p in _passages(corpus.read_text(), 700) if split_of(p) == split]
    passages += [a for a in answers if len(a) > 600][:1500]

    return Sources(
        split=split,
        chat_prompts=tuple(p for k, p in sorted(chat.items()) if split_of(p) == split),
        gsm8k_train=train,
        gsm8k_test=test,
        t0_prompts=tuple(t0),
        news_articles=tuple(news),
        passages=tuple(passages),
        answers=tuple(answers),
        answer_for=answers_by_prompt,
    )


def source_texts(sources: Sources) -> set[str]:
    """Every real prompt text of a split, normalised (what split disjointness is checked on)."""
    out = {normalise(p) for p in sources.chat_prompts}
    out |= {normalise(q) for q, _ in sources.gsm8k_train}
    out |= {normalise(q) for q, _ in sources.gsm8k_test}
    out |= {normalise(p) for p in sources.t0_prompts}
    return out
