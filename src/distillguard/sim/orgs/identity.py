"""Who a request appears to come from: egress addresses, user agents, payment methods, ids.

Addresses are drawn from a small synthetic internet whose parts behave like the real ones:
cloud regions (an organisation's NAT gateways hold a few fixed addresses inside a region's
prefixes, so unrelated tenants of one region share /16s and sometimes /24s), budget VPS hosts,
a university NAT (hundreds of students behind a handful of addresses), residential ISPs (one
address per household, re-leased every few days), mobile carriers (carrier-grade NAT and IPv6,
a new address per session) and residential proxy networks (a new address per request, drawn
from the same ISP space real households use).
"""

from __future__ import annotations

from dataclasses import dataclass
from random import Random

# Cloud regions: /16 prefixes an operator's NAT gateways draw fixed addresses from.
CLOUD_REGIONS: dict[str, tuple[str, ...]] = {
    "aws-us-east-1": ("3.208", "3.219", "34.194", "44.192", "52.4"),
    "aws-eu-west-1": ("3.248", "34.240", "52.16"),
    "gcp-us-central1": ("34.66", "35.192", "104.154"),
    "azure-westeurope": ("20.50", "40.74", "51.124"),
    "aws-ap-southeast-1": ("13.212", "52.74"),
}
# Budget VPS hosts (the kind rented by the hour): /16s.
VPS_HOSTS: dict[str, tuple[str, ...]] = {
    "hetzner": ("65.108", "95.216", "135.181"),
    "digitalocean": ("138.68", "167.99", "159.203"),
    "ovh": ("51.38", "146.59"),
}
# Residential ISPs by country: /16s households get dynamic leases from.
RESIDENTIAL: dict[str, tuple[str, ...]] = {
    "us": ("24.16", "73.92", "98.207", "71.187", "68.45"),
    "de": ("84.132", "91.64", "79.240"),
    "br": ("177.38", "189.6"),
    "in": ("49.36", "122.171"),
    "jp": ("126.74", "153.218"),
    "gb": ("86.12", "81.98"),
    "fr": ("90.56", "176.179"),
}
MOBILE_V4 = ("172.56", "174.192", "107.77", "39.40")
MOBILE_V6 = ("2607:fb90", "2600:387", "2a01:598")
UNIVERSITY_NAT = "128.32.200"  # one /24, a handful of egress addresses used


def ip_in(prefix16: str, rng: Random) -> str:
    return f"{prefix16}.{rng.randrange(256)}.{rng.randrange(1, 255)}"


def ipv6_in(prefix32: str, rng: Random) -> str:
    groups = ":".join(f"{rng.getrandbits(16):x}" for _ in range(6))
    return f"{prefix32}:{groups}"


@dataclass(frozen=True)
class Egress:
    """How one actor's requests leave its network.

    ``fixed`` addresses are used first (a NAT gateway, a VPS); ``rotate`` names a pool from
    which a fresh address is drawn: per request (``proxy``), per session (``mobile``) or per
    lease (``home``, sticky for days). ``fixed_share`` is the fraction of requests on fixed ones.
    """

    fixed: tuple[str, ...] = ()
    rotate: str | None = None  # "proxy" | "mobile" | "home" | None
    country: str = "us"
    fixed_share: float = 1.0

    def __post_init__(self) -> None:
        if not self.fixed and self.rotate is None:
            raise ValueError("an egress needs fixed addresses or a rotating pool")
        if not 0.0 <= self.fixed_share <= 1.0:
            raise ValueError("fixed_share must be within [0, 1]")


class AddressBook:
    """Per-account state of the rotating pools (the current home lease, the mobile session)."""

    __slots__ = ("_egress", "_home", "_home_until", "_mobile", "_mobile_until")

    def __init__(self, egress: Egress) -> None:
        self._egress = egress
        self._home: str | None = None
        self._home_until = -1.0
        self._mobile: str | None = None
        self._mobile_until = -1.0

    def address(self, rng: Random, ts: float) -> str:
        e = self._egress
        if e.fixed and (e.rotate is None or rng.random() < e.fixed_share):
            return e.fixed[0] if len(e.fixed) == 1 else rng.choice(e.fixed)
        if e.rotate == "proxy":  # a residential proxy network: any household, any country
            country = rng.choice(tuple(RESIDENTIAL))
            return ip_in(rng.choice(RESIDENTIAL[country]), rng)
        if e.rotate == "mobile":
            if ts >= self._mobile_until or self._mobile is None:
                if rng.random() < 0.35:
                    self._mobile = ipv6_in(rng.choice(MOBILE_V6), rng)
                else:
                    self._mobile = ip_in(rng.choice(MOBILE_V4), rng)
                self._mobile_until = ts + rng.uniform(600, 7200)
            return self._mobile
        # "home": a dynamic lease, renewed every few days
        if ts >= self._home_until or self._home is None:
            self._home = ip_in(rng.choice(RESIDENTIAL.get(e.country, RESIDENTIAL["us"])), rng)
            self._home_until = ts + rng.uniform(2, 14) * 86400
        return self._home


def cloud_nat(rng: Random, region: str, n: int) -> tuple[str, ...]:
    return tuple(ip_in(rng.choice(CLOUD_REGIONS[region]), rng) for _ in range(n))


def vps_block(rng: Random, host: str) -> str:
    """A /24 inside a VPS host (a campaign's rented servers sit in one or a few)."""
    return f"{rng.choice(VPS_HOSTS[host])}.{rng.randrange(256)}"


# --- user agents: real SDK strings in several versions ---------------------------------------

PY_SDK = ("1.35.10", "1.40.6", "1.51.2", "1.54.3", "1.61.0", "1.68.2", "1.82.1", "1.97.0")
JS_SDK = ("4.52.7", "4.67.3", "4.77.0", "4.85.1", "5.1.0")


def ua_python(v: str, async_: bool = False) -> str:
    return f"{'AsyncOpenAI' if async_ else 'OpenAI'}/Python {v}"


def ua_js(v: str) -> str:
    return f"OpenAI/JS {v}"


OTHER_UAS = (
    "python-requests/2.31.0",
    "python-requests/2.32.3",
    "curl/8.5.0",
    "curl/7.81.0",
    "Go-http-client/2.0",
    "okhttp/4.12.0",
    "axios/1.7.2",
    "node-fetch/1.0",
    "langchain-openai/0.1.23 OpenAI/Python 1.51.2",
    "llama-index/0.10.58 OpenAI/Python 1.40.6",
)
BROWSER_UAS = (
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/128.0.0.0 Safari/537.36",
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 14_5) AppleWebKit/605.1.15 (KHTML, like Gecko) "
    "Version/17.5 Safari/605.1.15",
    "Mozilla/5.0 (X11; Linux x86_64; rv:129.0) Gecko/20100101 Firefox/129.0",
    "Chatbox/1.4.2 (Macintosh)",
    "TypingMind/2.3 (iPhone; iOS 17.6)",
)


def sdk_ua(rng: Random) -> str:
    """A developer's client: mostly the official SDKs, newer versions more common."""
    r = rng.random()
    if r < 0.6:
        return ua_python(rng.choices(PY_SDK, (1, 1, 2, 3, 3, 4, 4, 3))[0], rng.random() < 0.2)
    if r < 0.85:
        return ua_js(rng.choices(JS_SDK, (1, 2, 3, 3, 2))[0])
    return rng.choice(OTHER_UAS)


def person_ua(rng: Random) -> str:
    """A person's chat client: a BYOK app or a script."""
    return rng.choice(BROWSER_UAS) if rng.random() < 0.7 else sdk_ua(rng)


# --- ids --------------------------------------------------------------------------------------


def new_id(rng: Random, prefix: str, bits: int = 64) -> str:
    return f"{prefix}{rng.getrandbits(bits):0{bits // 4}x}"


def payment_fingerprint(rng: Random) -> str:
    return new_id(rng, "pm_", 64)
