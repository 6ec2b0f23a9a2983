"""The accounts/keys/log/db commands, run through Typer's CliRunner and the real entry point."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from distillguard.cli import app, main
from distillguard.errors import AuthError, InputError, NotFound
from distillguard.store import (
    ExchangeLog,
    ExchangeRecord,
    authenticate,
    get_account,
    make_engine,
    session_scope,
)

runner = CliRunner()


def _run(*args: str):
    result = runner.invoke(app, list(args))
    return result


def test_accounts_keys_revoke_through_the_cli(db_url: str) -> None:
    created = _run("accounts", "create", "alice", "--org", "Acme", "--db", db_url)
    assert created.exit_code == 0, created.output
    assert "alice" in created.output

    made = _run("keys", "create", "alice", "--rpm", "30", "--db", db_url)
    assert made.exit_code == 0, made.output
    secret = next(line for line in made.output.splitlines() if line.startswith("dg-"))
    assert "shown only now" in made.output
    engine = make_engine(db_url)
    with session_scope(engine) as s:
        who = authenticate(s, secret=secret)
    assert (who.account_name, who.rpm) == ("alice", 30)

    listed = _run("keys", "list", "alice", "--db", db_url)
    assert who.key_id in listed.output and secret not in listed.output
    assert "alice" in _run("accounts", "list", "--db", db_url).output

    revoked = _run("keys", "revoke", who.key_id, "--db", db_url)
    assert revoked.exit_code == 0, revoked.output
    with pytest.raises(AuthError, match="revoked"), session_scope(engine) as s:
        authenticate(s, secret=secret)
    engine.dispose()


def test_secret_only_prints_just_the_secret(db_url: str) -> None:
    assert _run("accounts", "create", "bob", "--db", db_url).exit_code == 0
    result = _run("keys", "create", "bob", "--secret-only", "--db", db_url)
    assert result.exit_code == 0
    assert result.output.strip().startswith("dg-") and len(result.output.strip().splitlines()) == 1


def test_errors_are_the_library_errors(db_url: str) -> None:
    """CliRunner hands back the raised error; the root app turns it into the exit code."""
    unknown = _run("keys", "create", "nobody", "--db", db_url)
    assert isinstance(unknown.exception, NotFound)
    assert _run("accounts", "create", "alice", "--db", db_url).exit_code == 0
    duplicate = _run("accounts", "create", "alice", "--db", db_url)
    assert isinstance(duplicate.exception, InputError)
    assert isinstance(
        _run("keys", "revoke", "feedfacefeedface", "--db", db_url).exception, NotFound
    )


def test_unknown_account_exits_with_not_found_code(
    db_url: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(sys, "argv", ["distillguard", "keys", "create", "nobody", "--db", db_url])
    with pytest.raises(SystemExit) as exit_info:
        main()
    assert exit_info.value.code == NotFound.exit_code == 3
    assert "no account" in capsys.readouterr().err


def test_log_export_and_tail(db_url: str, tmp_path: Path) -> None:
    assert _run("db", "migrate", "--db", db_url).exit_code == 0
    engine = make_engine(db_url)
    with ExchangeLog(engine) as log:
        for i in range(3):
            log.write_sync(
                ExchangeRecord(
                    ts=1_764_000_000.0 + i,
                    account_id="acct_x",
                    key_id="00000000000000aa",
                    ip="127.0.0.1",
                    endpoint="/v1/chat/completions",
                    request={"model": "m", "messages": [{"role": "user", "content": f"q{i}"}]},
                    response_text=f"answer number {i}",
                    status=200,
                )
            )
    engine.dispose()
    out = tmp_path / "traffic.jsonl"
    exported = _run("log", "export", "--out", str(out), "--since", "1764000001", "--db", db_url)
    assert exported.exit_code == 0, exported.output
    assert "wrote 2 exchanges" in exported.output
    assert [json.loads(x)["response_text"] for x in out.read_text().splitlines()] == [
        "answer number 1",
        "answer number 2",
    ]
    iso = _run("log", "export", "--out", str(out), "--since", "2025-11-24T16:00:00", "--db", db_url)
    assert "wrote 3 exchanges" in iso.output
    bad = _run("log", "export", "--out", str(out), "--since", "yesterday", "--db", db_url)
    assert isinstance(bad.exception, InputError)
    other = f"sqlite:///{tmp_path / 'other.db'}"
    imported = _run("log", "import", str(out), "--db", other)
    assert imported.exit_code == 0, imported.output
    assert "3 exchanges imported" in imported.output
    assert "already present" in _run("log", "import", str(out), "--db", other).output
    missing = _run("log", "import", str(tmp_path / "nope.jsonl"), "--db", other)
    assert isinstance(missing.exception, NotFound)

    tail = _run("log", "tail", "-n", "2", "--db", db_url)
    assert tail.exit_code == 0
    assert "answer number 2" in tail.output and "answer number 0" not in tail.output
    status = _run("db", "status", "--db", db_url)
    assert "up to date" in status.output and "exchanges: 3 rows" in status.output


def test_log_tail_for_one_account_by_name(db_url: str) -> None:
    assert _run("accounts", "create", "carol", "--db", db_url).exit_code == 0
    engine = make_engine(db_url)
    with session_scope(engine) as s:
        carol = get_account(s, account="carol")
    with ExchangeLog(engine) as log:
        for account_id, text in ((carol.id, "for carol"), ("acct_other", "for someone else")):
            log.write_sync(
                ExchangeRecord(
                    account_id=account_id,
                    key_id="00000000000000aa",
                    ip="127.0.0.1",
                    endpoint="/v1/completions",
                    request={"prompt": "x"},
                    response_text=text,
                )
            )
    engine.dispose()
    tail = _run("log", "tail", "--account", "carol", "--db", db_url)
    assert "for carol" in tail.output and "someone else" not in tail.output
    assert isinstance(
        _run("log", "tail", "--account", "nobody", "--db", db_url).exception, NotFound
    )
