"""Engine load figures: step time and generated tokens/s over a sliding window; device memory."""

from __future__ import annotations

import threading
import time
from collections import deque
from typing import Any

from tnllm.engine.types import EngineStats

WINDOW_S = 10.0


class StatsTracker:
    """Accumulates per-step numbers from the engine thread; ``snapshot`` may run on any thread."""

    def __init__(self, window_s: float = WINDOW_S) -> None:
        self._window = window_s
        self._lock = threading.Lock()
        self._recent: deque[tuple[float, int]] = deque()  # (step end time, tokens sampled)
        self._step_time = 0.0
        self.steps = 0
        self.generated = 0
        self.finished = 0
        self.overlapped = 0
        self.busy = 0.0
        self.device_wait = 0.0
        self.device_busy = 0.0
        self.preemptions = 0
        self.resumed_tokens = 0
        self.prefills = 0
        self.forks = 0

    def record_step(self, seconds: float, tokens: int, overlapped: bool = False) -> None:
        """One step ran for ``seconds`` and sampled ``tokens`` tokens; ``overlapped``: it launched the
        next decode before its host work (the engine's chained path)."""
        now = time.monotonic()
        with self._lock:
            self.steps += 1
            self.overlapped += overlapped
            self.busy += seconds
            self.generated += tokens
            # smoothed, so one slow step (a long prefill chunk) does not dominate the gauge
            self._step_time = seconds if self.steps == 1 else 0.8 * self._step_time + 0.2 * seconds
            self._recent.append((now, tokens))
            self._trim(now)

    def record_device_wait(self, seconds: float) -> None:
        """The engine thread blocked ``seconds`` for a step's sampled ids (GPU still computing)."""
        with self._lock:
            self.device_wait += seconds

    def record_device_busy(self, seconds: float) -> None:
        """A step's time on the device, from a CUDA event before its first launch to the copy of its
        ids: the event runs once the previous step is done, so waiting behind it is not counted, but
        the GPU idling inside the step (the host launching its work late) is."""
        with self._lock:
            self.device_busy += seconds

    def record_prefills(self, prompts: int, forks: int) -> None:
        """``prompts`` prompts were prefilled, and ``forks`` choices started from copies of them."""
        if prompts or forks:
            with self._lock:
                self.prefills += prompts
                self.forks += forks

    def record_finished(self) -> None:
        """A request left the engine."""
        with self._lock:
            self.finished += 1

    def snapshot(self, slots: int, active: int, waiting: int) -> EngineStats:
        """Current figures; tokens/s covers the last ``window_s`` seconds."""
        now = time.monotonic()
        with self._lock:
            self._trim(now)
            tokens = sum(n for _, n in self._recent)
            span = now - self._recent[0][0] if self._recent else 0.0
            rate = tokens / max(span, 1e-3) if len(self._recent) > 1 else 0.0
            return EngineStats(
                slots=slots,
                active=active,
                waiting=waiting,
                occupancy=active / slots if slots else 0.0,
                tokens_per_s=rate,
                step_time_s=self._step_time,
                steps=self.steps,
                generated_tokens=self.generated,
                finished_requests=self.finished,
                overlapped_steps=self.overlapped,
                busy_seconds=self.busy,
                device_wait_seconds=self.device_wait,
                device_busy_seconds=self.device_busy,
                preemptions=self.preemptions,
                resumed_tokens=self.resumed_tokens,
                prefills=self.prefills,
                forked_choices=self.forks,
            )

    def _trim(self, now: float) -> None:
        while self._recent and now - self._recent[0][0] > self._window:
            self._recent.popleft()


def gpu_memory_bytes(device: Any) -> dict[str, float] | None:
    """Allocated / reserved / free / total bytes of ``device`` when it is a CUDA device, else None
    (torch is imported only then: the engine client's process may have none)."""
    if device is None or getattr(device, "type", str(device).split(":")[0]) != "cuda":
        return None
    import torch

    free, total = torch.cuda.mem_get_info(device)
    return {
        "allocated": float(torch.cuda.memory_allocated(device)),
        "reserved": float(torch.cuda.memory_reserved(device)),
        "free": float(free),
        "total": float(total),
    }
