"""The tutorial's ``POST /``: ``{"prompt"}`` → waits for the job → ``{"response", "status", "time"}``.

Kept compatible with the tutorial's curl and ``requests`` examples: the body is parsed as JSON
whatever its Content-Type; unknown fields are ignored. Behind it is an ordinary job (visible in
``GET /v1/jobs``), so the queue, priorities and limits apply.
"""

from __future__ import annotations

from datetime import datetime

from fastapi import APIRouter, Request, Response
from fastapi.exceptions import RequestValidationError
from pydantic import ValidationError

from tnllm.api.body import BodyError, malformed_body, parse_json
from tnllm.api.deps import OwnerDep, ServicesDep
from tnllm.api.errors import ApiError
from tnllm.api.notify import wait_for_terminal
from tnllm.api.schemas import CompatRequest, CompatResponse, ErrorResponse, JobCreate
from tnllm.api.submit import submit_job
from tnllm.store import JobStatus

router = APIRouter(tags=["compat"])


async def _parse(request: Request, max_depth: int) -> CompatRequest:
    raw = await request.body()
    try:  # the middleware checked it already (tnllm.api.body); the same parser reads it
        data = parse_json(raw, max_depth)
    except BodyError as exc:
        error = malformed_body(str(exc))["error"]
        raise ApiError(422, error["message"], field="body", details=error["details"]) from exc
    try:
        return CompatRequest.model_validate(data)
    except ValidationError as exc:
        raise RequestValidationError([{**e, "loc": ("body", *e["loc"])} for e in exc.errors()]) from exc


@router.post(
    "/",
    response_model=CompatResponse,
    summary="Tutorial-compatible generation (blocking)",
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": CompatRequest.model_json_schema()}},
        }
    },
    responses={
        422: {"model": ErrorResponse, "description": "Invalid body"},
        502: {"model": ErrorResponse, "description": "The job failed (`error` says why)"},
        504: {"model": ErrorResponse, "description": "Not finished within TNLLM_COMPAT_TIMEOUT"},
    },
)
async def tutorial_generate(
    request: Request, response: Response, services: ServicesDep, owner: OwnerDep
) -> CompatResponse:
    """Generate for `prompt` with the defaults and answer when done."""
    body = await _parse(request, services.settings.max_body_depth)
    job, _ = await submit_job(services, owner, JobCreate(prompt=body.prompt), response=response)
    timeout = services.settings.compat_timeout
    final = await wait_for_terminal(services.store, services.watcher, job.id, timeout)
    if final is None or not final.terminal:
        raise ApiError(
            504,
            "the job did not finish in time; it continues in the background",
            type="timeout",
            job_id=job.id,
        )
    if final.status is not JobStatus.SUCCEEDED or final.result is None:
        error = final.error
        raise ApiError(
            502,
            error.message if error else f"the job ended {final.status.value}",
            type=error.type if error else f"job_{final.status.value}",
            job_id=job.id,
        )
    return CompatResponse(
        response=final.result.text, status=200, time=datetime.now().strftime("%Y-%m-%d %H:%M:%S")
    )
