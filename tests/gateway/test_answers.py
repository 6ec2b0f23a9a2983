"""``wire.answers``: what the log keeps of each answer shape, and of media in requests."""

from __future__ import annotations

import base64
import hashlib
import struct

from distillguard.wire.answers import (
    ChoiceAccumulator,
    chat_choices,
    embeddings_log,
    needs_redaction,
    redact_media,
    responses_choice,
)


def _chunk(index: int, delta: dict, finish: str | None = None) -> dict:
    return {"choices": [{"index": index, "delta": delta, "finish_reason": finish}]}


def test_stream_assembles_interleaved_choices_and_split_tool_arguments() -> None:
    acc = ChoiceAccumulator(chat=True)
    first = {"index": 0, "id": "call_a", "type": "function", "function": {"name": "f"}}
    new_text = [
        acc.feed(_chunk(1, {"role": "assistant", "tool_calls": [first]})),
        acc.feed(_chunk(0, {"content": "Hel"})),
        acc.feed(_chunk(1, {"tool_calls": [{"index": 0, "function": {"arguments": '{"x"'}}]})),
        acc.feed(_chunk(0, {"content": "lo"}, "stop")),
        acc.feed(_chunk(1, {"tool_calls": [{"index": 0, "function": {"arguments": ": 1}"}}]})),
        acc.feed(_chunk(2, {"refusal": "No"})),
        acc.feed(_chunk(1, {}, "tool_calls")),
        acc.feed({"choices": [], "usage": {"prompt_tokens": 1}}),
    ]
    assert "".join(new_text) == "Hello"  # choice 0 only: response_text
    zero, one, two = acc.choices()
    assert (zero["text"], zero["finish_reason"], zero["tool_calls"]) == ("Hello", "stop", None)
    assert one["text"] is None and one["finish_reason"] == "tool_calls"
    assert one["tool_calls"] == [
        {"id": "call_a", "type": "function", "function": {"name": "f", "arguments": '{"x": 1}'}}
    ]
    assert two["refusal"] == "No" and two["finish_reason"] is None  # cut before it finished


def test_chat_choices_keep_legacy_function_calls_and_ignore_foreign_shapes() -> None:
    body = {
        "choices": [
            {"index": 1, "message": {"content": "b"}, "finish_reason": "stop"},
            {"index": 0, "message": {"function_call": {"name": "f", "arguments": "{}"}}},
            "not a choice",
        ]
    }
    zero, one = chat_choices(body)
    assert zero["tool_calls"] == [
        {"type": "function", "function": {"name": "f", "arguments": "{}"}}
    ]
    assert one["text"] == "b"
    assert chat_choices({"choices": None}) == [] and chat_choices({"choices": 5}) == []
    acc = ChoiceAccumulator(chat=True)
    assert acc.feed({"choices": 5}) == "" and acc.feed(_chunk(0, {"tool_calls": 7})) == ""
    assert embeddings_log({"data": 3})["count"] == 0
    assert responses_choice({"output": "text"})["text"] is None


def test_responses_choice_reads_truncation_and_refusals() -> None:
    response = {
        "status": "incomplete",
        "incomplete_details": {"reason": "max_output_tokens"},
        "output": [
            {"type": "reasoning", "summary": []},
            {
                "type": "message",
                "content": [
                    {"type": "output_text", "text": "par"},
                    {"type": "refusal", "refusal": "not that"},
                ],
            },
        ],
    }
    choice = responses_choice(response)
    assert (choice["text"], choice["finish_reason"], choice["refusal"]) == (
        "par",
        "length",
        "not that",
    )


def test_embeddings_log_counts_dimensions_of_float_and_base64_vectors() -> None:
    vector = base64.b64encode(struct.pack("<5f", *([0.5] * 5))).decode()
    assert embeddings_log({"data": [{"embedding": vector}] * 2})["dims"] == 5
    logged = embeddings_log({"object": "list", "data": [{"embedding": [0.1] * 3}]})
    assert (logged["count"], logged["dims"]) == (1, 3)
    assert embeddings_log({"data": []})["dims"] is None


def test_redaction_replaces_every_kind_of_inline_media_and_nothing_else() -> None:
    audio = base64.b64encode(b"RIFF" + b"\0" * 40).decode()
    body = {
        "model": "m",
        "input": [
            {
                "role": "user",
                "content": [
                    {"type": "input_text", "text": "see"},
                    {"type": "input_image", "image_url": "data:image/jpeg;base64,/9j/AAAA"},
                    {"type": "input_file", "file_data": "data:application/pdf;base64,JVBE"},
                ],
            }
        ],
        "messages": [
            {"role": "user", "content": [{"type": "input_audio", "input_audio": {"data": audio}}]},
            {"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x" * 5000}}]},
        ],
    }
    assert needs_redaction(body)
    out = redact_media(body)
    text, image, pdf = out["input"][0]["content"]
    assert text == {"type": "input_text", "text": "see"}
    assert image["image_url"]["media_type"] == "image/jpeg"
    assert pdf["file_data"]["_omitted"] == "input_file"
    sound = out["messages"][0]["content"][0]["input_audio"]["data"]
    assert sound["sha256"] == hashlib.sha256(audio.encode()).hexdigest()
    assert out["messages"][1]["content"][0]["image_url"]["url"]["chars"] == 5000  # too long a URL
    assert body["input"][0]["content"][1]["image_url"].startswith("data:")  # the input unchanged
    assert not needs_redaction({"messages": [{"role": "user", "content": "plain"}]})
