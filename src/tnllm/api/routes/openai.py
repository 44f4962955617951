"""OpenAI-compatible routes: ``GET /v1/models``, ``POST /v1/chat/completions`` and
``POST /v1/completions`` (streaming or not). Each request is one ordinary job per prompt, submitted
through ``submit_job`` (queued, prioritised, listed in ``GET /v1/jobs``, counted in the metrics);
a client that disconnects while waiting or streaming cancels its jobs. Errors come in OpenAI's
shape (``tnllm.api.openai.errors``).
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from typing import Annotated, Any

from fastapi import APIRouter, Header, Request
from sse_starlette import EventSourceResponse

from tnllm.api.deps import OwnerDep, Services, ServicesDep
from tnllm.api.errors import ApiError
from tnllm.api.openai import adapt, answers
from tnllm.api.openai.errors import OpenAIRoute
from tnllm.api.openai.schemas import (
    ChatCompletion,
    ChatCompletionRequest,
    Completion,
    CompletionRequest,
    Model,
    ModelList,
    OpenAIErrorResponse,
)
from tnllm.api.openai.served import check_model, served_models
from tnllm.api.openai.stream import (
    ChunkMaker,
    Diverged,
    cancel_jobs,
    cancel_unless_finished,
    error_event,
    job_deltas,
    merged,
    wait_jobs,
)
from tnllm.api.schemas import JobCreate
from tnllm.api.submit import submit_job
from tnllm.protocol.outputs import TokenLogprob
from tnllm.store import JobRecord

router = APIRouter(prefix="/v1", tags=["openai"], route_class=OpenAIRoute)

_ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": OpenAIErrorResponse, "description": text}
    for code, text in {
        400: "Invalid or unsupported parameter (`param` names it)",
        401: "Missing or invalid API key",
        404: "Unknown model (`code`: model_not_found)",
        429: "Queue full",
        503: "Redis unreachable",
    }.items()
}
IdempotencyHeader = Annotated[
    str | None, Header(alias="Idempotency-Key", description="As for `POST /v1/jobs`.")
]


@router.get("/models", response_model=ModelList, summary="List the served models", responses=_ERRORS)
async def list_models(services: ServicesDep, owner: OwnerDep) -> ModelList:
    """The served models (OpenAI's `GET /v1/models`)."""
    return ModelList(data=await served_models(services))


@router.get("/models/{model_id:path}", response_model=Model, summary="Read a served model", responses=_ERRORS)
async def get_model(model_id: str, services: ServicesDep, owner: OwnerDep) -> Model:
    """One served model; 404 `model_not_found` for others."""
    for model in await served_models(services):
        if model.id == model_id:
            return model
    raise ApiError(404, f"the model {model_id!r} does not exist", field="model", code="model_not_found")


async def submit_all(
    services: Services, owner: str, jobs: list[JobCreate], idempotency_key: str | None
) -> list[str]:
    """Submit the jobs of one request; ids in prompt order."""
    ids: list[str] = []
    for i, job in enumerate(jobs):
        key = idempotency_key if idempotency_key is None or len(jobs) == 1 else f"{idempotency_key}:{i}"
        try:
            public, _ = await submit_job(services, owner, job, key)
        except ApiError as exc:
            await cancel_jobs(services, ids)  # all or nothing
            field = exc.extra.get("field")
            exc.extra["field"] = adapt.OPENAI_NAMES.get(field, field) if isinstance(field, str) else field
            raise
        ids.append(public.id)
    return ids


async def finished(request: Request, services: Services, ids: list[str]) -> list[JobRecord]:
    """The ended jobs of a non-streaming request; errors for failures, timeouts and disconnects."""
    records = await wait_jobs(request, services, ids, services.settings.openai_timeout)
    if records is None:
        raise ApiError(499, "client closed the request; its jobs were cancelled", code="client_closed")
    for record in records:
        if not record.terminal:
            raise ApiError(504, f"job {record.id} did not finish in time; it continues", code="timeout")
        failure = adapt.job_failure(record)
        if failure is not None:
            raise failure
    return records


@router.post(
    "/chat/completions",
    response_model=ChatCompletion,
    summary="Chat completion (OpenAI-compatible)",
    responses={
        **_ERRORS,
        200: {"content": {"text/event-stream": {}}, "description": "JSON, or chunks when `stream`"},
    },
)
async def chat_completions(
    body: ChatCompletionRequest,
    request: Request,
    services: ServicesDep,
    owner: OwnerDep,
    idempotency_key: IdempotencyHeader = None,
) -> Any:
    """One job for the conversation; the answer when it ends, or its chunks with `stream: true`."""
    job = adapt.chat_job(body, services.settings.openai_priority)
    await check_model(services, body.model)
    ids = await submit_all(services, owner, [job], idempotency_key)
    created, model = int(time.time()), body.model
    base: dict[str, Any] = {
        "id": f"chatcmpl-{ids[0]}",
        "created": created,
        "model": model,
        "system_fingerprint": None,
    }
    if body.stream:
        include_usage = bool(body.stream_options and body.stream_options.include_usage)
        usage_chunk = {**base, "object": "chat.completion.chunk"} if include_usage else None
        return _stream(services, ids, job.n, _chat_chunk(base, include_usage), usage_chunk, role=True)
    return answers.chat_completion(base, await finished(request, services, ids))


@router.post(
    "/completions",
    response_model=Completion,
    summary="Text completion (OpenAI-compatible)",
    responses={
        **_ERRORS,
        200: {"content": {"text/event-stream": {}}, "description": "JSON, or chunks when `stream`"},
    },
)
async def completions(
    body: CompletionRequest,
    request: Request,
    services: ServicesDep,
    owner: OwnerDep,
    idempotency_key: IdempotencyHeader = None,
) -> Any:
    """One job per prompt (continued as it is, no chat template); choice `index` = prompt index."""
    tokenizer = services.counter.tokenizer() if not isinstance(body.prompt, str) else None
    decode = tokenizer.decode if tokenizer is not None else None
    jobs = adapt.completion_jobs(
        body, adapt.completion_prompts(body, decode), services.settings.openai_priority
    )
    await check_model(services, body.model)
    ids = await submit_all(services, owner, jobs, idempotency_key)
    created, model = int(time.time()), body.model
    base: dict[str, Any] = {
        "id": f"cmpl-{ids[0]}",
        "created": created,
        "model": model,
        "system_fingerprint": None,
    }
    if body.stream:
        include_usage = bool(body.stream_options and body.stream_options.include_usage)
        usage_chunk = {**base, "object": "text_completion"} if include_usage else None
        return _stream(
            services, ids, jobs[0].n, _completion_chunk(base, include_usage), usage_chunk, role=False
        )
    return answers.text_completion(base, await finished(request, services, ids))


def _chat_chunk(base: dict[str, Any], include_usage: bool) -> ChunkMaker:
    def make(
        index: int, delta: str | None, finish: str | None, lps: list[TokenLogprob] | None
    ) -> dict[str, Any]:
        content: dict[str, Any] = {} if delta is None else {"content": delta}
        if delta is None and finish is None:  # the first chunk of a choice
            content = {"role": "assistant", "content": ""}
        logprobs = answers.chat_logprobs(lps)
        choice = {"index": index, "delta": content, "logprobs": logprobs, "finish_reason": finish}
        chunk = {**base, "object": "chat.completion.chunk", "choices": [choice]}
        return {**chunk, "usage": None} if include_usage else chunk

    return make


def _completion_chunk(base: dict[str, Any], include_usage: bool) -> ChunkMaker:
    offsets: dict[int, int] = {}  # characters streamed so far per choice (``text_offset``)

    def make(
        index: int, delta: str | None, finish: str | None, lps: list[TokenLogprob] | None
    ) -> dict[str, Any]:
        logprobs = answers.text_logprobs(lps, offsets.get(index, 0))
        offsets[index] = offsets.get(index, 0) + len(delta or "")
        choice = {"index": index, "text": delta or "", "logprobs": logprobs, "finish_reason": finish}
        chunk = {**base, "object": "text_completion", "choices": [choice]}
        return {**chunk, "usage": None} if include_usage else chunk

    return make


def _stream(
    services: Services,
    ids: list[str],
    n: int,
    make: ChunkMaker,
    usage_chunk: dict[str, Any] | None,
    *,
    role: bool,
) -> EventSourceResponse:
    chunks = _chunks(services, ids, n, make, usage_chunk, role=role)
    return EventSourceResponse(
        cancel_unless_finished(chunks, services, ids),
        ping=15,
        sep="\n",
        headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"},
    )


async def _chunks(
    services: Services,
    ids: list[str],
    n: int,
    make: ChunkMaker,
    usage_chunk: dict[str, Any] | None,
    *,
    role: bool,
) -> AsyncIterator[str]:
    """The ``data:`` payloads of a stream: chunks as the jobs write text (choice ``j`` of prompt
    ``p`` has index ``p * n + j``), one closing chunk per choice (``finish_reason``), the usage
    chunk when asked, then ``[DONE]``."""
    store = services.store
    if role:
        for i in range(len(ids) * n):
            yield json.dumps(make(i, None, None, None))
    records: list[JobRecord] = []
    try:
        async for p, delta in merged([job_deltas(store, job_id) for job_id in ids]):
            if delta is not None:
                yield json.dumps(make(p * n + delta[0], delta[1], None, delta[2]))
                continue
            record = await store.get(ids[p])
            failure = adapt.job_failure(record) if record is not None else ApiError(500, "job expired")
            if failure is not None:
                await cancel_jobs(services, ids)
                yield json.dumps(error_event(failure.message, str(failure.extra.get("code")), failure.status))
                yield "[DONE]"
                return
            assert record is not None
            records.append(record)
            for choice in answers.choices(record):
                yield json.dumps(make(p * n + choice.index, None, answers.reason(choice.finish_reason), None))
    except Diverged as exc:
        await cancel_jobs(services, ids)
        yield json.dumps(error_event(f"job {exc} restarted and produced other text", "job_restarted"))
        yield "[DONE]"
        return
    if usage_chunk is not None:
        yield json.dumps({**usage_chunk, "choices": [], "usage": answers.usage(records).model_dump()})
    yield "[DONE]"
