"""Listing an owner's jobs: cursors, pages, and the ``list_jobs`` flow both stores drive."""

from __future__ import annotations

import base64
import binascii
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from tnllm.protocol.jobs import JobRecord, JobStatus
from tnllm.store import keys
from tnllm.store.codec import record_from_hash
from tnllm.store.flow import Batch, Call, Flow

#: Rows read from an owner's index per round trip while listing, and the most one page may scan.
LIST_BATCH = 100
LIST_SCAN_CAP = 2000


def encode_cursor(score: float, job_id: str) -> str:
    """Opaque listing cursor: the position of the last job returned."""
    raw = f"{int(score)}:{job_id}".encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[int, str]:
    """Inverse of ``encode_cursor``; ValueError for anything else."""
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        score, _, job_id = raw.partition(":")
        if not job_id:
            raise ValueError("no job id")
        return int(score), job_id
    except (ValueError, UnicodeDecodeError, binascii.Error) as exc:
        raise ValueError(f"invalid cursor: {cursor!r}") from exc


def after_cursor(score: float, job_id: str, cursor: tuple[int, str] | None) -> bool:
    """True when a row of ZREVRANGEBYSCORE (ties in reverse lexical order) comes after ``cursor``."""
    if cursor is None:
        return True
    c_score, c_id = cursor
    return score < c_score or (int(score) == c_score and job_id < c_id)


@dataclass
class ListPage:
    """One page of an owner's jobs, newest first."""

    records: list[JobRecord]
    next_cursor: str | None
    stale: list[str]  # ids whose record expired; the caller may ZREM them


def page_step(
    page: ListPage,
    rows: Sequence[tuple[str, float]],
    hashes: Sequence[Mapping[str, str]],
    status: JobStatus | None,
    limit: int,
) -> tuple[bool, tuple[float, str] | None]:
    """Fold one batch of index rows and their hashes into ``page``.

    Returns (page full, last row examined).
    """
    last: tuple[float, str] | None = None
    for (job_id, score), fields in zip(rows, hashes, strict=True):
        last = (score, job_id)
        record = record_from_hash(fields)
        if record is None:
            page.stale.append(job_id)
            continue
        if status is not None and record.status is not status:
            continue
        page.records.append(record)
        if len(page.records) >= limit:
            return True, last
    return False, last


def list_jobs(owner: str, status: JobStatus | None, limit: int, cursor: str | None) -> Flow:
    """One page of ``owner``'s jobs, newest first, optionally of one status.

    ``cursor`` is a previous page's ``next_cursor`` (ValueError when malformed). A page scans at
    most ``LIST_SCAN_CAP`` index rows, so a rare status may yield a short page with a cursor;
    ``next_cursor`` is None once the index is exhausted. Expired ids met on the way are dropped
    from the index.
    """
    start = decode_cursor(cursor) if cursor else None
    page = ListPage([], None, [])
    index = keys.owner_jobs(owner)
    offset = 0
    while offset < LIST_SCAN_CAP:
        top = start[0] if start else "+inf"
        raw = yield Call(
            "zrevrangebyscore",
            (index, top, "-inf"),
            {"start": offset, "num": LIST_BATCH, "withscores": True},
        )
        offset += len(raw)
        rows = [(i, s) for i, s in raw if after_cursor(s, i, start)]
        hashes = yield Batch([Call("hgetall", (keys.job(job_id),)) for job_id, _ in rows])
        full, last = page_step(page, rows, hashes, status, limit)
        if full or (offset >= LIST_SCAN_CAP and len(raw) == LIST_BATCH):
            page.next_cursor = encode_cursor(*last) if last else None
            break
        if len(raw) < LIST_BATCH:  # the index is exhausted
            break
    if page.stale:
        yield Call("zrem", (index, *page.stale))
    return page
