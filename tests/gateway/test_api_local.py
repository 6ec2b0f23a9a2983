"""The gateway serving a real tiny model (local mode, KGW watermark), through the openai SDK.

The app runs under uvicorn on a thread of the test process so the test can look at the
engine's batching statistics; everything else is the same code the server runs.
"""

from __future__ import annotations

import asyncio
import time

import httpx
import openai
import pytest

from distillguard.config import Settings
from distillguard.gateway.app import create_app
from support.servers import ThreadedServer

ADMIN = "local-admin-token"
CHAT = [{"role": "user", "content": "What is the capital of France?"}]


@pytest.fixture(scope="module")
def server(tiny_model_dir, tmp_path_factory: pytest.TempPathFactory):
    settings = Settings(
        home=tmp_path_factory.mktemp("local"),
        model_dir=tiny_model_dir,
        model_name="tiny",
        watermark_scheme="kgw",
        watermark_secret="local-test-watermark-secret-0123456789",
        admin_token=ADMIN,
        batch_wait_ms=30.0,  # gather concurrent arrivals into one batch
        online_monitor=False,  # policy enforcement has its own tests
    )
    with ThreadedServer(create_app(settings)) as running:
        yield running


@pytest.fixture(scope="module")
def secret(server: ThreadedServer) -> str:
    admin = {"authorization": f"Bearer {ADMIN}"}
    account = httpx.post(
        f"{server.base_url}/admin/accounts", json={"name": "local"}, headers=admin
    ).json()
    created = httpx.post(
        f"{server.base_url}/admin/keys", json={"account": account["id"]}, headers=admin
    ).json()
    return created["secret"]


@pytest.fixture
def client(server: ThreadedServer, secret: str) -> openai.OpenAI:
    return openai.OpenAI(
        base_url=f"{server.base_url}/v1", api_key=secret, max_retries=0, timeout=60
    )


def engine_of(server: ThreadedServer):
    return server.app.state.gateway.backend.engine


def test_chat_with_seed_n_and_logprobs(server: ThreadedServer, client: openai.OpenAI) -> None:
    kwargs = dict(
        model="tiny", messages=CHAT, max_tokens=12, seed=11, n=3, logprobs=True, top_logprobs=3
    )
    answer = client.chat.completions.create(**kwargs)
    assert [c.index for c in answer.choices] == [0, 1, 2]
    engine = engine_of(server)
    assert answer.usage.prompt_tokens == len(engine.encode_chat(CHAT))
    tokens = 0
    for choice in answer.choices:
        assert choice.finish_reason in ("stop", "length")
        content = choice.logprobs.content
        assert len(content) <= 12 and all(t.logprob <= 0 for t in content)
        assert all(len(t.top_logprobs) == 3 for t in content)
        tokens += len(content)
    assert answer.usage.completion_tokens == tokens
    again = client.chat.completions.create(**kwargs)  # the same seed, the same answers
    assert [c.message.content for c in again.choices] == [c.message.content for c in answer.choices]


def test_stream_matches_the_unstreamed_answer(client: openai.OpenAI) -> None:
    kwargs = dict(model="tiny", messages=CHAT, max_tokens=16, seed=5, temperature=0.8)
    whole = client.chat.completions.create(**kwargs).choices[0].message.content
    chunks = list(
        client.chat.completions.create(
            **kwargs, stream=True, stream_options={"include_usage": True}
        )
    )
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == whole
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices]
    assert finishes[-1] in ("stop", "length") and chunks[-1].usage.total_tokens > 0


def test_legacy_completions_logprobs_and_stop(client: openai.OpenAI) -> None:
    answer = client.completions.create(
        model="tiny", prompt="The weather today", max_tokens=10, logprobs=2, seed=1
    )
    lp = answer.choices[0].logprobs
    assert len(lp.tokens) == len(lp.token_logprobs) == len(lp.text_offset)
    assert all(len(top) <= 2 for top in lp.top_logprobs)
    stopped = client.completions.create(
        model="tiny", prompt="The weather today", max_tokens=30, stop=["e"], seed=2
    )
    assert "e" not in stopped.choices[0].text


def test_concurrent_requests_are_batched(server: ThreadedServer, secret: str) -> None:
    engine = engine_of(server)
    before = engine.stats.max_rows

    async def burst() -> list[str]:
        client = openai.AsyncOpenAI(
            base_url=f"{server.base_url}/v1", api_key=secret, max_retries=0, timeout=60
        )
        try:
            answers = await asyncio.gather(
                *(
                    client.chat.completions.create(
                        model="tiny", messages=CHAT, max_tokens=24, seed=i
                    )
                    for i in range(6)
                )
            )
        finally:
            await client.close()
        return [a.choices[0].message.content for a in answers]

    assert len(asyncio.run(burst())) == 6
    assert max(engine.stats.max_rows, before) > 1  # decoded together, not one by one


def test_errors_and_watermark_logging(server: ThreadedServer, client: openai.OpenAI) -> None:
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="mock-model", messages=CHAT)
    long_prompt = [{"role": "user", "content": "word " * 5000}]
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(model="tiny", messages=long_prompt, max_tokens=5)
    assert caught.value.code == "context_length_exceeded"
    raw = client.chat.completions.with_raw_response.create(
        model="tiny", messages=CHAT, max_tokens=4
    )
    rows = httpx.get(
        f"{server.base_url}/admin/exchanges?limit=50", headers={"authorization": f"Bearer {ADMIN}"}
    ).json()["data"]
    logged = next(r for r in rows if r["id"] == raw.headers["x-request-id"])
    assert logged["watermark_scheme"] == "kgw" and logged["watermark_key_id"] == 1
    assert logged["response_text"] == raw.parse().choices[0].message.content
    assert {r["status"] for r in rows} >= {200, 400, 404}


def test_client_leaving_a_local_stream_keeps_its_row(server: ThreadedServer, secret: str) -> None:
    body = {
        "model": "tiny",
        "messages": CHAT,
        "stream": True,
        "max_tokens": 200,
        "stop": ["\x00never"],
    }
    with httpx.stream(
        "POST",
        f"{server.base_url}/v1/chat/completions",
        json=body,
        timeout=60,
        headers={"authorization": f"Bearer {secret}"},
    ) as resp:
        request_id = resp.headers["x-request-id"]
        for n, _line in enumerate(resp.iter_lines()):
            if n >= 6:
                break
    admin = {"authorization": f"Bearer {ADMIN}"}
    for _ in range(100):
        rows = httpx.get(f"{server.base_url}/admin/exchanges?limit=20", headers=admin).json()
        logged = next((r for r in rows["data"] if r["id"] == request_id), None)
        if logged is not None:
            break
        time.sleep(0.05)
    assert logged is not None and "disconnected" in logged["error"]
    assert logged["status"] == 200


def test_watermark_detection_is_mounted_for_admins(server: ThreadedServer) -> None:
    url = f"{server.base_url}/admin/watermark/detect"
    assert httpx.post(url, json={"text": "hello"}).status_code == 401
    answer = httpx.post(
        url,
        json={"text": "some text to score for a watermark"},
        headers={"authorization": f"Bearer {ADMIN}"},
        timeout=60,
    )
    assert answer.status_code == 200, answer.text
    assert answer.json()["scheme"] == "kgw"
