"""The one object a worker process's tasks run against: ``get_runtime()`` inside a task.

``WorkerRuntime`` ties together what the process holds: the settings, the job store, the Celery
app, the engine (a ``tnllm.engine.client.EngineClient``), the running jobs (``active.py``), the stream pump
(``stream_pump.py``), the cancel listener (``cancels.py``), the heartbeat and lease renewal
(``leases.py``) and the reaper (``reaper.py``), plus the two background threads that run the last
two. ``process.run_worker`` builds it, installs it with ``set_runtime`` and starts Celery.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import threading
import time
import uuid
from collections.abc import Callable

import redis
from celery import Celery
from celery.utils.nodenames import default_nodename, host_format

from tnllm.config import Settings
from tnllm.engine.client import EngineClient, make_engine_client
from tnllm.protocol.celery import make_celery, send_generate
from tnllm.protocol.jobs import GenerationParams
from tnllm.protocol.tasks import worker_queue
from tnllm.store.sync import JobStore
from tnllm.text.prompt import render_prompt
from tnllm.worker.active import ActiveJob, ActiveJobs
from tnllm.worker.cancels import CancelListener
from tnllm.worker.leases import Heartbeat
from tnllm.worker.metrics import WorkerMetrics
from tnllm.worker.reaper import Reaper
from tnllm.worker.states import JobPrompt, PrefixPins, job_prompt
from tnllm.worker.stream_pump import StreamPump

log = logging.getLogger(__name__)

_runtime: WorkerRuntime | None = None


def get_runtime() -> WorkerRuntime:
    """The runtime of this worker process (tasks call this; set by ``run_worker``)."""
    if _runtime is None:
        raise RuntimeError("no worker runtime in this process: start workers with `tnllm worker`")
    return _runtime


def set_runtime(runtime: WorkerRuntime | None) -> None:
    """Install (or clear) the process-wide runtime."""
    global _runtime
    _runtime = runtime


class WorkerRuntime:
    """Everything one worker process holds: settings, store, engine, running jobs, threads."""

    def __init__(self, settings: Settings, *, hostname: str | None = None, app: Celery | None = None) -> None:
        self.settings = settings
        # Expanded as Celery expands --hostname (%h, %n, %d, %i; name@ default), so heartbeats and
        # /readyz show the node name Celery and Flower show, never a literal "gpu0@%h".
        self.hostname = host_format(default_nodename(hostname)) if hostname else f"gpu@{socket.gethostname()}"
        # Unique per process incarnation: a restarted worker never mistakes an old lease for its own.
        self.worker_id = f"{self.hostname}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self.store = JobStore.from_settings(settings)
        self.app = app or make_celery(settings)
        self.engine: EngineClient | None = None
        self.engine_lost = False
        self.metrics = WorkerMetrics()
        self.finish_retry_s = max(settings.redis_outage_tolerance, 3 * settings.lease_ttl)
        self.active = ActiveJobs()
        self.pump = StreamPump(self.store, self.worker_id, settings.stream_flush_interval)
        self.cancels = CancelListener(self.store.client, self.active)
        #: this worker's own queue: continuations of jobs whose final state its engine holds
        self.own_queue = worker_queue(self.worker_id)
        self.heartbeat = Heartbeat(
            self.store, settings, worker_id=self.worker_id, hostname=self.hostname, own_queue=self.own_queue
        )
        self.pins = PrefixPins(self.store.client, settings.system_prompt)
        self.reaper = Reaper(self.store, settings, worker_id=self.worker_id, send=self.send_generate)
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []

    # --- engine --------------------------------------------------------------------------------
    def load(self) -> None:
        """Start the engine once (model, tokenizer, step loop: in the engine process, or on a thread
        here when ``engine_process`` is off) and report it to the metrics."""
        started = time.monotonic()
        client = make_engine_client(self.settings, on_lost=self._engine_lost)
        client.start()
        self.engine, info = client, client.engine_info
        elapsed = time.monotonic() - started
        log.info("worker %s: engine ready (%d slots) in %.1fs", self.worker_id, client.slots, elapsed)
        self.metrics.observe_model_load(
            elapsed, model=self.settings.model, device=info.device, dtype=info.dtype
        )
        self.metrics.set_engine(client, client.gpu_memory)
        if self.settings.state_cache:
            self.pins.warm_head(client)

    def running_engine(self) -> EngineClient:
        """The engine (tasks run only after ``load``)."""
        if self.engine is None:
            raise RuntimeError("the worker's engine is not loaded")
        return self.engine

    def _engine_lost(self, code: int | None) -> None:
        """The engine process died: its requests ended with EngineLost (their jobs are left to the
        reaper); shut this worker down so that its supervisor starts a fresh one."""
        log.error("worker %s: the engine process exited (code %s); shutting down", self.worker_id, code)
        self.engine_lost = True
        os.kill(os.getpid(), signal.SIGTERM)  # Celery's warm shutdown

    def prompt_ids(self, job: GenerationParams) -> list[int]:
        """Token ids of a job's prompt (``render_prompt``, as the API counts it and `tnllm generate` does)."""
        tokenizer = self.running_engine().tokenizer
        if tokenizer is None:
            raise ValueError("the model folder has no tokenizer.model: text prompts are not supported")
        return render_prompt(tokenizer, job, self.settings.system_prompt)

    def job_prompt(self, job: GenerationParams) -> JobPrompt:
        """A job's prompt ids, turn ends and conversation (``worker.states.job_prompt``: the same ids
        as ``prompt_ids`` for a fresh job; a ``continue_from`` job's from the earlier conversation)."""
        tokenizer = self.running_engine().tokenizer
        return job_prompt(tokenizer, self.store.client, job, self.settings.system_prompt)

    def send_generate(self, job_id: str, priority: int) -> None:
        """Enqueue a new Celery message for a job put back on the queue."""
        send_generate(self.app, job_id, priority)

    # --- running jobs --------------------------------------------------------------------------
    def track(self, job_id: str) -> ActiveJob:
        """Register a job this process just claimed: its lease is renewed and the pump serves it."""
        job = self.active.track(job_id)
        self.pump.add(job)
        return job

    def untrack(self, job_id: str, job: ActiveJob | None = None) -> None:
        """Forget a job this process no longer runs (only ``job``'s attempt, when given)."""
        self.pump.discard(job_id, job)
        self.active.untrack(job_id, job)

    def heartbeat_once(self) -> None:
        """Renew the leases of the running jobs and publish the heartbeat."""
        self.heartbeat.beat(self.active.snapshot(), self.engine, self.metrics.port or 0)
        if self.engine is not None and self.settings.state_cache:
            self.pins.sync(self.engine)

    # --- background threads --------------------------------------------------------------------
    def start_background(self) -> None:
        """Start the stream pump, the cancel listener, the heartbeat/lease thread and the reaper."""
        self.pump.start()
        self.cancels.start()
        for name, interval, fn in (
            ("heartbeat", self.settings.lease_renew_interval, self.heartbeat_once),
            ("reaper", self.settings.reaper_interval, self.reaper.reap_once),
        ):
            thread = threading.Thread(
                target=self._every, args=(interval, fn), name=f"tnllm-{name}", daemon=True
            )
            thread.start()
            self._threads.append(thread)

    def _every(self, interval: float, fn: Callable[[], object]) -> None:
        while True:
            try:
                fn()
            except (redis.ConnectionError, redis.TimeoutError, redis.BusyLoadingError) as exc:
                log.warning("%s: Redis unavailable (%s)", threading.current_thread().name, exc)
            except Exception:
                log.exception("%s failed", threading.current_thread().name)
            if self._stop.wait(interval):
                return

    def close(self) -> None:
        """Stop the threads and the engine; withdraw the heartbeat."""
        self._stop.set()
        self.pump.stop()
        self.cancels.stop()
        for thread in self._threads:
            thread.join(timeout=5)
        if self.engine is not None:
            self.engine.stop()
        with contextlib.suppress(redis.RedisError):
            self.store.remove_worker(self.worker_id)
        self.store.client.close()
