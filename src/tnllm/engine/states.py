"""The engine's state store: recurrent states of token prefixes, kept in tiers under byte budgets.

A TransNormerLLM sequence's whole past is one fixed-size state (per layer ``[H, dk, d]``), so the
state after any token prefix can be saved and a later sequence that starts with the same tokens
resumes from it (prefix cache, conversation turns, preempted or paused sequences). Entries are keyed
by content: ``key_for(ids)`` hashes the model's fingerprint and the token ids, so a key never
matches a state of another model or another text; the entry keeps its ids and every hit compares
them exactly.

Tiers, fastest first: ``device`` (clones on the pool's device: spare GPU memory), ``host`` (CPU
memory, pinned when the pool is on CUDA), ``disk`` (safetensors files under a folder, see
``state_files.py``; they survive restarts). Each tier is an LRU under its byte budget: the least
recently used unpinned entry spills to the next tier (or is dropped from the last one). A hit
promotes the entry back to the device tier. Pinned entries (``pin(key, tag)``) never spill or drop;
pins exceeding a budget overfill it (logged). Save and restore are exact copies in the pool's
dtype: a restored slot is bit-identical to the saved one.

Thread-safety: one lock around everything; the engine thread is the main caller, ``stats()`` may be
read from any thread.
"""

from __future__ import annotations

import hashlib
import logging
import sys
import threading
from array import array
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from tnllm.engine.state_files import StateFiles

log = logging.getLogger(__name__)

TIERS = ("device", "host", "disk")


@dataclass(frozen=True)
class StateBudgets:
    """Byte budget of each tier (0 turns a tier off)."""

    device: int
    host: int
    disk: int

    def of(self, tier: str) -> int:
        return int(getattr(self, tier))


@dataclass(eq=False)
class StateEntry:
    """One saved state: the token ids it covers, where it is, its pins."""

    key: str
    ids: tuple[int, ...]
    nbytes: int
    tier: str = "device"
    tensors: list[Tensor] | None = None  # per layer [H, dk, d]; None on disk
    pins: set[str] = field(default_factory=set)

    @property
    def length(self) -> int:
        return len(self.ids)


@dataclass
class TierCounters:
    """Per-tier counters (the engine's metrics)."""

    hits: int = 0
    misses: int = 0
    evictions: int = 0
    entries: int = 0
    bytes: int = 0


def model_fingerprint(model: Any, state_dtype: torch.dtype) -> str:
    """A content fingerprint of a model for state keys: its config, state shapes and dtype, and a
    sample of every parameter's values (cheap: the first and last 256 elements of each)."""
    h = hashlib.sha256()
    h.update(repr(sorted(vars(model.config).items())).encode())
    h.update(repr((model.state_shapes(), str(state_dtype))).encode())
    with torch.no_grad():
        for name, p in model.named_parameters():
            flat = p.detach().reshape(-1)
            sample = torch.cat([flat[:256], flat[-256:]]).float().cpu()
            h.update(name.encode())
            h.update(repr(tuple(p.shape)).encode())
            h.update(sample.numpy().tobytes())
    return h.hexdigest()[:32]


class StateStore:
    """Tiered LRU store of prefix states (see the module docstring)."""

    def __init__(
        self,
        fingerprint: str,
        *,
        device: torch.device,
        dtype: torch.dtype,
        budgets: StateBudgets,
        directory: Path | None = None,
        min_tokens: int = 0,
    ) -> None:
        self.fingerprint = fingerprint
        #: the engine saves no unpinned state of fewer tokens (their prefill is cheaper than the copy)
        self.min_tokens = min_tokens
        self.device = torch.device(device)
        self.dtype = dtype
        self.budgets = budgets
        self._lock = threading.RLock()
        self._entries: dict[str, StateEntry] = {}
        self._lru: dict[str, OrderedDict[str, StateEntry]] = {t: OrderedDict() for t in TIERS}
        self._lengths: dict[int, int] = {}  # length -> how many entries have it (prefix lookup)
        self.counters = {t: TierCounters() for t in TIERS}
        self.lookups = 0
        self.lookup_misses = 0
        self.files = StateFiles(directory, fingerprint, dtype) if directory and budgets.disk > 0 else None
        if self.files is not None:
            for key, ids, nbytes in self.files.scan():
                if key == self.key_for(ids):  # the name is the content's hash, or it is not ours
                    self._add(StateEntry(key, ids, nbytes, tier="disk"))
            self._enforce("disk")

    # --- keys -----------------------------------------------------------------------------------
    def key_for(self, ids: list[int] | tuple[int, ...]) -> str:
        """The content key of the state after ``ids`` (this model only)."""
        h = _hasher(self.fingerprint)
        h.update(_id_bytes(ids))
        return h.hexdigest()

    # --- put / get ------------------------------------------------------------------------------
    def put(self, ids: list[int] | tuple[int, ...], state: list[Tensor], pin: str | None = None) -> str:
        """Save a copy of ``state`` (per layer ``[H, dk, d]``, e.g. a pool slot's views) as the state
        after ``ids``; an existing entry is only touched (and pinned). Returns its key."""
        ids = tuple(int(t) for t in ids)
        key = self.key_for(ids)
        with self._lock:
            entry = self._entries.get(key)
            if entry is None:
                tensors = [layer.detach().to(self.device, self.dtype, copy=True) for layer in state]
                nbytes = sum(t.numel() * t.element_size() for t in tensors)
                entry = StateEntry(key, ids, nbytes, tensors=tensors)
                self._add(entry)
            else:
                self._touch(entry)
            if pin is not None:
                entry.pins.add(pin)
            self._enforce(entry.tier)
        return key

    def get(self, key: str) -> list[Tensor] | None:
        """The state of ``key`` on the device tier (promoted there), or None; counted per tier."""
        with self._lock:
            entry = self._entries.get(key)
            if entry is None:
                return None
            return self._promote(entry)

    def lookup(self, ids: list[int] | tuple[int, ...], max_len: int | None = None) -> tuple[int, str] | None:
        """The longest saved prefix of ``ids`` (at most ``max_len`` tokens): ``(length, key)``, or None.

        Any token boundary: one incremental hash over ``ids`` is read out at every length that has
        an entry, and the hit's ids are compared exactly."""
        limit = len(ids) if max_len is None else min(max_len, len(ids))
        with self._lock:
            self.lookups += 1
            lengths = sorted(n for n in self._lengths if 0 < n <= limit)
            best: tuple[int, str] | None = None
            h, done = _hasher(self.fingerprint), 0
            for n in lengths:
                h.update(_id_bytes(ids[done:n]))
                done = n
                key = h.copy().hexdigest()
                entry = self._entries.get(key)
                if entry is not None and self._ids_of(entry) == tuple(int(t) for t in ids[:n]):
                    best = (n, key)
            if best is None:
                self.lookup_misses += 1
                for c in self.counters.values():
                    c.misses += 1
            return best

    def restore(self, key: str, pool: list[Tensor], slot: int) -> bool:
        """Copy the state of ``key`` into ``pool[.][slot]`` (exactly); False when it is gone."""
        state = self.get(key)
        if state is None:
            return False
        for layer, saved in zip(pool, state, strict=True):
            layer[slot].copy_(saved)
        return True

    # --- pins and eviction ----------------------------------------------------------------------
    def pin(self, key: str, tag: str) -> bool:
        """Keep ``key`` (never spilled or dropped) until ``unpin(tag)``; False when it is unknown."""
        with self._lock:
            entry = self._entries.get(key)
            if entry is None:
                return False
            entry.pins.add(tag)
            return True

    def unpin(self, tag: str) -> int:
        """Remove pin ``tag`` from every entry (they become LRU entries again); returns how many."""
        with self._lock:
            hit = [e for e in self._entries.values() if tag in e.pins]
            for entry in hit:
                entry.pins.discard(tag)
            for tier in TIERS:
                self._enforce(tier)
            return len(hit)

    def pinned(self, tag: str) -> list[str]:
        """Keys pinned by ``tag``."""
        with self._lock:
            return [e.key for e in self._entries.values() if tag in e.pins]

    def evict(self, key: str) -> bool:
        """Drop ``key`` from every tier (pins ignored); False when it is unknown."""
        with self._lock:
            entry = self._entries.get(key)
            if entry is None:
                return False
            self._remove(entry)
            return True

    def tier_of(self, key: str) -> str | None:
        """Where ``key`` is now (None: not stored)."""
        with self._lock:
            entry = self._entries.get(key)
            return None if entry is None else entry.tier

    def __contains__(self, key: object) -> bool:
        with self._lock:
            return key in self._entries

    def __len__(self) -> int:
        with self._lock:
            return len(self._entries)

    def stats(self) -> dict[str, dict[str, int]]:
        """Per tier: hits, misses, evictions, entries, bytes (JSON-ready, for the engine's stats)."""
        with self._lock:
            return {t: dict(vars(c)) for t, c in self.counters.items()}

    # --- internals ------------------------------------------------------------------------------
    def _ids_of(self, entry: StateEntry) -> tuple[int, ...]:
        return entry.ids

    def _add(self, entry: StateEntry) -> None:
        self._entries[entry.key] = entry
        self._lru[entry.tier][entry.key] = entry
        self._lengths[entry.length] = self._lengths.get(entry.length, 0) + 1
        c = self.counters[entry.tier]
        c.entries += 1
        c.bytes += entry.nbytes

    def _detach(self, entry: StateEntry) -> None:
        """Take ``entry`` out of its tier's LRU and counts (it stays in ``_entries``)."""
        del self._lru[entry.tier][entry.key]
        c = self.counters[entry.tier]
        c.entries -= 1
        c.bytes -= entry.nbytes

    def _attach(self, entry: StateEntry, tier: str) -> None:
        entry.tier = tier
        self._lru[tier][entry.key] = entry
        c = self.counters[tier]
        c.entries += 1
        c.bytes += entry.nbytes

    def _remove(self, entry: StateEntry) -> None:
        self._detach(entry)
        del self._entries[entry.key]
        n = self._lengths[entry.length] - 1
        if n:
            self._lengths[entry.length] = n
        else:
            del self._lengths[entry.length]
        if entry.tier == "disk" and self.files is not None:
            self.files.delete(entry.key)
        entry.tensors = None

    def _touch(self, entry: StateEntry) -> None:
        self._lru[entry.tier].move_to_end(entry.key)

    def _promote(self, entry: StateEntry) -> list[Tensor] | None:
        """Count a hit in the entry's tier (a miss in the faster ones) and move it to the device."""
        tier = entry.tier
        for t in TIERS[: TIERS.index(tier)]:
            self.counters[t].misses += 1
        self.counters[tier].hits += 1
        if tier == "device":
            self._touch(entry)
            assert entry.tensors is not None
            return entry.tensors
        if tier == "disk":
            assert self.files is not None
            loaded = self.files.load(entry.key, entry.ids)
            if loaded is None:  # unreadable or not ours after all: forget it
                self._remove(entry)
                return None
            tensors = loaded
        else:
            assert entry.tensors is not None
            tensors = entry.tensors
        # from pinned host memory the copy is asynchronous, ordered before the slot's next use on
        # the same stream
        entry.tensors = [
            t.to(self.device, self.dtype, copy=True, non_blocking=t.is_pinned()) for t in tensors
        ]
        self._detach(entry)
        if tier == "disk" and self.files is not None:
            self.files.delete(entry.key)
        self._attach(entry, "device")
        self._enforce("device")
        return entry.tensors

    def _enforce(self, tier: str) -> None:
        """Spill the LRU unpinned entries of ``tier`` until it fits its budget."""
        budget = self.budgets.of(tier)
        lru = self._lru[tier]
        c = self.counters[tier]
        victims = iter(list(lru.values()))
        while c.bytes > budget:
            entry = next((e for e in victims if not e.pins), None)
            if entry is None:
                log.warning(
                    "state store: pinned states overfill the %s tier (%d > %d bytes)", tier, c.bytes, budget
                )
                return
            c.evictions += 1
            self._spill(entry)

    def _spill(self, entry: StateEntry) -> None:
        tier = entry.tier
        nxt = TIERS.index(tier) + 1
        target = next((t for t in TIERS[nxt:] if self.budgets.of(t) >= entry.nbytes), None)
        if target == "disk" and self.files is None:
            target = None
        if target is None:
            self._remove(entry)
            return
        self._detach(entry)
        assert entry.tensors is not None
        if target == "host":
            pin = self.device.type == "cuda"
            entry.tensors = [_to_host(t, pin) for t in entry.tensors]
        else:
            assert self.files is not None
            if any(t.is_cuda or t.is_pinned() for t in entry.tensors):
                torch.cuda.current_stream(self.device).synchronize()  # host reads them next
            self.files.save(entry.key, entry.ids, entry.tensors)
            entry.tensors = None
        self._attach(entry, target)
        self._enforce(target)


def _hasher(fingerprint: str) -> Any:
    h = hashlib.blake2b(digest_size=20)
    h.update(fingerprint.encode())
    return h


def _id_bytes(ids: list[int] | tuple[int, ...]) -> bytes:
    packed = array("I", ids)  # uint32, little-endian: keys (file names) are the same on any machine
    if sys.byteorder == "big":
        packed.byteswap()
    return packed.tobytes()


def _to_host(t: Tensor, pin: bool) -> Tensor:
    """A host copy; into pinned memory (torch's caching host allocator) the device-to-host copy is
    asynchronous: the engine thread does not wait for it, and a later copy back to the device is
    ordered after it on the same stream. Reading it on the host (a file write) syncs first."""
    out = torch.empty(t.shape, dtype=t.dtype, device="cpu", pin_memory=pin)
    out.copy_(t, non_blocking=pin)
    return out
