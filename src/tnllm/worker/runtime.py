"""One GPU worker process: the model and engine (loaded once), heartbeat, reaper, Celery consumer.

`tnllm worker` calls ``run_worker``: it starts the engine (never at import, never in a parent that
forks) — by default in a child process of its own (``tnllm/engine``: the model, the GPU and
the step loop there, so this process's Celery threads never hold the engine's GIL), or with
``engine_process=false`` through ``build_engine`` on a thread of this process — then runs Celery's
``threads`` pool with one thread per engine slot, so one model copy serves every task. If the
engine process dies, the worker shuts down (exit status ``EXIT_ENGINE_LOST``) for its supervisor
to restart it; its running jobs are requeued by the reaper when their leases expire. A background
thread renews the leases of the jobs running here and publishes the worker's heartbeat; another
runs the reaper (guarded by a short Redis lock so one worker acts per round), which puts jobs whose
lease expired back on the queue or fails them with ``worker_lost`` after ``max_attempts``, and
re-sends the messages a dead worker had received but not started (``tnllm/worker/orphans.py``).
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
from dataclasses import dataclass, field
from typing import Any

import redis
from celery import Celery, signals
from celery.utils.nodenames import default_nodename, host_format

from tnllm.config import Settings
from tnllm.logging import configure_logging, quiet_celery_argv
from tnllm.protocol.celery import make_celery, send_generate
from tnllm.store.ops import WorkerInfo
from tnllm.store.sync import JobStore
from tnllm.worker.events import notify_transition
from tnllm.worker.metrics import WorkerMetrics
from tnllm.worker.orphans import rescue_orphans, resend_messageless
from tnllm.worker.stream_pump import DeltaWriter, StreamPump

log = logging.getLogger(__name__)

#: Redis key held (SET NX PX) by the worker whose reaper acts this round.
REAPER_LOCK = "tnllm:reaper:lock"
#: Exit status of a worker whose model failed to load.
EXIT_MODEL_LOAD_FAILED = 3
#: Exit status of a worker whose engine process died while serving.
EXIT_ENGINE_LOST = 4

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


@dataclass
class ActiveJob:
    """A job running in this process, with flags the pump/heartbeat/shutdown threads set for its
    task, and (once submitted) its engine request and delta writer, which the stream pump serves."""

    job_id: str
    started: float = field(default_factory=time.monotonic)
    lost: threading.Event = field(default_factory=threading.Event)
    cancel: threading.Event = field(default_factory=threading.Event)
    release: threading.Event = field(default_factory=threading.Event)
    request_id: str | None = None
    writer: DeltaWriter | None = None
    engine: Any = None

    def attach(self, engine: Any, request_id: str, writer: DeltaWriter) -> None:
        """The job's engine request was submitted: the pump writes ``writer``'s deltas from now on."""
        self.engine, self.request_id = engine, request_id
        self.writer = writer  # set last: the pump reads it without a lock

    def stop_engine(self) -> None:
        """Cancel the job's engine request, if it has one (it leaves the batch within one step)."""
        if self.engine is not None and self.request_id is not None:
            self.engine.cancel(self.request_id)

    def request_cancel(self) -> None:
        """A cancel was requested: flag it for the task and stop generating (the partial text stays)."""
        if not self.cancel.is_set():
            self.cancel.set()
            self.stop_engine()

    def mark_lost(self) -> None:
        """Another owner has the job now (another worker, or a newer attempt in this process): flag
        it for the task and stop generating."""
        if not self.lost.is_set():
            self.lost.set()
            self.stop_engine()


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
        self.engine: Any = None
        self.engine_lost = False
        self.model_name = settings.model
        self.metrics = WorkerMetrics()
        self.finish_retry_s = max(60.0, 3 * settings.lease_ttl)
        self._active: dict[str, ActiveJob] = {}
        self.pump = StreamPump(self.store, self.worker_id, settings.stream_flush_interval)
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []

    # --- model ---------------------------------------------------------------------------------
    def load(self) -> None:
        """Load model + tokenizer + engine once and start its step loop (in the engine process, or
        on a thread here when ``engine_process`` is off)."""
        from tnllm.engine.client import make_engine_client

        started = time.monotonic()
        client = make_engine_client(self.settings, on_lost=self._engine_lost)
        client.start()
        self.engine, info = client, client.engine_info
        elapsed = time.monotonic() - started
        log.info("worker %s: engine ready (%d slots) in %.1fs", self.worker_id, self.engine.slots, elapsed)
        self.metrics.observe_model_load(elapsed, model=self.model_name, device=info.device, dtype=info.dtype)
        self.metrics.set_engine(self.engine, client.gpu_memory)

    def _engine_lost(self, code: int | None) -> None:
        """The engine process died: its requests ended with EngineLost (their jobs are left to the
        reaper); shut this worker down so that its supervisor starts a fresh one."""
        log.error("worker %s: the engine process exited (code %s); shutting down", self.worker_id, code)
        self.engine_lost = True
        os.kill(os.getpid(), signal.SIGTERM)  # Celery's warm shutdown

    def prompt_ids(self, messages: list[dict[str, str]]) -> list[int]:
        """Token ids of a conversation rendered with the chat template (as `tnllm generate` does)."""
        tokenizer = self.engine.tokenizer
        if tokenizer is None:
            raise ValueError("the model folder has no tokenizer.model: text prompts are not supported")
        return list(tokenizer.encode(tokenizer.apply_chat_template(messages, add_generation_prompt=True)))

    def send_generate(self, job_id: str, priority: int) -> None:
        """Enqueue a new Celery message for a job put back on the queue."""
        send_generate(self.app, job_id, priority)

    # --- running jobs --------------------------------------------------------------------------
    def track(self, job_id: str) -> ActiveJob:
        """Register a job this process just claimed (its lease is renewed from now on).

        If an earlier attempt of the same job still runs here (this process stalled past its lease,
        the job was requeued and came back to it), that attempt is abandoned as if its lease were
        lost: the owner fence is per process, so only this process can tell the two apart."""
        job = ActiveJob(job_id)
        with self._lock:
            earlier = self._active.get(job_id)
            self._active[job_id] = job
        if earlier is not None:
            log.warning("job %s: claimed again by this process; abandoning its earlier attempt", job_id)
            earlier.mark_lost()
        self.pump.add(job)
        return job

    def untrack(self, job_id: str, job: ActiveJob | None = None) -> None:
        """Forget a job this process no longer runs (only ``job``'s attempt, when given)."""
        self.pump.discard(job_id, job)
        with self._lock:
            if job is None or self._active.get(job_id) is job:
                self._active.pop(job_id, None)

    def active_jobs(self) -> list[ActiveJob]:
        """A snapshot of the jobs running here."""
        with self._lock:
            return list(self._active.values())

    def release_all(self) -> None:
        """Ask every running job to go back to the queue (warm shutdown ran out of grace)."""
        for job in self.active_jobs():
            job.release.set()

    # --- background threads --------------------------------------------------------------------
    def start_background(self) -> None:
        """Start the stream pump, the heartbeat/lease thread and the reaper thread."""
        self.pump.start()
        for name, interval, fn in (
            ("heartbeat", self.settings.lease_renew_interval, self.heartbeat_once),
            ("reaper", self.settings.reaper_interval, self.reap_once),
        ):
            thread = threading.Thread(
                target=self._every, args=(interval, fn), name=f"tnllm-{name}", daemon=True
            )
            thread.start()
            self._threads.append(thread)

    def _every(self, interval: float, fn: Any) -> None:
        while True:
            try:
                fn()
            except (redis.ConnectionError, redis.TimeoutError, redis.BusyLoadingError) as exc:
                log.warning("%s: Redis unavailable (%s)", threading.current_thread().name, exc)
            except Exception:
                log.exception("%s failed", threading.current_thread().name)
            if self._stop.wait(interval):
                return

    def heartbeat_once(self) -> None:
        """Renew the leases of running jobs in one pipeline (noting cancels and lost leases), then
        publish the heartbeat."""
        jobs = self.active_jobs()
        statuses = self.store.renew_leases([job.job_id for job in jobs], self.worker_id)
        for job in jobs:
            status = statuses[job.job_id]
            if isinstance(status, Exception):
                log.warning("job %s: lease renewal failed: %s", job.job_id, status)
            elif not status.owned:
                job.mark_lost()
            elif status.cancel_requested:
                job.request_cancel()
        self.store.heartbeat_worker(self.worker_info(), ttl=self.heartbeat_ttl)

    @property
    def heartbeat_ttl(self) -> float:
        """How long a heartbeat stays valid (a few renew intervals)."""
        return max(self.settings.lease_ttl, 3 * self.settings.lease_renew_interval)

    def worker_info(self) -> WorkerInfo:
        """This worker's heartbeat record (``tnllm:workers:{id}``)."""
        engine = self.engine
        slots = int(engine.slots) if engine is not None else 0
        tokens_per_s = 0.0
        if engine is not None:
            try:
                tokens_per_s = float(engine.stats().tokens_per_s)
            except Exception:  # stats are best effort; a heartbeat must still go out
                log.debug("engine stats unavailable", exc_info=True)
        return WorkerInfo(
            id=self.worker_id,
            hostname=self.hostname,
            pid=os.getpid(),
            model=self.model_name,
            model_loaded=engine is not None,
            slots=slots,
            free_slots=max(0, slots - len(self.active_jobs())),
            tokens_per_s=tokens_per_s,
            queues=list(self.settings.worker_queues),
            metrics_port=self.metrics.port or 0,
        )

    def reap_once(self) -> list[tuple[str, str]]:
        """One reaper round, if this worker wins the round's lock: [(job_id, action), ...]."""
        lock_ms = max(100, int(self.settings.reaper_interval * 900))
        if not self.store.client.set(REAPER_LOCK, self.worker_id, nx=True, px=lock_ms):
            return []
        done: list[tuple[str, str]] = []
        for job_id in self.store.expired_leases():
            outcome = self.store.reap(job_id)
            done.append((job_id, outcome.action))
            if outcome.action == "requeued":
                record = self.store.get(job_id)
                self.send_generate(job_id, record.priority if record else 0)
                log.warning("reaper: job %s lost its worker; requeued (attempt %s)", job_id, outcome.attempt)
            elif outcome.action == "failed":
                log.warning(
                    "reaper: job %s failed with worker_lost after %s attempts", job_id, outcome.attempt
                )
                notify_transition(self.store, self.store.get(job_id), "job.failed")
            elif outcome.action == "cancelled":
                notify_transition(self.store, self.store.get(job_id), "job.cancelled")
        min_age = self.settings.lease_ttl
        requeued = frozenset(job_id for job_id, action in done if action == "requeued")
        for job_id in rescue_orphans(self.store, self.send_generate, min_age=min_age, already_sent=requeued):
            done.append((job_id, "resent"))
        for job_id in resend_messageless(self.store, self.send_generate, min_age=min_age):
            done.append((job_id, "resent"))
        return done

    def close(self) -> None:
        """Stop the threads and the engine; withdraw the heartbeat."""
        self._stop.set()
        self.pump.stop()
        for thread in self._threads:
            thread.join(timeout=5)
        if self.engine is not None:
            self.engine.stop()
        with contextlib.suppress(redis.RedisError):
            self.store.remove_worker(self.worker_id)
        self.store.client.close()


def _celery_argv(settings: Settings, runtime: WorkerRuntime, concurrency: int) -> list[str]:
    return [
        *quiet_celery_argv(settings),
        "worker",
        "--pool=threads",
        f"--concurrency={concurrency}",
        f"--queues={','.join(settings.worker_queues)}",
        f"--hostname={runtime.hostname}",
        f"--loglevel={settings.log_level.upper()}",
        "--without-gossip",  # many workers on one Redis: gossip is chatter we do not use
        "--without-mingle",  # no revoked-task sync to wait for at startup (we never revoke)
    ]


def run_worker(settings: Settings, *, concurrency: int | None = None, hostname: str | None = None) -> int:
    """Load the model, then consume the generate queue until a warm shutdown. Returns an exit code."""
    configure_logging(settings)
    runtime = WorkerRuntime(settings, hostname=hostname)
    try:
        runtime.load()
    except Exception:
        log.exception("worker %s: the model failed to load; exiting", runtime.worker_id)
        return EXIT_MODEL_LOAD_FAILED
    set_runtime(runtime)
    runtime.metrics.serve(settings.metrics_host, settings.metrics_port)
    runtime.start_background()
    slots = int(runtime.engine.slots)
    threads = concurrency or settings.worker_concurrency or slots

    def on_shutdown(**_: Any) -> None:
        # Celery's warm shutdown waits for running tasks; bound that wait, then requeue the rest.
        timer = threading.Timer(settings.worker_shutdown_grace, runtime.release_all)
        timer.daemon = True
        timer.start()

    signals.worker_shutting_down.connect(on_shutdown, weak=False)
    try:
        runtime.app.worker_main(_celery_argv(settings, runtime, threads))
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
        return EXIT_ENGINE_LOST if runtime.engine_lost else code
    finally:
        signals.worker_shutting_down.disconnect(on_shutdown)
        runtime.close()
        runtime.metrics.close()
        set_runtime(None)
    return EXIT_ENGINE_LOST if runtime.engine_lost else 0
