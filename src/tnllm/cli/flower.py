"""The Flower dashboard: its options built from Settings, its safety rules, and how tasks show in it.

Rules: Flower binds loopback unless told otherwise; on any other address it refuses to start
without ``flower_basic_auth`` (``user:password``, several separated by commas). The password goes
to Flower in-process (tornado options), never on a command line that ``ps`` shows. Flower runs
read-only: cancelling or revoking from the dashboard would bypass the job state machine (cancel
through the API instead). Flower's ``/healthcheck`` answers without auth, for container checks.

Tasks carry only a job id, so Flower never sees a prompt; ``tnllm.protocol.celery.task_display``
gives the producer a readable ``argsrepr`` (``job=<id> prompt_tokens=N priority=P``) that Flower
shows as the arguments.
"""

from __future__ import annotations

import ipaddress
import logging
from typing import Any, Protocol

from tnllm.errors import FlowerConfigError

log = logging.getLogger(__name__)

#: Flower's own config file is Python that it executes from the working directory; point it at an
#: empty file so a stray ``flowerconfig.py`` is never run.
_NO_CONFIG = "/dev/null"
#: Task list columns shown by default (the args column shows the argsrepr below).
TASK_COLUMNS = "name,uuid,state,args,received,started,runtime,worker"


class _FlowerSettings(Protocol):
    @property
    def flower_address(self) -> str: ...
    @property
    def flower_port(self) -> int: ...
    @property
    def flower_basic_auth(self) -> str | None: ...


def is_loopback(address: str) -> bool:
    """True for 127.0.0.0/8, ::1 and ``localhost``; False for ``""``/``0.0.0.0`` (all interfaces)."""
    if address.strip().lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(address.strip("[]")).is_loopback
    except ValueError:
        return False  # a host name other than localhost may resolve anywhere


def basic_auth_users(spec: str | None) -> list[str]:
    """Parse ``user:password[,user2:password2]``; raises FlowerConfigError naming the bad entry."""
    if not spec:
        return []
    users = [item.strip() for item in spec.split(",") if item.strip()]
    for item in users:
        user, sep, password = item.partition(":")
        if not sep or not user or not password:
            raise FlowerConfigError(
                "flower_basic_auth must be `user:password` (several separated by commas); "
                f"got an entry without a user or password: {user or '<empty>'!r}"
            )
    return users


def check(settings: _FlowerSettings) -> list[str]:
    """Validate the auth rule; returns the basic-auth users (possibly empty on loopback)."""
    users = basic_auth_users(settings.flower_basic_auth)
    if not users and not is_loopback(settings.flower_address):
        raise FlowerConfigError(
            f"refusing to start Flower on {settings.flower_address or 'all interfaces'!r} without auth: "
            "set TNLLM_FLOWER_BASIC_AUTH=user:password or bind TNLLM_FLOWER_ADDRESS=127.0.0.1"
        )
    if not users:
        log.warning("Flower has no basic auth; it is reachable from this machine only")
    return users


def flower_argv(settings: _FlowerSettings, port: int | None = None) -> list[str]:
    """Arguments of ``celery flower`` (no secrets in them)."""
    return [
        "flower",
        f"--port={settings.flower_port if port is None else port}",
        f"--address={settings.flower_address}",
        f"--conf={_NO_CONFIG}",
        "--read_only=True",
        f"--tasks_columns={TASK_COLUMNS}",
        "--max_tasks=10000",
        "--purge_offline_workers=600",
    ]


def run_flower(settings: _FlowerSettings, celery_app: Any, port: int | None = None) -> int:
    """Run Flower in this process until it is stopped; returns its exit code."""
    import flower.options  # noqa: F401 - defines Flower's tornado options before we set one
    from tornado.options import options

    users = check(settings)
    # Flower reads its options from tornado's global options; set the secret there directly.
    options.basic_auth = users
    log.info(
        "Flower on http://%s:%s (basic auth %s)",
        settings.flower_address,
        settings.flower_port if port is None else port,
        "on" if users else "off",
    )
    return int(celery_app.start(argv=flower_argv(settings, port)) or 0)
