"""The CPU webhook worker: a Celery worker on the ``webhooks`` queue (thread pool) plus the pump.

``tnllm webhook-worker`` (``tnllm.cli.launcher.cmd_webhook_worker``) runs ``run_webhook_worker``. It never
imports torch and never consumes the ``generate`` queue, so deliveries, however slow the receivers,
cannot hold up generation.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from celery import Celery

from tnllm.config import Settings
from tnllm.logging import quiet_celery_argv
from tnllm.protocol.celery import make_celery
from tnllm.protocol.tasks import WEBHOOK_QUEUE, WEBHOOK_TASK
from tnllm.store.clients import redis_client
from tnllm.webhooks.pump import SchedulePump
from tnllm.webhooks.runner import WebhookContext, run_delivery

log = logging.getLogger(__name__)

#: Celery node name of the webhook worker (docker-compose's health check pings it; %h = host name)
NODE_NAME = "webhooks@%h"
#: a dispatched message not picked up within this long is dispatched again (its lease expired)
MIN_DISPATCH_LEASE_MS = 60_000


def make_webhook_celery(settings: Settings) -> Celery:
    """The project's Celery app (``make_celery``: JSON only, late acks) with WEBHOOK_TASK registered
    lazily; its default queue is ``webhooks``."""
    app = make_celery(settings)
    app.conf.update(task_default_queue=WEBHOOK_QUEUE, worker_hijack_root_logger=False)
    return app


def register_webhook_task(app: Celery, get_ctx: Callable[[], WebhookContext]) -> None:
    """Register WEBHOOK_TASK (args: schedule member, lease token) on ``app``."""

    @app.task(name=WEBHOOK_TASK, acks_late=True, ignore_result=True)  # type: ignore[untyped-decorator]
    def deliver(value: str, token: int) -> str:
        return run_delivery(get_ctx(), value, int(token))


def _lazy_context(settings: Settings) -> Callable[[], WebhookContext]:
    lock = threading.Lock()
    holder: list[WebhookContext] = []

    def get() -> WebhookContext:
        with lock:
            if not holder:
                # the job store's client: every URL form the broker takes (sentinel://, rediss://)
                url = settings.redis_url or "redis://127.0.0.1:6379/0"
                client = redis_client(url, **settings.redis_socket_options())
                holder.append(WebhookContext.build(settings, client))
            return holder[0]

    return get


def run_webhook_worker(settings: Settings, hostname: str | None = None) -> int:
    """Serve the ``webhooks`` queue (thread pool) and pump the delivery schedule until shut down."""
    if not settings.redis_url:
        log.error("the webhook worker needs TNLLM_REDIS_URL (or run `tnllm up`)")
        return 2
    get_ctx = _lazy_context(settings)
    ctx = get_ctx()
    if ctx.signer is None:
        log.warning("webhooks cannot be signed: %s; deliveries will fail", ctx.signer_error)
    app = make_webhook_celery(settings)
    register_webhook_task(app, get_ctx)
    lease = max(MIN_DISPATCH_LEASE_MS, 5 * ctx.attempt_lease_ms)

    def dispatch(value: str, token: int) -> None:
        app.send_task(WEBHOOK_TASK, args=[value, token], queue=WEBHOOK_QUEUE, ignore_result=True)

    backlog_cap = max(10, 4 * settings.webhook_concurrency)
    pump = SchedulePump(ctx.store, dispatch, lease, lambda: int(ctx.redis.llen(WEBHOOK_QUEUE)), backlog_cap)
    pump.start()
    name = hostname or NODE_NAME
    try:
        app.worker_main([
            *quiet_celery_argv(settings),
            "worker", "-Q", WEBHOOK_QUEUE, "-P", "threads", "-c", str(settings.webhook_concurrency),
            "-n", name, "-l", settings.log_level.upper(), "--without-gossip", "--without-mingle",
        ])  # fmt: skip
    finally:
        pump.stop()
    return 0
