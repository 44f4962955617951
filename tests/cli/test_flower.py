"""Flower: auth rules, argv without secrets, readable task arguments, and a real Flower behind auth."""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterator

import httpx
import pytest

from tnllm.cli.flower import authorized, basic_auth_users, check, flower_argv, is_loopback
from tnllm.cli.supervisor import Child, child_env, tnllm_argv
from tnllm.config import Settings
from tnllm.errors import FlowerConfigError
from tnllm.store.server import free_port


@pytest.mark.parametrize(
    ("address", "loopback"),
    [
        ("127.0.0.1", True),
        ("127.0.1.1", True),
        ("::1", True),
        ("localhost", True),
        ("0.0.0.0", False),
        ("", False),
        ("10.0.0.5", False),
        ("flower.example", False),
    ],
)
def test_is_loopback(address: str, loopback: bool) -> None:
    assert is_loopback(address) is loopback


def test_non_loopback_without_auth_refused() -> None:
    with pytest.raises(FlowerConfigError, match="TNLLM_FLOWER_BASIC_AUTH"):
        check(Settings(flower_address="0.0.0.0"))
    assert check(Settings(flower_address="0.0.0.0", flower_basic_auth="ops:s3cret")) == ["ops:s3cret"]
    assert check(Settings()) == []  # loopback default may run without auth


@pytest.mark.parametrize("bad", ["nopassword", ":pw", "user:", "a:b,broken"])
def test_bad_basic_auth_named(bad: str) -> None:
    with pytest.raises(FlowerConfigError, match="user:password"):
        basic_auth_users(bad)


def test_argv_has_no_secret_and_no_config_file() -> None:
    s = Settings(flower_basic_auth="ops:s3cret", flower_port=5999)
    argv = flower_argv(s)
    assert argv[0] == "flower" and "--port=5999" in argv and "--address=127.0.0.1" in argv
    assert "--conf=/dev/null" in argv and "--read_only=True" in argv
    assert not any("s3cret" in a for a in argv)
    assert "--port=6001" in flower_argv(s, port=6001)


def _probe_paths() -> list[str]:
    """One concrete path per route of Flower's own handler list (so a new route is probed too)."""
    import flower.urls
    from tornado.web import URLSpec

    paths = []
    for spec in flower.urls.handlers:
        pattern = spec.regex.pattern if isinstance(spec, URLSpec) else spec[0]
        if pattern == ".*":
            paths.append("/no-such-page")
            continue
        path = pattern.rstrip("$").replace("/?", "").replace("(.+)", "x").replace("(.*)", "x")
        paths.append(path)
    return [*paths, "/favicon.ico", "/robots.txt"]  # tornado's own static routes


@pytest.fixture(scope="module")
def flower_url(tmp_path_factory: pytest.TempPathFactory, redis_server: str) -> Iterator[str]:
    """A real `tnllm flower` with basic auth on, against the session Redis."""
    port = free_port()
    tmp = tmp_path_factory.mktemp("flower")
    auth = {"TNLLM_FLOWER_BASIC_AUTH": "ops:s3cret"}
    env = child_env(os.environ, {"TNLLM_REDIS_URL": redis_server, "TNLLM_DATA_DIR": str(tmp), **auth})
    child = Child("flower", tnllm_argv("flower", "--port", str(port)), env=env, log_path=tmp / "flower.log")
    child.start()
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            assert child.alive, child.log_tail(40)
            assert time.monotonic() < deadline, child.log_tail(40)
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{url}/healthcheck", timeout=2).status_code == 200:
                    break
            time.sleep(0.2)
        yield url
    finally:
        child.stop()


def test_every_flower_page_asks_for_auth(flower_url: str) -> None:
    paths = _probe_paths()
    assert {"/", "/broker", "/metrics", "/api/workers", "/static/x", "/no-such-page"} <= set(paths)
    with httpx.Client(base_url=flower_url, timeout=15) as client:
        for path in paths:
            if path == "/healthcheck":
                continue
            for auth in (None, ("ops", "wrong"), ("nobody", "s3cret")):
                answer = client.get(path, auth=auth)
                assert answer.status_code == 401, (path, auth, answer.status_code)
                assert answer.headers["www-authenticate"].startswith("Basic")
            # a POST is refused too (403 where tornado's XSRF check comes before the auth check)
            assert client.post(path, auth=None).status_code in (401, 403), path
        assert client.get("/healthcheck").text == "OK"  # container checks need no credentials
        for path in ("/", "/broker", "/metrics", "/api/workers", "/tasks"):
            assert client.get(path, auth=("ops", "s3cret")).status_code == 200, path
        assert "flower_events_total" in client.get("/metrics", auth=("ops", "s3cret")).text


@pytest.mark.parametrize(
    ("header", "ok"),
    [
        ("Basic b3BzOnMzY3JldA==", True),  # ops:s3cret
        ("basic b3BzOnMzY3JldA==", True),
        ("Basic b3BzOndyb25n", False),  # ops:wrong
        ("Bearer b3BzOnMzY3JldA==", False),
        ("Basic not-base64!", False),
        ("", False),
    ],
)
def test_authorized(header: str, ok: bool) -> None:
    assert authorized(header, ["ops:s3cret", "viewer:pw"]) is ok
