"""One API exchange, the record every part shares, and its one conversion to and from the
traffic format (``shared/spec/traffic-log.md`` §1).

The gateway builds an ``ExchangeRecord`` per request, the log (``store.exchanges``) stores and
reads it back, and the export/import and the monitor's database source convert it to and from
``traffic.TrafficRecord`` here and nowhere else.
"""

from __future__ import annotations

import secrets
import time
from dataclasses import dataclass, field, fields
from typing import Any

from distillguard.traffic import TrafficRecord

UNKNOWN_IP = "0.0.0.0"  # the unspecified address: parses as an IP where a client had none


def new_exchange_id() -> str:
    """Unique and roughly time-ordered: 12 hex digits of milliseconds, then 64 random bits
    (random, not a counter: ids a client sees reveal nothing about the traffic)."""
    return f"{time.time_ns() // 1_000_000:012x}{secrets.token_hex(8)}"


@dataclass(frozen=True, kw_only=True, slots=True)
class ExchangeRecord:
    """One API exchange as the gateway saw it (the traffic log's fields plus serving details)."""

    id: str = field(default_factory=new_exchange_id)
    ts: float = field(default_factory=time.time)  # arrival, Unix seconds
    account_id: str | None = None  # None: the request never authenticated
    key_id: str | None = None
    ip: str = ""
    user_agent: str | None = None
    payment_fingerprint: str | None = None
    endpoint: str = ""
    request: Any = field(default_factory=dict)  # the body as sent (a JSON object in the log)
    response_text: str | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    status: int = 200
    latency_ms: float | None = None  # time to last byte
    model: str | None = None
    error: str | None = None
    watermark_scheme: str | None = None
    watermark_key_id: int | None = None
    # The complete answer (docs/traffic-log-extensions.md): every choice with its text, tool
    # calls, refusal and finish reason; and, for /v1/responses and /v1/embeddings, the answer
    # object (outputs; count and dims of the vectors, never the vectors).
    choices: list[dict[str, Any]] | None = None
    response: dict[str, Any] | None = None

    def to_traffic(self) -> dict[str, Any]:
        """The spec §1 object for an attributed exchange, plus the optional serving fields;
        ValueError for an attempt that never authenticated (the format needs both ids)."""
        if self.account_id is None or self.key_id is None:
            raise ValueError(f"exchange {self.id} never authenticated: it has no account or key")
        request = self.request if isinstance(self.request, dict) else {"_unparsed": self.request}
        line = TrafficRecord(
            id=self.id,
            ts=self.ts,
            account_id=self.account_id,
            key_id=self.key_id,
            ip=self.ip or UNKNOWN_IP,
            endpoint=self.endpoint,
            request=request,
            status=self.status,
            user_agent=self.user_agent,
            payment_fingerprint=self.payment_fingerprint,
            response_text=self.response_text,
            prompt_tokens=self.prompt_tokens,
            completion_tokens=self.completion_tokens,
            latency_ms=self.latency_ms,
            choices=self.choices,
            response=self.response,
        ).to_dict()
        line["model"] = self.model
        line["error"] = self.error
        line["watermark_scheme"] = self.watermark_scheme
        line["watermark_key_id"] = self.watermark_key_id
        return line

    @classmethod
    def from_traffic(cls, line: dict[str, Any]) -> ExchangeRecord:
        """One parsed traffic line (spec §1, validated by ``TrafficRecord.from_dict``: a
        ValueError names the first bad field) with its optional serving fields."""
        t = TrafficRecord.from_dict(line)
        return cls(
            id=t.id,
            ts=t.ts,
            account_id=t.account_id,
            key_id=t.key_id,
            ip=t.ip,
            user_agent=t.user_agent,
            payment_fingerprint=t.payment_fingerprint,
            endpoint=t.endpoint,
            request=t.request,
            response_text=t.response_text,
            prompt_tokens=t.prompt_tokens,
            completion_tokens=t.completion_tokens,
            status=t.status,
            latency_ms=t.latency_ms,
            choices=t.choices,
            response=t.response,
            model=_optional(line, "model", str),
            error=_optional(line, "error", str),
            watermark_scheme=_optional(line, "watermark_scheme", str),
            watermark_key_id=_optional(line, "watermark_key_id", int),
        )


RECORD_FIELDS: tuple[str, ...] = tuple(f.name for f in fields(ExchangeRecord))


def _optional(d: dict[str, Any], name: str, kind: type) -> Any:
    value = d.get(name)
    return value if isinstance(value, kind) and not isinstance(value, bool) else None
