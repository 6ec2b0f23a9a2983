"""Keys with alias, expiry, metadata and token/spend budgets: the migration from a blank (and
from a populated 0001) database on SQLite and PostgreSQL, the store, the CLI, and a real
gateway refusing an expired key (401) and a key over budget (429 insufficient_quota)."""

from __future__ import annotations

import secrets
import time
from pathlib import Path

import httpx
import openai
import pytest
from alembic import command
from sqlalchemy import inspect, text
from typer.testing import CliRunner

from distillguard.cli import app
from distillguard.errors import AuthError, InputError, QuotaExceeded
from distillguard.gateway.process import GatewayProcess
from distillguard.store import make_engine, migrate, session_scope
from distillguard.store.accounts import (
    authenticate,
    charge_usage,
    create_account,
    create_key,
    key_usage,
    list_keys,
)
from distillguard.store.db import alembic_config

KEY_COLUMNS = {
    "alias",
    "expires_at",
    "metadata",
    "token_budget",
    "tokens_used",
    "spend_budget_usd",
    "spend_used_usd",
}
CHAT = [{"role": "user", "content": "hi"}]  # the mock upstream charges 7 + 4 = 11 tokens


def test_migration_adds_key_columns_to_a_populated_0001_database(db_url: str) -> None:
    engine = make_engine(db_url)
    with engine.connect() as connection:
        command.upgrade(alembic_config(connection), "0001")
        connection.commit()
        connection.execute(
            text(
                "INSERT INTO accounts (id, name, status, created_at) "
                "VALUES ('acct_old', 'old', 'active', 1.0)"
            )
        )
        connection.execute(
            text(
                "INSERT INTO api_keys (id, account_id, secret_hash, created_at) "
                "VALUES ('00000000000000aa', 'acct_old', :h, 1.0)"
            ),
            {"h": "0" * 64},
        )
        connection.commit()
    migrate(engine=engine)
    assert {c["name"] for c in inspect(engine).get_columns("api_keys")} >= KEY_COLUMNS
    with session_scope(engine) as session:
        (old,) = list_keys(session, account="old")
        # an existing key keeps working unchanged: no alias, no expiry, no budget, nothing used
        assert (old.alias, old.expires_at, old.token_budget, old.tokens_used) == (
            None,
            None,
            None,
            0,
        )
        assert old.spend_used_usd == 0.0
    with engine.connect() as connection:  # and the way back
        command.downgrade(alembic_config(connection), "0001")
        connection.commit()
    assert not KEY_COLUMNS & {c["name"] for c in inspect(engine).get_columns("api_keys")}
    engine.dispose()


def test_store_keeps_and_enforces_key_attributes(db_url: str) -> None:
    migrate(db_url)
    engine = make_engine(db_url)
    soon = time.time() + 3600
    with session_scope(engine) as session:
        create_account(session, name="acme")
        info, secret = create_key(
            session,
            account="acme",
            alias="ci-bot",
            expires_at=soon,
            metadata={"team": "search", "tags": ["nightly", 3]},
            token_budget=100,
            spend_budget_usd=2.5,
        )
    with session_scope(engine) as session:
        (listed,) = list_keys(session, account="acme")
        assert listed.alias == "ci-bot" and listed.expires_at == pytest.approx(soon)
        assert listed.metadata == {"team": "search", "tags": ["nightly", 3]}
        assert (listed.token_budget, listed.spend_budget_usd) == (100, 2.5)
        assert authenticate(session, secret=secret).alias == "ci-bot"
        charge_usage(session, key_id=info.key_id, tokens=60, spend_usd=1.0)
        charge_usage(session, key_id=info.key_id, tokens=40, spend_usd=0.5)
    with session_scope(engine) as session:
        usage = key_usage(session, key_id=info.key_id)
        assert (usage.tokens_used, usage.spend_used_usd) == (100, 1.5)
        with pytest.raises(QuotaExceeded, match="100 tokens is used up"):
            authenticate(session, secret=secret)
    engine.dispose()


@pytest.mark.parametrize(
    ("fields", "complaint"),
    [
        ({"expires_at": 1.0}, "not in the future"),
        ({"alias": "  "}, "alias"),
        ({"metadata": ["not", "an", "object"]}, "JSON object"),
        ({"metadata": {"blob": "x" * 20_000}}, "limit is 16384"),
        ({"token_budget": 0}, "token_budget must be a positive"),
        ({"spend_budget_usd": -1.0}, "spend_budget_usd must be a positive"),
    ],
)
def test_bad_key_attributes_are_input_errors(db_url: str, fields: dict, complaint: str) -> None:
    migrate(db_url)
    engine = make_engine(db_url)
    with session_scope(engine) as session:
        create_account(session, name="acme")
    with pytest.raises(InputError, match=complaint), session_scope(engine) as session:
        create_key(session, account="acme", **fields)
    engine.dispose()


def test_expired_key_is_refused_by_the_store(db_url: str) -> None:
    migrate(db_url)
    engine = make_engine(db_url)
    with session_scope(engine) as session:
        create_account(session, name="acme")
        _, secret = create_key(session, account="acme", expires_at=time.time() + 3600)
        # the clock moves on: set the expiry in the past the way a long wait would
        session.execute(text("UPDATE api_keys SET expires_at = 1.0"))
    with (
        pytest.raises(AuthError, match="expired at 1970-01-01") as caught,
        session_scope(engine) as session,
    ):
        authenticate(session, secret=secret)
    assert caught.value.code == "expired_api_key"
    engine.dispose()


def test_cli_creates_and_lists_keys_with_attributes(tmp_path: Path) -> None:
    db = f"sqlite:///{tmp_path / 'cli.db'}"
    runner = CliRunner()
    assert runner.invoke(app, ["accounts", "create", "acme", "--db", db]).exit_code == 0
    made = runner.invoke(
        app,
        [
            *("keys", "create", "acme", "--alias", "nightly", "--expires-in", "30d"),
            *("--metadata", '{"team": "search"}', "--token-budget", "5000", "--db", db),
        ],
    )
    assert made.exit_code == 0, made.output
    listed = runner.invoke(app, ["keys", "list", "acme", "--db", db], env={"COLUMNS": "200"})
    assert "nightly" in listed.output and "0/5000 tok" in listed.output
    engine = make_engine(db)
    with session_scope(engine) as session:
        (key,) = list_keys(session, account="acme")
    engine.dispose()
    assert key.metadata == {"team": "search"}
    assert key.expires_at == pytest.approx(time.time() + 30 * 86400, abs=60)

    for bad, says in [
        (["--metadata", "[1]"], "JSON object"),
        (["--expires-in", "soon"], "not a duration"),
        (["--spend-budget", "5"], "needs token prices"),
        (["--expires", "2001-01-01"], "not in the future"),
    ]:
        refused = runner.invoke(app, ["keys", "create", "acme", *bad, "--db", db])
        assert isinstance(refused.exception, InputError), refused.output
        assert says in refused.exception.message  # `distillguard` prints it, exits 2


@pytest.fixture(scope="module")
def priced_gateway(tmp_path_factory: pytest.TempPathFactory, mock_upstream):
    """One gateway charging $1 per completion token (the mock answers 4) and nothing for
    prompts, so budgets are reached in a few requests."""
    with GatewayProcess(
        home=tmp_path_factory.mktemp("keys-gw"),
        admin_token=secrets.token_urlsafe(16),
        upstream=mock_upstream.url,
        env={
            "DISTILLGUARD_ONLINE_MONITOR": "false",
            "DISTILLGUARD_PRICE_COMPLETION_PER_MTOK": "1000000",
        },
    ) as gw:
        yield gw


def _key(gw: GatewayProcess, **fields) -> tuple[dict, str]:
    account = gw.admin_post("/accounts", {"name": f"acct-{secrets.token_hex(3)}"})["id"]
    created = gw.admin_post("/keys", {"account": account, **fields})
    return created["key"], created["secret"]


def _client(gw: GatewayProcess, secret: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=gw.api_url, api_key=secret, max_retries=0, timeout=20)


def _served_until_refused(gw: GatewayProcess, secret: str) -> tuple[int, openai.APIStatusError]:
    client = _client(gw, secret)
    for served in range(20):
        try:
            client.chat.completions.create(model="mock-model", messages=CHAT)
        except openai.APIStatusError as refused:
            return served, refused
    raise AssertionError("20 requests served: the budget was never enforced")


@pytest.mark.parametrize(
    ("budget", "used_field", "used_after"),
    [
        ({"token_budget": 30}, "tokens_used", 33),  # 11 tokens a request: 0, 11, 22 pass
        ({"spend_budget_usd": 10.0}, "spend_used_usd", 12.0),  # $4 a request: 0, 4, 8 pass
    ],
)
def test_key_over_budget_gets_insufficient_quota(
    priced_gateway: GatewayProcess, budget: dict, used_field: str, used_after: float
) -> None:
    gw = priced_gateway
    key, secret = _key(gw, alias="budgeted", metadata={"plan": "trial"}, **budget)
    served, refused = _served_until_refused(gw, secret)
    assert served == 3
    assert refused.status_code == 429 and "retry-after" not in refused.response.headers
    error = refused.response.json()["error"]
    assert (error["type"], error["code"]) == ("insufficient_quota", "insufficient_quota")
    assert "exceeded your current quota" in error["message"]
    (listed,) = [k for k in gw.admin_get("/keys")["data"] if k["key_id"] == key["key_id"]]
    assert listed[used_field] == used_after
    assert (listed["alias"], listed["metadata"]) == ("budgeted", {"plan": "trial"})
    statuses = [row["status"] for row in gw.exchanges(account=key["account_id"])]
    assert sorted(statuses) == [200, 200, 200, 429]  # the refusal is in the log too


def test_expired_key_gets_401(priced_gateway: GatewayProcess) -> None:
    gw = priced_gateway
    key, secret = _key(gw, expires_in_s=1.0)
    client = _client(gw, secret)
    client.chat.completions.create(model="mock-model", messages=CHAT)  # valid, and now cached
    while time.time() <= key["expires_at"]:
        time.sleep(0.05)
    with pytest.raises(openai.AuthenticationError) as caught:
        client.chat.completions.create(model="mock-model", messages=CHAT)
    error = caught.value.response.json()["error"]
    assert error["code"] == "expired_api_key" and "expired at" in error["message"]
    models = httpx.get(f"{gw.api_url}/models", headers={"authorization": f"Bearer {secret}"})
    assert models.status_code == 401


def test_admin_api_refuses_bad_key_attributes(priced_gateway: GatewayProcess) -> None:
    gw = priced_gateway
    account = gw.admin_post("/accounts", {"name": f"acct-{secrets.token_hex(3)}"})["id"]
    auth = {"authorization": f"Bearer {gw.admin_token}"}
    for body, says in [
        ({"expires_at": time.time() + 60, "expires_in_s": 60}, "not both"),
        ({"metadata": "team=a"}, "metadata"),
        ({"token_budget": 0}, "token_budget"),
        ({"expires_at": 5.0}, "not in the future"),
    ]:
        answer = httpx.post(
            f"{gw.base_url}/admin/keys", json={"account": account, **body}, headers=auth
        )
        assert answer.status_code == 400, answer.text
        assert says in answer.json()["error"]["message"]
