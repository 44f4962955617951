"""``/v1/jobs``: submit, read (with long-poll), stream (SSE), cancel and list the caller's jobs."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Header, Query, Response
from fastapi.responses import JSONResponse
from sse_starlette import EventSourceResponse

from tnllm.api.deps import OwnerDep, ServicesDep, StoreDep
from tnllm.api.errors import ApiError
from tnllm.api.notify import wait_for_terminal
from tnllm.api.schemas import CancelAnswer, ErrorResponse, JobCreate, JobList
from tnllm.api.sse import job_events, valid_event_id
from tnllm.api.submit import owned_job, submit_job, to_public
from tnllm.api.webhooks import notify_transition_async, redeliver
from tnllm.store import CancelKind, JobPublic, JobRecord, JobStatus

router = APIRouter(prefix="/v1/jobs", tags=["jobs"])

_ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorResponse, "description": text}
    for code, text in {
        401: "Missing or invalid API key",
        404: "Unknown, expired or someone else's job",
        422: "Invalid request (the `field` names the culprit)",
        503: "Redis unreachable (see Retry-After)",
    }.items()
}


@router.post(
    "",
    status_code=202,
    response_model=JobPublic,
    summary="Submit a generation job",
    responses={
        **_ERRORS,
        200: {"model": JobPublic, "description": "Idempotent replay (header `Idempotent-Replayed: true`)"},
        413: {"model": ErrorResponse, "description": "Body or prompt over the limits"},
        429: {"model": ErrorResponse, "description": "Queue full (see Retry-After)"},
    },
)
async def create_job(
    body: JobCreate,
    services: ServicesDep,
    owner: OwnerDep,
    response: Response,
    idempotency_key: Annotated[
        str | None,
        Header(
            alias="Idempotency-Key",
            description="Same key + same body → the original job (200); same key + other body → 422. "
            "Scoped to the API key; remembered 24 h.",
        ),
    ] = None,
) -> JobPublic:
    """Store the job and queue it; answers 202 with the job object and a `Location` header."""
    job, replayed = await submit_job(services, owner, body, idempotency_key, response)
    response.headers["Location"] = f"/v1/jobs/{job.id}"
    if replayed:
        response.status_code = 200
        response.headers["Idempotent-Replayed"] = "true"
    return job


@router.get("", response_model=JobList, summary="List your jobs, newest first", responses=_ERRORS)
async def list_jobs(
    store: StoreDep,
    owner: OwnerDep,
    status: Annotated[JobStatus | None, Query(description="Only jobs in this status.")] = None,
    limit: Annotated[int, Query(ge=1, le=100, description="Page size.")] = 20,
    cursor: Annotated[str | None, Query(description="`next_cursor` of the previous page.")] = None,
) -> JobList:
    """A page of the caller's jobs; follow `next_cursor` until it is null."""
    try:
        page = await store.list_jobs(owner, status=status, limit=limit, cursor=cursor)
    except ValueError as exc:
        raise ApiError(422, f"cursor: {exc}", field="cursor") from exc
    queued = [r.id for r in page.records if r.status is JobStatus.QUEUED]
    positions = dict(zip(queued, await store.queue_positions(queued), strict=True))
    return JobList(
        data=[r.to_public(positions.get(r.id)) for r in page.records], next_cursor=page.next_cursor
    )


@router.get("/{job_id}", response_model=JobPublic, summary="Read a job", responses=_ERRORS)
async def get_job(
    job_id: str,
    services: ServicesDep,
    owner: OwnerDep,
    wait: Annotated[
        float,
        Query(ge=0, description="Hold the request up to this many seconds until the job is terminal."),
    ] = 0,
) -> JobPublic:
    """The job object; with `?wait=N` the answer comes as soon as the job ends (or after N s)."""
    store = services.store
    if wait > services.settings.wait_max_seconds:
        raise ApiError(422, f"wait: at most {services.settings.wait_max_seconds:g} seconds", field="wait")

    async def read(_: str) -> JobRecord:  # 404 unless the caller's: also the waiter's first read
        return await owned_job(store, job_id, owner)

    if wait > 0:
        record = await wait_for_terminal(store, services.watcher, job_id, wait, read=read)
    else:
        record = await read(job_id)
    assert record is not None  # read raises instead
    return await to_public(store, record)


@router.get(
    "/{job_id}/stream",
    summary="Stream a job's tokens (Server-Sent Events)",
    response_class=EventSourceResponse,
    responses={
        **_ERRORS,
        200: {
            "content": {"text/event-stream": {}},
            "description": "`token` events `{text, index}` (index: the choice; `logprobs` too when "
            "asked), `reset` events `{reason}` (the job restarted on another worker: drop the text "
            "so far), then one `done` event with the job object. Event ids are stream ids; "
            "reconnect with `Last-Event-ID` to resume.",
        },
    },
)
async def stream_job(
    job_id: str,
    store: StoreDep,
    owner: OwnerDep,
    last_event_id: Annotated[
        str | None, Header(alias="Last-Event-ID", description="Resume after this event id.")
    ] = None,
) -> EventSourceResponse:
    """Replay what was generated so far, then follow live until the job ends."""
    if last_event_id is not None and not valid_event_id(last_event_id):
        raise ApiError(422, "Last-Event-ID: not an event id of this API", field="Last-Event-ID")
    await owned_job(store, job_id, owner)
    return EventSourceResponse(
        job_events(store, job_id, last_event_id or "0-0"),
        ping=15,
        headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"},
    )


@router.post(
    "/{job_id}/cancel",
    response_model=CancelAnswer,
    summary="Cancel a job",
    responses={
        **_ERRORS,
        200: {"model": CancelAnswer, "description": "Was queued: it never runs (`cancel`: cancelled)"},
        202: {
            "model": CancelAnswer,
            "description": "Was running: its worker stops it within one engine step of receiving the "
            "request (`cancel`: stopping)",
        },
        409: {
            "model": ErrorResponse,
            "description": "Had already finished (`status` says how it ended; `cancel`: already_finished)",
        },
    },
)
async def cancel_job(job_id: str, store: StoreDep, owner: OwnerDep) -> Any:
    """A queued job never starts (200, `cancel`: `cancelled`); a running one is stopped by its
    worker within one engine step of the worker receiving the request (a push, not a poll) and
    keeps its partial text (202, `cancel`: `stopping`); it may still end `succeeded` or `failed` if
    it finished before the request reached it. A finished job answers 409 with its status."""
    await owned_job(store, job_id, owner)
    outcome = await store.cancel(job_id)
    if outcome.kind is CancelKind.MISSING:
        raise ApiError(404, f"no job with id {job_id!r}", field="id")
    if outcome.kind is CancelKind.TERMINAL:
        status = outcome.status.value if outcome.status else "unknown"
        raise ApiError(
            409, f"job already {status}", type="job_terminal", status=status, cancel="already_finished"
        )
    record = await owned_job(store, job_id, owner)
    code = 200 if outcome.kind is CancelKind.CANCELLED else 202
    if outcome.kind is CancelKind.CANCELLED and record.webhook:  # the API made this transition: it reports it
        await notify_transition_async(store, record, "job.cancelled")
        record = await owned_job(store, job_id, owner)
    public = (await to_public(store, record)).model_dump(mode="json")
    answer = {**public, "cancel": "cancelled" if outcome.kind is CancelKind.CANCELLED else "stopping"}
    return JSONResponse(answer, status_code=code)


@router.post(
    "/{job_id}/webhook/redeliver",
    status_code=202,
    response_model=JobPublic,
    summary="Send the job's last webhook event again",
    responses={
        **_ERRORS,
        409: {"model": ErrorResponse, "description": "The job has no webhook, or no event happened yet"},
    },
)
async def redeliver_webhook(job_id: str, store: StoreDep, owner: OwnerDep) -> JobPublic:
    """A new delivery of the last event (same `webhook-id` and body, freshly signed and retried)."""
    await owned_job(store, job_id, owner)
    try:
        await redeliver(store, job_id)
    except LookupError as exc:
        raise ApiError(409, str(exc), type="no_webhook_event") from exc
    return await to_public(store, await owned_job(store, job_id, owner))
