"""``/v1/prefixes``: pin the recurrent state of a shared prompt prefix on every worker, and unpin it.

A prefix is stored in Redis (``tnllm.store.states``); each worker pins it at its next heartbeat
(``tnllm.worker.states.PrefixPins``: its engine prefills it once and keeps the state out of LRU
eviction) and unpins it once it is deleted. Jobs whose prompt tokens begin with the prefix's resume
from that state (docs/STATE.md).
"""

from __future__ import annotations

import secrets
from datetime import UTC, datetime
from typing import Any

import anyio
from fastapi import APIRouter, Response

from tnllm.api.deps import OwnerDep, Services, ServicesDep
from tnllm.api.errors import ApiError
from tnllm.api.schemas import ErrorResponse, PrefixCreate, PrefixPublic
from tnllm.store import GenerationParams
from tnllm.store.states import PrefixRecord, adelete_prefix, aload_prefix, asave_prefix
from tnllm.text.conversation import prefix_ids

router = APIRouter(prefix="/v1/prefixes", tags=["prefixes"])

_ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorResponse, "description": text}
    for code, text in {
        401: "Missing or invalid API key",
        404: "Unknown, expired or someone else's prefix",
        422: "Invalid request (the `field` names the culprit)",
        503: "Redis unreachable (see Retry-After)",
    }.items()
}


def _public(record: PrefixRecord) -> PrefixPublic:
    return PrefixPublic.model_validate(record.model_dump(exclude={"owner"}))


@router.post(
    "", status_code=201, response_model=PrefixPublic, summary="Pin a prefix's state", responses=_ERRORS
)
async def create_prefix(
    body: PrefixCreate, services: ServicesDep, owner: OwnerDep, response: Response
) -> PrefixPublic:
    """Store the prefix; every worker prefills and pins its state within a heartbeat. `tokens` is its
    length (null when this API has no tokenizer to count it)."""
    settings = services.settings
    params = GenerationParams(prompt=body.prompt, messages=body.messages)
    tokens = None
    tok = services.counter.tokenizer()
    if tok is not None:
        try:
            ids = await anyio.to_thread.run_sync(prefix_ids, tok, params, settings.system_prompt)
        except ValueError as exc:
            field = "prompt" if body.prompt is not None else "messages"
            raise ApiError(422, f"{field}: {exc}", field=field) from exc
        tokens = len(ids)
        if tokens > settings.max_prompt_tokens:
            raise ApiError(
                413, f"prefix: {tokens} tokens, the limit is {settings.max_prompt_tokens}", field="prompt"
            )
    record = PrefixRecord(
        id="pfx_" + secrets.token_urlsafe(12),
        owner=owner,
        created_at=datetime.now(UTC),
        prompt=body.prompt,
        messages=body.messages,
        tokens=tokens,
    )
    await asave_prefix(services.store.client, record, settings.result_ttl)
    response.headers["Location"] = f"/v1/prefixes/{record.id}"
    return _public(record)


async def _owned(services: Services, prefix_id: str, owner: str) -> PrefixRecord:
    record = await aload_prefix(services.store.client, prefix_id)
    if record is None or record.owner != owner:
        raise ApiError(404, f"no prefix with id {prefix_id!r}", field="id")
    return record


@router.get("/{prefix_id}", response_model=PrefixPublic, summary="Read a prefix", responses=_ERRORS)
async def get_prefix(prefix_id: str, services: ServicesDep, owner: OwnerDep) -> PrefixPublic:
    """The prefix as stored."""
    return _public(await _owned(services, prefix_id, owner))


@router.delete("/{prefix_id}", response_model=PrefixPublic, summary="Unpin a prefix", responses=_ERRORS)
async def delete_prefix(prefix_id: str, services: ServicesDep, owner: OwnerDep) -> PrefixPublic:
    """Forget the prefix; the workers unpin its state at their next heartbeat (it stays cached as
    an ordinary LRU entry until evicted)."""
    record = await _owned(services, prefix_id, owner)
    await adelete_prefix(services.store.client, prefix_id)
    return _public(record)
