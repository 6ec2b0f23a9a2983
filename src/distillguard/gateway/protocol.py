"""uvicorn's httptools protocol with the two things a hostile client must not get:

- **a connection held open by a header that never finishes.** uvicorn times out idle
  keep-alive connections but not a request head that stops arriving: a half-sent header held
  a connection (and its memory) for 90 s and more. Here every request head must be complete
  within ``header_timeout_s`` of the connection opening or the previous response ending;
  otherwise the gateway answers 408 and closes.
- **plain-text answers.** Malformed HTTP framing gets OpenAI's JSON error body like every
  other failure, so clients parse one error shape.

``serve`` passes ``functools.partial(GuardedHttpToolsProtocol, header_timeout_s=...)`` as
uvicorn's ``http`` class (a partial pickles, so ``--workers N`` works too).
"""

from __future__ import annotations

import asyncio
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from distillguard.wire.openai import error_body

_STATUS_LINES = {400: b"HTTP/1.1 400 Bad Request\r\n", 408: b"HTTP/1.1 408 Request Timeout\r\n"}


class GuardedHttpToolsProtocol(HttpToolsProtocol):
    def __init__(self, *args: Any, header_timeout_s: float = 10.0, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._header_timeout_s = header_timeout_s
        self._header_timer: asyncio.TimerHandle | None = None

    # -- the request-head deadline ---------------------------------------------------------

    def _arm_header_timer(self) -> None:
        self._cancel_header_timer()
        self._header_timer = self.loop.call_later(self._header_timeout_s, self._header_timeout)

    def _cancel_header_timer(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _header_timeout(self) -> None:
        self._header_timer = None
        if self.transport.is_closing():
            return
        if self.cycle is not None and not self.cycle.response_complete:
            return  # a request is being served: its own deadlines apply
        self._send_error(
            408,
            f"the request head did not arrive within {self._header_timeout_s:g} s",
            "timeout_error",
            "request_timeout",
        )

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm_header_timer()

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_header_timer()
        super().connection_lost(exc)

    def on_message_begin(self) -> None:
        super().on_message_begin()
        if self._header_timer is None:
            self._arm_header_timer()

    def on_headers_complete(self) -> None:
        self._cancel_header_timer()
        super().on_headers_complete()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if not self.transport.is_closing():
            self._arm_header_timer()  # the next request's head has the same deadline

    # -- JSON for malformed framing ----------------------------------------------------------

    def send_400_response(self, msg: str) -> None:
        self._send_error(400, f"malformed HTTP request: {msg}", "invalid_request_error", None)

    def _send_error(self, status: int, message: str, error_type: str, code: str | None) -> None:
        self._cancel_header_timer()
        body = error_body(message, error_type, code=code)
        content = [_STATUS_LINES[status]]
        for name, value in self.server_state.default_headers:
            content.extend([name, b": ", value, b"\r\n"])
        content.extend(
            [
                b"content-type: application/json\r\n",
                b"content-length: " + str(len(body)).encode("ascii") + b"\r\n",
                b"connection: close\r\n",
                b"\r\n",
                body,
            ]
        )
        self.transport.write(b"".join(content))
        self.transport.close()
