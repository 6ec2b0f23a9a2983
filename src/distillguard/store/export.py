"""Export the exchange log as the traffic log of ``shared/spec/traffic-log.md`` (§1).

Rows stream from the database in time order (``iter_exchanges``) into
``distillguard.traffic.JsonlWriter``, which writes a temporary file and moves it into place:
memory stays bounded whatever the log's size, and a failed export leaves no half file.

Attempts that never authenticated (no account, no key) belong to no account, and the format
requires both, so they are left out; ``ExportSummary.unattributed`` counts them so that the
caller can say so. Each line also carries the serving details the spec leaves optional
(``model``, ``error``, ``watermark_scheme``, ``watermark_key_id``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import Engine

from distillguard.store.db import session_scope
from distillguard.store.exchanges import ExchangeRecord, count_exchanges, iter_exchanges
from distillguard.traffic import JsonlWriter, TrafficRecord

PROGRESS_EVERY = 1000  # rows between progress callbacks
UNKNOWN_IP = "0.0.0.0"  # the unspecified address: parses as an IP where a client had none


@dataclass(frozen=True)
class ExportSummary:
    path: Path
    written: int  # lines in the file
    unattributed: int  # unauthenticated attempts in the same window, left out


def traffic_line(record: ExchangeRecord) -> dict[str, Any]:
    """The spec §1 object for one attributed exchange, plus the optional serving fields."""
    if record.account_id is None or record.key_id is None:
        raise ValueError(f"exchange {record.id} never authenticated: it has no account or key")
    request = record.request if isinstance(record.request, dict) else {"_unparsed": record.request}
    line = TrafficRecord(
        id=record.id,
        ts=record.ts,
        account_id=record.account_id,
        key_id=record.key_id,
        ip=record.ip or UNKNOWN_IP,
        endpoint=record.endpoint,
        request=request,
        status=record.status,
        user_agent=record.user_agent,
        payment_fingerprint=record.payment_fingerprint,
        response_text=record.response_text,
        prompt_tokens=record.prompt_tokens,
        completion_tokens=record.completion_tokens,
        latency_ms=record.latency_ms,
    ).to_dict()
    line["model"] = record.model
    line["error"] = record.error
    line["watermark_scheme"] = record.watermark_scheme
    line["watermark_key_id"] = record.watermark_key_id
    return line


def export_traffic(
    engine: Engine, out: Path, *, since: float | None = None, until: float | None = None
) -> int:
    """Write every attributed exchange (``since <= ts < until``) to ``out``; returns lines."""
    return export_traffic_summary(engine, out, since=since, until=until).written


def export_traffic_summary(
    engine: Engine,
    out: Path,
    *,
    since: float | None = None,
    until: float | None = None,
    progress: Callable[[int], None] | None = None,
) -> ExportSummary:
    """``export_traffic`` that also counts the unauthenticated attempts it left out.

    ``progress(n)`` is called with the lines written so far, every ``PROGRESS_EVERY`` lines.
    """
    records = iter_exchanges(engine, since=since, until=until, attributed_only=True)
    with JsonlWriter(out) as writer:
        for record in records:
            writer.write(traffic_line(record))
            if progress is not None and writer.count % PROGRESS_EVERY == 0:
                progress(writer.count)
        written = writer.count
    if progress is not None:
        progress(written)
    with session_scope(engine) as session:
        unattributed = count_exchanges(session, since=since, until=until, attributed=False)
    return ExportSummary(path=Path(out), written=written, unattributed=unattributed)
