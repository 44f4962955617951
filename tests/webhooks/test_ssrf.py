"""SSRF guard: refused addresses and names, the allow-list, every-address checks and IP pinning."""

from __future__ import annotations

import asyncio
import ipaddress

import httpx
import pytest

from tnllm.errors import ResolutionError, WebhookURLError
from tnllm.webhooks.ssrf import AddressPolicy, IPAddress, acheck_url, address_refusal, check_url
from tnllm.webhooks.transport import PinnedTransport

NO_ALLOW = AddressPolicy()
ALLOW_LOOPBACK = AddressPolicy.from_allowlist(["127.0.0.1"])


def fixed_resolver(table: dict[str, list[str]]):  # type: ignore[no-untyped-def]
    """An in-process resolver (no DNS): host -> addresses, counting calls."""
    calls: list[str] = []

    async def resolve(host: str, port: int) -> list[IPAddress]:
        calls.append(host)
        if host not in table:
            raise ResolutionError(f"webhook URL refused: host {host!r} does not resolve")
        return [ipaddress.ip_address(a) for a in table[host]]

    resolve.calls = calls  # type: ignore[attr-defined]
    return resolve


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("http://10.0.0.1/hook", "10.0.0.1 is a private address"),
        ("http://169.254.169.254/latest/meta-data", "cloud metadata"),
        ("http://[::1]:8080/hook", "::1 is a loopback address"),
        ("http://localhost:8080/hook", "'localhost' is a loopback name"),
        ("http://api.localhost/hook", "loopback name"),
        ("http://127.0.0.1/hook", "loopback"),
        ("http://0.0.0.0/hook", "unspecified"),
        ("http://[fd00:ec2::254]/", "cloud metadata"),
        ("http://[::ffff:127.0.0.1]/", "IPv4-mapped"),
        ("http://[::ffff:8.8.8.8]/", "IPv4-mapped"),
        ("http://[2002:7f00:1::]/", "embeds 127.0.0.1 is a loopback"),
        ("http://[64:ff9b::a00:1]/", "embeds 10.0.0.1"),
        ("http://224.0.0.1/", "multicast"),
        ("http://[fe80::1]/", "link-local"),
        ("http://100.64.0.1/", "not a globally routable"),
        ("http://240.0.0.1/", "reserved"),
        ("http://metadata.google.internal/", "cloud metadata name"),
        ("http://2130706433/", "loopback"),  # decimal spelling of 127.0.0.1, resolved by getaddrinfo
    ],
)
def test_refused_without_allowlist(url: str, reason: str) -> None:
    with pytest.raises(WebhookURLError, match=reason.replace("(", r"\(").replace(".", r"\.")):
        check_url(url, NO_ALLOW)


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("ftp://example.com/x", "http or https"),
        ("file:///etc/passwd", "http or https"),
        ("http:///nohost", "no host"),
        ("hook.example.com/path", "http or https"),
    ],
)
def test_bad_syntax(url: str, reason: str) -> None:
    with pytest.raises(WebhookURLError, match=reason):
        check_url(url, NO_ALLOW)


def test_real_localhost_resolution_is_checked() -> None:
    # allow-listing the name bypasses the name rule; without it the resolved loopback is refused
    policy = AddressPolicy.from_allowlist(["10.9.9.9"])
    with pytest.raises(WebhookURLError, match="loopback"):
        check_url("http://LOCALHOST./x", policy)


def test_hostname_resolving_to_loopback_is_refused() -> None:
    resolve = fixed_resolver({"rebind.test": ["127.0.0.1"]})
    with pytest.raises(WebhookURLError, match=r"host 'rebind\.test' resolves to 127\.0\.0\.1 is a loopback"):
        asyncio.run(acheck_url("https://rebind.test/hook", NO_ALLOW, resolve))


def test_every_resolved_address_is_checked() -> None:
    resolve = fixed_resolver({"mixed.test": ["93.184.216.34", "10.1.2.3"]})
    with pytest.raises(WebhookURLError, match=r"10\.1\.2\.3 is a private address"):
        asyncio.run(acheck_url("https://mixed.test/hook", NO_ALLOW, resolve))


def test_public_addresses_pass() -> None:
    resolve = fixed_resolver({"hooks.example": ["93.184.216.34", "2606:2800:220:1:248:1893:25c8:1946"]})
    got = asyncio.run(acheck_url("https://hooks.example/h", NO_ALLOW, resolve))
    assert [str(a) for a in got] == ["93.184.216.34", "2606:2800:220:1:248:1893:25c8:1946"]
    assert address_refusal(ipaddress.ip_address("8.8.8.8"), NO_ALLOW) is None


def test_allowlist_admits_ips_cidrs_and_hosts() -> None:
    policy = AddressPolicy.from_allowlist(["127.0.0.1", "10.0.0.0/8", "internal.test", "::1"])
    assert check_url("http://127.0.0.1:9/x", policy)
    assert check_url("http://10.200.0.1/x", policy)
    assert check_url("http://[::1]/x", policy)
    resolve = fixed_resolver({"internal.test": ["192.168.1.1"]})
    assert asyncio.run(acheck_url("http://internal.test/x", policy, resolve))
    with pytest.raises(WebhookURLError, match=r"192\.168\.1\.1"):
        check_url("http://192.168.1.1/x", policy)


def test_unresolvable_host_is_refused_by_name() -> None:
    with pytest.raises(ResolutionError, match="does not resolve"):
        asyncio.run(acheck_url("https://nowhere.test/x", NO_ALLOW, fixed_resolver({})))


def test_pinned_transport_resolves_once_and_keeps_host_header(receiver_factory) -> None:  # type: ignore[no-untyped-def]
    """A name only our resolver knows reaches the vetted IP, with the original Host header."""
    receiver = receiver_factory()
    resolve = fixed_resolver({"hook.test": ["127.0.0.1"]})
    transport = PinnedTransport(ALLOW_LOOPBACK, resolve)

    async def post() -> int:
        async with httpx.AsyncClient(transport=transport) as client:
            return (await client.post(f"http://hook.test:{receiver.port}/hook", content=b"{}")).status_code

    assert asyncio.run(post()) == 200
    assert resolve.calls == ["hook.test"]  # type: ignore[attr-defined]
    assert receiver.hits[0].headers["host"] == f"hook.test:{receiver.port}"
    assert str(transport.connected_to) == "127.0.0.1"


def test_pinned_transport_refuses_a_rebound_answer(receiver_factory) -> None:  # type: ignore[no-untyped-def]
    """Submit-time answer was public; at delivery the name answers loopback: refused, nothing sent."""
    receiver = receiver_factory()
    answers = iter([["93.184.216.34"], ["127.0.0.1"]])

    async def rebinding(host: str, port: int) -> list[IPAddress]:
        return [ipaddress.ip_address(a) for a in next(answers)]

    url = f"http://rebind.test:{receiver.port}/hook"
    assert asyncio.run(acheck_url(url, NO_ALLOW, rebinding))

    async def post() -> None:
        async with httpx.AsyncClient(transport=PinnedTransport(NO_ALLOW, rebinding)) as client:
            await client.post(url, content=b"{}")

    with pytest.raises(WebhookURLError, match="loopback"):
        asyncio.run(post())
    assert receiver.hits == []
