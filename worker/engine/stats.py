"""Engine load figures: step time and generated tokens/s over a sliding window."""

from __future__ import annotations

import threading
import time
from collections import deque

from worker.engine.types import EngineStats

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

    def record_step(self, seconds: float, tokens: int) -> None:
        """One step ran for ``seconds`` and sampled ``tokens`` tokens."""
        now = time.monotonic()
        with self._lock:
            self.steps += 1
            self.generated += tokens
            # smoothed, so one slow step (a long prefill chunk) does not dominate the gauge
            self._step_time = seconds if self.steps == 1 else 0.8 * self._step_time + 0.2 * seconds
            self._recent.append((now, tokens))
            self._trim(now)

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
            )

    def _trim(self, now: float) -> None:
        while self._recent and now - self._recent[0][0] > self._window:
            self._recent.popleft()
