"""The continuous-batching engine's core: submit / cancel / step / start / stop and the step loop.

The tensor work (slot pool, backend, prefill, decode, slot swaps) is ``runner.ModelRunner``'s,
the per-token host work (detokenise, stop strings, emit) ``output.OutputProcessor``'s.

Each ``step()``: take new submissions and cancellations → schedule (retire cancelled, admit,
plan prefill chunks under the token budget) → prefill chunks → one batched decode over every
decoding slot → sample → detokenize incrementally → emit deltas → retire finished sequences.
``submit``/``cancel`` are thread-safe; ``start()`` runs the step loop on a background thread.

Overlap (``overlap=True``, the default): a step's sampled ids stay on the device and are read by
the *next* step. When nothing changes between two steps (the same packed decode batch, nobody
waiting for a free slot, no cancellation, no repetition penalty), that next step first launches the
following decode from those device ids and only then reads the previous ids and does the host work
(detokenisation, stop strings, callbacks), so on a GPU the host work of step N runs while step N+1
computes. A sequence that finishes on step N (EOS, stop string) was already fed to step N+1: that
extra token is dropped and its slot is reset before reuse. Results are identical to ``overlap=False``.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import replace
from typing import Any

import torch

from tnllm.engine.backend import ModelBackend
from tnllm.engine.grammar import Grammars
from tnllm.engine.handle import RequestHandle
from tnllm.engine.logprobs import token_logprob
from tnllm.engine.output import OutputProcessor, eos_ids
from tnllm.engine.prefix import PrefixCache
from tnllm.engine.request import LiveRequest, OnToken, new_sequences
from tnllm.engine.runner import ModelRunner, Pending, Seq
from tnllm.engine.sampling import BatchSampler, RowSampling
from tnllm.engine.scheduler import Scheduler, StepPlan
from tnllm.engine.states import StateStore
from tnllm.engine.stats import StatsTracker
from tnllm.engine.types import EngineRequest, EngineResult, EngineStats, FinishReason
from tnllm.engine.validation import check_request
from tnllm.errors import EngineError, RequestRejected
from tnllm.text.stop import TextStream

log = logging.getLogger(__name__)


class Engine:
    """Continuous batching over a fixed pool of per-sequence recurrent states."""

    def __init__(
        self,
        model: Any,
        tokenizer: Any | None,
        *,
        slots: int,
        prefill_token_budget: int = 512,
        max_context: int = 16384,
        overlap: bool = True,
        state_dtype: torch.dtype = torch.float32,
        backend: ModelBackend | None = None,
        preempt_gap: int | None = None,
        states: StateStore | None = None,
    ) -> None:
        self.tokenizer = tokenizer
        self.slots = slots
        self.max_context = max_context
        self.vocab_size = int(model.config.vocab_size)
        self.runner = ModelRunner(model, slots, backend, state_dtype)
        self.output = OutputProcessor(eos_ids(model, tokenizer))
        self.grammars = Grammars(tokenizer, self.output.eos_ids, self.vocab_size)
        #: prefix and conversation states (``states``: the engine's store, None for none)
        self.prefix = PrefixCache(states)
        self.sched: Scheduler[LiveRequest] = Scheduler(
            slots, prefill_token_budget, self.prefix.admit, preempt_gap=preempt_gap
        )
        self._parked: dict[str, list[torch.Tensor]] = {}  # preempted sequences' states (host)
        self._stats = StatsTracker()
        self._lock = threading.Condition()
        self._inbox: list[Seq] = []
        self._cancels: list[str] = []
        self._live_ids: set[str] = set()
        self._thread: threading.Thread | None = None
        self._stopping = False
        self.overlap = overlap
        self._pending: Pending | None = None
        #: steps launched from the previous step's device ids (the overlapped fast path)
        self.chained_steps = 0

    # --- what the runner holds ------------------------------------------------------------------
    @property
    def model(self) -> Any:
        """The reference model (config, state shapes)."""
        return self.runner.model

    @property
    def backend(self) -> ModelBackend:
        """The backend the runner calls (reference or fast)."""
        return self.runner.backend

    @property
    def device(self) -> torch.device:
        return self.runner.device

    @property
    def pool(self) -> list[torch.Tensor]:
        """Per layer the state pool ``[slots, H, dk, d]``."""
        return self.runner.pool

    @property
    def eos_ids(self) -> frozenset[int]:
        """Token ids that end a sequence (unless its request ignores EOS)."""
        return self.output.eos_ids

    @eos_ids.setter
    def eos_ids(self, ids: frozenset[int]) -> None:
        self.output.eos_ids = ids

    # --- caller side (any thread) ---------------------------------------------------------------
    def submit(
        self,
        req: EngineRequest,
        on_token: OnToken | None = None,
        on_done: Callable[[RequestHandle], None] | None = None,
    ) -> RequestHandle:
        """Queue a request; raises RequestRejected for a bad one before it takes a slot.

        ``on_token`` gets each delta and ``on_done`` the finished handle, both on the engine thread
        (keep them short: the batch waits)."""
        self._validate(req)
        handle = RequestHandle(self, req.request_id, on_done)
        # each choice walks its own copy of the format's matcher (RequestRejected: cannot compile)
        seq = new_sequences(req, handle, on_token, self.grammars.matcher(req.params))
        with self._lock:
            if self._stopping:
                raise EngineError("the engine is stopping")
            if req.request_id in self._live_ids:
                raise RequestRejected(f"request id {req.request_id!r} is already running")
            self._live_ids.add(req.request_id)
            self._inbox.append(seq)
            self._lock.notify_all()
        return handle

    def cancel(self, request_id: str) -> None:
        """Cancel a queued or running request; it is retired at the start of the next step."""
        with self._lock:
            self._cancels.append(request_id)
            self._lock.notify_all()

    def generate(self, reqs: Iterable[EngineRequest], timeout: float | None = None) -> list[EngineResult]:
        """Submit all requests together and return their results in order (all are checked first)."""
        reqs = list(reqs)
        for r in reqs:
            self._validate(r)
        handles = [self.submit(r) for r in reqs]
        if self._thread is None:
            while not all(h.done() for h in handles):
                self.step()
        return [h.result(timeout) for h in handles]

    def stats(self) -> EngineStats:
        """Active and waiting sequences, tokens/s, step time, slot occupancy."""
        with self._lock:
            inbox = len(self._inbox)
        snap = self._stats.snapshot(self.slots, self.sched.num_active, self.sched.num_waiting + inbox)
        p = self.prefix
        return replace(
            snap, prefill_tokens=p.prefill_tokens, cached_tokens=p.cached_tokens, state_cache=p.stats()
        )

    def unpin(self, tag: str) -> int:
        """Release the saved states pinned under ``tag`` (thread-safe); how many."""
        return self.prefix.unpin(tag)

    # --- background loop ------------------------------------------------------------------------
    def start(self) -> None:
        """Run the step loop on a daemon thread until ``stop()``."""
        if self._thread is not None:
            return
        self._stopping = False
        self._thread = threading.Thread(target=self._loop, name="tnllm-engine", daemon=True)
        self._thread.start()

    def stop(self, timeout: float | None = 30.0) -> None:
        """Stop the loop; requests still in the engine fail with EngineError."""
        with self._lock:
            self._stopping = True
            self._lock.notify_all()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None
        self._fail_all(EngineError("the engine was stopped"))
        with self._lock:
            self._stopping = False

    def _loop(self) -> None:
        while True:
            with self._lock:
                while not (
                    self._stopping or self._inbox or self._cancels or self.sched.has_work or self._pending
                ):
                    self._lock.wait()
                if self._stopping:
                    return
            try:
                self.step()
            except Exception as err:  # keep serving: fail what was running, log, go on
                log.exception("engine step failed; failing %d requests", self.sched.num_active)
                self._fail_all(err)

    def _fail_all(self, err: BaseException) -> None:
        self._pending = None
        with self._lock:
            pending, self._inbox = self._inbox, []
        self._parked.clear()
        for seq in [*pending, *self.sched.drain()]:
            self._release(seq.request_id)
            seq.request.handle.set_error(err)

    # --- the step -------------------------------------------------------------------------------
    def step(self) -> None:
        """One round: admit, prefill chunks, one batched decode, sample, emit, retire."""
        t0 = time.perf_counter()
        self._take_inbox()
        prev, self._pending = self._pending, None
        emitted = 0
        chained = prev is not None and self._can_chain(prev)
        with torch.inference_mode():
            if chained:
                assert prev is not None
                # launch the next decode from the device ids first, then do prev's host work
                self._pending = self._chain(prev)
                emitted = self._consume(prev)
                if all(s.finished for s in self._pending.rows):
                    self._pending = None  # every row stopped on prev: nothing left to read
            else:
                if prev is not None:
                    emitted = self._consume(prev)
                self._pending = self._run_plan()
            if self._pending is not None and not self.overlap:
                emitted += self._consume(self._pending)
                self._pending = None
        if emitted or self._pending is not None:
            self._stats.record_step(time.perf_counter() - t0, emitted, overlapped=chained)

    def _run_plan(self) -> Pending | None:
        """Schedule and launch one step (prefill chunks + batched decode + sampling on the device)."""
        plan = self.sched.schedule()
        for seq in plan.cancelled:
            self._complete(seq, "cancelled")
        if plan.empty:
            return None
        completing = [ch.seq for ch in plan.prefill if ch.completes_prompt]
        # choices 1..n-1 sample their first token from choice 0's prompt logits
        forks = [(i, sib) for i, s in enumerate(completing) for sib in s.siblings]
        rows = completing + [sib for _, sib in forks] + plan.decode
        # staged before the launches: building it copies parameters to the device
        sampler = self._sampler(rows) if rows else None
        started = self.runner.mark()
        self._move_states(plan)
        self.runner.swap_slots(plan.swaps)
        logits = self.runner.prefill(plan.prefill, self.prefix)
        self.prefix.after_prefill(plan.prefill, self.pool)
        self._stats.record_prefills(len(completing), len(forks))
        for seq in completing:
            ready = self.sched.fork(seq)
            self.runner.fork(seq.slot, [sib.slot for sib in ready])
        if forks:
            logits.insert(1, logits[0][torch.tensor([i for i, _ in forks], device=self.device)])
        if plan.decode:
            logits.append(self.runner.decode(plan.decode, [s.next_position for s in plan.decode]))
        if sampler is None:
            return None
        batch_logits = logits[0] if len(logits) == 1 else torch.cat(logits)
        return self.runner.pend(rows, sampler(batch_logits), sampler, not plan.prefill, started)

    def _move_states(self, plan: StepPlan[LiveRequest]) -> None:
        """Preempted sequences' states to host memory, readmitted ones' back (before any slot is
        reused or packed)."""
        for seq, slot in plan.preempted:
            self._parked[seq.request_id] = self.runner.save_slot(slot)
            self._stats.preemptions += 1
        for seq in plan.restore:
            self.runner.load_slot(seq.slot, self._parked.pop(seq.request_id))

    def _can_chain(self, prev: Pending) -> bool:
        """Would the next ``schedule()`` decode exactly ``prev.rows`` in the same slots, and nothing else?"""
        if not (self.overlap and prev.chainable and prev.sampler.reusable):
            return False
        n = len(prev.rows)
        if len(self.sched.running) != n or (self.sched.num_waiting and n < self.slots):
            return False
        if self.sched.wants_preempt:
            return False
        # a row whose prev token is its last (max_new_tokens) leaves the batch: repack instead
        return not any(
            s.finished or s.cancelled or len(s.output_ids) + 1 >= s.max_new_tokens for s in prev.rows
        )

    def _chain(self, prev: Pending) -> Pending:
        """Decode ``prev.rows`` again, fed with ``prev``'s sampled ids straight from the device."""
        rows = prev.rows
        self.chained_steps += 1
        started = self.runner.mark()
        # prev's token is not appended yet: it sits one position after the last appended one
        logits = self.runner.decode(rows, [s.next_position + 1 for s in rows], ids=prev.tokens)
        return self.runner.pend(rows, prev.sampler(logits), prev.sampler, True, started)

    def _consume(self, pending: Pending) -> int:
        """Read a launched step's ids and do its host work; returns the tokens appended."""
        appended = 0
        t0 = time.perf_counter()
        ids, payload = pending.read()
        # busy minus this is host work: near zero under load means the host, not the GPU, paces steps
        self._stats.record_device_wait(time.perf_counter() - t0)
        if pending.started is not None:  # the step's GPU time, from its first launch to its ids' copy
            self._stats.record_device_busy(pending.started.elapsed_time(pending.copied) / 1e3)
        for r, (seq, tok) in enumerate(zip(pending.rows, ids, strict=True)):
            if seq.finished:  # finished on the step before: this token was speculative
                continue
            self._append(seq, tok, payload[r] if payload is not None else None)
            appended += 1
        return appended

    def _take_inbox(self) -> None:
        with self._lock:
            new, self._inbox = self._inbox, []
            cancels, self._cancels = self._cancels, []
        for seq in new:
            done = self._start_sequence(seq)
            self.sched.add(seq)
            if done is not None:  # a resumed run that had already ended: only its result was lost
                self._complete(seq, done)
        for rid in cancels:
            self.sched.cancel(rid)

    def _start_sequence(self, seq: Seq) -> FinishReason | None:
        """Set up streaming; a resumed request replays its earlier tokens (the finish reason if
        they had ended it)."""
        for s in (seq, *seq.siblings):
            if self.tokenizer is not None:
                s.request.stream = TextStream(self.tokenizer, s.request.params.stop)
        live = seq.request
        if not live.prior_ids:
            return None
        self._stats.resumed_tokens += len(live.prior_ids)
        done = self.output.replay(seq)
        return done if done is not None or seq.max_new_tokens > 0 else "length"

    def _row_sampling(self, seq: Seq) -> RowSampling:
        live = seq.request
        p = live.params
        seen = [*seq.prompt_ids, *seq.output_ids] if p.repetition_penalty != 1.0 else ()
        step = len(live.prior_ids) + len(seq.output_ids)  # a resumed choice's draws go on where they were
        return RowSampling(p, seen, live.shared.seed, live.index, step, seq.slot)

    def _sampler(self, rows: list[Seq]) -> BatchSampler:
        """The step's sampler: per-row parameters, the count pool, this step's grammar masks."""
        samplings = [self._row_sampling(s) for s in rows]
        counts = self.runner.counts() if any(r.counts_tokens for r in samplings) else None
        constrained = [i for i, s in enumerate(rows) if s.request.matcher is not None]
        mask = self.grammars.masks([rows[i].request.matcher for i in constrained]) if constrained else None
        return BatchSampler(samplings, self.device, counts=counts, mask_rows=constrained, mask=mask)

    def _append(self, seq: Seq, tok: int, payload: list[float] | None = None) -> None:
        """Record a sampled token, stream its text, and retire the choice if it is done."""
        entry = None
        if payload is not None and seq.request.params.logprobs:
            entry = token_logprob(self.grammars.vocab, payload, seq.request.params.top_logprobs)
        reason = self.output.append(seq, tok, entry)
        if reason is not None:
            self._complete(seq, reason)

    def _complete(self, seq: Seq, reason: FinishReason) -> None:
        """Retire one choice; the request's result is set once its last choice has ended."""
        self.prefix.finished(seq, self.pool)  # while it still holds its slot
        self.sched.finish(seq)
        self._parked.pop(seq.request_id, None)
        live = seq.request
        live.end([*live.prior_ids, *seq.output_ids], reason)
        if live.index == 0:
            # of the prompt only (a resumed request's saved state may cover its earlier tokens too)
            live.shared.cached_tokens = min(seq.cached, live.prompt_len) if live.prior_ids else seq.cached
        if not live.shared.done:
            return
        self._stats.record_finished()
        self._release(seq.request_id)
        live.handle.set_result(live.shared.result())

    def _release(self, request_id: str) -> None:
        with self._lock:
            self._live_ids.discard(request_id)

    def _validate(self, req: EngineRequest) -> None:
        check_request(
            req,
            vocab_size=self.vocab_size,
            max_context=self.max_context,
            has_tokenizer=self.tokenizer is not None,
            slots=self.slots,
        )
