"""A real gateway serving the tiny model with KGW: answers (n > 1, seeded, streamed) carry the
mark of their account, the exchange log names scheme and key id, and detection is admin-only."""

from __future__ import annotations

import json
import urllib.error
import urllib.request

import pytest
from openai import OpenAI

from .conftest import SECRET

pytestmark = pytest.mark.slow  # starts a real gateway process


def _post(url: str, body: dict, token: str | None) -> tuple[int, dict]:
    req = urllib.request.Request(url, data=json.dumps(body).encode(), method="POST")
    req.add_header("Content-Type", "application/json")
    if token:
        req.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(req, timeout=60) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"{}")


def test_gateway_answers_are_marked_attributed_and_detected_by_admins(
    gateway_server, tiny_model_dir, shared_data
) -> None:
    # shared_data: p < 1e-3 on ~30-token answers needs a model trained on real answers; the
    # built-in fallback text leaves too little entropy for that.
    gw = gateway_server(
        model_dir=tiny_model_dir,
        watermark="kgw",
        watermark_secret=SECRET.decode(),
        watermark_key_id=2,
    )
    base_url, admin = gw
    texts, owners = [], []
    for account in ("wm-alice", "wm-bob"):
        account_id, _, secret = gw.create_key(account)
        client = OpenAI(base_url=gw.api_url, api_key=secret)
        model = client.models.list().data[0].id
        messages = [{"role": "user", "content": f"Tell me a story, {account}."}]
        out = client.chat.completions.create(
            model=model, messages=messages, n=3, max_tokens=80, seed=3, temperature=1.0
        )
        again = client.chat.completions.create(
            model=model, messages=messages, n=3, max_tokens=80, seed=3, temperature=1.0
        )
        first = [c.message.content for c in out.choices]
        assert first == [c.message.content for c in again.choices]  # seeded: reproducible
        stream = client.chat.completions.create(
            model=model, messages=messages, max_tokens=80, stream=True
        )
        streamed = "".join(ch.choices[0].delta.content or "" for ch in stream if ch.choices)
        texts += [c.message.content for c in out.choices] + [streamed]
        owners += [account_id] * 4
    logged = gw.exchanges()
    assert logged and all(
        e["watermark_scheme"] == "kgw" and e["watermark_key_id"] == 2
        for e in logged
        if e["status"] == 200
    )
    url = f"{base_url}/admin/watermark/detect"
    accounts = sorted(set(owners))
    status, _ = _post(url, {"texts": texts, "accounts": accounts}, token=None)
    assert status == 401
    status, body = _post(url, {"texts": texts, "accounts": accounts}, token=admin)
    assert status == 200, body
    # the tiny model may end an answer early: judge the answers long enough to carry evidence
    results = [r for r in body["results"] if "p_value" in r and r["num_scored"] >= 30]
    assert len(results) >= 3, [(r.get("num_scored"), r.get("p_value")) for r in body["results"]]
    assert sum(r["p_value"] < 1e-3 for r in results) >= len(results) - 1
    assert all(r["key_id"] == 2 and r["keys_tried"] == 2 for r in results)
    best = {r["line"]: r["accounts"][0]["account"] for r in results if r["p_value"] < 1e-6}
    assert sum(best[i] == owners[i] for i in best) >= len(best) - 1
