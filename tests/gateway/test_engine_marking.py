"""Proxy mode in front of a marking engine: the account goes to the engine in its own field,
the log records what the engine applies, and an upstream that would answer unmarked is refused
at start. (The engine here is the mock upstream: what it receives is what vLLM/SGLang get.)"""

from __future__ import annotations

import json
import pickle

import openai
import pytest

from distillguard.errors import ConfigError
from distillguard.gateway.engine_marking import upstream_marking

CHAT = [{"role": "user", "content": "hello marking engine"}]


def _sdk(gw, secret: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=gw.api_url, api_key=secret, max_retries=0, timeout=20)


def _seen_by_upstream(mock_upstream, text: str) -> dict:
    return next(
        b for b in reversed(mock_upstream.requests) if text in json.dumps(b.get("messages"))
    )


def test_vllm_gets_the_account_in_vllm_xargs_and_the_log_records_the_scheme(
    gateway_server, mock_upstream
) -> None:
    gw = gateway_server(watermark="gumbel", upstream_engine="vllm", online_monitor="false")
    account, _, secret = gw.create_key()
    messages = [{"role": "user", "content": "vllm account please"}]
    raw = _sdk(gw, secret).chat.completions.with_raw_response.create(
        model="mock-model",
        messages=messages,
        # a client naming another account is overridden: the key decides whose mark it gets
        extra_body={"vllm_xargs": {"distillguard_account": "somebody_else", "other": 1}},
    )
    assert raw.parse().choices[0].message.content
    body = _seen_by_upstream(mock_upstream, "vllm account please")
    assert body["vllm_xargs"] == {"distillguard_account": account, "other": 1}
    logged = next(r for r in gw.exchanges() if r["id"] == raw.headers["x-request-id"])
    assert (logged["watermark_scheme"], logged["watermark_key_id"]) == ("gumbel", 1)
    stream = _sdk(gw, secret).chat.completions.create(
        model="mock-model",
        messages=[{"role": "user", "content": "streamed account"}],
        stream=True,
    )
    assert "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
    assert _seen_by_upstream(mock_upstream, "streamed account")["vllm_xargs"] == {
        "distillguard_account": account
    }


def test_sglang_gets_the_processor_reference_and_the_account(gateway_server, mock_upstream) -> None:
    gw = gateway_server(watermark="kgw", upstream_engine="sglang", online_monitor="false")
    account, _, secret = gw.create_key()
    _sdk(gw, secret).chat.completions.create(
        model="mock-model", messages=[{"role": "user", "content": "sglang account please"}]
    )
    body = _seen_by_upstream(mock_upstream, "sglang account please")
    assert body["custom_params"] == {"distillguard_account": account}
    ref = bytes.fromhex(json.loads(body["custom_logit_processor"])["callable"])
    # a pickle *by reference* to the plugin class (SGLang imports it from its environment)
    assert b"distillguard.watermark.engines.sglang" in ref and b"DistillGuardLogitProcessor" in ref
    with pytest.raises(ImportError):  # resolving it needs SGLang, which only the engine has
        pickle.loads(ref)


def test_an_upstream_that_would_answer_unmarked_is_refused_at_start(gateway_server) -> None:
    with pytest.raises(RuntimeError, match="install distillguard into the engine"):
        gateway_server(watermark="kgw", online_monitor="false")
    with pytest.raises(ConfigError, match="UPSTREAM_ENGINE"):
        upstream_marking(upstream_url="http://x", engine="tgi", scheme="kgw", key_id=1)
    assert upstream_marking(upstream_url="http://x", engine="none", scheme="off", key_id=1) is None
    assert upstream_marking(upstream_url=None, engine="none", scheme="kgw", key_id=1) is None
