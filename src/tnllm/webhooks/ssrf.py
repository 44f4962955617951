"""SSRF guard for webhook URLs: what a callback may point at, checked at submit and at every attempt.

Two checks share one policy:

* ``check_url`` / ``acheck_url`` (submit time, and again before each attempt): the URL is http(s) with a
  host, and EVERY address its host resolves to is a public one (or admitted by the allow-list).
* ``PinnedTransport`` (``tnllm/webhooks/transport.py``) resolves once per attempt, checks every
  address with ``vet_addresses`` and connects to a vetted address, so a second DNS answer (DNS
  rebinding) can never differ from the checked one.

Refused: loopback, private, link-local, multicast, reserved, unspecified, shared/benchmark and other
non-global ranges, cloud-metadata endpoints, IPv4-mapped IPv6, and IPv6 forms that embed a refused IPv4
(6to4, NAT64) or a Teredo tunnel; host names ``localhost`` / ``*.localhost`` and metadata names.
``Settings.webhook_allowlist`` (host names, IPs or CIDRs) admits a host or address all the same.
Numeric host spellings (``2130706433``, ``0x7f.1``) need no special case: the resolver turns them into
the address that gets checked.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field

import httpx

from tnllm.errors import ResolutionError, WebhookURLError
from tnllm.protocol.webhooks import parse_webhook_url

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
#: host, port -> addresses; the default is ``system_resolve`` (getaddrinfo).
Resolver = Callable[[str, int], list[IPAddress]]
AsyncResolver = Callable[[str, int], Awaitable[list[IPAddress]]]

#: Cloud instance-metadata endpoints (AWS, GCP, Azure, OpenStack, Oracle, Alibaba, AWS IPv6).
METADATA_ADDRESSES = frozenset(
    ipaddress.ip_address(a)
    for a in (
        "169.254.169.254",
        "169.254.170.2",
        "169.254.169.123",
        "100.100.100.200",
        "192.0.0.192",
        "fd00:ec2::254",
        "fd00:ec2::23",
    )
)
METADATA_HOSTS = frozenset({"metadata", "metadata.google.internal", "metadata.goog", "instance-data"})
_NAT64 = (ipaddress.ip_network("64:ff9b::/96"), ipaddress.ip_network("64:ff9b:1::/48"))


@dataclass(frozen=True)
class AddressPolicy:
    """The allow-list half of the policy: host names, addresses and networks exempt from the rules."""

    hosts: frozenset[str] = frozenset()
    networks: tuple[IPNetwork, ...] = field(default_factory=tuple)

    @classmethod
    def from_allowlist(cls, entries: Iterable[str]) -> AddressPolicy:
        """Parse ``Settings.webhook_allowlist``: each entry is an IP, a CIDR or a host name."""
        hosts: set[str] = set()
        nets: list[IPNetwork] = []
        for raw in entries:
            entry = raw.strip().strip("[]")
            if not entry:
                continue
            try:
                nets.append(ipaddress.ip_network(entry, strict=False))
            except ValueError:
                hosts.add(_norm_host(entry))
        return cls(frozenset(hosts), tuple(nets))

    def admits_host(self, host: str) -> bool:
        return _norm_host(host) in self.hosts

    def admits_address(self, ip: IPAddress) -> bool:
        return any(ip.version == net.version and ip in net for net in self.networks)


def _norm_host(host: str) -> str:
    return host.strip().strip("[]").rstrip(".").lower()


def address_refusal(ip: IPAddress, policy: AddressPolicy) -> str | None:
    """Why ``ip`` may not be called (``None``: it may)."""
    if policy.admits_address(ip):
        return None
    if ip in METADATA_ADDRESSES:
        return f"{ip} is a cloud metadata address"
    if isinstance(ip, ipaddress.IPv6Address):
        embedded = _embedded_ipv4(ip)
        if ip.ipv4_mapped is not None:
            if policy.admits_address(ip.ipv4_mapped):
                return None
            return f"{ip} is an IPv4-mapped IPv6 address"
        if embedded is not None:
            inner = address_refusal(embedded, policy)
            return f"{ip} embeds {inner}" if inner else None
        if ip.teredo is not None:
            return f"{ip} is a Teredo tunnel address"
    for attr, label in (
        ("is_unspecified", "unspecified"),
        ("is_loopback", "loopback"),
        ("is_link_local", "link-local"),
        ("is_multicast", "multicast"),
        ("is_reserved", "reserved"),
        ("is_private", "private"),
    ):
        if getattr(ip, attr):
            return f"{ip} is a {label} address"
    if not ip.is_global:
        return f"{ip} is not a globally routable address"
    return None


def _embedded_ipv4(ip: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    if ip.sixtofour is not None:
        return ip.sixtofour
    if any(ip in net for net in _NAT64):
        return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    return None


def vet_addresses(host: str, addresses: list[IPAddress], policy: AddressPolicy) -> list[IPAddress]:
    """Return ``addresses`` if every one may be called, else raise ``WebhookURLError``.

    Every address counts, not just the first: a name answering one public and one internal address
    would otherwise reach the internal one whenever the client falls back to it.
    """
    if not addresses:
        raise ResolutionError(f"webhook URL refused: host {host!r} resolves to no address")
    if policy.admits_host(host):
        return addresses
    for ip in addresses:
        reason = address_refusal(ip, policy)
        if reason:
            shown = "" if _literal_ip(host) is not None else f"host {host!r} resolves to "
            raise WebhookURLError(f"webhook URL refused: {shown}{reason}")
    return addresses


def parse_url(url: str, policy: AddressPolicy) -> tuple[httpx.URL, str, int]:
    """Syntax and host-name rules (no DNS): returns the parsed URL, its host and port."""
    parsed = parse_webhook_url(url)
    host = _norm_host(parsed.host)
    if not policy.admits_host(host) and _literal_ip(host) is None:
        if host == "localhost" or host.endswith(".localhost"):
            raise WebhookURLError(f"webhook URL refused: host {host!r} is a loopback name")
        if host in METADATA_HOSTS:
            raise WebhookURLError(f"webhook URL refused: host {host!r} is a cloud metadata name")
    port = parsed.port or (443 if parsed.scheme == "https" else 80)
    return parsed, host, port


def _literal_ip(host: str) -> IPAddress | None:
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        return None


def system_resolve(host: str, port: int) -> list[IPAddress]:
    """Every address getaddrinfo gives for ``host`` (literal IPs come back as themselves)."""
    literal = _literal_ip(host)
    if literal is not None:
        return [literal]
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as exc:
        raise ResolutionError(f"webhook URL refused: host {host!r} does not resolve ({exc})") from exc
    return _unique(ipaddress.ip_address(str(info[4][0]).split("%", 1)[0]) for info in infos)


async def async_system_resolve(host: str, port: int) -> list[IPAddress]:
    """``system_resolve`` through the event loop's resolver (never blocks the loop)."""
    literal = _literal_ip(host)
    if literal is not None:
        return [literal]
    try:
        infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as exc:
        raise ResolutionError(f"webhook URL refused: host {host!r} does not resolve ({exc})") from exc
    return _unique(ipaddress.ip_address(str(info[4][0]).split("%", 1)[0]) for info in infos)


def _unique(addresses: Iterable[IPAddress]) -> list[IPAddress]:
    return list(dict.fromkeys(addresses))


def check_url(url: str, policy: AddressPolicy, resolve: Resolver = system_resolve) -> list[IPAddress]:
    """Full check of a webhook URL (syntax, names, every resolved address); returns the addresses."""
    _, host, port = parse_url(url, policy)
    return vet_addresses(host, resolve(host, port), policy)


async def acheck_url(
    url: str, policy: AddressPolicy, resolve: AsyncResolver = async_system_resolve
) -> list[IPAddress]:
    """``check_url`` for async code (the API's submit path)."""
    _, host, port = parse_url(url, policy)
    return vet_addresses(host, await resolve(host, port), policy)
