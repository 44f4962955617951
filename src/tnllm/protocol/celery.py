"""The Celery application of tnllm: broker configuration, routes and priorities (torch-free).

The API uses it as a producer (``send_generate``); workers (`tnllm worker`) consume with it. There is
no result backend: the Redis job record is the truth, so every task runs with ``ignore_result``.
"""

from __future__ import annotations

import ssl
from typing import Any

from celery import Celery
from kombu import Queue

from tnllm.config import Settings
from tnllm.logging import tag_job_tasks
from tnllm.protocol.tasks import (
    BROKER_PRIORITY_STEPS,
    ECHO_TASK,
    GENERATE_QUEUE,
    GENERATE_TASK,
    WEBHOOK_QUEUE,
    WEBHOOK_TASK,
    broker_priority,
)
from tnllm.protocol.urls import broker_url as kombu_url
from tnllm.protocol.urls import is_sentinel, parse_sentinel_url

#: Separator of kombu's per-priority list names (``generate`` + sep + step); a transport option.
BROKER_SEP = ":"
#: Modules whose tasks a worker registers (imported by the worker at startup, never by producers).
TASK_MODULES = ["tnllm.worker.tasks"]


def broker_url(settings: Settings) -> str:
    """The broker URL; ``redis_url`` must be set (`tnllm up` sets it to the embedded server's)."""
    if not settings.redis_url:
        raise ValueError("TNLLM_REDIS_URL is not set: point it at Redis (or use `tnllm up`)")
    return kombu_url(settings.redis_url)


def transport_options(settings: Settings) -> dict[str, Any]:
    """kombu Redis transport options: visibility timeout, ten priority lists, sentinel master."""
    options: dict[str, Any] = {
        # A message not acked this long is handed out again; our leases recover dead workers long
        # before that, so it only needs to exceed the longest job (Settings checks that).
        "visibility_timeout": settings.visibility_timeout,
        # One Redis list per priority; the worker pops from the lowest-numbered list first.
        "queue_order_strategy": "priority",
        "priority_steps": BROKER_PRIORITY_STEPS,
        # Lists are named generate, generate:1 ... generate:9. Every producer must use this app's
        # options (the API does, through make_celery) or it fills lists no worker pops.
        "sep": BROKER_SEP,
        "fanout_prefix": True,
        "fanout_patterns": True,
        "retry_on_timeout": True,
        # the store clients' socket options: a broker connection cut by a silent partition is
        # noticed (timeout, health check, TCP keepalive) and replaced, even while blocked in BRPOP
        **settings.redis_socket_options(),
    }
    url = broker_url(settings)
    if is_sentinel(url):
        # master name: the URL's ?master_name= (kept out of the broker URL), else the setting
        options["master_name"] = parse_sentinel_url(
            str(settings.redis_url), settings.redis_sentinel_master
        ).master
    return options


def _ssl_options(url: str) -> dict[str, Any] | None:
    """rediss:// verifies the server certificate unless the URL says otherwise (ssl_cert_reqs=...)."""
    if not url.startswith("rediss://") or "ssl_cert_reqs" in url:
        return None
    return {"ssl_cert_reqs": ssl.CERT_REQUIRED}


def make_celery(settings: Settings) -> Celery:
    """A Celery app configured from ``settings`` (JSON only, acks late, priorities, retry forever)."""
    url = broker_url(settings)
    tag_job_tasks(GENERATE_TASK, WEBHOOK_TASK)  # their logs carry the job id (tnllm.logging)
    app = Celery("tnllm", broker=url, include=TASK_MODULES, set_as_current=False)
    app.conf.update(
        # Nothing but JSON crosses the broker (no pickle anywhere).
        task_serializer="json",
        result_serializer="json",
        event_serializer="json",
        accept_content=["json"],
        result_accept_content=["json"],
        result_backend=None,
        task_ignore_result=True,
        task_store_errors_even_if_ignored=False,
        # Ack after the task returns; a worker that dies mid-task leaves the message to be redelivered.
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        # Each thread takes one message at a time: concurrency equals the engine's free slots.
        worker_prefetch_multiplier=1,
        broker_transport_options=transport_options(settings),
        broker_use_ssl=_ssl_options(url),
        broker_connection_retry=True,
        broker_connection_retry_on_startup=True,
        broker_connection_max_retries=None,  # keep trying through Redis outages
        broker_channel_error_retry=True,
        # Running generations keep going through a broker outage; the job fence makes any
        # redelivery harmless, so there is nothing to gain from cancelling them.
        worker_cancel_long_running_tasks_on_connection_loss=False,
        task_queues=[Queue(GENERATE_QUEUE), Queue(WEBHOOK_QUEUE)],
        task_default_queue=GENERATE_QUEUE,
        task_routes={
            GENERATE_TASK: {"queue": GENERATE_QUEUE},
            ECHO_TASK: {"queue": GENERATE_QUEUE},
            WEBHOOK_TASK: {"queue": WEBHOOK_QUEUE},
        },
        task_create_missing_queues=True,
        # Events feed Flower's task list (its worker view needs none).
        worker_send_task_events=settings.task_events,
        task_send_sent_event=settings.task_events,
        enable_utc=True,
        timezone="UTC",
    )
    return app


def broker_lists(queue: str) -> dict[int, str]:
    """The Redis list kombu keeps each broker priority step of ``queue`` in: ``queue`` for step 0,
    ``queue + BROKER_SEP + step`` for the others (kombu's Redis transport naming)."""
    return {step: queue if step == 0 else f"{queue}{BROKER_SEP}{step}" for step in BROKER_PRIORITY_STEPS}


def task_display(job_id: str, prompt_tokens: int | None, priority: int) -> dict[str, str]:
    """``send_task`` keyword arguments that make a generate task readable in Flower and logs.

    Flower and Celery's own logs show ``argsrepr``/``kwargsrepr`` instead of the real arguments, so
    they read ``job=<id> prompt_tokens=N priority=P`` and never see a prompt.
    """
    tokens = "?" if prompt_tokens is None else str(int(prompt_tokens))
    return {"argsrepr": f"job={job_id} prompt_tokens={tokens} priority={int(priority)}", "kwargsrepr": "{}"}


def send_generate(
    app: Celery,
    job_id: str,
    priority: int,
    prompt_tokens: int | None = None,
    queue: str = GENERATE_QUEUE,
    producer: Any = None,
    declare: list[Any] | None = None,
) -> None:
    """Enqueue one GENERATE_TASK message for ``job_id`` at the job's priority (0..9, higher first).

    The one way every producer sends it (the API, a worker's requeue and release, the reaper and
    the orphan rescuer). The task id is the job id, so Flower and Celery's logs name the job; a job
    sent again keeps its id. Flower shows it as ``task_display`` says (never the prompt). ``queue``:
    a worker's own queue (``tasks.worker_queue``) for a continuation whose state that worker holds.
    """
    app.send_task(
        GENERATE_TASK,
        args=[job_id],
        queue=queue,
        priority=broker_priority(priority),
        ignore_result=True,
        task_id=job_id,
        producer=producer,
        declare=declare,  # None: Celery declares the queue (cached per connection, checked each time)
        **task_display(job_id, prompt_tokens, priority),
    )


#: One Redis command of a publish, as kombu's Redis transport would send it: (name, key or channel,
#: value) with name ``lpush`` (a queue list), ``pexpire`` (a list's expiry) or ``publish`` (fanout).
BrokerCommand = tuple[str, str, str]
BROKER_COMMANDS = ("lpush", "pexpire", "publish")


class _Collect:
    """Stands in for a kombu producer batch (``kombu.messaging._ProducerBatchState``): kombu routes
    and serializes each publish itself and hands the final Redis commands to ``add``, as it does for
    its own ``PublishBatch``; they are kept instead of sent."""

    def __init__(self) -> None:
        self.commands: list[BrokerCommand] = []

    def publish(self, channel: Any, message: Any, **kwargs: Any) -> Any:
        return channel.basic_publish(message, _publish_batch=self, **kwargs)

    def add(self, name: str, *args: Any) -> None:
        if name not in BROKER_COMMANDS or len(args) != 2:
            raise ValueError(f"unexpected broker command {name!r}")
        self.commands.append((name, str(args[0]), str(args[1])))


def generate_commands(
    app: Celery,
    producer: Any,
    job_id: str,
    priority: int,
    prompt_tokens: int | None = None,
    *,
    declare: bool = False,
) -> list[BrokerCommand]:
    """The Redis commands by which ``send_generate`` would publish ``job_id`` (its message and, with
    task events, the task-sent event), built by Celery and kombu but not sent: a caller runs them
    in its own script (the job store's CREATE, so the record and its message are one write).

    ``producer``: a kombu Producer of ``app`` on the Redis transport, used by one thread at a time.
    With ``declare`` (the first call on a producer) the queue is declared (Redis I/O, once);
    without, no I/O at all. ValueError when the transport cannot batch (not kombu's Redis transport).
    """
    channel = producer.channel
    if not hasattr(channel, "create_publish_batch"):
        raise ValueError("the broker transport is not kombu's Redis transport")
    collect = _Collect()
    producer._batch_local.current = collect
    try:
        send_generate(
            app, job_id, priority, prompt_tokens, producer=producer, declare=None if declare else []
        )
    finally:
        del producer._batch_local.current
    if not any(name == "lpush" for name, _, _ in collect.commands):
        raise ValueError("kombu routed the generate message to no queue")
    return collect.commands
