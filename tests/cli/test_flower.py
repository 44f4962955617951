"""Flower: auth rules, argv without secrets, readable task arguments, and a real Flower behind auth."""

from __future__ import annotations

import pytest

from tnllm.cli.flower import basic_auth_users, check, flower_argv, is_loopback
from tnllm.config import Settings
from tnllm.errors import FlowerConfigError


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
