"""Operations: Prometheus metrics and one structured JSON log line per exchange.

Each app gets its own ``CollectorRegistry`` (several apps in one test process must not clash).
With ``--workers N`` every worker exposes its own counters; scrape each or put them behind a
Prometheus that sums by instance.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import time

import orjson
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

# Buckets from 0.5 ms (proxy overhead) to 60 s (long local generations).
_LATENCY_BUCKETS = (
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
)


class GatewayMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "distillguard_requests",
            "API requests by endpoint and HTTP status",
            ["endpoint", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "distillguard_request_latency_seconds",
            "time from arrival to the last byte of the response",
            ["endpoint"],
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.tokens = Counter(
            "distillguard_tokens",
            "tokens served, by kind (prompt or completion)",
            ["kind"],
            registry=self.registry,
        )
        self.actions = Counter(
            "distillguard_enforcement_actions",
            "online monitor decisions other than allow",
            ["action"],
            registry=self.registry,
        )
        self.in_flight = Gauge(
            "distillguard_requests_in_flight", "requests being served", registry=self.registry
        )
        self._prompt = self.tokens.labels("prompt")
        self._completion = self.tokens.labels("completion")
        # `.labels()` costs a dict lookup + lock; cache the children we hit on every request.
        self._request_children: dict[tuple[str, int], object] = {}
        self._latency_children: dict[str, object] = {}

    def observe(
        self,
        endpoint: str,
        status: int,
        latency_s: float,
        prompt_tokens: int | None,
        completion_tokens: int | None,
    ) -> None:
        key = (endpoint, status)
        counter = self._request_children.get(key)
        if counter is None:
            counter = self._request_children[key] = self.requests.labels(endpoint, str(status))
        counter.inc()  # type: ignore[attr-defined]
        hist = self._latency_children.get(endpoint)
        if hist is None:
            hist = self._latency_children[endpoint] = self.latency.labels(endpoint)
        hist.observe(latency_s)  # type: ignore[attr-defined]
        if prompt_tokens:
            self._prompt.inc(prompt_tokens)
        if completion_tokens:
            self._completion.inc(completion_tokens)

    def render(self) -> bytes:
        return generate_latest(self.registry)


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message and any ``extra={"fields": {}}``."""

    def format(self, record: logging.LogRecord) -> str:
        line = {
            "ts": round(record.created, 6),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        fields = getattr(record, "fields", None)
        if fields:
            line.update(fields)
        if record.exc_info:
            line["exc"] = self.formatException(record.exc_info)
        return orjson.dumps(line, default=str).decode()


_fast_access_log = False  # True once configure_json_logging routed logs to stderr as JSON


def configure_json_logging(level: str = "info") -> None:
    """Route distillguard's and uvicorn's loggers to stderr as JSON lines (idempotent)."""
    global _fast_access_log
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    for name in ("distillguard", "uvicorn", "uvicorn.error"):
        logger = logging.getLogger(name)
        logger.handlers[:] = [handler]
        logger.setLevel(level.upper())
        logger.propagate = False
    _fast_access_log = True


access_log = logging.getLogger("distillguard.access")


def log_exchange(fields: dict) -> None:
    """The access log: one JSON line per exchange on stderr.

    Once ``configure_json_logging`` owns stderr, the line is written with one ``os.write``
    (the same JSON the formatter would produce, without a LogRecord, formatter and handler
    lock: a third of the hot path's logging cost); otherwise it goes through ``logging``.
    """
    if not access_log.isEnabledFor(logging.INFO):
        return
    if _fast_access_log:
        line = {
            "ts": round(time.time(), 6),
            "level": "info",
            "logger": "distillguard.access",
            "msg": "exchange",
            **fields,
        }
        with contextlib.suppress(OSError):  # a closed stderr must not fail a request
            os.write(2, orjson.dumps(line, default=str) + b"\n")
        return
    access_log.info("exchange", extra={"fields": fields})
