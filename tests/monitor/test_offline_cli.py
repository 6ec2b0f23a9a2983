"""Offline scoring and the CLI end to end, including every kind of bad input."""

from __future__ import annotations

import random
import sys
import tracemalloc
from pathlib import Path

import orjson
import pytest
from typer.testing import CliRunner

from distillguard.cli import app, main
from distillguard.errors import InputError
from distillguard.monitor.offline import score_records, score_traffic
from distillguard.traffic import read_labels, read_traffic, read_verdicts

runner = CliRunner()


def _exit_code(monkeypatch: pytest.MonkeyPatch, *args: str) -> int:
    """Run the real entry point (errors translated to exit codes), return its exit code."""
    monkeypatch.setattr(sys, "argv", ["distillguard", *args])
    with pytest.raises(SystemExit) as info:
        main()
    return int(info.value.code or 0)


def _line(i: int, account: str = "acct-1", ts: float | None = None, **extra) -> bytes:
    d = {
        "id": f"x{i}",
        "ts": 1_763_942_400.0 + (i if ts is None else ts),
        "account_id": account,
        "key_id": "k",
        "ip": "10.0.0.1",
        "endpoint": "/v1/chat/completions",
        "request": {"messages": [{"role": "user", "content": f"question number {i}"}]},
        "status": 200,
        "response_text": "answer",
        "completion_tokens": 5,
        **extra,
    }
    return orjson.dumps(d) + b"\n"


def test_cli_simulate_score_eval_round_trip(tmp_path: Path, shared_data: Path) -> None:
    t, lab, v = tmp_path / "t.jsonl", tmp_path / "l.jsonl", tmp_path / "v.jsonl"
    r = runner.invoke(
        app,
        [
            "simulate",
            "--accounts",
            "30",
            "--campaigns",
            "5",
            "--seed",
            "4",
            "--days",
            "2",
            "--split",
            "test",
            "--out",
            str(t),
            "--labels",
            str(lab),
            "--data-dir",
            str(shared_data),
        ],
    )
    assert r.exit_code == 0, r.output
    r = runner.invoke(app, ["monitor", "score", str(t), "--out", str(v)])
    assert r.exit_code == 0, r.output
    assert "flagged" in r.output
    verdicts = {x.account_id: x for x in read_verdicts(v)}
    labels = {x.account_id: x for x in read_labels(lab)}
    assert set(verdicts) == {rec.account_id for rec in read_traffic(t)}  # one per account
    assert not any(
        verdicts[a].flagged for a, x in labels.items() if x.label == "honest" and a in verdicts
    )
    flagged = [verdicts[a] for a, x in labels.items() if x.label == "campaign"]
    assert sum(f.flagged for f in flagged) >= 0.9 * len(flagged)
    assert all(f.reasons for f in flagged if f.flagged)
    r = runner.invoke(
        app,
        [
            "eval",
            "detection",
            str(t),
            str(lab),
            str(v),
            "--no-replay",
            "--json",
            str(tmp_path / "r.json"),
        ],
    )
    assert r.exit_code == 0, r.output
    report = orjson.loads((tmp_path / "r.json").read_bytes())
    assert report["auroc"] > 0.95 and report["legit_apps_flagged"] == 0


def test_malformed_truncated_and_unknown_fields_are_counted(tmp_path: Path) -> None:
    t = tmp_path / "t.jsonl"
    t.write_bytes(
        _line(1) + b"{oops\n" + _line(2, surprise=[1, 2]) + b'{"id": 3}\n' + _line(4)[:40]
    )
    rep = score_traffic(t, tmp_path / "v.jsonl")
    assert rep.read.records == 2 and rep.read.skipped == 3
    assert [e.line_no for e in rep.read.examples] == [2, 4, 5]
    r = runner.invoke(app, ["monitor", "score", str(t), "--out", str(tmp_path / "v2.jsonl")])
    assert r.exit_code == 0 and "3 malformed lines skipped" in r.output.replace("\n", " ")


def test_empty_and_all_bad_files_are_clear_errors(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    empty = tmp_path / "empty.jsonl"
    empty.write_bytes(b"")
    with pytest.raises(InputError, match="no valid traffic records"):
        score_traffic(empty, tmp_path / "v.jsonl")
    assert not (tmp_path / "v.jsonl").exists()
    assert (
        _exit_code(monkeypatch, "monitor", "score", str(empty), "--out", str(tmp_path / "v.jsonl"))
        == 2
    )
    assert "no valid traffic records (0 lines" in capsys.readouterr().err
    bad = tmp_path / "bad.jsonl"
    bad.write_bytes(b"nope\n")
    with pytest.raises(InputError, match="line 1"):
        score_traffic(bad, None)
    assert (
        _exit_code(monkeypatch, "monitor", "score", str(tmp_path / "missing.jsonl"), "--out", "x")
        == 3
    )


def test_shuffled_log_gives_the_same_flags(
    small_traffic: tuple[Path, Path], tmp_path: Path
) -> None:
    traffic, _ = small_traffic
    lines = traffic.read_bytes().splitlines(keepends=True)
    random.Random(0).shuffle(lines)
    shuffled = tmp_path / "shuffled.jsonl"
    shuffled.write_bytes(b"".join(lines))
    a = {v.account_id: v for v in score_traffic(traffic, None).verdicts}
    rep = score_traffic(shuffled, None)
    b = {v.account_id: v for v in rep.verdicts}
    assert rep.out_of_order > 0  # counted and reported
    assert set(a) == set(b)
    agree = sum(a[k].flagged == b[k].flagged for k in a)
    assert agree >= len(a) - 2  # timing moments lose late arrivals; flags barely move


def test_one_request_accounts_get_a_verdict_and_no_flag(tmp_path: Path) -> None:
    t = tmp_path / "t.jsonl"
    t.write_bytes(b"".join(_line(i, account=f"solo-{i}") for i in range(5)))
    rep = score_traffic(t, tmp_path / "v.jsonl")
    assert len(rep.verdicts) == 5 and not any(v.flagged for v in rep.verdicts)


def test_memory_does_not_grow_with_the_log(tmp_path: Path) -> None:
    """The same 20 accounts, 4x more lines: peak memory stays about the same (streaming)."""

    def peak(n: int) -> int:
        path = tmp_path / f"t{n}.jsonl"
        with open(path, "wb") as fh:
            for i in range(n):
                fh.write(_line(i, account=f"a{i % 20}", ts=i * 7.0))
        tracemalloc.start()
        score_records(read_traffic(path))
        _, top = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        return top

    small, big = peak(5_000), peak(20_000)
    assert big < 1.5 * small


def test_score_over_the_gateway_database(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from distillguard.store.db import make_engine, migrate
    from distillguard.store.exchanges import ExchangeLog, ExchangeRecord

    url = f"sqlite:///{tmp_path / 'dg.db'}"
    migrate(url)
    log = ExchangeLog(make_engine(url))
    for i in range(30):
        log.write_sync(
            ExchangeRecord(
                ts=1_763_942_400.0 + i * 30,
                account_id=f"acct-{i % 3}",
                key_id="k",
                ip="10.0.0.2",
                endpoint="/v1/chat/completions",
                request={"messages": [{"role": "user", "content": f"hi {i}"}]},
                response_text="hello",
                completion_tokens=2,
            )
        )
    log.write_sync(ExchangeRecord(ip="10.0.0.9", endpoint="/v1/models", status=401))
    log.close()
    out = tmp_path / "v.jsonl"
    r = runner.invoke(app, ["monitor", "score", "--db", url, "--out", str(out)])
    assert r.exit_code == 0, r.output
    assert sorted(v.account_id for v in read_verdicts(out)) == ["acct-0", "acct-1", "acct-2"]
    assert _exit_code(monkeypatch, "monitor", "score", "--out", str(out)) == 2


def test_two_workers_give_the_same_verdicts_and_counts(
    small_traffic: tuple[Path, Path], tmp_path: Path
) -> None:
    traffic, _ = small_traffic
    noisy = tmp_path / "noisy.jsonl"
    noisy.write_bytes(b"garbage\n" + traffic.read_bytes() + b'{"account_id": "x"}\n')
    one = score_traffic(noisy, None, workers=1)
    two = score_traffic(noisy, None, workers=2)
    assert one.verdicts == two.verdicts
    assert (one.read.records, one.read.skipped, one.read.lines) == (
        two.read.records,
        two.read.skipped,
        two.read.lines,
    )
    assert [e.line_no for e in two.read.examples] == [1, one.read.lines]
