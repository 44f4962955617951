"""Job submission, shared by ``POST /v1/jobs`` and the tutorial's ``POST /``.

Order matters for "never hand out an ID that was not stored": validate → count prompt tokens →
store the record (with its idempotency key and, on kombu's Redis transport, its Celery message:
one atomic script) → answer. Where the message cannot go with the record it is sent after the
create; if that fails, the stored job is discarded again and the client gets 503.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import secrets
import time
from typing import Any

import anyio
from fastapi import Response
from redis.exceptions import RedisError

from tnllm.api.continuation import continuation_route
from tnllm.api.deps import Services
from tnllm.api.errors import REDIS_RETRY_AFTER, ApiError
from tnllm.api.limits import QUOTA_POLICY, RATE_POLICY, rate_limit_headers
from tnllm.api.schemas import JobCreate
from tnllm.api.webhooks import validate_webhook
from tnllm.config import Settings
from tnllm.errors import WebhookRefused
from tnllm.protocol.formats import ResponseFormat, grammar_of
from tnllm.protocol.jobs import from_epoch
from tnllm.protocol.tasks import GENERATE_QUEUE
from tnllm.store import AsyncJobStore, GenerationParams, JobPublic, JobRecord, JobStatus
from tnllm.store.quotas import Verdict

log = logging.getLogger(__name__)

#: Seconds a client is asked to wait when the queue is full.
QUEUE_FULL_RETRY_AFTER = 10
#: Prompts above this many characters are tokenized in a worker thread, off the event loop.
INLINE_COUNT_CHARS = 16_384
IDEMPOTENCY_KEY_MAX = 255


def generation_params(body: JobCreate, settings: Settings) -> GenerationParams:
    """The stored generation parameters, ``max_new_tokens`` resolved to the deployment's default
    where the body omits it (the one place a job's default is applied); 422 naming the field for
    deployment limits."""
    sampling = body.sampling().resolved(settings.default_max_new_tokens)
    max_new = sampling.max_new_tokens
    assert max_new is not None
    if max_new > settings.max_new_tokens_limit:
        raise ApiError(
            422,
            f"max_new_tokens: at most {settings.max_new_tokens_limit} (got {max_new})",
            field="max_new_tokens",
        )
    if len(body.stop) > settings.max_stop_strings:
        raise ApiError(422, f"stop: at most {settings.max_stop_strings} strings", field="stop")
    if body.n > settings.max_n:
        raise ApiError(422, f"n: at most {settings.max_n} (got {body.n})", field="n")
    check_response_format(body.response_format)
    return GenerationParams(
        **sampling.model_dump(),
        prompt=body.prompt,
        messages=body.messages,
        continue_from=body.continue_from,
        state_cache=body.state_cache,
        raw_prompt=body.raw_prompt,
    )


def check_response_format(fmt: ResponseFormat | None) -> None:
    """422 naming why when a ``response_format`` grammar cannot be compiled (llguidance, without the
    model's tokenizer: the worker compiles it again against the vocabulary)."""
    if fmt is None or fmt.type == "text":
        return
    try:
        grammar_of(fmt)
    except ValueError as exc:
        raise ApiError(422, f"response_format: {exc}", field="response_format") from None


async def check_prompt_size(services: Services, params: GenerationParams, earlier: int = 0) -> int:
    """Prompt tokens (exact with the tokenizer, else estimated; ``earlier``: the tokens of the
    conversation a ``continue_from`` job continues, which the new part is rendered after); 413 over
    the limit, 422 when the prompt and max_new_tokens cannot fit the model context."""
    settings = services.settings
    field = "prompt" if params.prompt is not None else "messages"
    chars = len(params.prompt or "") + sum(len(m.content) for m in params.messages or [])
    if chars > INLINE_COUNT_CHARS:
        tokens, exact = await anyio.to_thread.run_sync(services.counter.count, params)
    else:
        tokens, exact = services.counter.count(params)
    tokens += earlier  # the new part counted as a fresh conversation: an upper bound for its suffix
    if tokens > settings.max_prompt_tokens:
        unit = "tokens" if exact else f"tokens (estimated from {tokens * 8} bytes or fewer)"
        raise ApiError(
            413,
            f"{field}: {tokens} {unit}, the limit is {settings.max_prompt_tokens} tokens",
            type="prompt_too_long",
            field=field,
            limit=settings.max_prompt_tokens,
        )
    max_new = params.max_new_tokens
    assert max_new is not None  # resolved by generation_params
    if exact and tokens + max_new > settings.max_context:
        raise ApiError(
            422,
            f"max_new_tokens: prompt ({tokens} tokens) + max_new_tokens ({max_new}) "
            f"exceeds the model context of {settings.max_context} tokens",
            field="max_new_tokens",
        )
    return tokens


def check_idempotency_key(key: str | None) -> str | None:
    """Validate the Idempotency-Key header (visible ASCII, at most 255 characters)."""
    if key is None:
        return None
    if not key or len(key) > IDEMPOTENCY_KEY_MAX or not all(33 <= ord(c) < 127 for c in key):
        raise ApiError(
            422,
            f"Idempotency-Key: 1 to {IDEMPOTENCY_KEY_MAX} visible ASCII characters",
            field="Idempotency-Key",
        )
    return key


def body_hash(body: JobCreate, params: GenerationParams) -> str:
    """Fingerprint of the request as validated (formatting and key order do not matter)."""
    canonical = body.model_dump(mode="json")
    canonical["max_new_tokens"] = params.max_new_tokens
    for name, default in (
        ("ignore_eos", False),
        ("continue_from", None),
        ("state_cache", True),
        ("raw_prompt", False),
    ):
        if canonical[name] == default:  # absent from bodies hashed before the field existed
            del canonical[name]
    raw = json.dumps(canonical, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(raw.encode()).hexdigest()


async def checked_webhook(body: JobCreate, settings: Settings) -> dict[str, Any] | None:
    """The ``{"url", "events"}`` to store with the job; 422 naming the reason (SSRF rules, no secret)."""
    try:
        return await validate_webhook(body.webhook, settings)
    except WebhookRefused as exc:
        raise ApiError(422, str(exc), field=exc.field) from exc


async def check_key_limits(services: Services, owner: str, job_id: str) -> dict[str, str]:
    """429 when ``owner`` is over its submission rate or today's token quota (shared by every API
    process through Redis); an admitted submission is counted. Returns the ``RateLimit`` headers
    for the answer (none while both limits are off)."""
    settings = services.settings
    if not (settings.rate_limit or settings.token_quota):
        return {}
    admission = await services.store.admit(owner, job_id, settings.rate_limit, settings.token_quota)
    headers = rate_limit_headers(settings, admission)
    if admission.allowed:
        return headers
    if admission.verdict is Verdict.RATE:
        services.metrics.jobs_rejected.labels(reason="rate_limit").inc()
        message = f"rate limit: at most {settings.rate_limit} submissions per minute for this key"
        raise ApiError(429, message, type="rate_limited", headers=headers, policy=RATE_POLICY)
    services.metrics.jobs_rejected.labels(reason="token_quota").inc()
    message = f"token quota: this key used its {settings.token_quota} completion tokens of today (UTC)"
    raise ApiError(429, message, type="quota_exceeded", headers=headers, policy=QUOTA_POLICY)


async def submit_job(
    services: Services,
    owner: str,
    body: JobCreate,
    idempotency_key: str | None = None,
    response: Response | None = None,
) -> tuple[JobPublic, bool]:
    """Store and enqueue a job; returns (job object, replayed). The per-key ``RateLimit`` headers
    go on ``response`` when one is given."""
    settings, store = services.settings, services.store
    idempotency_key = check_idempotency_key(idempotency_key)
    params = generation_params(body, settings)
    route = await continuation_route(services, owner, params)
    prompt_tokens = await check_prompt_size(services, params, route.earlier_tokens)
    webhook = await checked_webhook(body, settings)
    fingerprint = body_hash(body, params)
    job_id = secrets.token_urlsafe(18)
    limit_headers = await check_key_limits(services, owner, job_id)
    if response is not None:
        response.headers.update(limit_headers)
    broker = await services.producer.broker_commands(job_id, body.priority, prompt_tokens, route.queue)
    outcome = await store.create(
        job_id=job_id,
        owner=owner,
        params=params,
        priority=body.priority,
        metadata=body.metadata,
        max_queued=settings.max_queued,
        idempotency_key=idempotency_key,
        body_hash=fingerprint,
        webhook=webhook,
        broker=broker or (),
    )
    if outcome.kind in ("full", "conflict"):
        services.metrics.jobs_rejected.labels(reason=outcome.kind).inc()
    if outcome.kind == "full":
        raise ApiError(
            429,
            f"the queue holds its maximum of {settings.max_queued} jobs; retry later",
            headers={"Retry-After": str(QUEUE_FULL_RETRY_AFTER)},
            queue_depth=outcome.queue_depth,
        )
    if outcome.kind == "conflict":
        raise ApiError(
            422,
            "Idempotency-Key: this key was already used with a different request body",
            type="idempotency_conflict",
            field="Idempotency-Key",
        )
    if outcome.kind == "replayed":
        assert outcome.job_id is not None
        original = await store.get(outcome.job_id)
        if original is None:
            raise ApiError(422, "Idempotency-Key: the job of this key has expired", field="Idempotency-Key")
        return await to_public(store, original), True
    if broker is None:  # the message could not go with the record: send it now
        await _enqueue(
            services, job_id, owner, body.priority, idempotency_key, fingerprint, prompt_tokens, route.queue
        )
    services.metrics.jobs_submitted.inc()
    # The record as written (a worker may already run it; the snapshot at creation is what we answer).
    assert outcome.record is not None
    return outcome.record.to_public(outcome.queue_position), False


async def _enqueue(
    services: Services,
    job_id: str,
    owner: str,
    priority: int,
    idem: str | None,
    fingerprint: str,
    prompt_tokens: int,
    queue: str = GENERATE_QUEUE,
) -> None:
    try:
        await services.producer.send_generate(job_id, priority, prompt_tokens, queue)
    except Exception as exc:  # kombu/redis errors vary by transport; the job must not stay orphaned
        log.warning("could not enqueue job %s: %s", job_id, exc)
        with contextlib.suppress(RedisError, OSError):
            await services.store.discard(job_id, owner, idem, fingerprint)
        raise ApiError(
            503,
            "the job queue (Redis) is unreachable; retry later",
            type="unavailable",
            headers={"Retry-After": str(REDIS_RETRY_AFTER)},
        ) from exc


async def to_public(store: AsyncJobStore, record: JobRecord) -> JobPublic:
    """The job object, with ``queue_position`` while queued and its ETAs while queued or running."""
    position = await store.queue_position(record.id) if record.status is JobStatus.QUEUED else None
    public = record.to_public(position)
    if record.status in (JobStatus.QUEUED, JobStatus.RUNNING):
        estimate = await store.eta(record.id)
        if estimate is not None:
            now = time.time()
            if record.status is JobStatus.QUEUED and estimate.start_s is not None:
                public.estimated_start_at = from_epoch(now + estimate.start_s)
            if estimate.finish_s is not None:
                public.estimated_finish_at = from_epoch(now + estimate.finish_s)
    return public


async def owned_job(store: AsyncJobStore, job_id: str, owner: str) -> JobRecord:
    """The caller's job; 404 when unknown, expired or someone else's (indistinguishable on purpose)."""
    record = await store.get(job_id) if len(job_id) <= 128 else None
    if record is None or record.owner != owner:
        raise ApiError(404, f"no job with id {job_id!r}", field="id")
    return record
