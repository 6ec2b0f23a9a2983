"""What a shared indicator may say about a user: keyed hashes and MinHash signatures, never text.

Every value that identifies a person or a customer (client IP prefix, user agent, payment
fingerprint) leaves the provider only as ``HMAC-SHA256(community_key, kind || 0x00 ||
canonical value)``; a partner holding the same community key (``DISTILLGUARD_INTEL_KEY``)
computes the same hash from its own traffic and compares. Prompt templates leave as a keyed
MinHash signature of their frame shingles, so two providers can estimate how much of a
template they share without either revealing a word. ``docs/intel.md`` is the contract a
partner implements; the functions here are its reference implementation.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import re
import unicodedata
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from distillguard.errors import ConfigError, InputError

# Hash domains: the same value hashed for two kinds never collides across them.
KIND_IP_PREFIX = "ip_prefix"
KIND_USER_AGENT = "user_agent"
KIND_PAYMENT = "payment"
KIND_TEMPLATE = "template"
KIND_REQUEST_PARAMS = "request_params"
HASHED_KINDS = (KIND_IP_PREFIX, KIND_USER_AGENT, KIND_PAYMENT)
KINDS = (*HASHED_KINDS, KIND_TEMPLATE, KIND_REQUEST_PARAMS)

MIN_KEY_BYTES = 16  # a shorter community key could be guessed; HMAC keys want >= 128 bits
MERSENNE_61 = (1 << 61) - 1  # MinHash permutations are a*x + b mod this prime
FRAME_WORDS = 12  # words at each end of a prompt: where product and campaign frames live
SHINGLE_WORDS = 3  # word 3-grams: common 2-word phrases would match every template
TAIL_CHARS = 2048  # the last FRAME_WORDS words are read from at most this many final chars
_WORD = re.compile(r"\w+")
# Request parameters a harvesting client pins; their values (not the prompt) form a profile.
PROFILE_PARAMS = ("temperature", "top_p", "max_tokens", "n", "logprobs", "top_logprobs", "stream")


@dataclass(frozen=True)
class CommunityKey:
    """The shared secret every hash is keyed with, and its public id."""

    secret: bytes

    def __post_init__(self) -> None:
        if len(self.secret) < MIN_KEY_BYTES:
            raise ConfigError(
                f"DISTILLGUARD_INTEL_KEY must be at least {MIN_KEY_BYTES} bytes "
                f"(got {len(self.secret)}); use e.g. `openssl rand -hex 32` and share it with "
                "partners out of band"
            )

    @classmethod
    def from_setting(cls, value: Any) -> CommunityKey:
        """From ``Settings.intel_key`` (a ``SecretStr`` or None); names the variable if unset."""
        raw = value.get_secret_value() if hasattr(value, "get_secret_value") else value
        if not raw:
            raise ConfigError(
                "DISTILLGUARD_INTEL_KEY is not set: shared indicators are keyed hashes and "
                "need the community key agreed with partners"
            )
        return cls(str(raw).encode("utf-8"))

    @property
    def key_id(self) -> str:
        """Public id of the key (16 hex): a bundle hashed under another key is refused."""
        return hmac.new(self.secret, b"distillguard-intel-key-id", hashlib.sha256).hexdigest()[:16]

    def hash(self, kind: str, canonical: str) -> str:
        """HMAC-SHA256 (hex) of ``kind || 0x00 || canonical`` (UTF-8)."""
        msg = kind.encode() + b"\x00" + canonical.encode("utf-8", "surrogatepass")
        return hmac.new(self.secret, msg, hashlib.sha256).hexdigest()


# --------------------------------------------------------------------------------------------
# Canonical forms (a partner must produce byte-identical strings)
# --------------------------------------------------------------------------------------------


def canonical_ip_prefix(ip: str) -> str:
    """``a.b.c.0/24`` for IPv4 (and IPv4-mapped IPv6), the ``/48`` network for IPv6.

    Raises ``InputError`` for a string that is not an address."""
    try:
        addr = ipaddress.ip_address(ip.strip())
    except ValueError as exc:
        raise InputError(f"not an IP address: {ip[:60]!r}") from exc
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        addr = addr.ipv4_mapped
    bits = 24 if isinstance(addr, ipaddress.IPv4Address) else 48
    return str(ipaddress.ip_network(f"{addr}/{bits}", strict=False))


def canonical_user_agent(ua: str) -> str:
    """NFKC, lower case, runs of whitespace as one space, stripped."""
    return " ".join(unicodedata.normalize("NFKC", ua).lower().split())


def canonical_payment(fingerprint: str) -> str:
    """NFKC, lower case, stripped (the fingerprint itself must be portable: docs/intel.md)."""
    return unicodedata.normalize("NFKC", fingerprint).strip().lower()


def request_profile(request: dict[str, Any]) -> str:
    """The sampling parameters a request pins, as canonical JSON-like text (no prompt)."""
    parts = []
    for name in PROFILE_PARAMS:
        v = request.get(name)
        if v is None or isinstance(v, dict | list):
            continue
        if isinstance(v, bool):
            text = "true" if v else "false"
        elif isinstance(v, int | float):
            text = repr(float(v)) if isinstance(v, float) and not v.is_integer() else str(int(v))
        else:
            continue
        parts.append(f"{name}={text}")
    return ";".join(parts)


# --------------------------------------------------------------------------------------------
# Template fingerprints: frame shingles -> keyed MinHash
# --------------------------------------------------------------------------------------------


def frame_shingles(text: str) -> frozenset[str]:
    """Word 3-grams of the first and of the last ``FRAME_WORDS`` words of NFKC-lower text.

    The middle of a templated prompt is its payload (a question); the frame is at its ends.
    """
    text = unicodedata.normalize("NFKC", text).lower()
    head = []
    for m in _WORD.finditer(text):
        head.append(m.group())
        if len(head) == FRAME_WORDS:
            break
    tail_text = text[-TAIL_CHARS:]
    tail = _WORD.findall(tail_text)
    cut = len(text) > TAIL_CHARS and _WORD.match(text[-TAIL_CHARS - 1])
    if cut and tail and tail_text.startswith(tail[0]):
        tail = tail[1:]  # a word cut by the window is not a word of the prompt
    tail = tail[-FRAME_WORDS:]
    out: set[str] = set()
    for words in (head, tail):
        for i in range(len(words) - SHINGLE_WORDS + 1):
            out.add(" ".join(words[i : i + SHINGLE_WORDS]))
    return frozenset(out)


@dataclass(frozen=True)
class MinHasher:
    """Keyed MinHash: ``k`` permutations ``a_i * h(s) + b_i mod (2^61 - 1)`` of keyed hashes."""

    key: CommunityKey
    k: int = 64  # signature length: Jaccard estimates have standard error ~ 1/sqrt(k)

    def __post_init__(self) -> None:
        if not 8 <= self.k <= 1024:
            raise ConfigError("MinHasher.k must be within [8, 1024]")

    def _perms(self) -> list[tuple[int, int]]:
        out = []
        for i in range(self.k):
            d = hmac.new(self.key.secret, f"minhash-perm\x00{i}".encode(), hashlib.sha256).digest()
            a = int.from_bytes(d[:8], "big") % (MERSENNE_61 - 1) + 1
            b = int.from_bytes(d[8:16], "big") % MERSENNE_61
            out.append((a, b))
        return out

    def shingle_hash(self, shingle: str) -> int:
        d = hmac.new(self.key.secret, b"template-shingle\x00" + shingle.encode(), hashlib.sha256)
        return int.from_bytes(d.digest()[:8], "big") % MERSENNE_61

    def signature(self, shingles: Iterable[str]) -> tuple[int, ...]:  # (k,)
        hashes = [self.shingle_hash(s) for s in shingles]
        if not hashes:
            raise InputError("a MinHash signature needs at least one shingle")
        return tuple(min((a * h + b) % MERSENNE_61 for h in hashes) for a, b in self._perms())


def encode_signature(sig: tuple[int, ...]) -> str:
    """Hex, 16 digits per value (what the STIX pattern carries)."""
    return "".join(f"{v:016x}" for v in sig)


def decode_signature(text: str) -> tuple[int, ...]:
    if not text or len(text) % 16 or not re.fullmatch(r"[0-9a-f]+", text):
        raise InputError("a MinHash signature is lower-case hex, 16 digits per value")
    return tuple(int(text[i : i + 16], 16) for i in range(0, len(text), 16))


def jaccard(a: tuple[int, ...], b: tuple[int, ...]) -> float:
    """Estimated Jaccard similarity of the two sets behind equal-length signatures."""
    if len(a) != len(b) or not a:
        raise InputError(f"signatures differ in length ({len(a)} vs {len(b)})")
    return sum(x == y for x, y in zip(a, b, strict=True)) / len(a)


def containment(j: float, template_size: int, other_size: int) -> float:
    """Share of the template's shingles in the other set, from Jaccard and the set sizes."""
    if j <= 0 or template_size <= 0:
        return 0.0
    inter = j / (1.0 + j) * (template_size + other_size)
    return min(1.0, inter / template_size)


@dataclass
class FrequentShingles:
    """Misra-Gries counts of frame shingles over a stream of prompts (bounded memory).

    Any shingle in more than ``prompts / (capacity + 1)`` prompts is kept, so every shingle of
    a template (in most prompts of its sender) survives however varied the payloads are."""

    capacity: int = 256
    prompts: int = 0

    def __post_init__(self) -> None:
        self.counts: Counter[str] = Counter()

    def add(self, shingles: Iterable[str]) -> None:
        self.prompts += 1
        counts = self.counts
        for s in shingles:
            if s in counts or len(counts) < self.capacity:
                counts[s] += 1
                continue
            for key in list(counts):  # decrement all: amortized O(1) per shingle
                counts[key] -= 1
                if counts[key] <= 0:
                    del counts[key]

    def frequent(self, share: float, minimum: int) -> frozenset[str]:
        """Shingles seen in at least ``share`` of the prompts and ``minimum`` times."""
        bar = max(minimum, share * self.prompts)
        return frozenset(s for s, c in self.counts.items() if c >= bar)
