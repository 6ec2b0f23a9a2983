"""Fuzzing the gateway (issue #16): no input may produce a 5xx or a hang.

Two generators against one real gateway process (mock upstream, SQLite log), each with a
fixed budget so that ``make test`` stays bounded:

- schemathesis over the gateway's own OpenAPI document (``/admin/openapi.json``: the admin
  and ops routes FastAPI documents, plus the raw ASGI OpenAI endpoints ``wire.openapi``
  describes), ``FUZZ_EXAMPLES`` cases per operation;
- a hypothesis body generator for the two completion endpoints: arbitrary JSON values and
  near-valid requests (real fields with hostile values), ``BODY_EXAMPLES`` bodies.

A case fails on any status >= 500, on an error that is not OpenAI's JSON error shape, and on a
response that takes longer than ``HANG_S`` (a hang). Every case is sent with a valid key or the
admin token, so it reaches the validation and serving code, not only the auth check.
"""

from __future__ import annotations

import secrets

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from distillguard.gateway.process import GatewayProcess

FUZZ_EXAMPLES = 20  # schemathesis cases per operation (~20 operations)
BODY_EXAMPLES = 150  # hypothesis bodies for the completion endpoints
HANG_S = 15.0  # a response slower than this (mock upstream: milliseconds) is a hang


def _bounded(max_examples: int) -> settings:
    return settings(
        max_examples=max_examples,
        deadline=None,  # the gateway is a separate process on a shared machine: no timing
        derandomize=True,  # the same cases every run: a failure reproduces
        suppress_health_check=list(HealthCheck),
        phases=[Phase.explicit, Phase.generate],  # no shrinking: bounded even when failing
        database=None,
    )


@pytest.fixture(scope="module")
def fuzz_gw(tmp_path_factory: pytest.TempPathFactory, mock_upstream) -> GatewayProcess:
    server = GatewayProcess(
        home=tmp_path_factory.mktemp("fuzz"),
        admin_token=secrets.token_urlsafe(16),
        upstream=mock_upstream.url,
        env={
            "DISTILLGUARD_ONLINE_MONITOR": "false",
            "DISTILLGUARD_REQUEST_TIMEOUT_S": "5",
            "DISTILLGUARD_DEFAULT_RPM": "100000",
            "DISTILLGUARD_DEFAULT_TPM": "100000000",
            "DISTILLGUARD_UNAUTH_LOG_PER_MINUTE": "100000",
        },
    )
    with server:
        yield server


@pytest.fixture(scope="module")
def api_key(fuzz_gw: GatewayProcess) -> str:
    return fuzz_gw.create_key()[2]


def _gateway_document() -> dict:
    """The document ``/admin/openapi.json`` serves, built without a server (collection time:
    schemathesis parametrizes from it); a test below checks the served one is the same."""
    from distillguard.config import Settings
    from distillguard.gateway.app import create_app
    from distillguard.wire.openapi import with_openai_paths

    return with_openai_paths(create_app(Settings()).openapi())


schema = schemathesis.openapi.from_dict(_gateway_document())


def _auth_for(path: str, fuzz_gw: GatewayProcess, api_key: str) -> dict[str, str]:
    token = api_key if path.startswith("/v1/") else fuzz_gw.admin_token
    return {"authorization": f"Bearer {token}"}


def _assert_served_or_refused_cleanly(status: int, content_type: str, body: bytes) -> None:
    assert status < 500, f"server error {status}: {body[:500]!r}"
    if status >= 400:  # every refusal in OpenAI's error shape
        assert content_type.startswith("application/json"), (status, content_type, body[:200])
        error = httpx.Response(status, content=body).json()["error"]
        assert set(error) == {"message", "type", "param", "code"} and error["message"]


@schema.parametrize()
@_bounded(FUZZ_EXAMPLES)
def test_no_schema_case_gets_a_server_error(case, fuzz_gw: GatewayProcess, api_key: str) -> None:
    path = case.operation.path
    response = case.call(
        base_url=fuzz_gw.base_url, headers=_auth_for(path, fuzz_gw, api_key), timeout=HANG_S
    )
    content_type = response.headers.get("content-type") or [""]  # schemathesis: lists
    _assert_served_or_refused_cleanly(response.status_code, content_type[0], response.content)


# --- the hypothesis body generator ---------------------------------------------------------

_scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=40)
)
_json = st.recursive(
    _scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner),
    max_leaves=12,
)
_hostile = _json | st.integers(min_value=2**63 - 2, max_value=2**64 + 2) | st.just("")
_messages = st.lists(
    st.fixed_dictionaries(
        {"role": st.sampled_from(["user", "system", "assistant", "tool", "robot"]) | _hostile},
        optional={"content": st.text(max_size=60) | _hostile, "name": _hostile},
    ),
    max_size=3,
)
_near_valid = st.fixed_dictionaries(
    {"model": st.sampled_from(["mock-model", "mock-refuse", "no-such-model"]) | _hostile},
    optional={
        "messages": _messages | _hostile,
        "prompt": st.text(max_size=60) | st.lists(st.text(max_size=20), max_size=3) | _hostile,
        "max_tokens": st.integers(min_value=-5, max_value=300_000) | _hostile,
        "temperature": st.floats(min_value=-1, max_value=3, allow_nan=False) | _hostile,
        "top_p": _hostile,
        "n": st.integers(min_value=-1, max_value=20) | _hostile,
        "seed": st.integers(min_value=-(2**65), max_value=2**65) | _hostile,
        "stop": _hostile,
        "stream": st.booleans() | _hostile,
        "stream_options": _hostile,
        "logprobs": st.booleans() | _hostile,
        "top_logprobs": _hostile,
        "metadata": _json,
    },
)
_raw_bodies = st.one_of(
    _near_valid.map(lambda body: httpx.Request("POST", "/", json=body).content),
    _json.map(lambda value: httpx.Request("POST", "/", json=value).content),
    st.binary(max_size=200),
)


@_bounded(BODY_EXAMPLES)
@given(
    endpoint=st.sampled_from(["/v1/chat/completions", "/v1/completions"]),
    body=_raw_bodies,
)
def test_no_body_gets_a_server_error_or_hangs(
    fuzz_gw: GatewayProcess, api_key: str, endpoint: str, body: bytes
) -> None:
    headers = {"authorization": f"Bearer {api_key}", "content-type": "application/json"}
    response = httpx.post(
        f"{fuzz_gw.base_url}{endpoint}", content=body, headers=headers, timeout=HANG_S
    )
    _assert_served_or_refused_cleanly(
        response.status_code, response.headers.get("content-type", ""), response.content
    )


def test_every_fuzzed_exchange_was_logged(fuzz_gw: GatewayProcess) -> None:
    """Runs after the fuzzers (file order): the log still reads back, every row is an object."""
    rows = fuzz_gw.exchanges(limit=1000)
    assert len(rows) >= 100
    assert all(isinstance(r["request"], dict) for r in rows)
    assert all(r["status"] < 500 for r in rows), [r for r in rows if r["status"] >= 500][:3]


def test_the_document_covers_the_openai_endpoints(fuzz_gw: GatewayProcess) -> None:
    admin = {"authorization": f"Bearer {fuzz_gw.admin_token}"}
    document = httpx.get(f"{fuzz_gw.base_url}/admin/openapi.json", headers=admin).json()
    chat = document["paths"]["/v1/chat/completions"]["post"]
    assert chat["requestBody"]["content"]["application/json"]["schema"]["$ref"].endswith(
        "ChatCompletionRequest"
    )
    assert "ChatCompletionRequest" in document["components"]["schemas"]
    assert document == _gateway_document()  # what the fuzzer generated from is what is served
