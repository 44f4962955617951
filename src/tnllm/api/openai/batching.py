"""The Batch API's lifecycle: a JSONL input file becomes one job per line (at
``Settings.batch_priority``, so interactive requests overtake), and the batch goes
``validating → in_progress → finalizing → completed`` (``failed`` when the file is malformed,
``cancelling → cancelled`` on cancel).

Finalizing is done by ``BatchFinalizer``, a loop in every API process over the batches still
active in Redis: when all jobs of one have ended, the process that takes its lock writes the
output and error files and the final object. Jobs survive worker deaths on their own (the queue
re-runs them) and the loop picks every active batch up again after an API restart.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from typing import Any

from pydantic import ValidationError
from redis.exceptions import RedisError

from tnllm.api.deps import Services
from tnllm.api.errors import ApiError
from tnllm.api.openai import adapt
from tnllm.api.openai.errors import api_error_payload
from tnllm.api.openai.files import FileStorage, file_object, new_id
from tnllm.api.openai.schemas import ChatCompletionRequest, CompletionRequest
from tnllm.api.schemas import JobCreate
from tnllm.api.submit import submit_job
from tnllm.store import AsyncJobStore, JobRecord
from tnllm.store.batches import ACTIVE, AsyncBatchStore
from tnllm.store.webhooks import AsyncWebhookStore

log = logging.getLogger(__name__)

ENDPOINTS = ("/v1/chat/completions", "/v1/completions")
TERMINAL = {"succeeded", "failed", "cancelled"}
WINDOW_S = 24 * 3600


def batch_object(
    batch_id: str, endpoint: str, input_file_id: str, metadata: dict[str, Any] | None
) -> dict[str, Any]:
    """A new batch object (OpenAI's shape), status ``validating``."""
    now = int(time.time())
    stamps = ("in_progress_at", "finalizing_at", "completed_at", "failed_at", "expired_at")
    return {
        "id": batch_id,
        "object": "batch",
        "endpoint": endpoint,
        "errors": None,
        "input_file_id": input_file_id,
        "completion_window": "24h",
        "status": "validating",
        "output_file_id": None,
        "error_file_id": None,
        "created_at": now,
        "expires_at": now + WINDOW_S,
        **dict.fromkeys(stamps),
        "cancelling_at": None,
        "cancelled_at": None,
        "request_counts": {"total": 0, "completed": 0, "failed": 0},
        "metadata": metadata,
    }


def parse_lines(
    data: bytes, endpoint: str, max_lines: int
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The requests of an input file and the errors that make the batch fail (OpenAI's
    ``{"code", "message", "param", "line"}``)."""
    requests: list[dict[str, Any]] = []
    errors: list[dict[str, Any]] = []
    seen: set[str] = set()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        return [], [
            {"code": "invalid_file", "message": "the file is not UTF-8 text", "param": None, "line": None}
        ]
    for number, raw in enumerate(text.splitlines(), start=1):
        if not raw.strip():
            continue
        problem, line = _check_line(raw, endpoint, seen)
        if problem:
            errors.append({"code": "invalid_request", "message": problem, "param": None, "line": number})
        else:
            requests.append({**line, "line": number})
    if len(requests) > max_lines:
        errors.append(
            {
                "code": "too_many_requests",
                "message": f"at most {max_lines} requests",
                "param": None,
                "line": None,
            }
        )
    if not requests and not errors:
        errors.append(
            {"code": "empty_file", "message": "the file holds no requests", "param": None, "line": None}
        )
    return requests, errors


def _check_line(raw: str, endpoint: str, seen: set[str]) -> tuple[str | None, dict[str, Any]]:
    try:
        line = json.loads(raw)
    except json.JSONDecodeError as exc:
        return f"not JSON: {exc}", {}
    if not isinstance(line, dict):
        return "not a JSON object", {}
    custom_id, body = line.get("custom_id"), line.get("body")
    if not isinstance(custom_id, str) or not custom_id:
        return "custom_id: a non-empty string is required", {}
    if custom_id in seen:
        return f"custom_id: {custom_id!r} is used twice", {}
    seen.add(custom_id)
    if line.get("method") != "POST":
        return "method: must be POST", {}
    if line.get("url") != endpoint:
        return f"url: must be the batch's endpoint {endpoint}", {}
    if not isinstance(body, dict):
        return "body: an object is required", {}
    return None, {"custom_id": custom_id, "body": body}


def line_job(endpoint: str, body: dict[str, Any], priority: int) -> tuple[str, JobCreate]:
    """(model, job) of one request line; ``ApiError`` for a request the routes would refuse."""
    try:
        request: ChatCompletionRequest | CompletionRequest
        if endpoint == "/v1/chat/completions":
            request = ChatCompletionRequest.model_validate(body)
        else:
            request = CompletionRequest.model_validate(body)
    except ValidationError as exc:
        err = exc.errors()[0]
        param = ".".join(str(p) for p in err.get("loc", ())) or "body"
        raise ApiError(400, f"{param}: {err.get('msg')}", field=param) from exc
    if request.stream:
        raise ApiError(400, "stream: not available in a batch", field="stream")
    if isinstance(request, ChatCompletionRequest):
        job = adapt.chat_job(request, priority)
    else:
        if not isinstance(request.prompt, str):
            raise ApiError(400, "prompt: one string per batch request", field="prompt")
        job = adapt.completion_jobs(request, [request.prompt], priority)[0]
    return request.model, job.model_copy(update={"priority": priority})


async def submit_lines(
    services: Services, owner: str, batch: dict[str, Any], lines: list[dict[str, Any]], served: set[str]
) -> list[dict[str, Any]]:
    """One job per request line; what became of each (its job, or the error answer)."""
    out = []
    for line in lines:
        item: dict[str, Any] = {
            "custom_id": line["custom_id"],
            "line": line["line"],
            "job": None,
            "error": None,
        }
        try:
            model, job = line_job(batch["endpoint"], line["body"], services.settings.batch_priority)
            if model not in served:
                raise ApiError(
                    404, f"the model {model!r} does not exist", field="model", code="model_not_found"
                )
            meta = {**job.metadata, "batch_id": batch["id"], "custom_id": line["custom_id"]}
            public, _ = await submit_job(services, owner, job.model_copy(update={"metadata": meta}))
            item.update(job=public.id, model=model)
        except ApiError as exc:
            status, body = api_error_payload(exc)
            item["error"] = {"status_code": status, "body": body}
        out.append(item)
    return out


def output_line(
    batch: dict[str, Any], item: dict[str, Any], record: JobRecord | None
) -> tuple[bool, dict[str, Any]]:
    """(succeeded, the output-file line) of one request."""
    line: dict[str, Any] = {"id": f"batch_req_{item['job'] or item['line']}", "custom_id": item["custom_id"]}
    if item["error"] is not None:
        return False, {**line, "response": {**item["error"], "request_id": None}, "error": None}
    if record is None:
        error = {"code": "expired", "message": "the job's record expired before the batch finalized"}
        return False, {**line, "response": None, "error": error}
    failure = adapt.job_failure(record)
    if failure is not None:
        if failure.extra.get("code") == "job_cancelled" and batch["status"] == "cancelling":
            return False, {
                **line,
                "response": None,
                "error": {"code": "batch_cancelled", "message": failure.message},
            }
        status, body = api_error_payload(failure)
        return False, {
            **line,
            "response": {"status_code": status, "request_id": record.id, "body": body},
            "error": None,
        }
    chat = batch["endpoint"] == "/v1/chat/completions"
    finished = int(record.finished_at.timestamp()) if record.finished_at else int(time.time())
    base = {"id": ("chatcmpl-" if chat else "cmpl-") + record.id, "created": finished, "model": item["model"]}
    answer = adapt.chat_completion(base, [record]) if chat else adapt.text_completion(base, [record])
    return True, {
        **line,
        "response": {"status_code": 200, "request_id": record.id, "body": answer.model_dump()},
        "error": None,
    }


class Batches:
    """The Batch API's operations over the job store, the batch records and the file storage."""

    def __init__(self, services: Services) -> None:
        self.services = services
        self.store: AsyncJobStore = services.store
        self.records = AsyncBatchStore(services.store.client, services.store.ttl)
        self.files = FileStorage(services.settings.data_dir / "files")

    async def put_file(self, owner: str, data: bytes, filename: str, purpose: str) -> dict[str, Any]:
        """Store a file; its object."""
        obj = file_object(new_id("file"), len(data), filename, purpose)
        await self.files.write(obj["id"], data)
        await self.records.put_file(owner, obj)
        return obj

    async def create(
        self, owner: str, batch: dict[str, Any], served: set[str], webhook: dict[str, Any] | None = None
    ) -> dict[str, Any]:
        """Validate the input file and submit its lines; the batch object as it then is."""
        await self.records.put_batch(owner, batch, active=False)
        if webhook is not None:
            await self.records.subscribe_webhook(batch["id"], webhook)
        data = await self.files.read(batch["input_file_id"])
        lines, errors = parse_lines(data, batch["endpoint"], self.services.settings.batch_max_lines)
        if errors:
            batch.update(
                status="failed", failed_at=int(time.time()), errors={"object": "list", "data": errors}
            )
            await self.records.put_batch(owner, batch, active=False)
            await self._notify(batch)
            return batch
        items = await submit_lines(self.services, owner, batch, lines, served)
        await self.records.add_requests(batch["id"], items)
        batch.update(status="in_progress", in_progress_at=int(time.time()))
        batch["request_counts"] = {
            "total": len(items),
            "completed": 0,
            "failed": sum(i["job"] is None for i in items),
        }
        await self.records.put_batch(owner, batch, active=True)
        return batch

    async def live(self, batch: dict[str, Any]) -> dict[str, Any]:
        """``batch`` with its request counts as its jobs stand now (while not final)."""
        if batch["status"] not in ("in_progress", "cancelling"):
            return batch
        items = await self.records.requests(batch["id"])
        statuses = await self.records.job_statuses([i["job"] for i in items if i["job"]])
        failed = sum(i["job"] is None for i in items) + sum(s in ("failed", "cancelled") for s in statuses)
        batch["request_counts"] = {
            "total": len(items),
            "completed": statuses.count("succeeded"),
            "failed": failed,
        }
        return batch

    async def cancel(self, owner: str, batch: dict[str, Any]) -> dict[str, Any]:
        """Cancel a batch's jobs; it turns ``cancelled`` once they all ended (the finalizer)."""
        if batch["status"] not in ("validating", "in_progress"):
            return batch
        batch.update(status="cancelling", cancelling_at=int(time.time()))
        await self.records.put_batch(owner, batch, active=True)
        for item in await self.records.requests(batch["id"]):
            if item["job"]:
                await self.store.cancel(item["job"])
        return batch

    async def finalize_due(self) -> None:
        """One pass of the finalizer over the active batches."""
        for batch_id in await self.records.active():
            found = await self.records.get_batch(batch_id)
            if found is None:
                await self.records.client.srem(ACTIVE, batch_id)
                continue
            owner, batch = found
            items = await self.records.requests(batch_id)
            statuses = await self.records.job_statuses([i["job"] for i in items if i["job"]])
            if all(s in TERMINAL or s is None for s in statuses):
                await self.finalize(owner, batch, items)

    async def finalize(self, owner: str, batch: dict[str, Any], items: list[dict[str, Any]]) -> None:
        """Write the output and error files and the final object (once: under the batch's lock)."""
        token = await self.records.lock(batch["id"])
        if token is None:
            return
        try:
            found = await self.records.get_batch(batch["id"])  # re-read under the lock
            if found is None or found[1]["status"] not in ("in_progress", "cancelling"):
                return
            batch = found[1]
            cancelling = batch["status"] == "cancelling"
            if not cancelling:
                batch.update(status="finalizing", finalizing_at=int(time.time()))
                await self.records.put_batch(owner, batch, active=True)
            await self._write_results(owner, batch, items)
            now = int(time.time())
            if cancelling:
                batch.update(status="cancelled", cancelled_at=now)
            else:
                batch.update(status="completed", completed_at=now)
            await self.records.put_batch(owner, batch, active=False)
            log.info("batch %s %s: %s", batch["id"], batch["status"], batch["request_counts"])
            await self._notify(batch)
        finally:
            await self.records.unlock(batch["id"], token)

    async def _notify(self, batch: dict[str, Any]) -> None:
        """Enqueue ``batch.<status>`` for the batch's webhook, if it has one subscribed to it."""
        try:
            await AsyncWebhookStore(self.store.client, self.store.ttl).enqueue(
                batch["id"], f"batch.{batch['status']}", batch
            )
        except (RedisError, OSError) as exc:  # the batch's status stands whatever its webhook does
            log.error("batch %s: webhook not enqueued: %s", batch["id"], exc)

    async def _write_results(self, owner: str, batch: dict[str, Any], items: list[dict[str, Any]]) -> None:
        good: list[str] = []
        bad: list[str] = []
        for item in items:
            record = await self.store.get(item["job"]) if item["job"] else None
            ok, line = output_line(batch, item, record)
            (good if ok else bad).append(json.dumps(line, ensure_ascii=False))
        for lines, field in ((good, "output_file_id"), (bad, "error_file_id")):
            if lines:
                data = ("\n".join(lines) + "\n").encode()
                obj = await self.put_file(
                    owner, data, f"{batch['id']}_{field.split('_')[0]}.jsonl", "batch_output"
                )
                batch[field] = obj["id"]
        batch["request_counts"] = {"total": len(items), "completed": len(good), "failed": len(bad)}


class BatchFinalizer:
    """The API process's background loop that finalizes batches whose jobs have all ended."""

    def __init__(self, batches: Batches, interval: float) -> None:
        self.batches = batches
        self.interval = interval
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        """Start the loop (from the running event loop)."""
        self._task = asyncio.create_task(self._run(), name="tnllm-batch-finalizer")

    async def stop(self) -> None:
        """Stop the loop."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _run(self) -> None:
        while True:
            try:
                await self.batches.finalize_due()
            except (RedisError, OSError) as exc:
                log.warning("batch finalizer: %s", exc)
            except Exception:  # one broken batch must not stop the loop for the others
                log.exception("batch finalizer failed")
            await asyncio.sleep(self.interval)
