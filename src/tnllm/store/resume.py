"""Where a requeued job's stream leaves off: the token ids its earlier attempts streamed.

Token entries carry the ids their text came from (``ids``), so a new attempt prefills prompt +
those ids and continues: the stream goes on with no ``reset`` and no repeated text (docs/STATE.md).
"""

from __future__ import annotations

from collections.abc import Sequence

from tnllm.store.ops import StreamEntry


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
