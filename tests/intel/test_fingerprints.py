"""The privacy primitives: canonical forms, keyed hashes, keyed MinHash."""

from __future__ import annotations

import pytest
from pydantic import SecretStr

from distillguard.errors import ConfigError, InputError
from distillguard.intel.fingerprints import (
    CommunityKey,
    FrequentShingles,
    MinHasher,
    canonical_ip_prefix,
    canonical_user_agent,
    containment,
    decode_signature,
    encode_signature,
    frame_shingles,
    jaccard,
    request_profile,
)

KEY = CommunityKey(b"0123456789abcdef-test")


def test_ip_prefixes_are_canonical_networks() -> None:
    assert canonical_ip_prefix("52.14.3.77") == "52.14.3.0/24"
    assert canonical_ip_prefix(" 52.14.3.1 ") == canonical_ip_prefix("52.14.3.254")
    assert canonical_ip_prefix("::ffff:52.14.3.9") == "52.14.3.0/24"  # IPv4-mapped IPv6
    assert canonical_ip_prefix("2001:db8:abcd:12::1") == "2001:db8:abcd::/48"
    with pytest.raises(InputError, match="not an IP address"):
        canonical_ip_prefix("not-an-ip")


def test_user_agents_and_profiles_are_canonical() -> None:
    assert canonical_user_agent("  AioHTTP/3.9.4 \t x ") == "aiohttp/3.9.4 x"
    body = {"model": "m", "messages": [], "temperature": 0, "max_tokens": 1024, "logprobs": True}
    assert request_profile(body) == "temperature=0;max_tokens=1024;logprobs=true"
    assert request_profile({"temperature": 0.7, "stream": None}) == "temperature=0.7"


def test_keyed_hashes_depend_on_key_and_kind() -> None:
    other = CommunityKey(b"another-community-key")
    assert KEY.hash("ip_prefix", "52.14.3.0/24") != other.hash("ip_prefix", "52.14.3.0/24")
    assert KEY.hash("ip_prefix", "x") != KEY.hash("user_agent", "x")
    assert len(KEY.hash("payment", "pm_1")) == 64
    assert KEY.key_id != other.key_id


def test_missing_or_short_key_is_a_clear_config_error() -> None:
    with pytest.raises(ConfigError, match="DISTILLGUARD_INTEL_KEY is not set"):
        CommunityKey.from_setting(None)
    with pytest.raises(ConfigError, match="at least 16 bytes"):
        CommunityKey.from_setting(SecretStr("short"))


def test_frame_shingles_read_both_ends_only() -> None:
    frame = "please solve the following problem carefully and show every step"
    a = frame_shingles(f"{frame} a train leaves at noon going east at sixty miles per hour")
    b = frame_shingles(f"{frame} how many apples does maria have after giving two away today")
    assert "please solve the" in a and "please solve the" in b
    assert len(a & b) >= 8  # the frame's 3-grams; the payloads differ
    long_text = "word " * 5000 + "final three words here"
    assert "three words here" in frame_shingles(long_text)


def test_minhash_estimates_similarity_and_containment() -> None:
    hasher = MinHasher(KEY, k=128)
    template = [f"w{i} w{i + 1} w{i + 2}" for i in range(20)]
    sig_t = hasher.signature(template)
    assert jaccard(sig_t, hasher.signature(template)) == 1.0
    assert jaccard(sig_t, hasher.signature([f"z{i}" for i in range(20)])) < 0.1
    bigger = template + [f"extra {i}" for i in range(10)]  # an account's frame + its noise
    c = containment(jaccard(sig_t, hasher.signature(bigger)), len(template), len(bigger))
    assert c > 0.75
    assert decode_signature(encode_signature(sig_t)) == sig_t
    with pytest.raises(InputError):
        decode_signature("xyz")
    # the signature is keyed: another key gives unrelated values for the same shingles
    other = MinHasher(CommunityKey(b"another-community-key"), k=128).signature(template)
    assert jaccard(sig_t, other) < 0.1


def test_frequent_shingles_keep_a_template_among_varied_payloads() -> None:
    table = FrequentShingles(capacity=16)
    for i in range(200):
        table.add({"the frame a", "frame a b", f"payload {i}", f"other {i}", f"more {i}"})
    assert table.frequent(0.3, 5) == {"the frame a", "frame a b"}
