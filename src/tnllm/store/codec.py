"""Job record <-> Redis hash fields (all strings; JSON for nested values, epoch seconds for times).

Hash fields of ``tnllm:job:{id}``: ``id owner status priority created_at started_at finished_at params
metadata attempt lease_owner cancel_requested result error webhook queue_score``. Empty string means
"not set".
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from tnllm.protocol.jobs import (
    GenerationParams,
    JobError,
    JobRecord,
    JobResult,
    JobStatus,
    dumps,
    from_epoch,
)
from tnllm.protocol.webhooks import render_webhook


def _epoch(value: str | None) -> float | None:
    return float(value) if value else None


def _json(value: str | None) -> Any:
    return json.loads(value) if value else None


def record_from_hash(fields: Mapping[str, str]) -> JobRecord | None:
    """Decode a ``job:{id}`` hash (``HGETALL`` answer); None for a missing (empty) hash."""
    if not fields or "status" not in fields:
        return None
    result = _json(fields.get("result"))
    error = _json(fields.get("error"))
    created = from_epoch(_epoch(fields.get("created_at")))
    assert created is not None, "job record without created_at"
    return JobRecord(
        id=fields["id"],
        owner=fields.get("owner", ""),
        status=JobStatus(fields["status"]),
        priority=int(fields.get("priority") or 0),
        created_at=created,
        started_at=from_epoch(_epoch(fields.get("started_at"))),
        finished_at=from_epoch(_epoch(fields.get("finished_at"))),
        params=GenerationParams.model_validate_json(fields.get("params") or "{}"),
        metadata=_json(fields.get("metadata")) or {},
        attempt=int(fields.get("attempt") or 0),
        lease_owner=fields.get("lease_owner") or None,
        cancel_requested=fields.get("cancel_requested") == "1",
        result=JobResult.model_validate(result) if result else None,
        error=JobError.model_validate(error) if error else None,
        webhook=render_webhook(fields),
    )


def new_record_fields(
    *,
    job_id: str,
    owner: str,
    priority: int,
    created: float,
    params: GenerationParams,
    metadata: Mapping[str, Any],
    queue_score: int,
    webhook: Mapping[str, Any] | None,
) -> dict[str, str]:
    """Hash fields of a freshly queued job."""
    return {
        "id": job_id,
        "owner": owner,
        "status": JobStatus.QUEUED.value,
        "priority": str(priority),
        "created_at": repr(created),
        "started_at": "",
        "finished_at": "",
        "params": params.model_dump_json(),
        "metadata": dumps(dict(metadata)),
        "attempt": "0",
        "lease_owner": "",
        "cancel_requested": "0",
        "result": "",
        "error": "",
        "webhook": dumps(dict(webhook)) if webhook is not None else "",
        "queue_score": str(queue_score),
    }
