"""Accounts and keys on both backends: CRUD, authentication, hash-only storage, revocation."""

from __future__ import annotations

import hashlib

import pytest
from sqlalchemy import Engine, MetaData, select

from distillguard.errors import AuthError, InputError, NotFound, PermissionDenied
from distillguard.store import (
    authenticate,
    create_account,
    create_key,
    get_account,
    list_accounts,
    list_keys,
    make_engine,
    revoke_key,
    session_scope,
    set_account_status,
)
from distillguard.store.db import autocommit_connection


def _account_and_key(engine: Engine, name: str = "alice", **key_kw) -> tuple[str, str, str]:
    with session_scope(engine) as s:
        account = create_account(s, name=name, org="Acme", payment_fingerprint="card-1")
        key, secret = create_key(s, account=name, **key_kw)
    return account.id, key.key_id, secret


def test_accounts_create_get_list(engine: Engine) -> None:
    with session_scope(engine) as s:
        a = create_account(s, name="alice", org="Acme", payment_fingerprint="card-1")
        b = create_account(s, name="  bob  ")
    assert a.id != b.id and b.name == "bob" and b.org is None
    with session_scope(engine) as s:
        assert get_account(s, account=a.id) == get_account(s, account="alice")
        listed = list_accounts(s)
    assert [x.name for x in listed] == ["alice", "bob"]
    assert listed[0].payment_fingerprint == "card-1" and listed[0].status == "active"


def test_duplicate_and_empty_account_names_are_input_errors(engine: Engine) -> None:
    with session_scope(engine) as s:
        create_account(s, name="alice")
    with pytest.raises(InputError, match="already exists"), session_scope(engine) as s:
        create_account(s, name="alice")
    with pytest.raises(InputError), session_scope(engine) as s:
        create_account(s, name="   ")
    with session_scope(engine) as s:
        assert len(list_accounts(s)) == 1  # the failed attempts left nothing behind


def test_unknown_account_and_key_are_not_found(engine: Engine) -> None:
    with pytest.raises(NotFound), session_scope(engine) as s:
        create_key(s, account="nobody")
    with pytest.raises(NotFound), session_scope(engine) as s:
        revoke_key(s, key_id="0123456789abcdef")
    with pytest.raises(NotFound), session_scope(engine) as s:
        list_keys(s, account="nobody")


def test_key_limits_must_be_positive(engine: Engine) -> None:
    with session_scope(engine) as s:
        create_account(s, name="alice")
    for bad in ({"rpm": 0}, {"tpm": -5}):
        with pytest.raises(InputError), session_scope(engine) as s:
            create_key(s, account="alice", **bad)


def test_authenticate_returns_the_identity(engine: Engine) -> None:
    account_id, key_id, secret = _account_and_key(engine, rpm=60, tpm=5000)
    assert secret.startswith(f"dg-{key_id}-")
    with session_scope(engine) as s:
        who = authenticate(s, secret=secret)
    assert (who.key_id, who.account_id, who.account_name) == (key_id, account_id, "alice")
    assert (who.rpm, who.tpm, who.payment_fingerprint) == (60, 5000, "card-1")
    # A plain Connection works as well as a Session (the gateway may hold either).
    with engine.connect() as connection:
        assert authenticate(connection, secret=secret) == who


def test_unknown_key_and_wrong_secret_get_the_same_error(engine: Engine) -> None:
    _, key_id, secret = _account_and_key(engine)
    random_part = secret[len(f"dg-{key_id}-") :]
    wrong_secret = f"dg-{key_id}-{'A' * 43}"  # a real key id, a wrong secret
    unknown_key = f"dg-{'f' * 16}-{random_part}"  # the real secret under a made-up id
    messages = []
    for candidate in (wrong_secret, unknown_key):
        with pytest.raises(AuthError) as info, session_scope(engine) as s:
            authenticate(s, secret=candidate)
        messages.append(info.value.message)
    assert messages[0] == messages[1]


MALFORMED = [
    "",
    "sk-abc",
    "dg-",
    "dg-xyz-abc",
    "dg-0123456789abcdef-short",
    "Bearer dg-x",
    "dg-0123456789ABCDEF-" + "a" * 43,  # key ids are lower-case hex
    "dg-" + "a" * 5000,
]


def test_malformed_keys_are_refused(engine: Engine) -> None:
    for secret in MALFORMED:
        with pytest.raises(AuthError, match="malformed"), session_scope(engine) as s:
            authenticate(s, secret=secret)


def test_revocation_takes_effect_at_once_everywhere(engine: Engine, store_url: str) -> None:
    _, key_id, secret = _account_and_key(engine)
    replica = make_engine(store_url)  # a second gateway replica with its own pool
    with session_scope(replica) as s:
        authenticate(s, secret=secret)
    with session_scope(engine) as s:
        first = revoke_key(s, key_id=key_id)
    assert first.revoked
    for eng in (engine, replica):
        with pytest.raises(AuthError, match="revoked"), session_scope(eng) as s:
            authenticate(s, secret=secret)
    with session_scope(engine) as s:
        again = revoke_key(s, key_id=key_id)  # idempotent: keeps the first revocation time
        assert again.revoked_at == first.revoked_at
        keys = list_keys(s, account="alice")
        assert [k.key_id for k in keys] == [key_id] and keys[0].revoked
        assert list_accounts(s)[0].active_keys == 0
    replica.dispose()


def test_a_held_autocommit_connection_sees_a_revocation_at_once(engine: Engine) -> None:
    """The gateway's hot path keeps one connection open; no snapshot may hide a revocation."""
    _, key_id, secret = _account_and_key(engine)
    with autocommit_connection(engine) as held:
        assert authenticate(held, secret=secret).key_id == key_id
        with session_scope(engine) as s:
            revoke_key(s, key_id=key_id)
        with pytest.raises(AuthError, match="revoked"):
            authenticate(held, secret=secret)


def test_other_keys_of_the_account_survive_a_revocation(engine: Engine) -> None:
    _, key_id, secret = _account_and_key(engine)
    with session_scope(engine) as s:
        _, second = create_key(s, account="alice")
        revoke_key(s, key_id=key_id)
    with session_scope(engine) as s:
        assert authenticate(s, secret=second).account_name == "alice"
    with pytest.raises(AuthError), session_scope(engine) as s:
        authenticate(s, secret=secret)


def test_suspended_account_is_denied_then_reinstated(engine: Engine) -> None:
    _, _, secret = _account_and_key(engine)
    with session_scope(engine) as s:
        set_account_status(s, account="alice", status="suspended")
    with pytest.raises(PermissionDenied), session_scope(engine) as s:
        authenticate(s, secret=secret)
    with session_scope(engine) as s:
        set_account_status(s, account="alice", status="active")
        assert authenticate(s, secret=secret).account_name == "alice"
    with pytest.raises(InputError), session_scope(engine) as s:
        set_account_status(s, account="alice", status="banished")


def test_only_a_hash_of_the_secret_is_stored(engine: Engine) -> None:
    _, key_id, secret = _account_and_key(engine)
    random_part = secret[len(f"dg-{key_id}-") :]
    metadata = MetaData()
    metadata.reflect(engine)
    dump = []
    with engine.connect() as connection:
        for table in metadata.sorted_tables:
            for row in connection.execute(select(table)):
                dump.append(repr(tuple(row)))
    everything = "\n".join(dump)
    assert key_id in everything  # the public id is stored
    assert random_part not in everything and secret not in everything
    assert hashlib.sha256(secret.encode()).hexdigest() in everything
