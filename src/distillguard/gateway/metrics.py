"""Operations: Prometheus metrics and one structured JSON log line per exchange.

Metrics are right with several worker processes (``serve --workers N``, N > 1): ``serve`` points
``PROMETHEUS_MULTIPROC_DIR`` at a directory it creates (and removes at exit) before any worker
imports ``prometheus_client`` (``cli.gateway.multiprocess_directory``); every worker then
writes its values to its own memory-mapped files there, and ``/metrics`` in any worker sums
all of them (prometheus_client's multiprocess mode). Counters of a worker that died keep
counting in the sum; its in-flight gauge is dropped at exit. Without that variable (an app
built in a test process) each app counts in its own ``CollectorRegistry``, so several apps in
one process do not clash.

Model labels carry the served model names only (what ``backend.model_ids()`` lists, at most
``_MAX_MODEL_LABELS`` of them): a client cannot grow the metrics without bound by sending made-up
model names; others are counted under ``model="other"``.
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import os
import sys
import time
from collections.abc import Callable

import orjson
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

_MAX_MODEL_LABELS = 64  # distinct model label values kept; more are "other"

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
# Time to first token: a model's prefill, from 5 ms (small model, short prompt) to 30 s.
_TTFT_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


def multiprocess_mode() -> bool:
    """True when prometheus_client stores values in ``PROMETHEUS_MULTIPROC_DIR`` (decided
    when prometheus_client is first imported in this process)."""
    from prometheus_client import values

    return values.ValueClass is not values.MutexValue


class GatewayMetrics:
    def __init__(self, served_models: Callable[[], list[str]] | None = None) -> None:
        self.multiprocess = multiprocess_mode()
        self.registry = CollectorRegistry()
        self._served_models = served_models or list
        self.requests = Counter(
            "distillguard_requests",
            "API requests by endpoint, model and HTTP status",
            ["endpoint", "model", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "distillguard_request_latency_seconds",
            "time from arrival to the last byte of the response",
            ["endpoint", "model"],
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.time_to_first_token = Histogram(
            "distillguard_time_to_first_token_seconds",
            "streamed answers: time from arrival to the first generated chunk sent",
            ["endpoint", "model"],
            buckets=_TTFT_BUCKETS,
            registry=self.registry,
        )
        self.tokens = Counter(
            "distillguard_tokens",
            "tokens served, by model and kind (prompt or completion)",
            ["model", "kind"],
            registry=self.registry,
        )
        self.state_errors = Counter(
            "distillguard_enforcement_state_errors",
            "enforcement state failures (redis, database, monitor): logged, never swallowed",
            ["component"],
            registry=self.registry,
        )
        self.admin_logins = Counter(
            "distillguard_admin_login_failures",
            "refused admin API calls: rejected (missing or wrong token) or rate_limited",
            ["outcome"],
            registry=self.registry,
        )
        self.actions = Counter(
            "distillguard_enforcement_actions",
            "online monitor decisions other than allow",
            ["action"],
            registry=self.registry,
        )
        self.rejected_forwarded_for = Counter(
            "distillguard_forwarded_for_rejected",
            "X-Forwarded-For headers from a trusted proxy that were not IP lists (ignored)",
            registry=self.registry,
        )
        self.unlogged_unauthenticated = Counter(
            "distillguard_unauthenticated_unlogged",
            "requests without a valid key over their IP's log budget (429, no log row)",
            registry=self.registry,
        )
        self.in_flight = Gauge(
            "distillguard_requests_in_flight",
            "requests being served",
            registry=self.registry,
            multiprocess_mode="livesum",  # summed over the workers alive now
        )
        if self.multiprocess:
            # This worker's in-flight gauge leaves the sum when it exits (counters stay).
            from prometheus_client import multiprocess

            atexit.register(multiprocess.mark_process_dead, os.getpid())
        # `.labels()` costs a dict lookup + lock; cache the children we hit on every request.
        self._request_children: dict[tuple[str, str, int], object] = {}
        self._latency_children: dict[tuple[str, str], object] = {}
        self._token_children: dict[str, tuple[object, object]] = {}
        self._model_labels: dict[str, str] = {}

    def model_label(self, model: str | None) -> str:
        """The label for a requested model name: itself when served, else "other"."""
        label = self._model_labels.get(model or "")
        if label is not None:
            return label
        if model is None or model not in self._served_models():
            return "other"  # made-up names are not remembered: they must not fill the cache
        label = model if len(self._model_labels) < _MAX_MODEL_LABELS else "other"
        self._model_labels[model] = label
        return label

    def observe(
        self,
        endpoint: str,
        status: int,
        latency_s: float,
        prompt_tokens: int | None,
        completion_tokens: int | None,
        model: str | None = None,
    ) -> None:
        label = self.model_label(model)
        key = (endpoint, label, status)
        counter = self._request_children.get(key)
        if counter is None:
            counter = self._request_children[key] = self.requests.labels(
                endpoint, label, str(status)
            )
        counter.inc()  # type: ignore[attr-defined]
        hist = self._latency_children.get(key[:2])
        if hist is None:
            hist = self._latency_children[key[:2]] = self.latency.labels(endpoint, label)
        hist.observe(latency_s)  # type: ignore[attr-defined]
        if prompt_tokens or completion_tokens:
            children = self._token_children.get(label)
            if children is None:
                children = self._token_children[label] = (
                    self.tokens.labels(label, "prompt"),
                    self.tokens.labels(label, "completion"),
                )
            if prompt_tokens:
                children[0].inc(prompt_tokens)  # type: ignore[attr-defined]
            if completion_tokens:
                children[1].inc(completion_tokens)  # type: ignore[attr-defined]

    def observe_first_token(self, endpoint: str, model: str | None, seconds: float) -> None:
        """A streamed answer's first chunk left after ``seconds``."""
        self.time_to_first_token.labels(endpoint, self.model_label(model)).observe(seconds)

    def render(self) -> bytes:
        if not self.multiprocess:
            return generate_latest(self.registry)
        from prometheus_client import multiprocess

        merged = CollectorRegistry()  # every worker's files, summed
        multiprocess.MultiProcessCollector(merged)
        return generate_latest(merged)


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
