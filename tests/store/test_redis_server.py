"""The embedded redis-server: real process, AOF persistence across SIGKILL, password, restart."""

from __future__ import annotations

import socket
import stat
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import redis

from tnllm.errors import RedisServerError
from tnllm.store.server import PASSWORD_FILE, RedisServer, embedded_password, find_redis_server, free_port


def test_binary_is_found() -> None:
    assert Path(find_redis_server()).name == "redis-server"


def test_session_server_answers(redis_url: str) -> None:
    client = redis.Redis.from_url(redis_url)
    assert client.ping()
    assert client.config_get("appendonly") == {"appendonly": "yes"}
    assert client.config_get("appendfsync") == {"appendfsync": "everysec"}
    client.close()


def test_aof_survives_sigkill_and_restart_on_same_port(redis_factory: Callable[..., RedisServer]) -> None:
    server = redis_factory()
    port, url = server.port, server.url
    client = redis.Redis.from_url(url)
    client.set("k", "v")
    time.sleep(1.3)  # appendfsync everysec: give the fsync a second
    server.kill()
    assert not server.running
    with pytest.raises(redis.ConnectionError):
        client.ping()
    server.start()
    assert server.port == port
    assert redis.Redis.from_url(url).get("k") == b"v"
    assert (server.data_dir / "appendonly.aof").exists()


def test_password_is_required(redis_factory: Callable[..., RedisServer]) -> None:
    server = redis_factory(password="s3cr:t")
    assert server.url.startswith("redis://:s3cr%3At@")
    assert redis.Redis.from_url(server.url).ping()
    with pytest.raises(redis.AuthenticationError):
        redis.Redis(host=server.host, port=server.port).ping()


def test_clean_stop_and_port_in_use(tmp_path: Path) -> None:
    with RedisServer(tmp_path / "a") as first:
        pid = first.process.pid if first.process else None
        assert pid and first.ping()
        with pytest.raises(RedisServerError, match="in use"):
            RedisServer(tmp_path / "b", port=first.port).start()
    assert not first.running and not first.ping()


def test_free_port_is_bindable() -> None:
    assert 0 < free_port() < 65536


def test_embedded_password_is_random_private_and_kept(tmp_path: Path) -> None:
    folder = tmp_path / "redis"
    first = embedded_password(folder)
    assert len(first) >= 32 and first == embedded_password(folder)  # generated once, then kept
    assert embedded_password(tmp_path / "other") != first
    path = folder / PASSWORD_FILE
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700  # the AOF's folder too
    path.chmod(0o644)
    assert embedded_password(folder) == first and stat.S_IMODE(path.stat().st_mode) == 0o600
    path.write_text("")
    assert embedded_password(folder) not in ("", first)  # an emptied file gets a new password


def test_a_client_without_the_password_is_refused_noauth(tmp_path: Path) -> None:
    password = embedded_password(tmp_path / "redis")
    with RedisServer(tmp_path / "redis", password=password) as server:
        assert server.process is not None
        # never on argv, which every local user can read (ps); in a 0600 config file instead
        assert password not in Path(f"/proc/{server.process.pid}/cmdline").read_text()
        assert password not in " ".join(server.command())
        assert stat.S_IMODE((server.data_dir / "auth.conf").stat().st_mode) == 0o600
        with socket.create_connection((server.host, server.port), timeout=5) as sock:
            sock.sendall(b"*2\r\n$3\r\nGET\r\n$1\r\nk\r\n")
            assert sock.recv(200).startswith(b"-NOAUTH")
        with pytest.raises(redis.AuthenticationError):
            redis.Redis(host=server.host, port=server.port).get("k")
        with pytest.raises(redis.AuthenticationError):
            redis.Redis(host=server.host, port=server.port, password="wrong").get("k")
        authed = redis.Redis.from_url(server.url)
        assert authed.ping() and authed.config_get("requirepass") == {"requirepass": password}
        authed.close()
