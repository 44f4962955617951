"""The Celery app's configuration: JSON only, acks late, priorities, routes, broker flavours."""

from __future__ import annotations

import ssl

import pytest

from tnllm.config import Settings
from tnllm.protocol.celery import make_celery, transport_options
from tnllm.protocol.tasks import ECHO_TASK, GENERATE_TASK, WEBHOOK_TASK


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
