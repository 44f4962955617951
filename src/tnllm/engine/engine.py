"""The continuous-batching engine: one model, a pool of recurrent-state slots, a step loop.

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
from dataclasses import dataclass
from typing import Any

import torch

from tnllm.engine.handle import RequestHandle
from tnllm.engine.sampling import BatchSampler, RowSampling, make_generator
from tnllm.engine.scheduler import PrefillChunk, Scheduler, Sequence
from tnllm.engine.stats import StatsTracker
from tnllm.engine.types import (
    EngineRequest,
    EngineResult,
    EngineStats,
    FinishReason,
    SamplingParams,
    TokenEvent,
)
from tnllm.engine.validation import check_request
from tnllm.errors import EngineError, RequestRejected
from tnllm.text.stop import TextStream

log = logging.getLogger(__name__)

OnToken = Callable[[TokenEvent], None]


class _Live:
    """Engine-side objects of one sequence (kept in ``Sequence.payload``)."""

    def __init__(self, params: SamplingParams, handle: RequestHandle, on_token: OnToken | None) -> None:
        self.params = params
        self.handle = handle
        self.on_token = on_token
        self.stream: TextStream | None = None
        self.generator: torch.Generator | None = None
        self.text_parts: list[str] = []


@dataclass
class _Pending:
    """A step whose sampled ids are still on the device (read by the next step)."""

    rows: list[Sequence]
    tokens: torch.Tensor  # [R] sampled ids on the device
    sampler: BatchSampler
    chainable: bool  # rows are the packed decode batch (row i in slot i), nothing else ran
    host: torch.Tensor | None = None  # pinned copy of ``tokens`` (CUDA)
    copied: Any = None  # CUDA event recorded after the copy
    started: Any = None  # CUDA event recorded before the step's first launch (timing)

    def read(self) -> list[int]:
        """The sampled ids on the host (waits for this step only, not for later launches)."""
        ids = self.tokens
        if self.copied is not None:
            self.copied.synchronize()
            assert self.host is not None
            ids = self.host
        return [int(t) for t in ids.tolist()]


def _eos_ids(model: Any, tokenizer: Any | None) -> frozenset[int]:
    """End-of-sequence ids: the checkpoint config's (an int or a list), else the tokenizer's."""
    eos = getattr(model.config, "eos_token_id", None)
    if eos is None and tokenizer is not None:
        eos = tokenizer.eos_id
    if eos is None:
        return frozenset()
    return frozenset([int(eos)] if isinstance(eos, int) else [int(e) for e in eos])


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
    ) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.slots = slots
        self.max_context = max_context
        self.device = next(model.parameters()).device
        self.vocab_size = int(model.config.vocab_size)
        self.eos_ids = _eos_ids(model, tokenizer)
        self.pool = model.new_state_pool(slots, device=self.device, dtype=state_dtype)
        self.sched = Scheduler(slots, prefill_token_budget)
        self._stats = StatsTracker()
        self._lock = threading.Condition()
        self._inbox: list[Sequence] = []
        self._cancels: list[str] = []
        self._live_ids: set[str] = set()
        self._thread: threading.Thread | None = None
        self._stopping = False
        self.overlap = overlap
        self._pending: _Pending | None = None
        #: steps launched from the previous step's device ids (the overlapped fast path)
        self.chained_steps = 0

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
        seq = Sequence(req.request_id, list(req.prompt_ids), req.max_new_tokens)
        seq.payload = _Live(req.params, handle, on_token)
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
        return self._stats.snapshot(self.slots, self.sched.num_active, self.sched.num_waiting + inbox)

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
        for seq in [*pending, *self.sched.drain()]:
            self._release(seq.request_id)
            seq.payload.handle._set(None, err)

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

    def _run_plan(self) -> _Pending | None:
        """Schedule and launch one step (prefill chunks + batched decode + sampling on the device)."""
        plan = self.sched.schedule()
        for seq in plan.cancelled:
            self._complete(seq, "cancelled")
        if plan.empty:
            return None
        rows = [ch.seq for ch in plan.prefill if ch.completes_prompt] + plan.decode
        # staged before the launches: building it copies parameters to the device
        sampler = BatchSampler([self._row_sampling(s) for s in rows], self.device) if rows else None
        started = self._mark()
        self._swap_slots(plan.swaps)
        logits = self._run_prefill(plan.prefill)
        if plan.decode:
            logits.append(self._run_decode(plan.decode, [s.next_position for s in plan.decode]))
        if sampler is None:
            return None
        batch_logits = logits[0] if len(logits) == 1 else torch.cat(logits)
        return self._pend(rows, sampler(batch_logits), sampler, not plan.prefill, started)

    def _can_chain(self, prev: _Pending) -> bool:
        """Would the next ``schedule()`` decode exactly ``prev.rows`` in the same slots, and nothing else?"""
        if not (self.overlap and prev.chainable and prev.sampler.reusable):
            return False
        n = len(prev.rows)
        if len(self.sched.running) != n or (self.sched.num_waiting and n < self.slots):
            return False
        # a row whose prev token is its last (max_new_tokens) leaves the batch: repack instead
        return not any(
            s.finished or s.cancelled or len(s.output_ids) + 1 >= s.max_new_tokens for s in prev.rows
        )

    def _chain(self, prev: _Pending) -> _Pending:
        """Decode ``prev.rows`` again, fed with ``prev``'s sampled ids straight from the device."""
        rows = prev.rows
        self.chained_steps += 1
        started = self._mark()
        # prev's token is not appended yet: it sits one position after the last appended one
        logits = self._run_decode(rows, [s.next_position + 1 for s in rows], ids=prev.tokens)
        return self._pend(rows, prev.sampler(logits), prev.sampler, True, started)

    def _mark(self) -> Any:
        """A timing event recorded now on the device's stream (CUDA), else None."""
        if self.device.type != "cuda":
            return None
        event = torch.cuda.Event(enable_timing=True)
        event.record()
        return event

    def _pend(
        self, rows: list[Sequence], tokens: torch.Tensor, sampler: BatchSampler, chainable: bool, started: Any
    ) -> _Pending:
        pending = _Pending(rows, tokens, sampler, chainable, started=started)
        if tokens.device.type == "cuda":
            pending.host = torch.empty(tokens.shape, dtype=tokens.dtype, pin_memory=True)
            pending.host.copy_(tokens, non_blocking=True)
            pending.copied = self._mark()
        return pending

    def _consume(self, pending: _Pending) -> int:
        """Read a launched step's ids and do its host work; returns the tokens appended."""
        appended = 0
        t0 = time.perf_counter()
        ids = pending.read()
        # busy minus this is host work: near zero under load means the host, not the GPU, paces steps
        self._stats.record_device_wait(time.perf_counter() - t0)
        if pending.started is not None:  # the step's GPU time, from its first launch to its ids' copy
            self._stats.record_device_busy(pending.started.elapsed_time(pending.copied) / 1e3)
        for seq, tok in zip(pending.rows, ids, strict=True):
            if seq.finished:  # finished on the step before: this token was speculative
                continue
            self._append(seq, tok)
            appended += 1
        return appended

    def _take_inbox(self) -> None:
        with self._lock:
            new, self._inbox = self._inbox, []
            cancels, self._cancels = self._cancels, []
        for seq in new:
            self._start_sequence(seq)
            self.sched.add(seq)
        for rid in cancels:
            self.sched.cancel(rid)

    def _start_sequence(self, seq: Sequence) -> None:
        live: _Live = seq.payload
        p = live.params
        if self.tokenizer is not None:
            live.stream = TextStream(self.tokenizer, p.stop)
        if p.temperature > 0:
            live.generator = make_generator(p.seed, self.device)

    def _run_prefill(self, chunks: list[PrefillChunk]) -> list[torch.Tensor]:
        """Consume prompt chunks (one packed forward); returns the last logits of each chunk that
        completes its prompt."""
        if not chunks:
            return []
        for ch in chunks:
            if ch.start == 0:
                self.model.reset_slot(self.pool, ch.seq.slot)
        logits = self.model.prefill_many(
            [(ch.seq.prompt_ids[ch.start : ch.start + ch.length], ch.start, ch.seq.slot) for ch in chunks],
            self.pool,
        )
        for ch in chunks:
            ch.seq.prefilled += ch.length
        done = [i for i, ch in enumerate(chunks) if ch.completes_prompt]
        if not done:
            return []
        if len(done) == len(chunks):
            return [logits]
        return [logits[torch.tensor(done, device=logits.device)]]

    def _swap_slots(self, swaps: list[tuple[int, int]]) -> None:
        """Exchange the states of slot pairs (the scheduler packs decoding sequences low).

        The pairs are disjoint (a mover leaves a slot >= n for a hole < n), so one gather and one
        scatter per layer exchange them all, with one host-to-device copy of the indices."""
        if not swaps:
            return
        a = [x for x, _ in swaps]
        b = [y for _, y in swaps]
        assert len(set(a + b)) == 2 * len(swaps), "slot swaps must be disjoint pairs"
        idx = torch.tensor([a + b, b + a], device=self.device)  # row 0: targets, row 1: sources
        for layer_state in self.pool:  # [slots, H, dk, d]
            layer_state.index_copy_(0, idx[0], layer_state.index_select(0, idx[1]))

    def _run_decode(
        self, seqs: list[Sequence], positions: list[int], ids: torch.Tensor | None = None
    ) -> torch.Tensor:
        """One batched decode step: each sequence feeds its last token (or ``ids``, already on the
        device) at its own position.

        The scheduler packed the decoding sequences into slots 0..B-1, so the model updates that
        block of the pool in place (a ``slice``, no gather/scatter).
        """
        assert all(s.slot == i for i, s in enumerate(seqs)), "decode slots are packed"
        # host tensors: the model moves them (the CUDA graph path stages them in one pinned copy)
        if ids is None:
            ids = torch.tensor([s.output_ids[-1] for s in seqs], dtype=torch.long)
        pos = torch.tensor(positions, dtype=torch.long)
        return self.model.decode(ids, pos, self.pool, slice(0, len(seqs))).float()  # [B, V]

    def _row_sampling(self, seq: Sequence) -> RowSampling:
        live: _Live = seq.payload
        p = live.params
        seen = [*seq.prompt_ids, *seq.output_ids] if p.repetition_penalty != 1.0 else ()
        return RowSampling(p, seen, live.generator)

    def _append(self, seq: Sequence, tok: int) -> None:
        """Record a sampled token, stream its text, and retire the sequence if it is done."""
        live: _Live = seq.payload
        seq.output_ids.append(tok)
        reason: FinishReason | None = None
        if tok in self.eos_ids and not live.params.ignore_eos:
            reason = "stop"
        elif len(seq.output_ids) >= seq.max_new_tokens:
            reason = "length"
        delta = ""
        if live.stream is not None:
            delta = live.stream.push([tok])
            if live.stream.stopped:
                reason = "stop"
            elif reason is not None:
                delta += live.stream.finish()
        self._emit(seq, delta, [tok])
        if reason is not None:
            self._complete(seq, reason)

    def _emit(self, seq: Sequence, text: str, ids: list[int]) -> None:
        live: _Live = seq.payload
        live.text_parts.append(text)
        if live.on_token is not None:
            try:
                live.on_token(TokenEvent(seq.request_id, text, ids))
            except Exception:  # a consumer's bug must not stop the batch
                log.exception("on_token callback of %s raised", seq.request_id)

    def _complete(self, seq: Sequence, reason: FinishReason) -> None:
        self.sched.finish(seq)
        live: _Live = seq.payload
        result = EngineResult(
            request_id=seq.request_id,
            text="".join(live.text_parts),
            token_ids=list(seq.output_ids),
            finish_reason=reason,
            prompt_tokens=len(seq.prompt_ids),
            completion_tokens=len(seq.output_ids),
        )
        self._stats.record_finished()
        self._release(seq.request_id)
        live.handle._set(result)

    def _release(self, request_id: str) -> None:
        with self._lock:
            self._live_ids.discard(request_id)

    def _validate(self, req: EngineRequest) -> None:
        check_request(
            req,
            vocab_size=self.vocab_size,
            max_context=self.max_context,
            has_tokenizer=self.tokenizer is not None,
        )
