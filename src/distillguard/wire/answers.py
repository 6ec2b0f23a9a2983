"""What the log keeps of an answer: every choice, tool calls, refusals, Responses outputs.

The traffic log's ``response_text`` is the first choice's text (spec §1); a harvesting
campaign's pattern is often elsewhere: ``n = 8`` samples of one prompt, answers that are tool
calls with their arguments, refusals. This module turns each answer shape into the log's
``choices`` (a list of ``LoggedChoice`` dicts) and, for endpoints whose answer is not chat text,
a compact ``response`` object:

- ``chat_choices`` / ``completion_choices``: a whole ``chat.completion`` / ``text_completion``;
- ``ChoiceAccumulator``: the same assembled from stream chunks (tool-call arguments arrive in
  pieces, keyed by the call's index);
- ``responses_choice`` / ``responses_log``: a Responses API ``response`` object;
- ``embeddings_log``: an embeddings list with its vectors left out (count and dimensions);
- ``redact_media``: the request body as logged, with every inline image, audio or file
  replaced by a marker (type, size, SHA-256): the log never holds media bytes, yet the same
  image sent by two accounts still links them.

Pure functions over decoded JSON (``dict``/``list``); nothing here raises on a foreign shape:
an answer the upstream sent is logged as far as it can be read.
"""

from __future__ import annotations

import hashlib
from typing import Any

Json = dict[str, Any]
# One choice as logged: {"index": int, "text": str | None, "finish_reason": str | None,
# "tool_calls": list | None (OpenAI's shape, arguments included), "refusal": str | None}
LoggedChoice = Json


def logged_choice(
    index: int,
    text: str | None,
    finish_reason: str | None,
    tool_calls: list[Json] | None = None,
    refusal: str | None = None,
) -> LoggedChoice:
    return {
        "index": index,
        "text": text,
        "finish_reason": finish_reason,
        "tool_calls": tool_calls or None,
        "refusal": refusal or None,
    }


def _list(value: Any) -> list[Any]:
    """``value`` when it is a list, else empty: a foreign shape is read as far as it goes."""
    return value if isinstance(value, list) else []


def _str_or_none(value: Any) -> str | None:
    return value if isinstance(value, str) else None


def _index(choice: Json, default: int) -> int:
    index = choice.get("index", default)
    return index if isinstance(index, int) and not isinstance(index, bool) else default


def chat_choices(body: Json) -> list[LoggedChoice]:
    """Every choice of a ``chat.completion`` body, in index order."""
    out = []
    for position, choice in enumerate(_list(body.get("choices"))):
        if not isinstance(choice, dict):
            continue
        raw_message = choice.get("message")
        message: Json = raw_message if isinstance(raw_message, dict) else {}
        calls = message.get("tool_calls")
        legacy = message.get("function_call")  # the deprecated single call: logged the same way
        if not calls and isinstance(legacy, dict):
            calls = [{"type": "function", "function": legacy}]
        out.append(
            logged_choice(
                _index(choice, position),
                _str_or_none(message.get("content")),
                _str_or_none(choice.get("finish_reason")),
                calls if isinstance(calls, list) else None,
                _str_or_none(message.get("refusal")),
            )
        )
    return sorted(out, key=lambda c: c["index"])


def completion_choices(body: Json) -> list[LoggedChoice]:
    """Every choice of a legacy ``text_completion`` body, in index order."""
    out = [
        logged_choice(
            _index(choice, position),
            _str_or_none(choice.get("text")),
            _str_or_none(choice.get("finish_reason")),
        )
        for position, choice in enumerate(_list(body.get("choices")))
        if isinstance(choice, dict)
    ]
    return sorted(out, key=lambda c: c["index"])


def first_text(choices: list[LoggedChoice]) -> str | None:
    """``response_text`` of the spec: the text of choice 0 (None when it has none)."""
    for choice in choices:
        if choice["index"] == 0:
            return choice["text"] or None
    return None


class ChoiceAccumulator:
    """Every choice of a chat or completions stream, assembled chunk by chunk."""

    def __init__(self, *, chat: bool) -> None:
        self.chat = chat
        self._text: dict[int, list[str]] = {}
        self._refusal: dict[int, list[str]] = {}
        self._finish: dict[int, str | None] = {}
        self._calls: dict[int, dict[int, Json]] = {}  # choice -> call index -> call

    def feed(self, chunk: Json) -> str:
        """Take one decoded chunk; returns the new text of choice 0 (what ``response_text``
        grows by)."""
        new_text = ""
        for position, choice in enumerate(_list(chunk.get("choices"))):
            if not isinstance(choice, dict):
                continue
            index = _index(choice, position)
            self._text.setdefault(index, [])
            delta = choice.get("delta") if self.chat else choice
            if isinstance(delta, dict):
                text = delta.get("content") if self.chat else delta.get("text")
                if isinstance(text, str) and text:
                    self._text[index].append(text)
                    if index == 0:
                        new_text += text
                if self.chat:
                    self._feed_chat_delta(index, delta)
            finish = choice.get("finish_reason")
            if isinstance(finish, str):
                self._finish[index] = finish
        return new_text

    def _feed_chat_delta(self, index: int, delta: Json) -> None:
        refusal = delta.get("refusal")
        if isinstance(refusal, str) and refusal:
            self._refusal.setdefault(index, []).append(refusal)
        for position, piece in enumerate(_list(delta.get("tool_calls"))):
            if not isinstance(piece, dict):
                continue
            calls = self._calls.setdefault(index, {})
            call = calls.setdefault(
                _index(piece, position),
                {"id": None, "type": "function", "function": {"name": "", "arguments": ""}},
            )
            if isinstance(piece.get("id"), str):
                call["id"] = piece["id"]
            if isinstance(piece.get("type"), str):
                call["type"] = piece["type"]
            function = piece.get("function")
            if isinstance(function, dict):
                for key in ("name", "arguments"):
                    if isinstance(function.get(key), str):
                        call["function"][key] += function[key]

    def choices(self) -> list[LoggedChoice]:
        indexes = sorted(set(self._text) | set(self._finish) | set(self._calls))
        return [
            logged_choice(
                index,
                "".join(self._text.get(index, ())) or None,
                self._finish.get(index),
                [call for _, call in sorted(self._calls.get(index, {}).items())],
                "".join(self._refusal.get(index, ())),
            )
            for index in indexes
        ]


# --- the Responses API ----------------------------------------------------------------------


def responses_text(response: Json) -> str | None:
    """The answer's ``output_text``: every ``output_text`` part of every message, joined."""
    parts = [
        part.get("text")
        for item in _list(response.get("output"))
        if isinstance(item, dict) and item.get("type") == "message"
        for part in _list(item.get("content"))
        if isinstance(part, dict) and part.get("type") == "output_text"
    ]
    text = "".join(p for p in parts if isinstance(p, str))
    return text or None


def responses_choice(response: Json) -> LoggedChoice:
    """A Responses answer as one logged choice: text, function calls (chat-shaped, with their
    arguments), refusal, and a chat-like finish reason, so readers handle one shape."""
    calls: list[Json] = []
    refusals: list[str] = []
    for item in _list(response.get("output")):
        if not isinstance(item, dict):
            continue
        if item.get("type") == "function_call":
            calls.append(
                {
                    "id": item.get("call_id"),
                    "type": "function",
                    "function": {"name": item.get("name"), "arguments": item.get("arguments")},
                }
            )
        elif item.get("type") == "message":
            refusals.extend(
                part["refusal"]
                for part in _list(item.get("content"))
                if isinstance(part, dict) and isinstance(part.get("refusal"), str)
            )
    details = response.get("incomplete_details")
    if isinstance(details, dict) and details.get("reason") == "max_output_tokens":
        finish: str | None = "length"
    elif calls:
        finish = "tool_calls"
    elif response.get("status") == "completed":
        finish = "stop"
    else:
        finish = _str_or_none(response.get("status"))
    return logged_choice(0, responses_text(response), finish, calls, "".join(refusals))


_RESPONSE_LOG_FIELDS = ("id", "object", "status", "model", "output", "usage", "error")


def responses_log(response: Json) -> Json:
    """What the log keeps of a ``response`` object: its outputs (messages, function calls,
    reasoning summaries), status and usage; not the echo of the request's own settings."""
    kept = {k: response[k] for k in _RESPONSE_LOG_FIELDS if k in response}
    if response.get("incomplete_details") is not None:
        kept["incomplete_details"] = response["incomplete_details"]
    return kept


def responses_usage(response: Json) -> tuple[int | None, int | None]:
    """(input tokens, output tokens) of a ``response`` object."""
    usage = response.get("usage")
    if not isinstance(usage, dict):
        return None, None
    prompt, completion = usage.get("input_tokens"), usage.get("output_tokens")
    return (
        prompt if isinstance(prompt, int) else None,
        completion if isinstance(completion, int) else None,
    )


# --- embeddings -----------------------------------------------------------------------------


def embeddings_log(body: Json) -> Json:
    """An embeddings answer without its vectors: how many, of what dimension, and usage.
    (A base64 vector of float32 has len * 3 / 4 / 4 dimensions.)"""
    data = [d for d in _list(body.get("data")) if isinstance(d, dict)]
    dims = None
    if data:
        vector = data[0].get("embedding")
        if isinstance(vector, list):
            dims = len(vector)
        elif isinstance(vector, str):
            dims = len(vector.rstrip("=")) * 3 // 4 // 4
    return {
        "object": body.get("object"),
        "model": body.get("model"),
        "count": len(data),
        "dims": dims,
        "usage": body.get("usage"),
    }


# --- media in requests ----------------------------------------------------------------------

# Where each media part keeps its bytes: (part type, field, key inside it or None).
_MEDIA_FIELDS = (
    ("image_url", "image_url", "url"),  # chat: {"image_url": {"url": "data:..."}}
    ("input_audio", "input_audio", "data"),
    ("file", "file", "file_data"),
    ("input_image", "image_url", None),  # responses: {"image_url": "data:..."}
    ("input_file", "file_data", None),
)
# A URL longer than this that is not a data: URL is cut (an http URL is evidence; a 1 MB one
# is a payload in disguise).
_MAX_URL_CHARS = 2048


def _marker(kind: str, value: str) -> Json:
    raw = value.encode("utf-8", "replace")
    media_type = None
    if value.startswith("data:"):
        media_type = value[5:].split(";", 1)[0].split(",", 1)[0] or None
    return {
        "_omitted": kind,
        "media_type": media_type,
        "chars": len(value),
        "sha256": hashlib.sha256(raw).hexdigest(),
    }


def _redact_part(part: Json) -> Json:
    for kind, field, key in _MEDIA_FIELDS:
        if part.get("type") != kind:
            continue
        holder = part.get(field)
        nested = holder.get(key) if isinstance(holder, dict) and key is not None else None
        value = holder if key is None else nested
        if not isinstance(value, str):
            return part
        is_link = kind in ("image_url", "input_image") and not value.startswith("data:")
        if is_link and len(value) <= _MAX_URL_CHARS:
            return part  # a link, not bytes: kept as evidence
        out = dict(part)
        if key is None or not isinstance(holder, dict):
            out[field] = _marker(kind, value)
        else:
            out[field] = {**holder, key: _marker(kind, value)}
        return out
    return part


def _redact_content(content: Any) -> Any:
    if not isinstance(content, list):
        return content
    return [_redact_part(p) if isinstance(p, dict) else p for p in content]


def needs_redaction(body: Json) -> bool:
    """Whether any message or input item has a content list (cheap: the common plain-text
    chat request is not copied)."""
    for field in ("messages", "input"):
        items = body.get(field)
        if isinstance(items, list):
            for item in items:
                if isinstance(item, dict) and isinstance(item.get("content"), list):
                    return True
    return False


def redact_media(body: Json) -> Json:
    """The request body for the log: a copy with the bytes of each image, audio or file part
    (chat ``messages``, Responses ``input``) replaced by a marker; text parts unchanged."""
    out = dict(body)
    for field in ("messages", "input"):
        items = body.get(field)
        if isinstance(items, list):
            out[field] = [
                {**item, "content": _redact_content(item.get("content"))}
                if isinstance(item, dict) and isinstance(item.get("content"), list)
                else item
                for item in items
            ]
    return out
