"""The 2026 API surface in --upstream mode, through the official openai SDK: /v1/responses
(plain and streamed), /v1/embeddings, tools, n > 1, refusals, content parts, strict fields,
and what each exchange leaves in the log and in the traffic export.

One gateway process (SQLite log) proxies to the in-process mock upstream for the module;
every test makes its own account and key.
"""

from __future__ import annotations

import base64
import hashlib
import secrets

import httpx
import openai
import orjson
import pytest

from distillguard.gateway.process import GatewayProcess
from distillguard.store import make_engine
from distillguard.store.export import export_traffic
from distillguard.traffic import JsonlReader, TrafficRecord
from support.servers import EMBEDDING_DIMS

CHAT = [{"role": "user", "content": "hello gateway"}]
TOOL = {
    "type": "function",
    "function": {
        "name": "lookup",
        "description": "look a fact up",
        "parameters": {"type": "object", "properties": {"query": {"type": "string"}}},
    },
}
PIXEL = base64.b64encode(b"\x89PNG\r\n\x1a\n" + b"\x00" * 64).decode()
IMAGE_URL = f"data:image/png;base64,{PIXEL}"


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory, mock_upstream) -> GatewayProcess:
    server = GatewayProcess(
        home=tmp_path_factory.mktemp("gw-api"),
        admin_token=secrets.token_urlsafe(16),
        upstream=mock_upstream.url,
        env={"DISTILLGUARD_ONLINE_MONITOR": "false"},
    )
    with server:
        yield server


def sdk(gw: GatewayProcess, secret: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=gw.api_url, api_key=secret, max_retries=0, timeout=20)


def rows_of(gw: GatewayProcess, account_id: str) -> list[dict]:
    """The account's log rows, oldest first."""
    return list(reversed(gw.exchanges(account=account_id)))


def exported(gw: GatewayProcess, account_id: str, tmp_path) -> list[TrafficRecord]:
    """The account's lines in a traffic export of the gateway's database, read back through
    the validating reader (nothing skipped)."""
    engine = make_engine(f"sqlite:///{gw.home / 'distillguard.db'}")
    try:
        export_traffic(engine, tmp_path / "traffic.jsonl")
    finally:
        engine.dispose()
    reader = JsonlReader(tmp_path / "traffic.jsonl", TrafficRecord.from_dict)
    records = [r for r in reader if r.account_id == account_id]
    assert reader.skipped == 0, reader.summary().describe()
    return records


# --- /v1/responses ---------------------------------------------------------------------------


def test_responses_are_proxied_and_logged_with_their_output(
    gw: GatewayProcess, mock_upstream, tmp_path
) -> None:
    account_id, _, secret = gw.create_key()
    raw = sdk(gw, secret).responses.with_raw_response.create(
        model="mock-model", input="hello responses", instructions="be brief", metadata={"t": "1"}
    )
    answer = raw.parse()
    assert answer.output_text == "mock answer to: hello responses"
    assert raw.headers["x-ratelimit-limit-requests"] and raw.headers["x-request-id"]
    assert mock_upstream.requests[-1]["instructions"] == "be brief"
    (row,) = rows_of(gw, account_id)
    assert row["endpoint"] == "/v1/responses" and row["status"] == 200
    assert row["request"]["input"] == "hello responses"
    assert row["response_text"] == answer.output_text
    assert row["response"]["output"][0]["content"][0]["text"] == answer.output_text
    assert row["choices"] == [
        {
            "index": 0,
            "text": answer.output_text,
            "finish_reason": "stop",
            "tool_calls": None,
            "refusal": None,
        }
    ]
    assert (row["prompt_tokens"], row["completion_tokens"]) == (
        answer.usage.input_tokens,
        answer.usage.output_tokens,
    )
    (line,) = exported(gw, account_id, tmp_path)
    assert line.response is not None and line.response["id"] == answer.id
    assert line.choices == row["choices"] and line.response_text == answer.output_text


def test_responses_stream_passes_events_and_logs_the_assembled_answer(
    gw: GatewayProcess,
) -> None:
    account_id, _, secret = gw.create_key()
    events = list(
        sdk(gw, secret).responses.create(model="mock-model", input="streamed", stream=True)
    )
    kinds = [e.type for e in events]
    assert kinds[0] == "response.created" and kinds[-1] == "response.completed"
    deltas = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    assert deltas == "mock answer to: streamed"
    # on the wire: OpenAI's named events, and no chat-style [DONE]
    with httpx.stream(
        "POST",
        f"{gw.api_url}/responses",
        headers={"authorization": f"Bearer {secret}"},
        json={"model": "mock-model", "input": "streamed", "stream": True},
        timeout=20,
    ) as resp:
        lines = [line for line in resp.iter_lines() if line]
    assert lines[0] == "event: response.created" and lines[1].startswith("data: {")
    assert "data: [DONE]" not in lines
    first, second = rows_of(gw, account_id)
    for row in (first, second):
        assert row["response_text"] == deltas and row["status"] == 200
        assert row["response"]["status"] == "completed"
        assert row["choices"][0]["text"] == deltas
        assert row["completion_tokens"] == events[-1].response.usage.output_tokens


def test_responses_function_call_is_logged_with_its_arguments(gw: GatewayProcess) -> None:
    account_id, _, secret = gw.create_key()
    tool = {"type": "function", "name": "lookup", "parameters": {"type": "object"}}
    answer = sdk(gw, secret).responses.create(model="mock-tools", input="find x", tools=[tool])
    (call,) = answer.output
    assert call.type == "function_call" and call.name == "lookup"
    (row,) = rows_of(gw, account_id)
    assert row["response_text"] is None
    (choice,) = row["choices"]
    assert choice["finish_reason"] == "tool_calls"
    assert choice["tool_calls"] == [
        {
            "id": call.call_id,
            "type": "function",
            "function": {"name": "lookup", "arguments": call.arguments},
        }
    ]
    assert orjson.loads(choice["tool_calls"][0]["function"]["arguments"]) == {
        "query": "mock answer to: find x"
    }


# --- /v1/embeddings --------------------------------------------------------------------------


def test_embeddings_are_proxied_limited_and_logged_without_vectors(
    gw: GatewayProcess, tmp_path
) -> None:
    account_id, _, secret = gw.create_key()
    client = sdk(gw, secret)
    raw = client.embeddings.with_raw_response.create(model="mock-model", input=["a", "b", "c"])
    answer = raw.parse()
    assert len(answer.data) == 3 and len(answer.data[0].embedding) == EMBEDDING_DIMS
    assert int(raw.headers["x-ratelimit-remaining-requests"]) >= 0
    # the SDK's default asks for base64 vectors: the log counts their dimensions all the same
    client.embeddings.create(model="mock-model", input="one")
    first, second = rows_of(gw, account_id)
    assert first["endpoint"] == "/v1/embeddings" and first["request"]["input"] == ["a", "b", "c"]
    assert first["response"] == {
        "object": "list",
        "model": "mock-model",
        "count": 3,
        "dims": EMBEDDING_DIMS,
        "usage": {"prompt_tokens": 9, "total_tokens": 9},
    }
    assert second["response"]["count"] == 1 and second["response"]["dims"] == EMBEDDING_DIMS
    assert first["prompt_tokens"] == 9 and first["completion_tokens"] == 0
    assert first["response_text"] is None and first["choices"] is None
    assert first["watermark_scheme"] is None  # nothing sampled
    lines = exported(gw, account_id, tmp_path)
    assert [line.response["count"] for line in lines if line.response] == [3, 1]
    assert "embedding" not in orjson.dumps([line.response for line in lines]).decode()


def test_embeddings_bad_input_is_400_naming_the_field(gw: GatewayProcess) -> None:
    _, _, secret = gw.create_key()
    with pytest.raises(openai.BadRequestError) as bad:
        sdk(gw, secret).embeddings.create(model="mock-model", input=[])
    assert bad.value.body["param"].startswith("input")


def test_embeddings_are_rate_limited_like_chat(gw: GatewayProcess) -> None:
    _, _, secret = gw.create_key(rpm=2)
    client = sdk(gw, secret)
    client.embeddings.create(model="mock-model", input="x")
    client.chat.completions.create(model="mock-model", messages=CHAT)
    with pytest.raises(openai.RateLimitError):
        client.embeddings.create(model="mock-model", input="x")


# --- chat: tools, n > 1, refusals, content parts ---------------------------------------------


def test_every_choice_and_tool_call_is_logged(gw: GatewayProcess, mock_upstream, tmp_path) -> None:
    account_id, _, secret = gw.create_key()
    client = sdk(gw, secret)
    answer = client.chat.completions.create(
        model="mock-tools",
        messages=CHAT,
        n=3,
        tools=[TOOL],
        tool_choice="required",
        parallel_tool_calls=False,
        seed=5,
        user="end-user-7",
        metadata={"purpose": "test"},
        reasoning_effort="low",
        logit_bias={"50256": -100},
        response_format={"type": "text"},
    )
    sent = mock_upstream.requests[-1]
    assert sent["tools"] == [TOOL] and sent["tool_choice"] == "required"
    assert sent["logit_bias"] == {"50256": -100} and sent["reasoning_effort"] == "low"
    assert sent["user"] == "end-user-7" and sent["metadata"] == {"purpose": "test"}
    (row,) = rows_of(gw, account_id)
    assert len(row["choices"]) == 3
    for choice, logged in zip(answer.choices, row["choices"], strict=True):
        (call,) = choice.message.tool_calls
        assert logged["index"] == choice.index and logged["finish_reason"] == "tool_calls"
        assert logged["tool_calls"][0]["function"] == {
            "name": call.function.name,
            "arguments": call.function.arguments,
        }
    assert row["response_text"] is None  # choice 0 has no text: its call is in `choices`
    (line,) = exported(gw, account_id, tmp_path)
    assert line.choices == row["choices"]


def test_streamed_n_and_tool_call_arguments_are_assembled(gw: GatewayProcess) -> None:
    account_id, _, secret = gw.create_key()
    client = sdk(gw, secret)
    chunks = list(
        client.chat.completions.create(model="mock-model", messages=CHAT, n=2, stream=True)
    )
    texts = {0: "", 1: ""}
    for chunk in chunks:
        for choice in chunk.choices:
            texts[choice.index] += choice.delta.content or ""
    assert texts == {0: "mock answer to: hello gateway", 1: "mock answer to: hello gateway #1"}
    list(
        client.chat.completions.create(model="mock-tools", messages=CHAT, tools=[TOOL], stream=True)
    )
    plain, tools = rows_of(gw, account_id)
    assert [c["text"] for c in plain["choices"]] == [texts[0], texts[1]]
    assert plain["response_text"] == texts[0]
    assert [c["finish_reason"] for c in plain["choices"]] == ["stop", "stop"]
    (call,) = tools["choices"][0]["tool_calls"]
    assert call["id"] == "call_0" and call["function"]["name"] == "lookup"
    assert orjson.loads(call["function"]["arguments"]) == {"query": "mock answer to: hello gateway"}


def test_refusals_are_logged(gw: GatewayProcess) -> None:
    account_id, _, secret = gw.create_key()
    answer = sdk(gw, secret).chat.completions.create(model="mock-refusal", messages=CHAT, n=2)
    (row,) = rows_of(gw, account_id)
    assert [c["refusal"] for c in row["choices"]] == [c.message.refusal for c in answer.choices]
    assert row["choices"][1]["refusal"] == "I can't help with that #1"


def test_image_parts_pass_through_and_the_log_keeps_a_marker(
    gw: GatewayProcess, mock_upstream
) -> None:
    account_id, _, secret = gw.create_key()
    content = [
        {"type": "text", "text": "what is in "},
        {"type": "image_url", "image_url": {"url": IMAGE_URL, "detail": "low"}},
        {"type": "text", "text": "this picture?"},
        {"type": "image_url", "image_url": {"url": "https://example.com/cat.png"}},
    ]
    messages = [{"role": "user", "content": content}]
    answer = sdk(gw, secret).chat.completions.create(model="mock-model", messages=messages)
    assert answer.choices[0].message.content == "mock answer to: what is in this picture?"
    assert mock_upstream.requests[-1]["messages"][0]["content"] == content  # bytes forwarded
    (row,) = rows_of(gw, account_id)
    logged = row["request"]["messages"][0]["content"]
    assert logged[0] == content[0] and logged[2] == content[2]  # text parts as sent
    marker = logged[1]["image_url"]["url"]
    assert marker == {
        "_omitted": "image_url",
        "media_type": "image/png",
        "chars": len(IMAGE_URL),
        "sha256": hashlib.sha256(IMAGE_URL.encode()).hexdigest(),
    }
    assert logged[1]["image_url"]["detail"] == "low"
    assert logged[3] == content[3]  # a link is not bytes: kept as evidence
    assert PIXEL not in orjson.dumps(row).decode()


def test_unknown_content_part_is_400_naming_its_type(gw: GatewayProcess) -> None:
    _, _, secret = gw.create_key()
    messages = [{"role": "user", "content": [{"type": "video_url", "video_url": "x"}]}]
    with pytest.raises(openai.BadRequestError) as bad:
        sdk(gw, secret).chat.completions.create(model="mock-model", messages=messages)
    assert bad.value.body["param"] == "messages.0.content"
    assert "'video_url'" in bad.value.body["message"]


def test_unknown_top_level_field_is_400_naming_it(gw: GatewayProcess, mock_upstream) -> None:
    account_id, _, secret = gw.create_key()
    client = sdk(gw, secret)
    with pytest.raises(openai.BadRequestError) as bad:
        client.chat.completions.create(
            model="mock-model", messages=CHAT, extra_body={"temprature": 0.2}
        )
    assert bad.value.body["param"] == "temprature"
    assert bad.value.body["code"] == "unknown_parameter"
    with pytest.raises(openai.BadRequestError) as bad_responses:
        client.responses.create(model="mock-model", input="x", extra_body={"n": 3})
    assert bad_responses.value.body["param"] == "n"
    # an engine extension (vLLM's top_k) is forwarded
    client.chat.completions.create(model="mock-model", messages=CHAT, extra_body={"top_k": 5})
    assert mock_upstream.requests[-1]["top_k"] == 5
    statuses = [r["status"] for r in rows_of(gw, account_id)]
    assert statuses == [400, 400, 200]  # refusals are logged too


# --- x-ratelimit-* on the new endpoints ------------------------------------------------------


def test_ratelimit_headers_on_streams_and_upstream_refusals(gw: GatewayProcess) -> None:
    _, _, secret = gw.create_key(rpm=5, tpm=100_000)
    client = sdk(gw, secret)
    with client.responses.with_streaming_response.create(
        model="mock-model", input="x", stream=True
    ) as streamed:
        assert streamed.headers["x-ratelimit-remaining-requests"] == "4"
        assert streamed.headers["x-ratelimit-limit-tokens"] == "100000"
        assert "".join(streamed.iter_lines())
    # an upstream that refuses a stream: its error, with the window the request was charged to
    refused = httpx.post(
        f"{gw.api_url}/chat/completions",
        headers={"authorization": f"Bearer {secret}"},
        json={"model": "mock-refuse", "messages": CHAT, "stream": True},
        timeout=20,
    )
    assert refused.status_code == 400 and refused.json()["error"]["code"] == "mock_refusal"
    assert refused.headers["x-ratelimit-remaining-requests"] == "3"
    assert refused.headers["x-ratelimit-reset-requests"]
