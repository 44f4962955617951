"""``/v1/jobs/{id}/pause`` and ``/resume``: a paused job holds no slot and waits out of the queue;
resumed, it goes back to its place in the queue and continues from the tokens it had streamed
(docs/STATE.md)."""

from __future__ import annotations

import logging
from typing import Any

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from tnllm.api.deps import OwnerDep, ServicesDep, StoreDep
from tnllm.api.errors import ApiError
from tnllm.api.routes.jobs import _ERRORS
from tnllm.api.schemas import ErrorResponse
from tnllm.api.submit import owned_job, to_public
from tnllm.store import JobPublic
from tnllm.store.pause import PauseKind, PauseOutcome

log = logging.getLogger(__name__)

router = APIRouter(prefix="/v1/jobs", tags=["jobs"])


def _refused(job_id: str, outcome: PauseOutcome) -> ApiError | None:
    status = outcome.status.value if outcome.status else "unknown"
    if outcome.kind is PauseKind.MISSING:
        return ApiError(404, f"no job with id {job_id!r}", field="id")
    if outcome.kind is PauseKind.TERMINAL:
        return ApiError(409, f"job already {status}", type="job_terminal", status=status)
    if outcome.kind is PauseKind.NOT_PAUSED:
        return ApiError(409, f"job is {status}, not paused", type="job_not_paused", status=status)
    return None


@router.post(
    "/{job_id}/pause",
    response_model=JobPublic,
    summary="Pause a job",
    responses={
        **_ERRORS,
        202: {"model": JobPublic, "description": "Running: it leaves its slot within one stream round"},
        409: {"model": ErrorResponse, "description": "Already terminal (`status` says how it ended)"},
    },
)
async def pause_job(job_id: str, store: StoreDep, owner: OwnerDep) -> Any:
    """A queued job leaves the queue at once (200, `paused`); a running one stops generating soon,
    keeps what it streamed and becomes `paused` (202); pausing a paused job is a no-op (200)."""
    await owned_job(store, job_id, owner)
    outcome = await store.pause(job_id)
    if (refusal := _refused(job_id, outcome)) is not None:
        raise refusal
    public = await to_public(store, await owned_job(store, job_id, owner))
    code = 200 if outcome.kind is PauseKind.PAUSED else 202
    return JSONResponse(public.model_dump(mode="json"), status_code=code)


@router.post(
    "/{job_id}/resume",
    response_model=JobPublic,
    summary="Resume a paused job",
    responses={
        **_ERRORS,
        409: {"model": ErrorResponse, "description": "Not paused (`status` says what it is)"},
    },
)
async def resume_job(job_id: str, services: ServicesDep, owner: OwnerDep) -> Any:
    """A paused job goes back to its place in the queue and continues from the tokens it had
    streamed (no `reset`, no repeated text); a pause still pending on a running job is withdrawn."""
    store = services.store
    record = await owned_job(store, job_id, owner)
    outcome = await store.resume(job_id)
    if (refusal := _refused(job_id, outcome)) is not None:
        raise refusal
    if outcome.kind is PauseKind.QUEUED:
        try:
            await services.producer.send_generate(job_id, record.priority)
        except Exception as exc:  # queued without a message: the workers' orphan rescue sends one
            log.warning("could not enqueue resumed job %s: %s; the orphan rescue will", job_id, exc)
    public = await to_public(store, await owned_job(store, job_id, owner))
    return JSONResponse(public.model_dump(mode="json"), status_code=200)
