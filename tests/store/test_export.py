"""Export writes the traffic log of shared/spec/traffic-log.md §1, read back by the monitor's
reader with nothing skipped."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from sqlalchemy import Engine

from distillguard.store import (
    ExchangeLog,
    ExchangeRecord,
    count_exchanges,
    export_traffic,
    export_traffic_summary,
    make_engine,
    migrate,
    session_scope,
)
from distillguard.store.exchanges import get_exchange
from distillguard.store.export import import_traffic, traffic_line
from distillguard.traffic import TrafficRecord, read_traffic

# The fields of spec §1, in its order.
SPEC_FIELDS = [
    "id",
    "ts",
    "account_id",
    "key_id",
    "ip",
    "user_agent",
    "payment_fingerprint",
    "endpoint",
    "request",
    "response_text",
    "prompt_tokens",
    "completion_tokens",
    "status",
    "latency_ms",
]


def _write(engine: Engine, records: list[ExchangeRecord]) -> None:
    with ExchangeLog(engine) as log:
        for r in records:
            log.write_sync(r)


def _records() -> list[ExchangeRecord]:
    chat = {
        "model": "teacher",
        "messages": [
            {"role": "system", "content": "be brief"},
            {"role": "user", "content": "2+2?"},
        ],
        "temperature": 0.7,
        "top_p": 0.9,
        "max_tokens": 32,
        "n": 1,
        "logprobs": True,
        "top_logprobs": 5,
        "stream": True,
        "seed": 7,
    }
    return [
        ExchangeRecord(
            ts=1_764_000_100.25,
            account_id="acct_a",
            key_id="00000000000000aa",
            ip="2001:db8::1",
            user_agent="OpenAI/Python 3.57.0",
            payment_fingerprint="card-1",
            endpoint="/v1/chat/completions",
            request=chat,
            response_text="4 — «four»",
            prompt_tokens=12,
            completion_tokens=3,
            status=200,
            latency_ms=12.5,
            model="teacher",
            watermark_scheme="kgw",
            watermark_key_id=2,
        ),
        ExchangeRecord(
            ts=1_764_000_050.0,
            account_id="acct_b",
            key_id="00000000000000bb",
            ip="198.51.100.4",
            endpoint="/v1/completions",
            request={"model": "teacher", "prompt": "Once"},
            status=429,
            error="rate limited",
        ),
        ExchangeRecord(  # never authenticated: no account, so not a traffic record
            ts=1_764_000_075.0,
            ip="198.51.100.9",
            endpoint="/v1/chat/completions",
            request={"model": "teacher"},
            status=401,
            error="invalid API key",
        ),
    ]


def test_export_round_trips_through_the_traffic_reader(engine: Engine, tmp_path: Path) -> None:
    records = _records()
    _write(engine, records)
    out = tmp_path / "traffic.jsonl"

    summary = export_traffic_summary(engine, out)

    assert (summary.written, summary.unattributed) == (2, 1)
    lines = out.read_text(encoding="utf-8").splitlines()
    assert len(lines) == 2
    first = json.loads(lines[0])
    assert list(first)[: len(SPEC_FIELDS)] == SPEC_FIELDS
    assert first["account_id"] == "acct_b"  # time order, whatever the insert order
    reader = read_traffic(out)
    read = list(reader)
    assert reader.skipped == 0
    by_id = {r.id: r for r in read}
    for original in records[:2]:
        got = by_id[original.id]
        for name in SPEC_FIELDS:
            assert getattr(got, name) == getattr(original, name), name
    extras = json.loads(lines[1])
    assert (extras["model"], extras["watermark_scheme"], extras["watermark_key_id"]) == (
        "teacher",
        "kgw",
        2,
    )


def test_export_since_until_window(engine: Engine, tmp_path: Path) -> None:
    _write(engine, _records())
    out = tmp_path / "window.jsonl"
    assert export_traffic(engine, out, since=1_764_000_060.0) == 1
    assert json.loads(out.read_text())["account_id"] == "acct_a"
    summary = export_traffic_summary(engine, out, since=1_764_000_000.0, until=1_764_000_080.0)
    assert (summary.written, summary.unattributed) == (1, 1)


def test_export_reports_progress_up_to_the_count(engine: Engine, tmp_path: Path) -> None:
    _write(engine, _records())
    seen: list[int] = []
    summary = export_traffic_summary(engine, tmp_path / "p.jsonl", progress=seen.append)
    assert seen[-1] == summary.written == 2


def test_export_of_an_empty_log_writes_an_empty_file(engine: Engine, tmp_path: Path) -> None:
    out = tmp_path / "sub" / "empty.jsonl"
    assert export_traffic(engine, out) == 0
    assert out.read_bytes() == b""


def test_export_import_export_is_the_identity(engine: Engine, tmp_path: Path) -> None:
    """An export loaded into an empty database exports to the same bytes."""
    _write(engine, _records())
    first = tmp_path / "first.jsonl"
    export_traffic(engine, first)
    other = make_engine(f"sqlite:///{tmp_path / 'other.db'}")
    migrate(engine=other)

    summary = import_traffic(other, first)

    assert (summary.inserted, summary.duplicates, summary.skipped) == (2, 0, 0)
    second = tmp_path / "second.jsonl"
    export_traffic(other, second)
    assert second.read_bytes() == first.read_bytes()
    other.dispose()


def test_import_skips_and_counts_bad_lines_and_duplicates(engine: Engine, tmp_path: Path) -> None:
    good = traffic_line(_records()[0])
    lines = [
        json.dumps(good),
        "{not json",
        json.dumps({**good, "id": "x2", "ts": "yesterday"}),  # wrong type
        "",  # blank: not an error
        json.dumps({**good, "id": "x3", "account_id": None}),  # no account
        json.dumps(good),  # the same id again
        json.dumps({**good, "id": "x4", "model": 5, "extra": "ignored"}),  # bad optional field
    ]
    path = tmp_path / "mixed.jsonl"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")

    summary = import_traffic(engine, path)

    assert (summary.inserted, summary.duplicates, summary.skipped) == (2, 1, 3)
    assert [e.line_no for e in summary.examples] == [2, 3, 5]
    assert "ts" in summary.examples[1].reason
    again = import_traffic(engine, path)  # importing twice changes nothing
    assert (again.inserted, again.duplicates) == (0, 3)
    with session_scope(engine) as s:
        assert count_exchanges(s) == 2
        assert get_exchange(s, exchange_id="x4").model is None  # the bad optional value dropped


# --- the complete answer (docs/traffic-log-extensions.md) ------------------------------------

CHOICES = [
    {"index": 0, "text": "4", "finish_reason": "stop", "tool_calls": None, "refusal": None},
    {
        "index": 1,
        "text": None,
        "finish_reason": "tool_calls",
        "tool_calls": [
            {
                "id": "call_1",
                "type": "function",
                "function": {"name": "add", "arguments": '{"a": 2, "b": 2}'},
            }
        ],
        "refusal": None,
    },
    {"index": 2, "text": None, "finish_reason": "stop", "tool_calls": None, "refusal": "No."},
]
EMBEDDING_RESPONSE = {"object": "list", "model": "emb", "count": 2, "dims": 8, "usage": None}


def _complete_records() -> list[ExchangeRecord]:
    base = {"account_id": "acct_c", "key_id": "00000000000000cc", "ip": "192.0.2.1"}
    return [
        ExchangeRecord(
            ts=1_764_000_200.0,
            endpoint="/v1/chat/completions",
            request={"model": "m", "messages": [{"role": "user", "content": "2+2"}], "n": 3},
            response_text="4",
            choices=CHOICES,
            **base,
        ),
        ExchangeRecord(
            ts=1_764_000_201.0,
            endpoint="/v1/embeddings",
            request={"model": "emb", "input": ["a", "b"]},
            response=EMBEDDING_RESPONSE,
            **base,
        ),
    ]


def test_choices_and_response_survive_the_log_export_and_import(
    engine: Engine, tmp_path: Path
) -> None:
    _write(engine, _complete_records())
    out = tmp_path / "traffic.jsonl"
    assert export_traffic(engine, out) == 2
    chat, embeddings = [json.loads(line) for line in out.read_text().splitlines()]
    assert chat["choices"] == CHOICES and chat["response_text"] == "4"
    assert "response" not in chat or chat["response"] is None
    assert embeddings["response"] == EMBEDDING_RESPONSE and embeddings.get("choices") is None
    read = list(read_traffic(out))
    assert read[0].choices == CHOICES and read[1].response == EMBEDDING_RESPONSE
    # import into a fresh database, export again: the same lines
    other = make_engine(f"sqlite:///{tmp_path / 'other.db'}")
    migrate(engine=other)
    assert import_traffic(other, out).inserted == 2
    again = tmp_path / "again.jsonl"
    export_traffic(other, again)
    assert again.read_text() == out.read_text()
    other.dispose()


def test_old_lines_without_the_extension_still_read() -> None:
    line = traffic_line(_records()[0])
    for name in ("choices", "response"):
        line.pop(name, None)
    record = TrafficRecord.from_dict(line)
    assert record.choices is None and record.response is None
    assert "choices" not in record.to_dict()  # written only when present


@pytest.mark.parametrize(
    ("choices", "reason"),
    [
        ("not a list", "'choices' must be a list"),
        ([{"text": "x"}], "'choices[0].index'"),
        ([{"index": 0, "text": 3}], "'choices[0].text'"),
        ([{"index": 0, "tool_calls": "call"}], "'choices[0].tool_calls'"),
        ([{"index": 0, "tool_calls": ["call"]}], "'choices[0].tool_calls[0]'"),
        ([{"index": 0}, {"index": 1, "refusal": 1}], "'choices[1].refusal'"),
    ],
)
def test_malformed_choices_are_refused_naming_the_field(choices: object, reason: str) -> None:
    line = traffic_line(_records()[0]) | {"choices": choices}
    with pytest.raises(ValueError, match=re.escape(reason)):
        TrafficRecord.from_dict(line)


def test_a_response_that_is_not_an_object_is_refused() -> None:
    line = traffic_line(_records()[0]) | {"response": ["vectors"]}
    with pytest.raises(ValueError, match="'response' must be a JSON object"):
        TrafficRecord.from_dict(line)
