"""How ``tnllm up`` stops: in order, saying what it waits for, and at once on a second Ctrl-C.

The order: the API first (no new jobs), then the GPU workers (a warm shutdown: running jobs get
``worker_shutdown_grace`` seconds to finish, then go back to the queue), then the rest, Redis last.
The console says how many jobs are running and how long the wait may be. A second Ctrl-C (or
SIGTERM) kills every child's process group at once: the running jobs are then recovered as from a
lost worker (their leases expire and the reaper puts them back on the queue), so none is lost.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
from types import FrameType

from redis.exceptions import RedisError

from tnllm.cli.supervisor import Child, stop_all
from tnllm.config import Settings
from tnllm.store.server import RedisServer

log = logging.getLogger(__name__)

#: Seconds a worker gets beyond its grace to release its jobs and exit before it is killed.
WORKER_EXIT_MARGIN = 30.0


class StopNow(Exception):
    """A second Ctrl-C (or SIGTERM) while ``tnllm up`` was stopping."""


def running_jobs(settings: Settings) -> int | None:
    """Jobs running now (the store's running set; None when Redis cannot say)."""
    from tnllm.store import JobStore, keys

    try:
        store = JobStore.from_settings(settings)
    except (RedisError, OSError, ValueError):
        return None
    try:
        return int(store.client.zcard(keys.RUNNING))
    except (RedisError, OSError):
        return None
    finally:
        store.client.close()


def _jobs(count: int | None) -> str:
    return "the running jobs" if count is None else f"{count} running job{'s' * (count != 1)}"


def _say(text: str) -> None:
    print(text, flush=True)


def _raise_stop_now(signum: int, _frame: FrameType | None) -> None:
    raise StopNow(signal.Signals(signum).name)


def _ignore_signals() -> None:
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, signal.SIG_IGN)


def _kill_now(children: list[Child]) -> None:
    """SIGKILL every child's process group (a worker's engine process with it)."""
    for child in children:
        if child.alive and child.process is not None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(child.process.pid, signal.SIGKILL)
    for child in children:
        child.wait(10)


def _in_order(children: list[Child], settings: Settings) -> None:
    by_name = {c.name: c for c in children}
    if "api" in by_name:
        _say("stopping: the API first (no new jobs)")
        by_name["api"].stop(15)
    workers = [c for c in children if c.name.startswith("worker-")]
    if workers:
        grace = settings.worker_shutdown_grace
        running = running_jobs(settings)
        if running == 0:
            _say("stopping: the workers (no job is running)")
        else:
            _say(
                f"stopping: waiting up to {grace:g} s for {_jobs(running)} to finish; the rest go back to "
                "the queue (Ctrl-C again to stop at once)"
            )
        stop_all(workers, grace + WORKER_EXIT_MARGIN)
    stop_all([c for c in children if c not in workers and c.name != "api"], 15)


def shutdown(children: list[Child], redis: RedisServer | None, settings: Settings) -> None:
    """Stop everything ``up`` started (see the module docstring); a second signal stops at once."""
    previous = {s: signal.signal(s, _raise_stop_now) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        try:
            _in_order(children, settings)
        except StopNow:
            _ignore_signals()
            _say(
                f"stopping at once: {_jobs(running_jobs(settings))} will go back to the queue (a lease "
                f"expires after {settings.lease_ttl:g} s) and run again on the next worker"
            )
            _kill_now(children)
        _ignore_signals()  # Redis stops cleanly (its append-only file complete), whatever comes now
        if redis is not None:
            redis.stop()
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    _say("stopped.")
