"""The Batch API: ``/v1/files`` (JSONL inputs and the results) and ``/v1/batches``. Each key sees
only its own files and batches (404 for another's). Errors come in OpenAI's shape."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, File, Form, Query, Request, Response, UploadFile
from pydantic import ValidationError

from tnllm.api.deps import OwnerDep, ServicesDep
from tnllm.api.errors import ApiError
from tnllm.api.openai.batching import ENDPOINTS, Batches, batch_object
from tnllm.api.openai.errors import OpenAIRoute
from tnllm.api.openai.files import new_id
from tnllm.api.openai.schemas import (
    BatchCreate,
    BatchList,
    BatchObject,
    FileDeleted,
    FileList,
    FileObject,
    OpenAIErrorResponse,
)
from tnllm.api.schemas import WebhookSpec
from tnllm.api.webhooks import validate_webhook
from tnllm.errors import WebhookRefused

router = APIRouter(prefix="/v1", tags=["batch"], route_class=OpenAIRoute)

_ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": OpenAIErrorResponse, "description": text}
    for code, text in {
        400: "Invalid parameter (`param` names it)",
        401: "Missing or invalid API key",
        404: "Unknown, deleted or someone else's object",
    }.items()
}
After = Annotated[str | None, Query(description="The last id of the previous page.")]
Limit = Annotated[int, Query(ge=1, le=100, description="Page size.")]


def _page(data: list[dict[str, Any]], more: bool) -> dict[str, Any]:
    ids = [d["id"] for d in data]
    return {
        "data": data,
        "has_more": more,
        "first_id": ids[0] if ids else None,
        "last_id": ids[-1] if ids else None,
    }


@router.post("/files", response_model=FileObject, summary="Upload a batch input file", responses=_ERRORS)
async def upload_file(
    services: ServicesDep,
    owner: OwnerDep,
    file: Annotated[UploadFile, File(description="JSONL, one request per line.")],
    purpose: Annotated[str, Form(description="`batch`.")],
) -> Any:
    """Store a JSONL file for `POST /v1/batches` (at most TNLLM_BATCH_MAX_FILE_BYTES)."""
    if purpose != "batch":
        raise ApiError(400, f"purpose: only 'batch' is supported (got {purpose!r})", field="purpose")
    limit = services.settings.batch_max_file_bytes
    data = await file.read(limit + 1)
    if len(data) > limit:
        raise ApiError(413, f"file: larger than {limit} bytes", field="file")
    return await Batches(services).put_file(owner, data, file.filename or "upload.jsonl", purpose)


@router.get("/files", response_model=FileList, summary="List your files", responses=_ERRORS)
async def list_files(services: ServicesDep, owner: OwnerDep, after: After = None, limit: Limit = 20) -> Any:
    """Your files, newest first."""
    return _page(*await Batches(services).records.list_files(owner, after, limit))


async def _file(batches: Batches, file_id: str, owner: str) -> dict[str, Any]:
    found = await batches.records.get_file(file_id, owner)
    if found is None:
        raise ApiError(404, f"no file with id {file_id!r}", field="file_id")
    return found


@router.get("/files/{file_id}", response_model=FileObject, summary="Read a file object", responses=_ERRORS)
async def get_file(file_id: str, services: ServicesDep, owner: OwnerDep) -> Any:
    """The file object."""
    return await _file(Batches(services), file_id, owner)


@router.get("/files/{file_id}/content", summary="Download a file", responses=_ERRORS, response_class=Response)
async def file_content(file_id: str, services: ServicesDep, owner: OwnerDep) -> Response:
    """The file's bytes (the output and error files are JSONL)."""
    batches = Batches(services)
    await _file(batches, file_id, owner)
    try:
        data = await batches.files.read(file_id)
    except (FileNotFoundError, KeyError) as exc:
        raise ApiError(404, f"the content of file {file_id!r} is gone", field="file_id") from exc
    return Response(data, media_type="application/octet-stream")


@router.delete("/files/{file_id}", response_model=FileDeleted, summary="Delete a file", responses=_ERRORS)
async def delete_file(file_id: str, services: ServicesDep, owner: OwnerDep) -> Any:
    """Delete the file object and its bytes."""
    batches = Batches(services)
    await _file(batches, file_id, owner)
    await batches.records.delete_file(file_id, owner)
    await batches.files.delete(file_id)
    return FileDeleted(id=file_id)


@router.post("/batches", response_model=BatchObject, summary="Create a batch", responses=_ERRORS)
async def create_batch(body: BatchCreate, request: Request, services: ServicesDep, owner: OwnerDep) -> Any:
    """Check the input file (`failed` with the `errors` when malformed) and answer `validating`;
    its lines then become jobs at TNLLM_BATCH_PRIORITY (`in_progress` once all are queued)."""
    if body.endpoint not in ENDPOINTS:
        raise ApiError(
            400, f"endpoint: one of {', '.join(ENDPOINTS)} (got {body.endpoint!r})", field="endpoint"
        )
    if body.completion_window != "24h":
        raise ApiError(400, "completion_window: only '24h' is supported", field="completion_window")
    batches = Batches(services)
    source = await batches.records.get_file(body.input_file_id, owner)
    if source is None:
        raise ApiError(404, f"no file with id {body.input_file_id!r}", field="input_file_id")
    if source["purpose"] != "batch":
        raise ApiError(400, "input_file_id: not a file of purpose 'batch'", field="input_file_id")
    webhook = None
    if body.webhook is not None:
        try:
            webhook = await validate_webhook(WebhookSpec(url=body.webhook.url), services.settings)
        except (WebhookRefused, ValidationError) as exc:
            raise ApiError(400, f"webhook.url: {exc}", field="webhook.url") from exc
        assert webhook is not None
        webhook["events"] = list(body.webhook.events)
    batch = batch_object(new_id("batch"), body.endpoint, body.input_file_id, body.metadata)
    created = await batches.create(owner, batch, webhook)
    request.app.state.batch_finalizer.wake()  # submit its lines now rather than at the next round
    return created


async def _batch(batches: Batches, batch_id: str, owner: str) -> dict[str, Any]:
    found = await batches.records.get_batch(batch_id, owner)
    if found is None:
        raise ApiError(404, f"no batch with id {batch_id!r}", field="batch_id")
    return await batches.live(found[1])


@router.get("/batches/{batch_id}", response_model=BatchObject, summary="Read a batch", responses=_ERRORS)
async def get_batch(batch_id: str, services: ServicesDep, owner: OwnerDep) -> Any:
    """The batch object, with live request counts while it runs."""
    return await _batch(Batches(services), batch_id, owner)


@router.get("/batches", response_model=BatchList, summary="List your batches", responses=_ERRORS)
async def list_batches(services: ServicesDep, owner: OwnerDep, after: After = None, limit: Limit = 20) -> Any:
    """Your batches, newest first."""
    batches = Batches(services)
    data, more = await batches.records.list_batches(owner, after, limit)
    return _page([await batches.live(b) for b in data], more)


@router.post(
    "/batches/{batch_id}/cancel", response_model=BatchObject, summary="Cancel a batch", responses=_ERRORS
)
async def cancel_batch(batch_id: str, services: ServicesDep, owner: OwnerDep) -> Any:
    """Queued requests never run, running ones stop; the batch turns `cancelled` once all ended
    (its output file holds what completed)."""
    batches = Batches(services)
    batch = await _batch(batches, batch_id, owner)
    return await batches.cancel(owner, batch)
