"""Who the client is: the IP the log records and the monitor links accounts by.

The TCP peer is the client unless the peer is one of the operator's reverse proxies
(``trusted_proxies``, CIDR networks). Only then is ``X-Forwarded-For`` read, from the right:
each trusted proxy appends the address it received the request from, so the rightmost entry
that is not itself a trusted proxy is the client. Entries left of it were written by the
client and are ignored (a harvester who sends ``X-Forwarded-For: <an honest app's IP>`` must
not be logged, and linked, as that app). A header that cannot be read (not an IP) is ignored
as a whole: the client is then the last trusted hop, and the event is counted.

uvicorn's own proxy-header handling is off (``serve``): this is the only place that decides.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass

from distillguard.errors import ConfigError

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def parse_networks(values: Iterable[str]) -> tuple[Network, ...]:
    """CIDR strings (a bare address is a /32 or /128) -> networks; ConfigError naming a bad one."""
    networks: list[Network] = []
    for value in values:
        try:
            networks.append(ipaddress.ip_network(value.strip(), strict=False))
        except ValueError as exc:
            raise ConfigError(
                f"DISTILLGUARD_TRUSTED_PROXIES: {value!r} is not a CIDR network ({exc})"
            ) from None
    return tuple(networks)


@dataclass(frozen=True)
class ClientAddress:
    """The client's IP as decided, and whether a forwarded header had to be ignored."""

    ip: str
    header_rejected: bool = False


class ClientResolver:
    """Decides the client IP of a request from its peer and ``X-Forwarded-For``."""

    def __init__(self, trusted: Iterable[str]) -> None:
        self.networks = parse_networks(trusted)

    def _trusted(self, address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
        return any(address in network for network in self.networks)

    def resolve(self, peer: str, forwarded_for: bytes | None) -> ClientAddress:
        """The client for a request from ``peer`` carrying ``forwarded_for`` (or None)."""
        if not self.networks or forwarded_for is None or not peer:
            return ClientAddress(peer)  # the common case costs one test
        try:
            hop = ipaddress.ip_address(peer)
        except ValueError:
            return ClientAddress(peer)  # a unix socket or similar: nothing to trust
        if not self._trusted(hop):
            return ClientAddress(peer)
        entries = forwarded_for.decode("latin-1").split(",")
        client = peer
        for entry in reversed(entries):
            try:
                address = ipaddress.ip_address(entry.strip())
            except ValueError:
                return ClientAddress(client, header_rejected=True)
            client = str(address)
            if not self._trusted(address):
                return ClientAddress(client)
        return ClientAddress(client)  # every hop a trusted proxy: the leftmost is the client
