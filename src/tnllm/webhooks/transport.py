"""An httpx transport that resolves a host once, vets every address, and connects to a vetted one.

The request keeps its original ``Host`` header and, for https, its TLS server name (SNI) and
certificate check against the original host name, while the TCP connection goes to the pinned IP.
Resolution happens exactly once per request, inside the transport, so no later DNS answer (DNS
rebinding) can send the connection somewhere the check did not see. Each request gets a fresh
connection (no pool reuse across hosts that share an IP with different server names).
"""

from __future__ import annotations

import ipaddress
import ssl

import httpx

from tnllm.webhooks.ssrf import AddressPolicy, AsyncResolver, async_system_resolve, parse_url, vet_addresses


class PinnedTransport(httpx.AsyncBaseTransport):
    """``httpx.AsyncHTTPTransport`` behind the SSRF policy, connecting to pre-vetted addresses only."""

    def __init__(
        self,
        policy: AddressPolicy,
        resolve: AsyncResolver = async_system_resolve,
        verify: ssl.SSLContext | bool = True,
    ) -> None:
        self._policy = policy
        self._resolve = resolve
        self._verify = verify
        #: the address the last request connected to (for the delivery log and tests)
        self.connected_to: ipaddress.IPv4Address | ipaddress.IPv6Address | None = None

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        _, host, port = parse_url(str(request.url), self._policy)
        addresses = vet_addresses(host, await self._resolve(host, port), self._policy)
        last_error: httpx.TransportError | None = None
        for ip in addresses:  # every one is vetted; fall back only on a failed connect
            pinned = request.url.copy_with(host=str(ip))
            extensions = dict(request.extensions)
            if request.url.scheme == "https":
                extensions["sni_hostname"] = host
            headers = request.headers.copy()
            headers["host"] = request.url.netloc.decode("ascii")
            pinned_request = httpx.Request(
                request.method, pinned, headers=headers, stream=request.stream, extensions=extensions
            )
            # a fresh transport per request: keep-alive would let a later request to another name
            # that shares this IP reuse a TLS session negotiated for this name
            transport = httpx.AsyncHTTPTransport(retries=0, verify=self._verify)
            try:
                response = await transport.handle_async_request(pinned_request)
            except httpx.ConnectError as exc:
                last_error = exc
                await transport.aclose()
                continue
            self.connected_to = ip
            return _closing_response(response, transport)
        assert last_error is not None
        raise last_error


def _closing_response(response: httpx.Response, transport: httpx.AsyncHTTPTransport) -> httpx.Response:
    """Close the per-request transport together with the response."""
    inner = response.stream

    class _Stream(httpx.AsyncByteStream):
        async def __aiter__(self):  # type: ignore[no-untyped-def]
            async for chunk in inner:  # type: ignore[union-attr]
                yield chunk

        async def aclose(self) -> None:
            try:
                await inner.aclose()  # type: ignore[union-attr]
            finally:
                await transport.aclose()

    return httpx.Response(
        response.status_code, headers=response.headers, stream=_Stream(), extensions=response.extensions
    )
