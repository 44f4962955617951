"""`tnllm redis`: the embedded Redis in the foreground, locked, and the way to connect printed."""

from __future__ import annotations

import os
import re
import time
from pathlib import Path

import pytest
import redis

from tnllm.cli.supervisor import Child, child_env, tnllm_argv
from tnllm.store.server import free_port


def test_tnllm_redis_prints_how_to_connect_without_the_password(tmp_path: Path) -> None:
    port = free_port()
    env = child_env(os.environ, {"TNLLM_DATA_DIR": str(tmp_path / "data")})
    child = Child("redis", tnllm_argv("redis", "--port", str(port)), env=env, log_path=tmp_path / "r.log")
    child.start()
    try:
        deadline = time.monotonic() + 30
        while "URL:" not in child.log_tail(20):
            assert child.alive and time.monotonic() < deadline, child.log_tail(20)
            time.sleep(0.1)
        out = child.log_tail(20)
        password_file = tmp_path / "data" / "redis" / "password"
        password = password_file.read_text().strip()
        assert password not in out
        assert f"redis://:***@127.0.0.1:{port}/0" in out
        assert f'REDISCLI_AUTH="$(cat {password_file})" redis-cli -h 127.0.0.1 -p {port}' in out
        url = re.search(r'TNLLM_REDIS_URL="(.+?)"', out)
        assert url and url.group(1) == f"redis://:$(cat {password_file})@127.0.0.1:{port}/0"
        # what a shell makes of the printed URL gets in; a client without the password does not
        client = redis.Redis.from_url(url.group(1).replace(f"$(cat {password_file})", password))
        assert client.ping()
        client.close()
        with pytest.raises(redis.AuthenticationError):
            redis.Redis(host="127.0.0.1", port=port).ping()
    finally:
        child.stop()
