"""The exchange formats: round trips, bad lines skipped with line numbers, streaming."""

from __future__ import annotations

import gzip
from pathlib import Path

import orjson
import pytest

from distillguard.errors import InputError, NotFound
from distillguard.traffic import (
    LabelRecord,
    TrafficRecord,
    Verdict,
    prompt_text,
    read_labels,
    read_traffic,
    read_verdicts,
    write_jsonl,
)


def _rec(i: int, **kw) -> dict:
    d = {
        "id": f"x{i}",
        "ts": 1000.0 + i,
        "account_id": "acct-1",
        "key_id": "k1",
        "ip": "10.0.0.1",
        "user_agent": "ua",
        "payment_fingerprint": None,
        "endpoint": "/v1/chat/completions",
        "request": {"model": "m", "messages": [{"role": "user", "content": f"hi {i}"}]},
        "response_text": "hello",
        "prompt_tokens": 3,
        "completion_tokens": 1,
        "status": 200,
        "latency_ms": 12.5,
    }
    d.update(kw)
    return d


def test_round_trip_all_three_formats(tmp_path: Path) -> None:
    recs = [TrafficRecord.from_dict(_rec(i)) for i in range(5)]
    assert write_jsonl(tmp_path / "t.jsonl", recs) == 5
    assert list(read_traffic(tmp_path / "t.jsonl")) == recs
    labels = [LabelRecord("a", "campaign", "c1", "hydra"), LabelRecord("b", "honest")]
    write_jsonl(tmp_path / "l.jsonl", labels)
    assert list(read_labels(tmp_path / "l.jsonl")) == labels
    verdicts = [Verdict("a", 0.9, True, "c", ("templated",)), Verdict("b", 0.0, False)]
    write_jsonl(tmp_path / "v.jsonl", verdicts)
    assert list(read_verdicts(tmp_path / "v.jsonl")) == verdicts


def test_bad_lines_are_skipped_counted_and_numbered(tmp_path: Path) -> None:
    good = orjson.dumps(_rec(1)).decode()
    lines = [
        good,
        "{not json",
        orjson.dumps(_rec(2, ts="yesterday")).decode(),
        "[1, 2]",
        orjson.dumps({k: v for k, v in _rec(3).items() if k != "account_id"}).decode(),
        "",
        orjson.dumps(_rec(4, surprise={"new": 1})).decode(),  # unknown field: accepted
        good[: len(good) // 2],  # truncated last line, no newline
    ]
    p = tmp_path / "t.jsonl"
    p.write_text("\n".join(lines))
    reader = read_traffic(p)
    got = list(reader)
    assert [r.id for r in got] == ["x1", "x4"]
    s = reader.summary()
    assert (s.lines, s.records, s.skipped) == (8, 2, 5)
    numbers = [e.line_no for e in s.examples]
    assert numbers == [2, 3, 4, 5, 8]
    assert "truncated" in s.examples[-1].reason
    assert "ts" in s.examples[1].reason
    assert "account_id" in s.examples[3].reason
    assert "5 malformed lines skipped" in s.describe()


def test_field_order_and_missing_nullables(tmp_path: Path) -> None:
    d = _rec(1)
    for k in ("user_agent", "payment_fingerprint", "response_text", "latency_ms"):
        d.pop(k)
    reordered = dict(reversed(list(d.items())))
    p = tmp_path / "t.jsonl"
    p.write_bytes(orjson.dumps(reordered) + b"\n")
    (r,) = list(read_traffic(p))
    assert r.user_agent is None and r.response_text is None and r.ts == 1001.0


def test_empty_file_and_missing_file(tmp_path: Path) -> None:
    p = tmp_path / "empty.jsonl"
    p.write_bytes(b"")
    reader = read_traffic(p)
    assert list(reader) == []
    assert reader.summary().lines == 0
    with pytest.raises(NotFound):
        read_traffic(tmp_path / "nope.jsonl")
    with pytest.raises(InputError):
        read_traffic(tmp_path)


def test_oversized_line_is_skipped_without_reading_it_whole(tmp_path: Path) -> None:
    p = tmp_path / "t.jsonl"
    huge = orjson.dumps(_rec(2, response_text="y" * 5000))
    p.write_bytes(orjson.dumps(_rec(1)) + b"\n" + huge + b"\n" + orjson.dumps(_rec(3)) + b"\n")
    reader = read_traffic(p, max_line_bytes=1024)
    assert [r.id for r in reader] == ["x1", "x3"]
    assert reader.skipped == 1 and reader.examples[0].line_no == 2


def test_gzip_is_read_transparently(tmp_path: Path) -> None:
    p = tmp_path / "t.jsonl.gz"
    with gzip.open(p, "wb") as fh:
        for i in range(3):
            fh.write(orjson.dumps(_rec(i)) + b"\n")
    assert len(list(read_traffic(p))) == 3


def test_verdict_and_label_validation() -> None:
    with pytest.raises(ValueError):
        Verdict("a", 1.5, True)
    with pytest.raises(ValueError):
        LabelRecord("a", "maybe")


def test_prompt_text_chat_and_completion() -> None:
    chat = {
        "messages": [
            {"role": "system", "content": "S"},
            {"role": "user", "content": [{"type": "text", "text": "U"}]},
        ]
    }
    assert prompt_text(chat) == "S\nU"
    assert prompt_text({"prompt": "P"}) == "P"
    assert prompt_text({}) == ""


def test_prompt_text_reads_responses_and_embeddings_requests() -> None:
    # a harvest sent through /v1/responses must be as visible to the detector as one via chat
    assert prompt_text({"model": "m", "input": "Solve 2+2 step by step"}) == (
        "Solve 2+2 step by step"
    )
    items = {
        "instructions": "Be brief.",
        "input": [
            {"role": "user", "content": [{"type": "input_text", "text": "Q1"}]},
            {"role": "user", "content": "Q2"},
            {"type": "input_image", "image_url": "https://example.test/x.png"},
        ],
    }
    assert prompt_text(items) == "Be brief.\nQ1\nQ2"
    assert prompt_text({"input": ["a", "b"]}) == "a\nb"  # embeddings' list of strings
    assert prompt_text({"input": 7}) == ""  # a malformed input reads as no text, no error
