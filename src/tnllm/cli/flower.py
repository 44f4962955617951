"""The Flower dashboard: its options built from Settings, its safety rules, and how tasks show in it.

Rules: Flower binds loopback unless told otherwise; on any other address it refuses to start
without ``flower_basic_auth`` (``user:password``, several separated by commas). The password goes
to Flower in-process (tornado options), never on a command line that ``ps`` shows. Flower runs
read-only: cancelling or revoking from the dashboard would bypass the job state machine (cancel
through the API instead). With auth set, every route asks for it (``guard_every_route``: Flower
itself leaves ``/metrics``, ``/static`` and its 404 page open) except ``/healthcheck``, which
answers without auth for container checks.

Tasks carry only a job id, so Flower never sees a prompt; ``tnllm.protocol.celery.task_display``
gives the producer a readable ``argsrepr`` (``job=<id> prompt_tokens=N priority=P``) that Flower
shows as the arguments.
"""

from __future__ import annotations

import base64
import binascii
import functools
import hmac
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
#: The only Flower route that answers without auth (container health checks; it says "OK").
OPEN_PATHS = frozenset({"/healthcheck"})


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


def authorized(header: str, users: list[str]) -> bool:
    """Whether an ``Authorization`` header carries the basic-auth credentials of one of ``users``."""
    scheme, _, encoded = header.strip().partition(" ")
    if scheme.lower() != "basic":
        return False
    try:
        given = base64.b64decode(encoded.strip(), validate=True)
    except (binascii.Error, ValueError):
        return False
    return any(hmac.compare_digest(given, user.encode()) for user in users)


@functools.cache
def _guarded(handler: Any) -> Any:
    """``handler`` with a ``prepare`` that answers 401 unless the request carries the basic-auth
    credentials set in Flower's options (``basic_auth``); nothing is asked when none are set."""
    if getattr(handler, "_tnllm_guarded", False):
        return handler
    original = handler.prepare

    def prepare(self: Any) -> Any:
        users = list(getattr(self.application.options, "basic_auth", None) or [])
        if users and not authorized(self.request.headers.get("Authorization", ""), users):
            self.set_status(401)
            self.set_header("WWW-Authenticate", 'Basic realm="flower"')
            self.finish("Access denied")
            return None
        return original(self)

    attrs: dict[str, Any] = {"prepare": prepare, "_tnllm_guarded": True}
    if "__new__" in vars(handler):  # Flower's LoginHandler builds another handler in its place

        def new(cls: Any, *args: Any, **kwargs: Any) -> Any:
            obj = handler.__new__(cls, *args, **kwargs)
            if not getattr(obj, "_tnllm_guarded", False):
                obj.__class__ = _guarded(obj.__class__)
            return obj

        attrs["__new__"] = new
    return type(handler.__name__, (handler,), attrs)


def guard_every_route(handlers: list[Any], app_settings: dict[str, Any]) -> None:
    """Put every route of Flower's handler list and app settings (``flower.urls.handlers`` and
    ``.settings``, changed in place: the Flower app reads those very objects) except
    ``OPEN_PATHS`` behind basic auth; tornado's own static routes (``/static/``, ``/favicon.ico``,
    ``/robots.txt``) too, through ``static_handler_class``."""
    from tornado.web import StaticFileHandler, URLSpec

    static = app_settings.get("static_handler_class", StaticFileHandler)
    app_settings["static_handler_class"] = _guarded(static)

    for i, spec in enumerate(handlers):
        if isinstance(spec, URLSpec):
            if spec.regex.pattern.rstrip("$") not in OPEN_PATHS:
                guarded = _guarded(spec.handler_class)
                handlers[i] = URLSpec(spec.regex.pattern, guarded, spec.kwargs, spec.name)
        elif spec[0] not in OPEN_PATHS:
            handlers[i] = (spec[0], _guarded(spec[1]), *spec[2:])


def run_flower(settings: _FlowerSettings, celery_app: Any, port: int | None = None) -> int:
    """Run Flower in this process until it is stopped; returns its exit code."""
    import flower.options  # defines Flower's tornado options before we set one
    import flower.urls
    from tornado.options import options

    users = check(settings)
    guard_every_route(flower.urls.handlers, flower.urls.settings)
    # Flower reads its options from tornado's global options; set the secret there directly.
    options.basic_auth = users
    log.info(
        "Flower on http://%s:%s (basic auth %s)",
        settings.flower_address,
        settings.flower_port if port is None else port,
        "on" if users else "off",
    )
    return int(celery_app.start(argv=flower_argv(settings, port)) or 0)
