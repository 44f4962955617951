"""The Celery app's configuration: JSON only, acks late, priorities, routes, broker flavours."""

from __future__ import annotations

import json
import ssl

import pytest
import redis

from tnllm.api.producer import JobProducer
from tnllm.config import Settings
from tnllm.protocol.celery import (
    broker_lists,
    generate_commands,
    make_celery,
    send_generate,
    task_display,
    transport_options,
)
from tnllm.protocol.tasks import ECHO_TASK, GENERATE_QUEUE, GENERATE_TASK, WEBHOOK_QUEUE, WEBHOOK_TASK
from tnllm.worker.orphans import message_job_id


def test_json_only_acks_late_prefetch_one() -> None:
    conf = make_celery(Settings(redis_url="redis://127.0.0.1:1/0")).conf
    assert conf.task_serializer == "json" and conf.result_serializer == "json"
    assert list(conf.accept_content) == ["json"] and conf.event_serializer == "json"
    assert conf.task_acks_late and conf.task_reject_on_worker_lost and conf.task_ignore_result
    assert conf.worker_prefetch_multiplier == 1
    assert conf.broker_connection_retry_on_startup and conf.broker_connection_max_retries is None
    assert conf.result_backend is None


def test_task_events_on_by_default_and_switchable() -> None:
    """On: Flower's task list is fed. TNLLM_TASK_EVENTS=false turns off both the workers' events and
    the API's task-sent event."""
    on = make_celery(Settings(redis_url="redis://127.0.0.1:1/0")).conf
    assert on.worker_send_task_events and on.task_send_sent_event
    off = make_celery(Settings(redis_url="redis://127.0.0.1:1/0", task_events=False)).conf
    assert not off.worker_send_task_events and not off.task_send_sent_event


def test_routes_and_priority_lists() -> None:
    settings = Settings(redis_url="redis://127.0.0.1:1/0", visibility_timeout=7200, job_time_limit=60)
    conf = make_celery(settings).conf
    assert conf.task_routes[GENERATE_TASK]["queue"] == "generate"
    assert conf.task_routes[ECHO_TASK]["queue"] == "generate"
    assert conf.task_routes[WEBHOOK_TASK]["queue"] == "webhooks"
    opts = conf.broker_transport_options
    assert opts["visibility_timeout"] == 7200
    assert opts["queue_order_strategy"] == "priority" and opts["priority_steps"] == list(range(10))
    assert opts["sep"] == ":"


def test_sentinel_master_name() -> None:
    opts = transport_options(Settings(redis_url="sentinel://10.0.0.1:26379;sentinel://10.0.0.2:26379"))
    assert opts["master_name"] == "mymaster"
    opts = transport_options(Settings(redis_url="sentinel://h:26379?master_name=prod"))
    assert opts["master_name"] == "prod"


def test_rediss_verifies_certificates() -> None:
    conf = make_celery(Settings(redis_url="rediss://cache.example:6380/0")).conf
    assert conf.broker_use_ssl == {"ssl_cert_reqs": ssl.CERT_REQUIRED}


def test_needs_a_redis_url() -> None:
    with pytest.raises(ValueError, match="TNLLM_REDIS_URL"):
        make_celery(Settings(redis_url=None))


def test_task_display_never_has_prompt() -> None:
    shown = task_display("abc123", 17, 5)
    assert shown == {"argsrepr": "job=abc123 prompt_tokens=17 priority=5", "kwargsrepr": "{}"}
    assert task_display("x", None, 0)["argsrepr"] == "job=x prompt_tokens=? priority=0"


def _waiting(client: redis.Redis, name: str) -> list[dict]:
    return [json.loads(raw) for raw in client.lrange(name, 0, -1)]


def test_generate_messages_are_one_shape_from_every_producer(redis_url: str) -> None:
    """The API's producer and the workers' send_generate (requeue, release, reaper, rescue) put the
    same message on a real broker: task id = job id, the broker priority, the generate queue."""
    settings = Settings(redis_url=redis_url)
    app = make_celery(settings)
    producer = JobProducer(settings)
    client = redis.Redis.from_url(redis_url)
    try:
        send_generate(app, "from-worker", 7)
        producer.send_generate_blocking("from-api", 7, prompt_tokens=3)
        messages = _waiting(client, broker_lists(GENERATE_QUEUE)[2])  # job priority 7 -> broker 2
    finally:
        app.close()
        producer.close()
        client.close()
    messages.sort(key=lambda m: m["headers"]["id"])
    assert [m["headers"]["id"] for m in messages] == ["from-api", "from-worker"]
    for m in messages:
        assert m["headers"]["task"] == GENERATE_TASK and m["properties"]["priority"] == 2
        assert m["properties"]["delivery_info"]["routing_key"] == GENERATE_QUEUE
        assert message_job_id(m) == m["headers"]["id"]  # the job id is the only argument
    assert messages[0]["headers"]["argsrepr"] == "job=from-api prompt_tokens=3 priority=7"


@pytest.mark.parametrize("queue", [GENERATE_QUEUE, WEBHOOK_QUEUE])
def test_broker_lists_are_the_lists_kombu_creates(redis_url: str, queue: str) -> None:
    """One message per broker priority step, sent through the real app: kombu fills exactly the
    lists ``broker_lists`` names, one message in each."""
    app = make_celery(Settings(redis_url=redis_url))
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    try:
        for step in range(10):
            app.send_task(GENERATE_TASK, args=[f"s{step}"], queue=queue, priority=step)
        created = {k for k in client.keys(f"{queue}*") if client.type(k) == "list"}
        names = broker_lists(queue)
        assert created == set(names.values())
        for step, name in names.items():
            assert [m["headers"]["argsrepr"] for m in _waiting(client, name)] == [repr([f"s{step}"])]
    finally:
        app.close()
        client.close()


@pytest.mark.parametrize("events", [True, False])
def test_generate_commands_are_what_kombu_sends(redis_url: str, events: bool) -> None:
    """The commands built for the store's CREATE are the ones send_generate makes kombu send: the
    same message on the same priority list (only kombu's random delivery tag differs) and, with
    task events, the task-sent event; without the queue declaration (the first build's) no Redis I/O."""
    settings = Settings(redis_url=redis_url, task_events=events)
    app = make_celery(settings)
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    try:
        with app.producer_pool.acquire(block=True) as producer:
            generate_commands(app, producer, "warm", 0, declare=True)
            calls = sum(v["calls"] for v in client.info("commandstats").values())
            commands = generate_commands(app, producer, "job-1", 7, 3)
            assert sum(v["calls"] for v in client.info("commandstats").values()) == calls + 1  # INFO only
        send_generate(app, "job-1", 7, 3)
        sent = _waiting(client, broker_lists(GENERATE_QUEUE)[2])
    finally:
        app.close()
        client.close()
    pushes = [c for c in commands if c[0] == "lpush"]
    assert [c[1] for c in pushes] == [broker_lists(GENERATE_QUEUE)[2]] and len(sent) == 1
    built = json.loads(pushes[0][2])
    for message in (built, sent[0]):
        del message["properties"]["delivery_tag"]
    assert built == sent[0]
    events_sent = [c for c in commands if c[0] == "publish"]
    assert len(events_sent) == (1 if events else 0)
    if events:
        assert events_sent[0][1].endswith("celeryev/task.sent")
