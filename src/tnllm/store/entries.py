"""Entries of a job's stream (``stream:{id}``): the typed entry a reader gets, and the fields a
token entry is written with (I/O-free, like ``ops``)."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

from tnllm.protocol.jobs import JobStatus, dumps
from tnllm.protocol.outputs import ChoiceDelta

__all__ = ["StreamEntry", "pack_deltas", "parse_entry"]


@dataclass(frozen=True)
class StreamEntry:
    """One entry of ``stream:{id}``; ``id`` doubles as the SSE event id.

    A ``token`` entry holds one flush of the job's deltas: ``deltas`` per choice, in order (one
    choice may appear more than once), with their logprobs when the job asked; ``text`` is choice
    0's text of the flush (what a reader that knows only one choice shows)."""

    id: str
    type: Literal["token", "reset", "done"]
    text: str = ""
    status: JobStatus | None = None
    reason: str | None = None
    deltas: tuple[ChoiceDelta, ...] = ()
    #: choice 0's token ids of a token entry (None: an entry of a version that did not store them)
    ids: tuple[int, ...] | None = None


def parse_entry(entry_id: str, fields: Mapping[str, str]) -> StreamEntry:
    """Decode one stream entry."""
    kind = fields.get("t", "token")
    if kind == "done":
        return StreamEntry(entry_id, "done", status=JobStatus(fields["status"]))
    if kind == "reset":
        return StreamEntry(entry_id, "reset", reason=fields.get("reason"))
    text = fields.get("text", "")
    raw = fields.get("ids")
    ids = None if raw is None else tuple(int(i) for i in raw.split(",") if i)
    packed = fields.get("d")
    if packed is None:
        return StreamEntry(entry_id, "token", text=text, deltas=(ChoiceDelta(text=text),), ids=ids)
    deltas = tuple(ChoiceDelta.model_validate(d) for d in json.loads(packed))
    return StreamEntry(entry_id, "token", text=text, deltas=deltas, ids=ids)


def pack_deltas(deltas: Sequence[ChoiceDelta]) -> tuple[str, str]:
    """A flush's deltas as the stream entry's fields (``text``, ``d``): ``d`` is '' (not written)
    when the flush is choice 0's plain text, so such entries stay as they were."""
    text = "".join(d.text for d in deltas if d.index == 0)
    if all(d.index == 0 and d.logprobs is None for d in deltas):
        return text, ""
    return text, dumps([d.model_dump(mode="json", exclude_none=True) for d in deltas])
