"""Whatever text and JSON a client sends comes back from the log as sent (property test),
except the characters no backend can store (NUL, lone surrogates), which become U+FFFD."""

from __future__ import annotations

import json
from decimal import Decimal

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import Engine

from distillguard.store import ExchangeLog, ExchangeRecord, session_scope
from distillguard.store.exchanges import get_exchange

# Any Unicode text, NUL and lone surrogates included (a decoder with surrogateescape makes them).
TEXT = st.text(st.characters(codec=None, exclude_categories=()), max_size=40)
JSON_VALUES = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**53), max_value=2**53)
    | st.floats(allow_nan=False, allow_infinity=False).filter(lambda x: x != 0.0 or str(x) == "0.0")
    | TEXT,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(TEXT, children, max_size=4),
    max_leaves=12,
)


def _storable(text: str) -> str:
    text = text.replace("\x00", "\ufffd")
    return text.encode("utf-8", "replace").decode("utf-8")


def _expected(value):
    """What the log must give back; integral floats as ints, since PostgreSQL's JSONB keeps
    numbers as numerics (JSON itself has one number type: 1e16 and 10000000000000000 agree)."""
    if isinstance(value, float) and value.is_integer():
        return int(Decimal(repr(value)))  # the number as written in JSON, not its binary value
    if isinstance(value, str):
        return _storable(value)
    if isinstance(value, list):
        return [_expected(v) for v in value]
    if isinstance(value, dict):
        return {_storable(k): _expected(v) for k, v in value.items()}
    return value


@settings(
    max_examples=25,
    deadline=None,
    derandomize=True,  # the same examples every run: CI never meets a new case by chance
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(body=st.dictionaries(TEXT, JSON_VALUES, max_size=5), answer=st.none() | TEXT)
def test_any_request_and_answer_round_trip(engine: Engine, body: dict, answer: str | None) -> None:
    record = ExchangeRecord(
        account_id="acct_p",
        key_id="00000000000000aa",
        ip="::1",
        endpoint="/v1/completions",
        request=body,
        response_text=answer,
        user_agent=answer,
    )
    with ExchangeLog(engine) as log:
        log.write_sync(record)
    with session_scope(engine) as session:
        stored = get_exchange(session, exchange_id=record.id)
    assert stored is not None
    expected = _expected(body)
    # Compared through JSON text: key order and -0.0 against 0.0 are not part of "as sent".
    got = _expected(stored.request)
    assert json.dumps(got, sort_keys=True) == json.dumps(expected, sort_keys=True)
    assert stored.response_text == (None if answer is None else _storable(answer))
