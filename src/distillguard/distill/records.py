"""Prompts in, dataset records out: the files a harvest reads and writes.

* Prompts come from JSONL (a chosen field, or the first of ``PROMPT_FIELDS``) or plain text,
  one per line; bad lines are counted with their numbers, never fatal. A prompt's id is a
  hash of its text unless the file names an id field: the id is the resume key.
* The dataset is append-only JSON Lines, one :class:`HarvestRecord` per prompt (``prompt``,
  ``answer``, ``logprobs``, ``usage``, ...), loadable with ``datasets.load_dataset("json")``.
  :class:`DatasetWriter` fsyncs every record and, on open, re-reads the file and cuts a
  half-written last line (a kill mid-write), so a resumed harvest neither duplicates nor
  loses a sample.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from distillguard.errors import InputError, NotFound
from distillguard.traffic import JsonlReader

PROMPT_FIELDS = ("prompt", "instruction", "question", "text", "input")  # tried in this order

# --- prompts -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Prompt:
    id: str  # stable across runs: the resume key
    text: str


@dataclass(frozen=True)
class PromptSet:
    prompts: tuple[Prompt, ...]
    bad_lines: int  # lines that held no usable prompt (bad JSON, missing/empty field)
    bad_line_numbers: tuple[int, ...]  # the first few, 1-based, for the report
    duplicates: int  # prompts whose id repeats an earlier one (harvested once)


def prompt_id(text: str) -> str:
    """Content id of a prompt: the same text always gets the same id, across runs."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def read_prompts(path: Path, *, field: str | None = None, id_field: str | None = None) -> PromptSet:
    """Prompts from a JSONL file (``field`` or the first of PROMPT_FIELDS) or plain text.

    A ``.jsonl``/``.json`` file is read line by line as JSON objects; anything else is plain
    text with one prompt per non-empty line. Bad lines are counted, never fatal; a file with
    no usable prompt at all is an InputError.
    """
    if not path.is_file():
        raise NotFound(f"prompts file not found: {path}")
    is_json = path.suffix.lower() in {".jsonl", ".json", ".ndjson"}
    parsed: list[Prompt]
    if is_json:
        reader = JsonlReader(path, lambda obj: _prompt_from_record(obj, field, id_field))
        parsed = list(reader)
        bad = [s.line_no for s in reader.examples]  # the first bad lines; the count is exact
        bad_count = reader.skipped
    else:
        parsed, bad = [], []
        with path.open("r", encoding="utf-8", errors="replace") as handle:
            for line in handle:
                text = line.rstrip("\n")
                if text.strip():
                    parsed.append(Prompt(prompt_id(text), text))
        bad_count = 0
    prompts: list[Prompt] = []
    seen: set[str] = set()
    duplicates = 0
    for prompt in parsed:
        if prompt.id in seen:
            duplicates += 1
            continue
        seen.add(prompt.id)
        prompts.append(prompt)
    if not prompts:
        hint = f" (field {field!r})" if field else f" (fields tried: {', '.join(PROMPT_FIELDS)})"
        raise InputError(f"no usable prompt in {path}{hint}; {bad_count} bad lines")
    return PromptSet(tuple(prompts), bad_count, tuple(bad[:20]), duplicates)


def _prompt_from_record(obj: dict[str, Any], field: str | None, id_field: str | None) -> Prompt:
    names = (field,) if field else PROMPT_FIELDS
    text = next((obj[name] for name in names if isinstance(obj.get(name), str)), None)
    if text is None or not text.strip():
        raise ValueError(f"no non-empty prompt field ({', '.join(names)})")
    if id_field:
        raw_id = obj.get(id_field)
        if not isinstance(raw_id, str | int) or isinstance(raw_id, bool):
            raise ValueError(f"no string or integer {id_field!r}")
        return Prompt(str(raw_id), text)
    return Prompt(prompt_id(text), text)


# --- records and the append-only dataset ---------------------------------------------------


@dataclass(frozen=True)
class HarvestRecord:
    """One dataset line. ``logprobs`` follows OpenAI's ``choices[0].logprobs.content``:
    a list per answer token of ``{"token", "logprob", "top_logprobs": [{"token", "logprob"}]}``
    (plus ``"id"``/``"top_ids"`` when harvested locally, where token ids are known)."""

    id: str
    prompt: str
    answer: str
    finish_reason: str | None
    model: str
    cot: bool
    usage: dict[str, int]  # prompt_tokens, completion_tokens
    logprobs: list[dict[str, Any]] | None = None

    def to_json(self) -> str:
        return json.dumps(asdict(self), ensure_ascii=False)


class DatasetWriter:
    """Append-only JSONL: one fsynced line per record; re-reads what is there on open."""

    def __init__(self, path: Path):
        self.path = path
        self.done_ids: set[str] = set()
        self.truncated_bytes = 0  # size of a half-written last line removed on open
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.exists():
            self._recover()
        self._handle = path.open("a", encoding="utf-8")

    def _recover(self) -> None:
        data = self.path.read_bytes()
        good_end = 0
        for number, raw in enumerate(data.splitlines(keepends=True), start=1):
            complete = raw.endswith(b"\n")
            try:
                record = json.loads(raw)
                record_id = record["id"] if isinstance(record, dict) else None
            except (json.JSONDecodeError, UnicodeDecodeError, KeyError):
                record_id = None
            if record_id is None or not complete:
                if good_end + len(raw) == len(data):  # the last line: a write cut short
                    break
                raise InputError(
                    f"{self.path} line {number} is not a harvest record; refusing to append to "
                    "a file this tool did not write (choose another --out)"
                )
            self.done_ids.add(str(record_id))
            good_end += len(raw)
        if good_end < len(data):
            self.truncated_bytes = len(data) - good_end
            with self.path.open("r+b") as handle:
                handle.truncate(good_end)
                handle.flush()
                os.fsync(handle.fileno())

    def append(self, record: HarvestRecord) -> None:
        if record.id in self.done_ids:
            return  # never a duplicate, even if a caller asks twice
        self._handle.write(record.to_json() + "\n")
        self._handle.flush()
        os.fsync(self._handle.fileno())
        self.done_ids.add(record.id)

    def close(self) -> None:
        self._handle.close()

    def __enter__(self) -> DatasetWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _harvest_record(obj: dict[str, Any]) -> HarvestRecord:
    try:
        return HarvestRecord(
            id=str(obj["id"]),
            prompt=obj["prompt"],
            answer=obj["answer"],
            finish_reason=obj.get("finish_reason"),
            model=obj.get("model", ""),
            cot=bool(obj.get("cot", False)),
            usage=obj.get("usage") or {},
            logprobs=obj.get("logprobs"),
        )
    except KeyError as exc:
        raise ValueError(f"not a dataset record: no {exc}") from None


def read_dataset(path: Path) -> list[HarvestRecord]:
    """Records of a harvested dataset. It must be clean: bad lines raise InputError naming
    their numbers and reasons (a dataset is written by this tool, so a bad line is damage)."""
    if not path.is_file():
        raise NotFound(f"dataset not found: {path}")
    reader = JsonlReader(path, _harvest_record)
    records = list(reader)
    reader.summary().raise_if_skipped()
    return records
