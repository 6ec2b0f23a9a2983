"""Watermark keys: one master secret -> versioned key ids -> per-scheme and per-account keys.

Why this shape
--------------
* **One master secret** (``DISTILLGUARD_WATERMARK_SECRET``) is the only thing an operator keeps.
  Every key the schemes use is derived from it with HMAC-SHA256 over a labelled path
  (``"distillguard-watermark" / scheme / key id / role [/ account]``), so keys of different
  schemes, versions and accounts are computationally independent, and nothing but the master
  secret has to be stored or backed up.
* **Versioned key ids** (1, 2, 3, ...). Rotation = raising ``DISTILLGUARD_WATERMARK_KEY_ID``:
  new answers are marked under the new id while every older id stays derivable, so text marked
  under an old key is still detected. Detection tries the ids it is given and corrects the
  provider p-value for the number tried (Bonferroni), so trying old keys never inflates the
  false-positive rate.
* **Accounts.** A per-account key is derived the same way from the scheme key id and the account
  id. The schemes use it only for a *secondary* signal that never replaces the provider's
  (see ``kgw.py`` / ``gumbel.py`` / ``synthid.py``), so the provider-wide test keeps its full
  strength and needs no multiple-testing correction over accounts.
* Keys are turned into 64-bit integers (the first 8 bytes of the HMAC) because the hashing
  in ``base.py`` is a vectorized 64-bit integer mixer. Only **fingerprints** (a different HMAC,
  truncated) are ever shown; secrets and derived keys never appear in ``repr``, logs or output.
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass
from functools import lru_cache

from distillguard.config import Settings
from distillguard.errors import ConfigError, WatermarkError

DOMAIN = b"distillguard-watermark-v1"
MIN_SECRET_BYTES = 16  # below this a brute force over secrets becomes thinkable


def _derive(secret: bytes, *parts: str) -> bytes:
    """HMAC-SHA256 of a labelled path: the single key-derivation function of the package."""
    message = DOMAIN + b"".join(b"\x1f" + p.encode("utf-8") for p in parts)
    return hmac.new(secret, message, hashlib.sha256).digest()


def check_secret(secret: bytes) -> bytes:
    """Validate a master secret (bytes, at least ``MIN_SECRET_BYTES`` long)."""
    if not isinstance(secret, bytes | bytearray):
        raise ConfigError("the watermark secret must be bytes")
    if len(secret) < MIN_SECRET_BYTES:
        raise ConfigError(
            f"the watermark secret is {len(secret)} bytes; at least {MIN_SECRET_BYTES} are "
            "needed (set DISTILLGUARD_WATERMARK_SECRET to a long random string)"
        )
    return bytes(secret)


def check_key_id(key_id: int) -> int:
    if not isinstance(key_id, int) or isinstance(key_id, bool) or key_id < 1:
        raise WatermarkError(f"key ids are integers >= 1, got {key_id!r}")
    return key_id


def derive_key(secret: bytes, scheme: str, key_id: int, role: str, account: str = "") -> int:
    """A 64-bit key for one (scheme, key id, role[, account]); used by the hashing in base.py."""
    digest = _derive(check_secret(secret), scheme, str(check_key_id(key_id)), role, account)
    return int.from_bytes(digest[:8], "little")


@lru_cache(maxsize=65536)
def _cached_account_key(secret: bytes, scheme: str, key_id: int, account: str) -> int:
    return derive_key(secret, scheme, key_id, "account", account)


def account_key(secret: bytes, scheme: str, key_id: int, account: str) -> int:
    """The per-account 64-bit key (cached: generation asks for it on every decode step)."""
    return _cached_account_key(bytes(secret), scheme, key_id, account)


def fingerprint(secret: bytes, key_id: int) -> str:
    """A public, non-invertible 12-hex-digit name of (secret, key id), safe to print and log."""
    return _derive(check_secret(secret), "fingerprint", str(check_key_id(key_id))).hex()[:12]


@dataclass(frozen=True)
class KeyInfo:
    key_id: int
    fingerprint: str  # identifies the key without revealing it
    current: bool  # the id new answers are marked with


@dataclass(frozen=True, repr=False)
class KeyRing:
    """The master secret and its key versions ``1..current_key_id`` (all stay detectable)."""

    secret: bytes
    current_key_id: int = 1

    def __post_init__(self) -> None:
        check_secret(self.secret)
        check_key_id(self.current_key_id)

    def __repr__(self) -> str:  # never print the secret
        return f"KeyRing(current_key_id={self.current_key_id}, secret=<hidden>)"

    @classmethod
    def from_settings(cls, settings: Settings) -> KeyRing:
        return cls(
            secret=settings.require_watermark_secret(), current_key_id=settings.watermark_key_id
        )

    @property
    def key_ids(self) -> tuple[int, ...]:
        return tuple(range(1, self.current_key_id + 1))

    def check(self, key_ids: tuple[int, ...] | list[int]) -> tuple[int, ...]:
        """Validate requested key ids against the ring (unknown future ids are an error)."""
        out = tuple(check_key_id(k) for k in key_ids)
        bad = [k for k in out if k > self.current_key_id]
        if bad:
            raise WatermarkError(
                f"unknown key id(s) {bad}; the current key id is {self.current_key_id}"
            )
        if not out:
            raise WatermarkError("no key id to try")
        return tuple(dict.fromkeys(out))

    def info(self) -> list[KeyInfo]:
        return [
            KeyInfo(k, fingerprint(self.secret, k), k == self.current_key_id) for k in self.key_ids
        ]
