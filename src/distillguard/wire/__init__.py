"""The gateway's wire formats in one place: OpenAI's request/response/chunk/error shapes
(``wire.openai``), the OpenAPI document of the raw OpenAI endpoints (``wire.openapi``), and the
one exchange record the log, the traffic format and the gateway share (``wire.exchange``)."""
