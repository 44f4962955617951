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

from redis.exceptions import RedisError

from tnllm.api.deps import Services
from tnllm.api.errors import ApiError
from tnllm.api.openai.batch_lines import line_job, output_line, parse_lines
from tnllm.api.openai.errors import api_error_payload
from tnllm.api.openai.files import FileStorage, file_object, new_id
from tnllm.api.openai.served import served_models
from tnllm.api.submit import submit_job
from tnllm.store import AsyncJobStore
from tnllm.store.batches import ACTIVE, AsyncBatchStore
from tnllm.store.webhooks import AsyncWebhookStore

log = logging.getLogger(__name__)

ENDPOINTS = ("/v1/chat/completions", "/v1/completions")
TERMINAL = {"succeeded", "failed", "cancelled"}
WINDOW_S = 24 * 3600
#: Lines submitted between two looks at the batch's status (a cancel) and lock renewals.
SUBMIT_CHUNK = 20


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


async def submit_lines(
    services: Services, owner: str, batch: dict[str, Any], lines: list[dict[str, Any]], served: set[str]
) -> list[dict[str, Any]]:
    """One job per request line; what became of each (its job, or the error answer), stopping
    early at a line the deployment cannot take now (429/503: throttled, resumed in a later round).
    Each line's job has the idempotency key ``<batch id>:<line>``, so a submission resumed after a
    crash gets the jobs already made back instead of making them twice."""
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
            job = job.model_copy(update={"metadata": meta})
            public, _ = await submit_job(services, owner, job, f"{batch['id']}:{line['line']}")
            item.update(job=public.id, model=model)
        except ApiError as exc:
            if exc.status in (429, 503):  # queue full, key over its limits, Redis away: later
                log.info("batch %s: submission paused at line %d: %s", batch["id"], line["line"], exc.message)
                break
            status, body = api_error_payload(exc)
            item["error"] = {"status_code": status, "body": body}
        out.append(item)
    return out


class Batches:
    """The Batch API's operations over the job store, the batch records and the file storage."""

    def __init__(self, services: Services) -> None:
        self.services = services
        self.store: AsyncJobStore = services.store
        self.records = AsyncBatchStore(services.store.client, services.store.ttl, services.settings.lease_ttl)
        self.files = FileStorage(services.settings.data_dir / "files")

    async def put_file(self, owner: str, data: bytes, filename: str, purpose: str) -> dict[str, Any]:
        """Store a file; its object."""
        obj = file_object(new_id("file"), len(data), filename, purpose)
        await self.files.write(obj["id"], data)
        await self.records.put_file(owner, obj)
        return obj

    async def create(
        self, owner: str, batch: dict[str, Any], webhook: dict[str, Any] | None
    ) -> dict[str, Any]:
        """Check the input file and store the batch: ``validating`` (its lines are submitted by the
        finalizer loop, ``submit``) or ``failed`` with the errors."""
        data = await self.files.read(batch["input_file_id"])
        lines, errors = parse_lines(data, batch["endpoint"], self.services.settings.batch_max_lines)
        if webhook is not None:
            await self.records.subscribe_webhook(batch["id"], webhook)
        if errors:
            batch.update(
                status="failed", failed_at=int(time.time()), errors={"object": "list", "data": errors}
            )
            await self.records.put_batch(owner, batch, active=False)
            await self._notify(batch)
            return batch
        batch["request_counts"]["total"] = len(lines)
        await self.records.put_batch(owner, batch, active=True)
        return batch

    async def submit(self, owner: str, batch_id: str) -> None:
        """Submit a batch's lines not yet recorded, in chunks, under the batch's lock; the batch is
        ``in_progress`` from its first job on. A cancel stops it between chunks."""
        token = await self.records.lock(batch_id)
        if token is None:
            return
        try:
            batch = await self._reread(batch_id)
            try:
                data = await self.files.read(batch["input_file_id"])
            except FileNotFoundError:
                error = {
                    "code": "file_deleted",
                    "message": "the input file was deleted",
                    "param": None,
                    "line": None,
                }
                batch.update(
                    status="failed", failed_at=int(time.time()), errors={"object": "list", "data": [error]}
                )
                await self.records.put_batch(owner, batch, active=False)
                await self._notify(batch)
                return
            lines, _ = parse_lines(data, batch["endpoint"], len(data))  # checked on create: no limit here
            start = len(await self.records.requests(batch_id))
            served = {m.id for m in await served_models(self.services)}
            for at in range(start, len(lines), SUBMIT_CHUNK):
                batch = await self._reread(batch_id)
                if batch["status"] not in ("validating", "in_progress"):
                    break
                chunk = lines[at : at + SUBMIT_CHUNK]
                items = await submit_lines(self.services, owner, batch, chunk, served)
                if not await self.records.add_requests(batch_id, items, token):
                    log.warning("batch %s: lock lost while submitting; another process resumes", batch_id)
                    return  # its jobs are made: the next holder gets them back by idempotency key
                if batch["status"] == "validating" and items:
                    batch.update(status="in_progress", in_progress_at=int(time.time()))
                    await self.records.put_batch(owner, batch, active=True)
                if len(items) < len(chunk):
                    return  # throttled: the next round resumes at the first line not taken
            batch = await self._reread(batch_id)
            if batch["status"] == "cancelling":  # jobs made after the cancel looked at them
                await self._cancel_jobs(batch_id)
        finally:
            await self.records.unlock(batch_id, token)

    async def _reread(self, batch_id: str) -> dict[str, Any]:
        found = await self.records.get_batch(batch_id)
        if found is None:
            raise LookupError(batch_id)
        return found[1]

    async def live(self, batch: dict[str, Any]) -> dict[str, Any]:
        """``batch`` with its request counts as its jobs stand now (while not final)."""
        if batch["status"] not in ("in_progress", "cancelling"):
            return batch
        items = await self.records.requests(batch["id"])
        statuses = await self.records.job_statuses([i["job"] for i in items if i["job"]])
        failed = sum(i["job"] is None for i in items) + sum(s in ("failed", "cancelled") for s in statuses)
        batch["request_counts"] = {
            "total": batch["request_counts"]["total"],
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
        await self._cancel_jobs(batch["id"])
        return batch

    async def _cancel_jobs(self, batch_id: str) -> None:
        for item in await self.records.requests(batch_id):
            if item["job"]:
                await self.store.cancel(item["job"])

    async def finalize_due(self) -> None:
        """One pass of the loop over the active batches: submit the ``validating`` ones, finalize
        those whose jobs have all ended."""
        for batch_id in await self.records.active():
            found = await self.records.get_batch(batch_id)
            if found is None:
                await self.records.client.srem(ACTIVE, batch_id)
                continue
            owner, batch = found
            items = await self.records.requests(batch_id)
            if (
                batch["status"] in ("validating", "in_progress")
                and len(items) < batch["request_counts"]["total"]
            ):
                await self.submit(owner, batch_id)
                continue
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
            if found is None or found[1]["status"] not in ("in_progress", "finalizing", "cancelling"):
                return  # (finalizing: a process died while writing the files; they are written again)
            batch = found[1]
            cancelling = batch["status"] == "cancelling"
            if not cancelling:
                batch.update(status="finalizing", finalizing_at=int(time.time()))
                await self.records.put_batch(owner, batch, active=True)
            await self._write_results(owner, batch, items, token)
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

    async def _write_results(
        self, owner: str, batch: dict[str, Any], items: list[dict[str, Any]], token: str
    ) -> None:
        good: list[str] = []
        bad: list[str] = []
        for n, item in enumerate(items):
            if n % SUBMIT_CHUNK == 0 and not await self.records.relock(batch["id"], token):
                raise LookupError(f"batch {batch['id']}: lock lost while finalizing")
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
    """The API process's background loop over the active batches (``Batches.finalize_due``), every
    ``interval`` seconds or at once after ``wake()``."""

    def __init__(self, batches: Batches, interval: float) -> None:
        self.batches = batches
        self.interval = interval
        self._task: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()

    def start(self) -> None:
        """Start the loop (from the running event loop)."""
        self._task = asyncio.create_task(self._run(), name="tnllm-batch-finalizer")

    def wake(self) -> None:
        """Run a pass now (a batch was created)."""
        self._wake.set()

    async def stop(self) -> None:
        """Stop the loop."""
        task = self._task
        while task is not None and not task.done():  # cancel until it sticks (as FinishWatcher.stop)
            task.cancel()
            await asyncio.wait({task}, timeout=0.2)

    async def _run(self) -> None:
        while True:
            self._wake.clear()
            try:
                await self.batches.finalize_due()
            except (RedisError, OSError) as exc:
                log.warning("batch finalizer: %s", exc)
            except Exception:  # one broken batch must not stop the loop for the others
                log.exception("batch finalizer failed")
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.interval):  # not wait_for: 3.11's can swallow a cancel
                    await self._wake.wait()
