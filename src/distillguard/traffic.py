"""The exchange formats of ``shared/spec/traffic-log.md``: traffic log, labels, verdicts, and
the package's one JSON Lines reader (``JsonlReader``), which every JSONL file goes through.

Every room that reads or writes traffic goes through this module: the gateway's export, the
simulator, the detector and the evaluation. Readers stream line by line (memory bounded by the
longest accepted line, not by the file), ignore fields they do not know, accept records in any
order, and never stop at a bad line: they skip it, count it and remember the first line numbers
with the reason, so a caller can say exactly what was lost.
"""

from __future__ import annotations

import gzip
import math
import os
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Generic, TypeVar

import orjson

from distillguard.errors import InputError, NotFound

T = TypeVar("T")

# A line longer than this is skipped (and counted) instead of being read into memory whole:
# the biggest legitimate exchange (1 MB body limit + a long answer) stays well below it.
MAX_LINE_BYTES = 16 * 1024 * 1024
# How many skipped lines are remembered with their number and reason (the count is exact).
MAX_SKIP_EXAMPLES = 20

LABELS = ("honest", "campaign")


# --------------------------------------------------------------------------------------------
# Records
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class TrafficRecord:
    """One API exchange (spec §1). ``request`` is the body as sent, OpenAI shape."""

    id: str
    ts: float
    account_id: str
    key_id: str
    ip: str
    endpoint: str
    request: dict[str, Any] = field(hash=False, compare=True)
    status: int
    user_agent: str | None = None
    payment_fingerprint: str | None = None
    response_text: str | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    latency_ms: float | None = None
    # Optional (docs/traffic-log-extensions.md): every choice of the answer, each
    # {"index", "text", "finish_reason", "tool_calls", "refusal"}; None when not logged.
    choices: list[dict[str, Any]] | None = field(default=None, hash=False, compare=True)
    # Optional: the answer of an endpoint that is not chat text (/v1/responses: its outputs;
    # /v1/embeddings: count and dims, never the vectors).
    response: dict[str, Any] | None = field(default=None, hash=False, compare=True)

    def to_dict(self) -> dict[str, Any]:
        line = {
            "id": self.id,
            "ts": self.ts,
            "account_id": self.account_id,
            "key_id": self.key_id,
            "ip": self.ip,
            "user_agent": self.user_agent,
            "payment_fingerprint": self.payment_fingerprint,
            "endpoint": self.endpoint,
            "request": self.request,
            "response_text": self.response_text,
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "status": self.status,
            "latency_ms": self.latency_ms,
        }
        # Written only when present: a line without them is a plain spec §1 line.
        if self.choices is not None:
            line["choices"] = self.choices
        if self.response is not None:
            line["response"] = self.response
        return line

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrafficRecord:
        """Validate one parsed line; raises ``ValueError`` naming the first bad field."""
        g: Callable[[str], Any] = d.get  # the fast path below checks every type itself
        ts = g("ts")
        # Fast path: a well-formed line (the common case) is checked with plain type tests.
        if (
            (type(ts) is float or (type(ts) is int and ts >= 0))
            and ts >= 0
            and ts != math.inf
            and _all_str(g("id"), g("account_id"), g("key_id"), g("ip"), g("endpoint"))
            and (
                type(g("request")) is dict
                and type(g("status")) is int
                and _opt_types_ok(
                    g("user_agent"),
                    g("payment_fingerprint"),
                    g("response_text"),
                    g("prompt_tokens"),
                    g("completion_tokens"),
                    g("latency_ms"),
                )
                and g("choices") is None
                and g("response") is None
            )
        ):
            return cls(
                g("id"),
                float(ts),
                g("account_id"),
                g("key_id"),
                g("ip"),
                g("endpoint"),
                g("request"),
                g("status"),
                g("user_agent"),
                g("payment_fingerprint"),
                g("response_text"),
                g("prompt_tokens"),
                g("completion_tokens"),
                None if g("latency_ms") is None else float(g("latency_ms")),
            )
        return cls(
            id=_req_str(d, "id"),
            ts=_req_ts(d),
            account_id=_req_str(d, "account_id"),
            key_id=_req_str(d, "key_id"),
            ip=_req_str(d, "ip"),
            endpoint=_req_str(d, "endpoint"),
            request=_req_dict(d, "request"),
            status=_req_int(d, "status"),
            user_agent=_opt_str(d, "user_agent"),
            payment_fingerprint=_opt_str(d, "payment_fingerprint"),
            response_text=_opt_str(d, "response_text"),
            prompt_tokens=_opt_int(d, "prompt_tokens"),
            completion_tokens=_opt_int(d, "completion_tokens"),
            latency_ms=_opt_num(d, "latency_ms"),
            choices=_opt_choices(d),
            response=_opt_dict(d, "response"),
        )


@dataclass(frozen=True, slots=True)
class LabelRecord:
    """Ground truth for one account (spec §2); only evaluation reads these."""

    account_id: str
    label: str  # "honest" | "campaign"
    campaign_id: str | None = None
    persona: str | None = None

    def __post_init__(self) -> None:
        if self.label not in LABELS:
            raise ValueError(f"label must be one of {LABELS}, got {self.label!r}")

    def to_dict(self) -> dict[str, Any]:
        return {
            "account_id": self.account_id,
            "label": self.label,
            "campaign_id": self.campaign_id,
            "persona": self.persona,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> LabelRecord:
        return cls(
            account_id=_req_str(d, "account_id"),
            label=_req_str(d, "label"),
            campaign_id=_opt_str(d, "campaign_id"),
            persona=_opt_str(d, "persona"),
        )


@dataclass(frozen=True, slots=True)
class Verdict:
    """What a detector says about one account (spec §3)."""

    account_id: str
    score: float
    flagged: bool
    cluster_id: str | None = None
    reasons: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not (0.0 <= self.score <= 1.0) or math.isnan(self.score):
            raise ValueError(f"score must be within [0, 1], got {self.score!r}")

    def to_dict(self) -> dict[str, Any]:
        return {
            "account_id": self.account_id,
            "score": self.score,
            "flagged": self.flagged,
            "cluster_id": self.cluster_id,
            "reasons": list(self.reasons),
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Verdict:
        flagged = d.get("flagged")
        if not isinstance(flagged, bool):
            raise ValueError("field 'flagged' must be true or false")
        reasons = d.get("reasons", [])
        if not isinstance(reasons, list) or not all(isinstance(r, str) for r in reasons):
            raise ValueError("field 'reasons' must be a list of strings")
        score = d.get("score")
        if isinstance(score, bool) or not isinstance(score, int | float):
            raise ValueError("field 'score' must be a number")
        return cls(
            account_id=_req_str(d, "account_id"),
            score=float(score),
            flagged=flagged,
            cluster_id=_opt_str(d, "cluster_id"),
            reasons=tuple(reasons),
        )


def _all_str(*vals: Any) -> bool:
    return all(type(v) is str and v for v in vals)


def _opt_types_ok(ua: Any, pay: Any, resp: Any, pt: Any, ct: Any, lat: Any) -> bool:
    return (
        (ua is None or type(ua) is str)
        and (pay is None or type(pay) is str)
        and (resp is None or type(resp) is str)
        and (pt is None or (type(pt) is int and pt >= 0))
        and (ct is None or (type(ct) is int and ct >= 0))
        and (lat is None or (type(lat) in (int, float) and math.isfinite(lat)))
    )


# --------------------------------------------------------------------------------------------
# Field validation (each raises ValueError with the field's name: the reader's skip reason)
# --------------------------------------------------------------------------------------------


def _req_str(d: dict[str, Any], name: str) -> str:
    v = d.get(name)
    if not isinstance(v, str) or not v:
        raise ValueError(f"field {name!r} must be a non-empty string")
    return v


def _opt_str(d: dict[str, Any], name: str) -> str | None:
    v = d.get(name)
    if v is not None and not isinstance(v, str):
        raise ValueError(f"field {name!r} must be a string or null")
    return v


def _req_int(d: dict[str, Any], name: str) -> int:
    v = d.get(name)
    if isinstance(v, bool) or not isinstance(v, int):
        raise ValueError(f"field {name!r} must be an integer")
    return v


def _opt_int(d: dict[str, Any], name: str) -> int | None:
    v = d.get(name)
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, int) or v < 0:
        raise ValueError(f"field {name!r} must be a non-negative integer or null")
    return v


def _opt_num(d: dict[str, Any], name: str) -> float | None:
    v = d.get(name)
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v):
        raise ValueError(f"field {name!r} must be a finite number or null")
    return float(v)


def _req_ts(d: dict[str, Any]) -> float:
    v = d.get("ts")
    if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v) or v < 0:
        raise ValueError("field 'ts' must be a finite non-negative number (Unix seconds)")
    return float(v)


def _opt_dict(d: dict[str, Any], name: str) -> dict[str, Any] | None:
    v = d.get(name)
    if v is not None and not isinstance(v, dict):
        raise ValueError(f"field {name!r} must be a JSON object or null")
    return v


# The types of one logged choice's fields (docs/traffic-log-extensions.md).
_CHOICE_FIELDS: tuple[tuple[str, type, str], ...] = (
    ("text", str, "a string or null"),
    ("finish_reason", str, "a string or null"),
    ("tool_calls", list, "a list or null"),
    ("refusal", str, "a string or null"),
)


def _opt_choices(d: dict[str, Any]) -> list[dict[str, Any]] | None:
    """The optional ``choices`` list, each item checked: a ValueError names the first bad one
    (``choices[1].tool_calls``)."""
    v = d.get("choices")
    if v is None:
        return None
    if not isinstance(v, list):
        raise ValueError("field 'choices' must be a list or null")
    for i, choice in enumerate(v):
        if not isinstance(choice, dict):
            raise ValueError(f"field 'choices[{i}]' must be a JSON object")
        index = choice.get("index")
        if isinstance(index, bool) or not isinstance(index, int) or index < 0:
            raise ValueError(f"field 'choices[{i}].index' must be a non-negative integer")
        for name, kind, what in _CHOICE_FIELDS:
            value = choice.get(name)
            if value is not None and not isinstance(value, kind):
                raise ValueError(f"field 'choices[{i}].{name}' must be {what}")
        for j, call in enumerate(choice.get("tool_calls") or ()):
            if not isinstance(call, dict):
                raise ValueError(f"field 'choices[{i}].tool_calls[{j}]' must be a JSON object")
    return v


def _req_dict(d: dict[str, Any], name: str) -> dict[str, Any]:
    v = d.get(name)
    if not isinstance(v, dict):
        raise ValueError(f"field {name!r} must be a JSON object")
    return v


# --------------------------------------------------------------------------------------------
# Streaming reader
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SkippedLine:
    line_no: int  # 1-based
    reason: str


@dataclass(frozen=True, slots=True)
class ReadSummary:
    """What one pass over a file produced: every line is either a record or a skip."""

    path: str
    lines: int
    records: int
    skipped: int
    examples: tuple[SkippedLine, ...]

    def describe(self) -> str:
        """One human sentence, e.g. for the CLI."""
        msg = f"{self.path}: {self.records:,} records from {self.lines:,} lines"
        if self.skipped:
            shown = "; ".join(f"line {s.line_no}: {s.reason}" for s in self.examples[:5])
            msg += f", {self.skipped:,} malformed lines skipped ({shown})"
        return msg

    def raise_if_skipped(self) -> None:
        """For files that must be clean (a dataset this tool appends to, a shipped data set):
        any skipped line becomes an InputError that names the lines and why."""
        if self.skipped:
            raise InputError(self.describe())


class JsonlReader(Generic[T]):
    """Iterate records of one JSON Lines file; bad lines are skipped and counted, never fatal.

    Iterating twice reads the file twice (counters restart). ``.skipped``, ``.lines`` and
    ``.summary()`` describe the most recent (or current) pass.
    """

    def __init__(
        self,
        path: Path | str,
        parse: Callable[[dict[str, Any]], T],
        *,
        max_line_bytes: int = MAX_LINE_BYTES,
        line_filter: Callable[[bytes], bool] | None = None,
    ) -> None:
        self.path = Path(path)
        # Optional cheap pre-filter on the raw line (parallel readers each take a share of
        # the lines); a line it rejects is neither a record nor a skip of this reader.
        self._line_filter = line_filter
        if not self.path.exists():
            raise NotFound(f"file not found: {self.path}")
        if self.path.is_dir():
            raise InputError(f"{self.path} is a directory, not a JSON Lines file")
        if max_line_bytes < 2:
            raise InputError("max_line_bytes must be at least 2")
        self._parse = parse
        self._max_line_bytes = max_line_bytes
        self.lines = 0
        self.records = 0
        self.skipped = 0
        self.examples: list[SkippedLine] = []

    def _open(self) -> IO[bytes]:
        with open(self.path, "rb") as probe:
            magic = probe.read(2)
        if magic == b"\x1f\x8b":
            return gzip.open(self.path, "rb")  # type: ignore[return-value]
        return open(self.path, "rb", buffering=1024 * 1024)

    def _skip(self, line_no: int, reason: str) -> None:
        self.skipped += 1
        if len(self.examples) < MAX_SKIP_EXAMPLES:
            self.examples.append(SkippedLine(line_no, reason))

    def __iter__(self) -> Iterator[T]:
        self.lines = self.records = self.skipped = 0
        self.examples = []
        limit = self._max_line_bytes
        parse = self._parse
        loads = orjson.loads
        keep = self._line_filter
        with self._open() as fh:
            line_no = 0
            while True:
                raw = fh.readline(limit)
                if not raw:
                    break
                line_no += 1
                if len(raw) >= limit and not raw.endswith(b"\n"):
                    # Drain the rest of the oversized line in bounded chunks.
                    while True:
                        more = fh.readline(limit)
                        if not more or more.endswith(b"\n"):
                            break
                    self._skip(line_no, f"line longer than {limit:,} bytes")
                    continue
                if not raw.strip():
                    continue  # blank lines carry nothing; not an error
                if keep is not None and not keep(raw):
                    continue
                try:
                    obj = loads(raw)
                except orjson.JSONDecodeError as exc:
                    truncated = not raw.endswith(b"\n")
                    self._skip(line_no, "truncated line" if truncated else f"not JSON ({exc})")
                    continue
                if not isinstance(obj, dict):
                    self._skip(line_no, "not a JSON object")
                    continue
                try:
                    rec = parse(obj)
                except (ValueError, TypeError) as exc:
                    self._skip(line_no, str(exc))
                    continue
                self.records += 1
                yield rec
            self.lines = line_no

    def summary(self) -> ReadSummary:
        return ReadSummary(
            str(self.path), self.lines, self.records, self.skipped, tuple(self.examples)
        )


def read_traffic(
    path: Path | str,
    *,
    max_line_bytes: int = MAX_LINE_BYTES,
    line_filter: Callable[[bytes], bool] | None = None,
) -> JsonlReader[TrafficRecord]:
    """Stream the traffic log at ``path`` (plain or gzip): see ``JsonlReader``."""
    return JsonlReader(
        path, TrafficRecord.from_dict, max_line_bytes=max_line_bytes, line_filter=line_filter
    )


def read_labels(path: Path | str) -> JsonlReader[LabelRecord]:
    return JsonlReader(path, LabelRecord.from_dict)


def read_verdicts(path: Path | str) -> JsonlReader[Verdict]:
    return JsonlReader(path, Verdict.from_dict)


def read_objects(path: Path | str) -> JsonlReader[dict[str, Any]]:
    """Stream the JSON objects of any JSON Lines file, with the same skip policy."""
    return JsonlReader(path, dict)


# Kept for readers of interfaces.md, where the traffic reader is named TrafficReader.
TrafficReader = JsonlReader


# --------------------------------------------------------------------------------------------
# Writers
# --------------------------------------------------------------------------------------------


class JsonlWriter:
    """Append records to a temporary file and move it into place on ``close()``.

    A crash half-way leaves no half-written file under the final name.
    """

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        self._fh: IO[bytes] | None = open(self._tmp, "wb", buffering=1024 * 1024)  # noqa: SIM115
        self.count = 0
        self._dumps = orjson.dumps

    def write(self, record: Any) -> None:
        if self._fh is None:
            raise InputError(f"writer for {self.path} is already closed")
        obj = record.to_dict() if hasattr(record, "to_dict") else record
        self._fh.write(self._dumps(obj, option=orjson.OPT_APPEND_NEWLINE))
        self.count += 1

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None
            os.replace(self._tmp, self.path)

    def abort(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None
            self._tmp.unlink(missing_ok=True)

    def __enter__(self) -> JsonlWriter:
        return self

    def __exit__(self, exc_type: Any, *_: Any) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


def write_jsonl(path: Path | str, records: Iterable[Any]) -> int:
    """Write records (dataclasses with ``to_dict`` or plain dicts), one a line; returns count."""
    with JsonlWriter(path) as w:
        for rec in records:
            w.write(rec)
        return w.count


# --------------------------------------------------------------------------------------------
# Helpers every reader of requests needs
# --------------------------------------------------------------------------------------------


def _message_texts(messages: list[Any]) -> list[str]:
    """The text of each message: a string content, or its parts' ``text`` (chat's ``text``
    parts and the Responses API's ``input_text`` parts alike)."""
    parts: list[str] = []
    for m in messages:
        if isinstance(m, str):
            parts.append(m)
            continue
        if not isinstance(m, dict):
            continue
        c = m.get("content")
        if isinstance(c, str):
            parts.append(c)
        elif isinstance(c, list):  # content parts: [{"type": "text", "text": ...}]
            parts.extend(
                p["text"] for p in c if isinstance(p, dict) and isinstance(p.get("text"), str)
            )
    return parts


def prompt_text(request: dict[str, Any]) -> str:
    """The text a request sends: every message's content (chat), the instructions and input
    (Responses API; embeddings' input too) or the prompt (completions). A harvest sent
    through /v1/responses must be read like one sent through chat."""
    messages = request.get("messages")
    if isinstance(messages, list):
        return "\n".join(_message_texts(messages))
    if "input" in request:
        parts = [request["instructions"]] if isinstance(request.get("instructions"), str) else []
        given = request["input"]
        parts += _message_texts(given if isinstance(given, list) else [given])
        return "\n".join(parts)
    prompt = request.get("prompt")
    if isinstance(prompt, str):
        return prompt
    if isinstance(prompt, list):
        return "\n".join(p for p in prompt if isinstance(p, str))
    return ""
