"""Where a requeued job's stream leaves off: the token ids its earlier attempts streamed.

Token entries carry the ids their text came from (``ids``), so a new attempt prefills prompt +
those ids and continues: the stream goes on with no ``reset`` and no repeated text (docs/STATE.md).
Only choice 0's ids are stored, so a job with n > 1 (or logprobs, whose earlier entries the result
would miss) starts over with a ``reset`` instead. A sampled job without a seed draws with one
derived from its id (``job_sampling``), the same on every attempt, so it resumes exactly too.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

from tnllm.protocol.jobs import JobRecord
from tnllm.protocol.sampling import SamplingParams
from tnllm.store.entries import StreamEntry


def streamed_ids(entries: Sequence[StreamEntry]) -> list[int] | None:
    """The ids streamed since the last ``reset`` (in order), or None when they cannot be known: a
    token entry with text but no ids (written by a version that did not store them)."""
    ids: list[int] = []
    for entry in entries:
        if entry.type == "reset":
            ids = []
        elif entry.type == "token":
            if entry.ids is None:
                if entry.text:
                    return None
                continue
            ids.extend(entry.ids)
    return ids


def job_sampling(record: JobRecord) -> SamplingParams:
    """The job's sampling params, with a seed: its own, else one derived from the job id, so every
    attempt of a sampled job draws the same tokens and a resumed one goes on exactly."""
    p = record.params.sampling()
    if p.seed is not None or p.temperature == 0:
        return p
    digest = hashlib.blake2b(record.id.encode(), digest_size=8, person=b"tnllm-seed").digest()
    return p.model_copy(update={"seed": int.from_bytes(digest, "big") >> 1})


def resumable(record: JobRecord) -> bool:
    """Whether a new attempt goes on from the stream: one choice without logprobs (n > 1 streams
    only choice 0's ids; logprobs of the earlier tokens are not kept for the result)."""
    return record.params.n == 1 and not record.params.logprobs


def streamed_since_reset(entries: Sequence[StreamEntry]) -> bool:
    """Any token entry after the stream's last reset."""
    for entry in reversed(entries):
        if entry.type == "reset":
            return False
        if entry.type == "token":
            return True
    return False
