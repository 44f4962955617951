"""Delivery logic in-process (real Redis, real receivers): outcomes, the log, the schedule and its fence."""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest
from standardwebhooks import Webhook

from tests.webhooks.conftest import SECRET, SECRET_NEXT, Receiver, drive, make_ctx, run_job
from tnllm.store import stats as jobstats
from tnllm.store.sync import JobStore
from tnllm.store.webhooks import SCHEDULE_KEY, split_member
from tnllm.webhooks.runner import WebhookContext, run_delivery


@pytest.fixture
def ctx(redis_url: str) -> WebhookContext:
    return make_ctx(redis_url)


def test_delivered_signed_and_logged(
    job_store: JobStore, ctx: WebhookContext, receiver_factory: Callable[..., Receiver]
) -> None:
    receiver = receiver_factory()
    job = run_job(job_store, "job-1", receiver.url)
    assert drive(ctx) == ["delivered"]
    (hit,) = receiver.hits  # job.running is not subscribed by default
    payload = Webhook(SECRET).verify(hit.body, hit.headers)
    assert payload["type"] == "job.succeeded"
    expected = job.to_public().model_dump(mode="json")
    expected["webhook"].pop("deliveries")
    assert payload["data"] == expected  # the job object, as GET /v1/jobs/{id} shows it
    assert payload["data"]["status"] == "succeeded" and payload["data"]["result"]["text"] == "hello"
    record = job_store.get("job-1")
    assert record is not None and record.webhook is not None
    shown = record.to_public().model_dump(mode="json")["webhook"]
    assert shown["url"] == receiver.url and shown["events"] == [
        "job.succeeded",
        "job.failed",
        "job.cancelled",
    ]
    (delivery,) = shown["deliveries"]
    assert delivery["state"] == "delivered" and delivery["webhook_id"] == hit.headers["webhook-id"]
    assert delivery["event"] == "job.succeeded" and delivery["next_attempt_at"] is None
    (attempt,) = delivery["attempts"]
    assert attempt["status_code"] == 200 and attempt["error"] is None and attempt["duration_ms"] >= 0
    assert attempt["at"].endswith("Z")


def test_events_subscription_and_once_per_terminal_event(
    job_store: JobStore, ctx: WebhookContext, receiver_factory: Callable[..., Receiver]
) -> None:
    receiver = receiver_factory()
    job = run_job(job_store, "job-1", receiver.url, status="failed", events=["job.running", "job.failed"])
    data = job.to_public().model_dump(mode="json")
    assert ctx.store.enqueue("job-1", "job.failed", data) is None  # a job ends once
    assert ctx.store.enqueue("job-1", "job.cancelled", data) is None  # not subscribed
    assert ctx.store.enqueue("no-such-job", "job.failed", data) is None
    run_job(job_store, "job-2", None)  # no webhook: nothing is enqueued
    assert drive(ctx) == ["delivered", "delivered"]
    types = sorted(Webhook(SECRET).verify(h.body, h.headers)["type"] for h in receiver.hits)
    assert types == ["job.failed", "job.running"]
    running = next(h for h in receiver.hits if b"job.running" in h.body[:40])
    assert Webhook(SECRET).verify(running.body, running.headers)["data"]["status"] == "running"
    assert job_store.get("job-2").webhook is None  # type: ignore[union-attr]


def test_410_stops_retries(
    job_store: JobStore, ctx: WebhookContext, receiver_factory: Callable[..., Receiver]
) -> None:
    receiver = receiver_factory(default=410)
    run_job(job_store, "job-1", receiver.url)
    assert drive(ctx) == ["failed"]
    (delivery,) = ctx.store.load("job-1")["deliveries"]  # type: ignore[index]
    assert len(delivery["attempts"]) == 1 and delivery["attempts"][0]["status_code"] == 410
    assert "410" in delivery["attempts"][0]["error"]


def test_redirect_is_not_followed(
    job_store: JobStore, ctx: WebhookContext, receiver_factory: Callable[..., Receiver]
) -> None:
    target = receiver_factory()
    bouncer = receiver_factory(script=[("redirect", target.url)], default=200)
    run_job(job_store, "job-1", bouncer.url)
    assert drive(ctx) == ["pending", "delivered"]
    assert target.hits == []
    attempts = ctx.store.load("job-1")["deliveries"][0]["attempts"]  # type: ignore[index]
    assert attempts[0]["status_code"] == 302 and "redirect not followed" in attempts[0]["error"]
    counters = ctx.redis.hgetall(jobstats.KEY)
    assert counters[b"webhook:retrying"] == b"1" and counters[b"webhook:delivered"] == b"1"
    assert len({h.headers["webhook-id"] for h in bouncer.hits}) == 1


def test_hanging_receiver_is_cut_off_and_retried(
    job_store: JobStore, redis_url: str, receiver_factory: Callable[..., Receiver]
) -> None:
    ctx = make_ctx(redis_url, webhook_timeout=0.5)
    receiver = receiver_factory(script=[("hang", 3.0)], default=200)
    run_job(job_store, "job-1", receiver.url)
    start = time.monotonic()
    assert drive(ctx) == ["pending", "delivered"]
    assert time.monotonic() - start < 2.5  # not the 3 s the receiver wanted
    first, second = ctx.store.load("job-1")["deliveries"][0]["attempts"]  # type: ignore[index]
    assert first["status_code"] is None and "timed out after 0.5 s" in first["error"]
    assert 400 <= first["duration_ms"] < 1500
    assert second["status_code"] == 200


def test_refused_address_at_delivery_fails_without_retry(
    job_store: JobStore, redis_url: str, receiver_factory: Callable[..., Receiver]
) -> None:
    ctx = make_ctx(redis_url, webhook_allowlist=[])  # the URL was accepted under another allow-list
    receiver = receiver_factory()
    run_job(job_store, "job-1", receiver.url)
    assert drive(ctx) == ["failed"]
    (attempt,) = ctx.store.load("job-1")["deliveries"][0]["attempts"]  # type: ignore[index]
    assert "127.0.0.1 is a loopback address" in attempt["error"]
    assert receiver.hits == []


def test_rotation_signs_with_both_secrets(
    job_store: JobStore, redis_url: str, receiver_factory: Callable[..., Receiver]
) -> None:
    ctx = make_ctx(redis_url, webhook_secret=[SECRET, SECRET_NEXT])
    receiver = receiver_factory()
    run_job(job_store, "job-1", receiver.url)
    drive(ctx)
    hit = receiver.hits[0]
    assert len(hit.headers["webhook-signature"].split(" ")) == 2
    assert Webhook(SECRET).verify(hit.body, hit.headers) == Webhook(SECRET_NEXT).verify(hit.body, hit.headers)


def test_no_secret_fails_rather_than_sending_unsigned(
    job_store: JobStore, redis_url: str, receiver_factory: Callable[..., Receiver]
) -> None:
    ctx = make_ctx(redis_url, webhook_secret=[])
    receiver = receiver_factory()
    run_job(job_store, "job-1", receiver.url)
    assert drive(ctx) == ["failed"]
    assert receiver.hits == []
    assert "TNLLM_WEBHOOK_SECRET" in ctx.store.load("job-1")["deliveries"][0]["attempts"][0]["error"]  # type: ignore[index]


def test_stale_or_duplicate_message_cannot_attempt(
    job_store: JobStore, ctx: WebhookContext, receiver_factory: Callable[..., Receiver]
) -> None:
    """The score is a fencing token: a message from an earlier dispatch (a dead worker's) is ignored."""
    receiver = receiver_factory()
    run_job(job_store, "job-1", receiver.url)
    ((value, first),) = ctx.store.claim_due(lease_ms=0, limit=10)  # lease ran out at once
    time.sleep(0.01)
    ((_, second),) = ctx.store.claim_due(lease_ms=60_000, limit=10)  # re-dispatched
    assert second > first
    assert run_delivery(ctx, value, first) == "superseded"
    assert run_delivery(ctx, value, second) == "delivered"
    assert run_delivery(ctx, value, second) == "superseded"  # a duplicate of the same message
    assert len(receiver.hits) == 1 and ctx.redis.zcard(SCHEDULE_KEY) == 0
    assert split_member(value) == ("job-1", 0)


def test_expired_job_drops_its_delivery(
    job_store: JobStore, ctx: WebhookContext, receiver_factory: Callable[..., Receiver]
) -> None:
    receiver = receiver_factory()
    run_job(job_store, "job-1", receiver.url)
    ctx.redis.delete("tnllm:job:job-1")  # the job record expired
    assert drive(ctx) == ["expired"]
    assert receiver.hits == []
