"""`distillguard actions apply|lift|list|audit` through Typer's CliRunner, on both backends."""

from __future__ import annotations

import getpass
import re
import sys

import pytest
from typer.testing import CliRunner

from distillguard.cli import app, main
from distillguard.store import list_actions, list_audit, make_engine, session_scope

runner = CliRunner()


def _run(*args: str):
    return runner.invoke(app, list(args))


def _fails(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], *args: str
) -> tuple[int, str]:
    """Run the real entry point, which turns an error into a message and its exit code."""
    monkeypatch.setattr(sys, "argv", ["distillguard", *args])
    with pytest.raises(SystemExit) as exit_info:
        main()
    return int(exit_info.value.code), capsys.readouterr().err


def test_apply_list_lift_and_audit(db_url: str, monkeypatch, capsys) -> None:
    assert _run("accounts", "create", "support-bot", "--db", db_url).exit_code == 0
    applied = _run(
        "actions",
        "apply",
        "support-bot",
        "throttle",
        "--reason",
        "burst of 9k",
        "--ttl",
        "3600",
        "--param",
        "rpm=5",
        "--db",
        db_url,
    )
    assert applied.exit_code == 0, applied.output
    action_id = re.search(r"action (\d+): throttle", applied.output).group(1)

    listed = _run("actions", "list", "--account", "support-bot", "--active", "--db", db_url)
    assert listed.exit_code == 0 and "throttle" in listed.output and "active" in listed.output

    lifted = _run("actions", "lift", action_id, "--reason", "customer explained", "--db", db_url)
    assert lifted.exit_code == 0, lifted.output
    code, err = _fails(
        monkeypatch, capsys, "actions", "lift", action_id, "--reason", "twice", "--db", db_url
    )
    assert code == 2 and "already lifted" in err

    audit = _run("actions", "audit", "--account", "support-bot", "--db", db_url)
    assert audit.exit_code == 0 and "action.lift" in audit.output
    engine = make_engine(db_url)
    with session_scope(engine) as s:
        (action,) = list_actions(s)
        events = [(e.event, e.actor) for e in list_audit(s)]
    engine.dispose()
    actor = f"cli:{getpass.getuser()}"
    assert action.params["rpm"] == 5 and action.lift_reason == "customer explained"
    assert events == [("action.apply", actor), ("action.lift", actor)]


def test_status_changes_and_keys_are_audited_with_the_cli_user(db_url: str) -> None:
    assert _run("accounts", "create", "app", "--db", db_url).exit_code == 0
    made = _run("keys", "create", "app", "--secret-only", "--db", db_url)
    key_id = made.output.strip().split("-")[1]
    assert _run("keys", "revoke", key_id, "--db", db_url).exit_code == 0
    assert (
        _run("accounts", "suspend", "app", "--reason", "chargeback", "--db", db_url).exit_code == 0
    )
    engine = make_engine(db_url)
    with session_scope(engine) as s:
        events = [(e.event, e.target, e.reason, e.details) for e in list_audit(s)]
    engine.dispose()
    created = {
        "rpm": None,
        "tpm": None,
        "alias": None,
        "expires_at": None,
        "token_budget": None,
        "spend_budget_usd": None,
    }
    assert events == [
        ("key.create", key_id, None, created),
        ("key.revoke", key_id, None, {}),
        ("account.status", None, "chargeback", {"from": "active", "to": "suspended"}),
    ]


def test_bad_input_is_a_message_and_an_exit_code(db_url: str, monkeypatch, capsys) -> None:
    assert _run("accounts", "create", "app", "--db", db_url).exit_code == 0
    cases = [
        (["actions", "apply", "nobody", "block", "--reason", "r", "--ttl", "60"], 3, "nobody"),
        (["actions", "apply", "app", "block", "--reason", "r", "--ttl", "0"], 2, "ttl_s"),
        (["actions", "apply", "app", "block", "--reason", "r", "--ttl", "-1"], 2, "ttl_s"),
        (["actions", "apply", "app", "block", "--reason", " ", "--ttl", "9"], 2, "reason"),
        (["actions", "apply", "app", "ban", "--reason", "r", "--ttl", "9"], 2, "unknown action"),
        (
            ["actions", "apply", "app", "block", "--reason", "r", "--ttl", "9", "--param", "x"],
            2,
            "name=value",
        ),
        (["actions", "lift", "4242", "--reason", "r"], 3, "no action"),
    ]
    for args, code, words in cases:
        got, err = _fails(monkeypatch, capsys, *args, "--db", db_url)
        assert got == code and words in err, (args, err)
    engine = make_engine(db_url)
    with session_scope(engine) as s:
        assert list_actions(s) == [] and list_audit(s) == []
    engine.dispose()
