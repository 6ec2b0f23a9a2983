"""One small error tree for the whole package.

Every error distillguard raises on purpose is a ``DistillGuardError``. Each edge translates
it once: the HTTP API into OpenAI's error body with ``status_code``; the CLI into a message on
stderr and ``exit_code``. Nothing below an edge catches these to return ``None``.

    DistillGuardError
    ├── ConfigError            settings missing or inconsistent            (exit 2)
    ├── InputError             bad input from a user or a file             (400, exit 2)
    │   ├── PayloadTooLarge    body or prompt over the limit               (413)
    │   └── ContextTooLong     prompt + max_tokens over the model's window (400)
    ├── AuthError              missing, unknown or revoked key             (401)
    ├── PermissionDenied       valid key, action not allowed (admin, block)(403)
    ├── NotFound               unknown model, account, key, file           (404, exit 3)
    ├── Conflict               the target is in the wrong state (lifted)   (409, exit 2)
    ├── RateLimited            over a per-key limit or throttled           (429)
    ├── QuotaExceeded          a key's token or spend budget is used up    (429)
    ├── UpstreamError          upstream server failed or unreachable       (502, exit 4)
    ├── ModelError             a directory is not a usable model, vocab mismatch (exit 5)
    ├── StoreError             database unreachable or schema out of date  (503, exit 6)
    ├── WatermarkError         unknown scheme or key id, no secret          (exit 7)
    ├── InsufficientData       too little text/tokens for a meaningful test (exit 8)
    └── EvidenceTampered       a signed report or one of its inputs does not verify (exit 9)
"""

from __future__ import annotations


class DistillGuardError(Exception):
    """Base of every error distillguard raises on purpose."""

    status_code: int = 500
    # OpenAI's error `type` field for the HTTP edge.
    error_type: str = "server_error"
    exit_code: int = 1

    def __init__(self, message: str, *, code: str | None = None, param: str | None = None):
        super().__init__(message)
        self.message = message
        self.code = code
        self.param = param


class ConfigError(DistillGuardError):
    status_code = 500
    exit_code = 2


class InputError(DistillGuardError):
    status_code = 400
    error_type = "invalid_request_error"
    exit_code = 2


class PayloadTooLarge(InputError):
    status_code = 413


class ContextTooLong(InputError):
    status_code = 400


class AuthError(DistillGuardError):
    status_code = 401
    error_type = "authentication_error"
    exit_code = 2


class PermissionDenied(DistillGuardError):
    status_code = 403
    error_type = "permission_error"
    exit_code = 2


class NotFound(DistillGuardError):
    status_code = 404
    error_type = "not_found_error"
    exit_code = 3


class Conflict(DistillGuardError):
    """The request is well formed but its target is in a state that refuses it (an action
    already lifted or expired)."""

    status_code = 409
    error_type = "invalid_request_error"
    exit_code = 2


class RateLimited(DistillGuardError):
    status_code = 429
    error_type = "rate_limit_error"
    exit_code = 4

    def __init__(
        self,
        message: str,
        *,
        retry_after: float = 1.0,
        code: str | None = None,
        headers: tuple[tuple[bytes, bytes], ...] = (),
    ):
        super().__init__(message, code=code or "rate_limit_exceeded")
        self.retry_after = retry_after
        self.headers = headers  # extra response headers (the limiter's x-ratelimit-*)


class QuotaExceeded(DistillGuardError):
    """A key's lifetime budget is used up: OpenAI's ``insufficient_quota`` (waiting won't help,
    so no Retry-After)."""

    status_code = 429
    error_type = "insufficient_quota"
    exit_code = 4

    def __init__(self, message: str, *, param: str | None = None):
        super().__init__(message, code="insufficient_quota", param=param)


class UpstreamError(DistillGuardError):
    status_code = 502
    error_type = "upstream_error"
    exit_code = 4


class ModelError(DistillGuardError):
    status_code = 500
    exit_code = 5


class StoreError(DistillGuardError):
    status_code = 503
    exit_code = 6


class WatermarkError(DistillGuardError):
    status_code = 400
    error_type = "invalid_request_error"
    exit_code = 7


class InsufficientData(DistillGuardError):
    status_code = 400
    error_type = "invalid_request_error"
    exit_code = 8


class EvidenceTampered(DistillGuardError):
    """A signed evidence report, or an input it lists, is not what was signed."""

    status_code = 400
    error_type = "invalid_request_error"
    exit_code = 9
