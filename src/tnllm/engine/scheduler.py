"""Which sequences run in the next engine step (pure Python, no tensors).

Owns the waiting queue and the slot pool. Each ``schedule()`` retires cancelled sequences, admits
waiting ones into free slots (higher priority first, then FIFO), hands out prompt chunks up to the
per-step prefill token budget, and lists the sequences that decode one token this step. A prompt
chunk never crosses one of its sequence's ``cache_points`` (so the engine can save the state
there), and ``on_admit`` sees each sequence as it gets its slot (the engine starts it from a saved
prefix state).

Preemption (``preempt_gap`` set): when no slot is free and the first waiting sequence's priority
beats the lowest running one's by at least the gap, that running sequence is *parked*: the plan
lists it in ``preempted`` (the engine moves its slot's state to host memory before the slot is
reused) and it waits at the head of its priority; when readmitted it is in ``restore`` (the engine
copies its state back; ``on_admit`` does not see it again) and goes on where it stopped, with no
recompute. Only a request running as one sequence is parked (n > 1 choices: all or none, so none).

A request with ``n`` choices is one sequence (choice 0) carrying ``n - 1`` ``siblings``: it is
admitted only when ``n`` slots are free (the queue waits otherwise), its siblings take the other
slots at once and wait there (``parent`` set) while choice 0 prefills the prompt; ``fork`` then
hands them to the engine, which copies choice 0's state into their slots. One prefill, n slots.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Generic, TypeVar

R = TypeVar("R")


@dataclass(eq=False)
class Sequence(Generic[R]):
    """One request's progress; ``request`` is the caller's per-request state (the engine's
    ``LiveRequest``), opaque to the scheduler."""

    request_id: str
    prompt_ids: list[int]
    max_new_tokens: int
    request: R
    slot: int = -1
    prefilled: int = 0  # prompt tokens already consumed into the slot's state
    output_ids: list[int] = field(default_factory=list)
    cancelled: bool = False
    finished: bool = False
    admitted: int = -1  # admission counter: prefill goes first-come first-served
    priority: int = 0  # 0..9, higher first
    parked: bool = False  # preempted: its state waits in host memory for a slot
    siblings: list[Sequence[R]] = field(default_factory=list)  # choices 1..n-1 until the fork
    parent: Sequence[R] | None = None  # a sibling waiting for its parent's prefilled state

    @property
    def width(self) -> int:
        """Slots the sequence needs to be admitted (itself and its unforked siblings)."""
        return 1 + len(self.siblings)

    cached: int = 0  # prompt tokens taken from a saved state instead of prefilled
    consumed: int = 0  # tokens (prompt, then output) that the slot's state has taken in
    cache_points: tuple[int, ...] = ()  # prompt positions where a chunk must end (sorted)

    @property
    def prefill_done(self) -> bool:
        """All prompt tokens are in the state."""
        return self.prefilled >= len(self.prompt_ids)

    @property
    def next_position(self) -> int:
        """Position of the token fed next in a decode step (the last sampled one)."""
        return self.prefilled + len(self.output_ids) - 1


@dataclass
class PrefillChunk(Generic[R]):
    """Prompt tokens ``seq.prompt_ids[start:start+length]`` to consume into ``seq.slot``."""

    seq: Sequence[R]
    start: int
    length: int

    @property
    def completes_prompt(self) -> bool:
        """After this chunk the prompt is fully consumed, so its last logits give token one."""
        return self.start + self.length >= len(self.seq.prompt_ids)


@dataclass
class StepPlan(Generic[R]):
    """The work of one engine step."""

    cancelled: list[Sequence[R]] = field(default_factory=list)
    prefill: list[PrefillChunk[R]] = field(default_factory=list)
    decode: list[Sequence[R]] = field(default_factory=list)  # holding slots 0 .. len(decode)-1, in order
    swaps: list[tuple[int, int]] = field(default_factory=list)  # slot states to exchange before running
    preempted: list[tuple[Sequence[R], int]] = field(default_factory=list)  # (seq, slot it left): save first
    restore: list[Sequence[R]] = field(default_factory=list)  # parked seqs admitted again: state back in

    @property
    def empty(self) -> bool:
        """Nothing to run (cancellations are still reported)."""
        return not self.prefill and not self.decode


class Scheduler(Generic[R]):
    """Waiting queue + slot pool + chunked-prefill budget."""

    def __init__(
        self,
        slots: int,
        prefill_token_budget: int,
        on_admit: Callable[[Sequence[R]], None] | None = None,
        preempt_gap: int | None = None,
    ) -> None:
        if slots < 1 or prefill_token_budget < 1:
            raise ValueError("slots and prefill_token_budget must be >= 1")
        if preempt_gap is not None and preempt_gap < 1:
            raise ValueError("preempt_gap must be >= 1 (or None: no preemption)")
        self.num_slots = slots
        self.budget = prefill_token_budget
        self.preempt_gap = preempt_gap
        self.waiting: deque[Sequence[R]] = deque()
        self.running: dict[int, Sequence[R]] = {}  # slot -> sequence, in admission order
        self._free: list[int] = list(range(slots - 1, -1, -1))  # pop() hands out low slots first
        self._by_id: dict[str, list[Sequence[R]]] = {}  # request id -> its live choices
        self._admissions = 0
        self._on_admit = on_admit

    # --- bookkeeping ----------------------------------------------------------------------------
    def add(self, seq: Sequence[R]) -> None:
        """Queue a new sequence and its siblings (request ids must be unique among live requests)."""
        if seq.request_id in self._by_id:
            raise ValueError(f"request id {seq.request_id!r} is already in the engine")
        if seq.width > self.num_slots:
            raise ValueError(f"{seq.width} choices need more than the engine's {self.num_slots} slots")
        for sib in seq.siblings:
            sib.parent = seq
        self._by_id[seq.request_id] = [seq, *seq.siblings]
        self._enqueue(seq)

    def _enqueue(self, seq: Sequence[R], *, first: bool = False) -> None:
        """Wait behind every sequence of higher priority (and, unless ``first``, of the same)."""
        at = len(self.waiting)
        for i, other in enumerate(self.waiting):
            if other.priority < seq.priority or (first and other.priority == seq.priority):
                at = i
                break
        self.waiting.insert(at, seq)

    def get(self, request_id: str) -> Sequence[R] | None:
        """A live sequence (the lowest choice still running) with this id, if any."""
        live = self._by_id.get(request_id)
        return live[0] if live else None

    def cancel(self, request_id: str) -> bool:
        """Mark a request's live choices cancelled; they are retired by the next ``schedule()``."""
        live = self._by_id.get(request_id)
        if not live:
            return False
        for seq in live:
            seq.cancelled = True
        return True

    def fork(self, seq: Sequence[R]) -> list[Sequence[R]]:
        """``seq``'s prompt is in its state: its siblings are ready once the caller has copied that
        state into their slots (returned; they sample their first token from ``seq``'s logits)."""
        ready, seq.siblings = seq.siblings, []
        for sib in ready:
            sib.parent = None
            sib.prefilled, sib.consumed, sib.cached = seq.prefilled, seq.consumed, seq.cached
        return ready

    def finish(self, seq: Sequence[R]) -> None:
        """Retire a sequence now and free its slot."""
        if seq.finished:
            return
        seq.finished = True
        live = self._by_id.get(seq.request_id, [])
        if seq in live:
            live.remove(seq)
        if not live:
            self._by_id.pop(seq.request_id, None)
        if seq.slot >= 0:
            del self.running[seq.slot]
            self._free.append(seq.slot)
            seq.slot = -1
        elif seq in self.waiting:
            self.waiting.remove(seq)

    def _live(self) -> list[Sequence[R]]:
        """Every live sequence: running, waiting, and the siblings of waiting ones."""
        return [*self.running.values(), *self.waiting, *(s for w in self.waiting for s in w.siblings)]

    def drain(self) -> list[Sequence[R]]:
        """Retire every live sequence (engine failure or shutdown); returns them."""
        live = self._live()
        for seq in live:
            self.finish(seq)
        return live

    # --- planning -------------------------------------------------------------------------------
    @property
    def num_active(self) -> int:
        """Sequences holding a slot."""
        return len(self.running)

    @property
    def num_waiting(self) -> int:
        """Sequences waiting for a slot."""
        return len(self.waiting)

    @property
    def has_work(self) -> bool:
        """Anything to run or retire."""
        return bool(self.running or self.waiting)

    def schedule(self) -> StepPlan[R]:
        """Retire cancelled sequences, admit waiting ones, and plan prefill chunks and decodes."""
        plan: StepPlan[R] = StepPlan()
        for seq in [s for s in self._live() if s.cancelled]:
            self.finish(seq)
            plan.cancelled.append(seq)
        self._admit(plan)
        while self.waiting and len(self._free) < self.waiting[0].width and (victims := self._victims()):
            for victim in victims:
                self._preempt(victim, plan)
            self._admit(plan)
        budget = self.budget
        for seq in sorted(self.running.values(), key=lambda s: s.admitted):
            if seq.parent is not None:  # waits for its parent's prompt state
                continue
            if not seq.prefill_done:
                if budget <= 0:
                    continue
                n = min(len(seq.prompt_ids) - seq.prefilled, budget)
                point = next((p for p in seq.cache_points if p > seq.prefilled), None)
                if point is not None:
                    n = min(n, point - seq.prefilled)
                plan.prefill.append(PrefillChunk(seq, seq.prefilled, n))
                budget -= n
            elif seq.output_ids:
                plan.decode.append(seq)
        plan.swaps = self._pack(plan.decode)
        plan.decode.sort(key=lambda s: s.slot)
        return plan

    def _admit(self, plan: StepPlan[R]) -> None:
        while self.waiting and len(self._free) >= self.waiting[0].width:
            seq = self.waiting.popleft()
            for member in (seq, *seq.siblings):
                member.slot = self._free.pop()
                member.admitted = self._admissions
                self.running[member.slot] = member
            self._admissions += 1
            if seq.parked:
                seq.parked = False
                plan.restore.append(seq)
            elif self._on_admit is not None:
                self._on_admit(seq)  # choice 0 only: its siblings get its state by the fork

    def _victims(self) -> list[Sequence[R]]:
        """The running sequences the first waiting one preempts to get its ``width`` slots: the
        lowest priorities at least ``preempt_gap`` below it, the latest admitted among equals (they
        have done the least); none unless that frees enough slots. Only a request running as one
        sequence is preempted (a request's n > 1 choices are never parked: all or none, so none)."""
        if self.preempt_gap is None or not self.waiting:
            return []
        head = self.waiting[0]
        ceiling = head.priority - self.preempt_gap
        candidates = sorted(
            (s for s in self.running.values() if s.priority <= ceiling and self._parkable(s)),
            key=lambda s: (s.priority, -s.admitted),
        )
        need = head.width - len(self._free)
        return candidates[:need] if len(candidates) >= need else []

    def _parkable(self, seq: Sequence[R]) -> bool:
        """The sequence is its request's only live choice (no siblings, no parent, no other choice)."""
        return seq.parent is None and not seq.siblings and len(self._by_id.get(seq.request_id, ())) == 1

    @property
    def wants_preempt(self) -> bool:
        """The next ``schedule()`` would preempt a running sequence."""
        return bool(self.waiting) and len(self._free) < self.waiting[0].width and bool(self._victims())

    def _preempt(self, seq: Sequence[R], plan: StepPlan[R]) -> None:
        plan.preempted.append((seq, seq.slot))
        del self.running[seq.slot]
        self._free.append(seq.slot)
        seq.slot = -1
        seq.parked = True
        self._enqueue(seq, first=True)

    def _pack(self, decode: list[Sequence[R]]) -> list[tuple[int, int]]:
        """Move the decoding sequences into slots 0..n-1 so the model updates one contiguous block
        of the state pool in place. Returns the slot pairs whose states the engine must exchange."""
        n = len(decode)
        inside = {s.slot for s in decode if s.slot < n}
        holes = [i for i in range(n) if i not in inside]
        movers = [s for s in decode if s.slot >= n]
        swaps = []
        for seq, hole in zip(movers, holes, strict=True):
            old, other = seq.slot, self.running.get(hole)  # other: a prefilling sequence, or a free slot
            del self.running[old]
            if other is None:
                self._free.remove(hole)
                self._free.append(old)
            else:
                other.slot = old
                self.running[old] = other
            seq.slot = hole
            self.running[hole] = seq
            swaps.append((old, hole))
        if swaps:
            self._free.sort(reverse=True)
        return swaps
