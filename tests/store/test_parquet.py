"""The Parquet export: day partitions, zstd, every record field, incremental, resumable after a
kill with no duplicates, and read back by ``log import`` and ``ParquetReader``."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pyarrow.parquet as pq
from sqlalchemy import Engine

from distillguard.columnar import ParquetReader, traffic_columns
from distillguard.store import ExchangeLog, ExchangeRecord, make_engine, migrate
from distillguard.store.export import import_traffic
from distillguard.store.parquet import STATE_FILE, export_parquet, write_parquet_log
from distillguard.traffic import TrafficRecord

SRC = Path(__file__).resolve().parents[2] / "src"
DAY = 86_400.0


def _exchange(i: int, ts: float) -> ExchangeRecord:
    request = {"model": "m", "messages": [{"role": "user", "content": f"q{i}"}], "n": 1}
    return ExchangeRecord.from_traffic(
        {
            "id": f"ex-{i:06d}",
            "ts": ts,
            "account_id": f"acct-{i % 7}",
            "key_id": f"key-{i % 7}",
            "ip": "10.1.2.3",
            "user_agent": None if i % 3 else "curl/8",
            "payment_fingerprint": "pm_x" if i % 2 else None,
            "endpoint": "/v1/chat/completions",
            "request": request,
            "response_text": f"a{i}",
            "prompt_tokens": i,
            "completion_tokens": None if i % 5 == 0 else 3,
            "status": 200 if i % 11 else 500,
            "latency_ms": 12.5,
        }
    )


def _fill(engine: Engine, start: int, n: int, t0: float = 1.75e9) -> None:
    with ExchangeLog(engine) as log:
        for i in range(start, start + n):
            log.write_sync(_exchange(i, t0 + i * 3600.0))  # a day every 24 exchanges


def _ids(out: Path) -> list[str]:
    return [r.id for r in ParquetReader(out)]


def test_roundtrip_every_field_by_day_zstd(tmp_path: Path) -> None:
    records = [
        TrafficRecord.from_dict(_exchange(i, 1.75e9 + i * 3600.0).to_traffic()) for i in range(60)
    ]
    res = write_parquet_log(records, tmp_path / "log", part_rows=25)
    assert res.written == 60 and res.watermark.next_seq == 60
    days = sorted(p.name for p in (tmp_path / "log").glob("day=*"))
    expected = {f"day={time.strftime('%Y-%m-%d', time.gmtime(r.ts))}" for r in records}
    assert days == sorted(expected) and len(days) == 4  # 60 hours from 15:06 UTC
    part = next((tmp_path / "log").glob("day=*/part-*.parquet"))
    meta = pq.read_metadata(part)
    assert meta.row_group(0).column(0).compression == "ZSTD"
    names = [c.name for c in traffic_columns()]
    assert pq.read_schema(part).names == names and names[-1] == "seq"
    assert list(ParquetReader(tmp_path / "log")) == records


def test_incremental_export_only_new(store_url: str, tmp_path: Path) -> None:
    engine = make_engine(store_url)
    _fill(engine, 0, 50)
    out = tmp_path / "log"
    assert export_parquet(engine, out, part_rows=20).written == 50
    assert export_parquet(engine, out).written == 0
    _fill(engine, 50, 30)
    second = export_parquet(engine, out, part_rows=20)
    assert second.written == 30 and second.watermark.next_seq == 80
    ids = _ids(out)
    assert ids == [f"ex-{i:06d}" for i in range(80)]
    seqs = sorted(
        r["seq"]
        for f in out.glob("day=*/part-*.parquet")
        for r in pq.read_table(f, columns=["seq"]).to_pylist()
    )
    assert seqs == list(range(80))


def test_state_file_behind_the_parts_repeats_nothing(store_url: str, tmp_path: Path) -> None:
    """A kill between a part's rename and the state's rewrite: the parts are the truth."""
    engine = make_engine(store_url)
    _fill(engine, 0, 40)
    out = tmp_path / "log"
    export_parquet(engine, out, part_rows=10)
    (out / STATE_FILE).write_text('{"ts": -1.0, "id": "", "next_seq": 0}')
    (out / "day=2025-06-15" / ".part-000000000040.parquet.123.tmp").write_bytes(b"half a part")
    assert export_parquet(engine, out).written == 0
    assert len(_ids(out)) == 40 and not list(out.glob("day=*/.*.tmp"))


def test_killed_export_resumes_without_duplicates(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'log.sqlite'}"
    engine = make_engine(url)
    migrate(engine=engine)
    _fill(engine, 0, 300)
    out = tmp_path / "log"
    marker = tmp_path / "committed"
    # The child exports in parts of 20 and stops for good once a few parts are committed;
    # it is killed there, mid-export, with the rest of the log not yet written.
    child = textwrap.dedent(
        f"""
        import time
        from pathlib import Path
        from distillguard.store import make_engine
        from distillguard.store.parquet import export_parquet
        def progress(n):
            if n >= 100:
                Path({str(marker)!r}).touch()
                while True:
                    time.sleep(1)
        export_parquet(make_engine({url!r}), Path({str(out)!r}), part_rows=20, progress=None)
        """
    ).replace("progress=None", "progress=progress")
    env = {**os.environ, "PYTHONPATH": str(SRC)}
    proc = subprocess.Popen([sys.executable, "-c", child], env=env)
    try:
        while not marker.exists():
            assert proc.poll() is None, "the export finished or failed before it was killed"
            time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait()
    partial = _ids(out)
    assert 0 < len(partial) < 300
    res = export_parquet(engine, out, part_rows=20)
    assert res.written == 300 - len(partial)
    assert _ids(out) == [f"ex-{i:06d}" for i in range(300)]


def test_log_import_reads_parquet(store_url: str, tmp_path: Path) -> None:
    records = [TrafficRecord.from_dict(_exchange(i, 1.75e9 + i).to_traffic()) for i in range(12)]
    write_parquet_log(records, tmp_path / "log")
    engine = make_engine(store_url)
    first = import_traffic(engine, tmp_path / "log")
    again = import_traffic(engine, tmp_path / "log")
    assert (first.inserted, first.duplicates) == (12, 0)
    assert (again.inserted, again.duplicates) == (0, 12)
    back = tmp_path / "back"
    export_parquet(engine, back)
    assert list(ParquetReader(back)) == records


def test_cli_export_parquet_then_import(store_url: str, tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from distillguard.cli import app

    engine = make_engine(store_url)
    _fill(engine, 0, 30)
    runner = CliRunner()
    out = tmp_path / "lake"
    first = runner.invoke(
        app, ["log", "export", "--format", "parquet", "--out", str(out), "--db", store_url]
    )
    assert first.exit_code == 0, first.output
    assert "wrote 30 new exchanges" in first.output
    again = runner.invoke(
        app, ["log", "export", "--format", "parquet", "--out", str(out), "--db", store_url]
    )
    assert "wrote 0 new exchanges" in again.output and "(30 in all)" in again.output
    bad = runner.invoke(
        app, ["log", "export", "--format", "csv", "--out", str(out), "--db", store_url]
    )
    assert bad.exit_code != 0 and "--format must be jsonl or parquet" in str(
        bad.exception or bad.output
    )
    other = f"sqlite:///{tmp_path / 'other.sqlite'}"
    imported = runner.invoke(app, ["log", "import", str(out), "--db", other])
    assert imported.exit_code == 0 and "30 exchanges imported" in imported.output
