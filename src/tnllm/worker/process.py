"""One GPU worker process: ``tnllm worker`` calls ``run_worker``.

It starts the engine (``tnllm.engine.client.make_engine_client``; never at import, never in a
parent that forks), then runs Celery's ``threads`` pool with one thread per engine slot, so one
model copy serves every task. If the engine process dies, the worker shuts down (exit status
``EXIT_ENGINE_LOST``) for its supervisor to restart it; its running jobs are requeued by the reaper
when their leases expire. A warm shutdown waits ``worker_shutdown_grace`` for running tasks, then
releases the rest back to the queue.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

from celery import signals

from tnllm.config import Settings
from tnllm.logging import configure_logging, quiet_celery_argv
from tnllm.worker.runtime import WorkerRuntime, set_runtime

log = logging.getLogger(__name__)

#: Exit status of a worker whose model failed to load.
EXIT_MODEL_LOAD_FAILED = 3
#: Exit status of a worker whose engine process died while serving.
EXIT_ENGINE_LOST = 4


def celery_argv(
    settings: Settings, hostname: str, concurrency: int, own_queue: str | None = None
) -> list[str]:
    """The ``celery worker`` command line of one GPU worker process; ``own_queue`` (the worker's
    own, for continuations whose state it holds) is listed first: the broker pops it first."""
    queues = [*([own_queue] if own_queue else []), *settings.worker_queues]
    return [
        *quiet_celery_argv(settings),
        "worker",
        "--pool=threads",
        f"--concurrency={concurrency}",
        f"--queues={','.join(queues)}",
        f"--hostname={hostname}",
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
    threads = concurrency or settings.worker_concurrency or runtime.running_engine().slots
    if settings.preemption and not (concurrency or settings.worker_concurrency):
        threads += settings.worker_preempt_reserve  # room for a job that preempts (admission.py)

    def on_shutdown(**_: Any) -> None:
        runtime.active.closing.set()
        # Celery's warm shutdown waits for running tasks; bound that wait, then requeue the rest.
        timer = threading.Timer(settings.worker_shutdown_grace, runtime.active.release_all)
        timer.daemon = True
        timer.start()

    signals.worker_shutting_down.connect(on_shutdown, weak=False)
    try:
        runtime.app.worker_main(celery_argv(settings, runtime.hostname, threads, runtime.own_queue))
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
        return EXIT_ENGINE_LOST if runtime.engine_lost else code
    finally:
        signals.worker_shutting_down.disconnect(on_shutdown)
        runtime.close()
        runtime.metrics.close()
        set_runtime(None)
    return EXIT_ENGINE_LOST if runtime.engine_lost else 0
