"""Proxy mode with a marking engine: who asked goes to the engine, what it applied to the log.

In upstream mode the gateway does not sample: the watermark must be applied by the engine
behind it, with distillguard's plugin (``distillguard.watermark.engines``) and the same secret,
scheme and key id as the gateway. The gateway's part:

* at start, ``--upstream`` with a watermark but no marking engine declared
  (``DISTILLGUARD_UPSTREAM_ENGINE=vllm|sglang``) is refused with a message that says what to
  install -- answers are never silently unmarked;
* on every request, the requesting account travels in the body in the engine's own field
  (vLLM: ``vllm_xargs``; SGLang: ``custom_logit_processor`` + ``custom_params``), overriding
  whatever the client put there (a client cannot choose whose key marks its answer);
* every logged exchange records the scheme and key id the engine applies
  (``UpstreamBackend.watermark_scheme`` / ``watermark_key_id``); the key fingerprint is in
  the gateway's start log line.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from distillguard.errors import ConfigError
from distillguard.watermark.engines.core import ACCOUNT_ARG

ENGINES = ("vllm", "sglang", "none")

_INSTALL = (
    "install distillguard into the engine's Python environment and give the engine the "
    "gateway's DISTILLGUARD_WATERMARK_SECRET, _SCHEME and _KEY_ID: vLLM then loads "
    "distillguard's logits processor by itself (entry point vllm.logits_processors); SGLang "
    "needs --enable-custom-logit-processor. Then start the gateway with "
    "--upstream-engine vllm|sglang (DISTILLGUARD_UPSTREAM_ENGINE), or serve unmarked answers "
    "with --watermark off"
)


@dataclass(frozen=True)
class UpstreamMarking:
    engine: str  # vllm | sglang
    scheme: str  # what the engine applies, recorded with every exchange
    key_id: int

    def mark_body(self, body: dict[str, Any], account: str) -> dict[str, Any]:
        """The request body with the account in the engine's field (a new dict)."""
        out = dict(body)
        if self.engine == "vllm":
            xargs = out.get("vllm_xargs")
            out["vllm_xargs"] = {**(xargs if isinstance(xargs, dict) else {}), ACCOUNT_ARG: account}
        else:
            from distillguard.watermark.engines.sglang import request_fields

            out.update(request_fields(account))
        return out


def upstream_marking(
    *, upstream_url: str | None, engine: str, scheme: str, key_id: int
) -> UpstreamMarking | None:
    """What the engine behind ``upstream_url`` marks with, or None when nothing is marked
    (local mode, or ``--watermark off``). ConfigError when answers would go out unmarked."""
    if engine not in ENGINES:
        raise ConfigError(f"DISTILLGUARD_UPSTREAM_ENGINE must be one of {', '.join(ENGINES)}")
    if not upstream_url or scheme == "off":
        return None
    if engine == "none":
        raise ConfigError(
            f"--upstream with --watermark {scheme}: the server at {upstream_url} would answer "
            f"unmarked. To mark in the engine, {_INSTALL}"
        )
    return UpstreamMarking(engine=engine, scheme=scheme, key_id=key_id)
