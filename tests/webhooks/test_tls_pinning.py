"""HTTPS through the pinned transport: connects to the vetted IP, yet SNI and the certificate check
use the URL's host name (a certificate for another name is refused)."""

from __future__ import annotations

import asyncio
import datetime as dt
import ipaddress
import ssl
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from tnllm.webhooks.ssrf import AddressPolicy, IPAddress
from tnllm.webhooks.transport import PinnedTransport

POLICY = AddressPolicy.from_allowlist(["127.0.0.1"])


def _cert(name: str, issuer_key: Any, issuer: x509.Name, key: Any, ca: bool) -> x509.Certificate:
    now = dt.datetime.now(dt.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
        .issuer_name(issuer)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(hours=1))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if not ca:
        builder = builder.add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False)
    return builder.sign(issuer_key, hashes.SHA256())


@pytest.fixture
def tls_receiver(tmp_path: Path) -> Iterator[tuple[int, ssl.SSLContext, list[str | None]]]:
    """An HTTPS server on 127.0.0.1 with a certificate for ``hook.test`` from a throwaway CA."""
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "tnllm test CA")])
    ca = _cert("tnllm test CA", ca_key, ca_name, ca_key, ca=True)
    key = ec.generate_private_key(ec.SECP256R1())
    leaf = _cert("hook.test", ca_key, ca_name, key, ca=False)
    (tmp_path / "leaf.pem").write_bytes(leaf.public_bytes(serialization.Encoding.PEM))
    (tmp_path / "key.pem").write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_ctx.load_cert_chain(tmp_path / "leaf.pem", tmp_path / "key.pem")
    sni_seen: list[str | None] = []
    server_ctx.sni_callback = lambda sock, name, ctx: sni_seen.append(name)  # type: ignore[assignment,misc]

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:
            pass

        def do_POST(self) -> None:
            self.rfile.read(int(self.headers.get("content-length", "0")))
            body = self.headers["host"].encode()
            self.send_response(200)
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    httpd.daemon_threads = True
    httpd.socket = server_ctx.wrap_socket(httpd.socket, server_side=True)
    threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    client_ctx = ssl.create_default_context(cadata=ca.public_bytes(serialization.Encoding.PEM).decode())
    yield int(httpd.server_address[1]), client_ctx, sni_seen
    httpd.shutdown()
    httpd.server_close()


async def _resolve(host: str, port: int) -> list[IPAddress]:
    return [ipaddress.ip_address("127.0.0.1")] if host.endswith(".test") else []


def _post(url: str, verify: ssl.SSLContext) -> httpx.Response:
    async def go() -> httpx.Response:
        async with httpx.AsyncClient(transport=PinnedTransport(POLICY, _resolve, verify=verify)) as client:
            response = await client.post(url, content=b"{}")
            await response.aread()
            return response

    return asyncio.run(go())


def test_https_to_pinned_ip_keeps_sni_and_verifies_the_name(tls_receiver: Any) -> None:
    port, ctx, sni_seen = tls_receiver
    response = _post(f"https://hook.test:{port}/hook", ctx)
    assert response.status_code == 200 and response.text == f"hook.test:{port}"
    assert sni_seen == ["hook.test"]


def test_https_certificate_for_another_name_is_refused(tls_receiver: Any) -> None:
    port, ctx, _ = tls_receiver
    with pytest.raises(httpx.ConnectError, match=r"CERTIFICATE_VERIFY_FAILED|hostname"):
        _post(f"https://other.test:{port}/hook", ctx)
