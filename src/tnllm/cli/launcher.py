"""`tnllm up` and the single-part commands (`api`, `worker`, `webhook-worker`, `flower`, `redis`).

`up` runs everything for one machine as child processes (each one of the single-part commands), so
what it starts is exactly what docker-compose or a multi-host deployment starts. This module never
imports torch; the worker child does.
"""

from __future__ import annotations

import argparse
import logging
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx

from tnllm.cli.gpus import visible_gpus, worker_env
from tnllm.cli.progress import LogFollower
from tnllm.cli.shutdown import shutdown
from tnllm.cli.supervisor import Child, child_env, tnllm_argv
from tnllm.config import Settings, environment
from tnllm.store.server import PASSWORD_FILE, RedisServer, embedded_password

log = logging.getLogger(__name__)

#: How long `up` waits for /readyz (covers loading a large checkpoint onto the GPU).
READY_TIMEOUT = 900.0
#: Workers get this long to finish running jobs on shutdown before they are killed (their jobs'
#: leases then expire and the reaper puts them back on the queue).
WORKER_STOP_TIMEOUT = 120.0
#: Restarts of a crashed worker before `up` gives up.
MAX_WORKER_RESTARTS = 5


def _setup_logging(settings: Settings) -> None:
    from tnllm.logging import configure_logging

    configure_logging(settings)


def _wait_for_signal() -> threading.Event:
    """An event set by SIGINT/SIGTERM (handlers installed in the main thread)."""
    stop = threading.Event()

    def handler(signum: int, _frame: object) -> None:
        log.info("received %s; shutting down", signal.Signals(signum).name)
        stop.set()

    signal.signal(signal.SIGINT, handler)
    signal.signal(signal.SIGTERM, handler)
    return stop


# --- single parts -------------------------------------------------------------------------------


def embedded_redis(settings: Settings, port: int | None = None) -> RedisServer:
    """The embedded Redis of `up` and `redis`: data (AOF) and password in <data_dir>/redis."""
    folder = settings.data_dir / "redis"
    return RedisServer(folder, port=port, password=embedded_password(folder), die_with_parent=True)


def redacted_url(server: RedisServer) -> str:
    """The server's URL with the password left out (for logs and terminals)."""
    return f"redis://:***@{server.host}:{server.port}/0"


def connect_help(server: RedisServer) -> str:
    """How to reach the embedded Redis by hand, without printing its password."""
    pw = server.data_dir / PASSWORD_FILE
    return (
        f'  redis-cli:  REDISCLI_AUTH="$(cat {pw})" redis-cli -h {server.host} -p {server.port}'
        f'   (or redis-cli -p {server.port} -a "$(cat {pw})")\n'
        f'  URL:        TNLLM_REDIS_URL="redis://:$(cat {pw})@{server.host}:{server.port}/0"'
    )


def cmd_redis(settings: Settings, args: argparse.Namespace) -> int:
    """Run the embedded Redis (AOF and password in <data_dir>/redis) in the foreground until
    Ctrl-C/SIGTERM; prints how to connect."""
    _setup_logging(settings)
    server = embedded_redis(settings, args.port)
    stop = _wait_for_signal()
    server.start()
    print(f"redis: {redacted_url(server)} (AOF and password in {server.data_dir})")
    print(connect_help(server), flush=True)
    while not stop.wait(1.0):
        if not server.running:
            log.error("redis-server exited unexpectedly")
            return 1
    server.stop()
    return 0


def cmd_worker(settings: Settings, args: argparse.Namespace) -> int:
    """Run one GPU worker process: model + engine loaded once, Celery threads = engine slots."""
    from tnllm.worker.process import run_worker

    return run_worker(settings, concurrency=args.concurrency, hostname=args.hostname)


def cmd_webhook_worker(settings: Settings, args: argparse.Namespace) -> int:
    """Run the CPU worker that consumes the `webhooks` queue and pumps the retry schedule (no model)."""
    from tnllm.webhooks.process import run_webhook_worker

    _setup_logging(settings)
    return run_webhook_worker(settings, hostname=getattr(args, "hostname", None))


def cmd_flower(settings: Settings, args: argparse.Namespace) -> int:
    """Run the Flower dashboard against the broker (auth rules in ``tnllm.cli.flower``)."""
    from tnllm.cli.flower import run_flower
    from tnllm.errors import FlowerConfigError
    from tnllm.protocol.celery import make_celery

    _setup_logging(settings)
    try:
        return run_flower(settings, make_celery(settings), args.port)
    except FlowerConfigError as exc:
        raise SystemExit(str(exc)) from None


def cmd_api(settings: Settings, args: argparse.Namespace) -> int:
    """Run the HTTP API under uvicorn (``api_processes`` worker processes, ``tnllm.cli.api_server``)."""
    from tnllm.cli.api_server import run_api

    _setup_logging(settings)
    run_api(settings, args.host or settings.host, args.port or settings.port)
    return 0


# --- everything at once -------------------------------------------------------------------------


# The child prints one line (no traceback) and exits with this code when the model cannot be
# resolved (unknown id offline, missing folder...): the parent then adds nothing of its own.
_MODEL_ERROR_EXIT = 3
_RESOLVE_CODE = """\
import sys
from tnllm.cli.hints import model_error
from tnllm.cli.model_cmds import say_model_steps
from tnllm.config import Settings
from tnllm.model.download import ModelResolutionError, resolve_model_path
say_model_steps("model:   ")  # writing the demo checkpoint, downloading (then ModelScope's bars)
try:
    print(resolve_model_path(Settings()))
except ModelResolutionError as exc:
    print(f"tnllm up: error: {{model_error(exc, 'up', from_make={from_make})}}", file=sys.stderr)
    raise SystemExit({exit})
"""


def _resolve_model(env: dict[str, str], from_make: bool = False) -> str:
    """Resolve/prepare the model once in a child (downloads or writes the demo checkpoint)."""
    code = _RESOLVE_CODE.format(from_make=from_make, exit=_MODEL_ERROR_EXIT)
    argv = [sys.executable, "-c", code]
    out = subprocess.run(argv, env=env, check=False, stdout=subprocess.PIPE, text=True)
    if out.returncode == _MODEL_ERROR_EXIT:
        raise SystemExit(1)  # the child already said why, in one line
    if out.returncode != 0:
        raise SystemExit(f"could not prepare the model (exit {out.returncode}); see the messages above")
    return out.stdout.strip().splitlines()[-1]


def _echo_steps(followers: list[LogFollower]) -> None:
    """The workers' model preparation steps logged since the last look."""
    for follower in followers:
        for step in follower.steps():
            print(step, flush=True)


def _wait_ready(
    url: str, children: list[Child], stop: threading.Event, timeout: float, followers: list[LogFollower]
) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and not stop.is_set():
        _echo_steps(followers)
        dead = [c for c in children if not c.alive]
        if dead:
            for child in dead:
                log.error("%s exited with %s:\n%s", child.name, child.returncode, child.log_tail())
            return False
        try:
            if httpx.get(url, timeout=2.0).status_code == 200:
                return True
        except httpx.HTTPError:
            pass
        stop.wait(0.5)
    return False


def _up_settings(settings: Settings, args: argparse.Namespace) -> Settings:
    update: dict[str, object] = {"data_dir": settings.data_dir.resolve()}
    for name in ("port", "flower_port", "redis_url", "workers"):
        value = getattr(args, name, None)
        if value is not None:
            update[name] = value
    return settings.model_copy(update=update)


def cmd_up(settings: Settings, args: argparse.Namespace) -> int:
    """Start Redis (embedded unless a URL is given), the model, worker(s), webhooks, API and Flower."""
    _setup_logging(settings)
    logging.getLogger("httpx").setLevel(logging.WARNING)  # not one line per /readyz poll
    settings = _up_settings(settings, args)
    stop = _wait_for_signal()
    logs = settings.data_dir / "logs"
    redis: RedisServer | None = None
    if not settings.redis_url:
        redis = embedded_redis(settings).start()
        settings = settings.model_copy(update={"redis_url": redis.url})  # with the password: every child
        print(f"redis:   {redacted_url(redis)} (embedded; AOF and password in {redis.data_dir})", flush=True)
        print(connect_help(redis), flush=True)
    env = _up_env(settings)
    children: list[Child] = []
    try:
        model_path = _resolve_model(env, getattr(args, "from_make", False))
        env["TNLLM_MODEL"] = model_path
        print(f"model:   {model_path}", flush=True)
        workers, others = _up_children(settings, env, logs)
        children = [*workers, *others]
        followers = [LogFollower(w.name, w.log_path) for w in workers]
        for child in children:
            child.start()
        print(f"workers: {len(workers)} loading the model (log in {logs})", flush=True)
        api_url = f"http://{settings.host}:{settings.port}"
        if not _wait_ready(f"{api_url}/readyz", children, stop, READY_TIMEOUT, followers):
            if stop.is_set():
                return 0
            print(f"tnllm did not become ready; logs in {logs}", file=sys.stderr, flush=True)
            return 1
        _echo_steps(followers)
        print(f"api:     {api_url}  (playground {api_url}/ui, docs {api_url}/docs)", flush=True)
        print(f"flower:  http://{settings.flower_address}:{settings.flower_port}", flush=True)
        print(f"logs:    {logs}", flush=True)
        print("ready. Ctrl-C stops everything.", flush=True)
        return _supervise(workers, others, stop)
    finally:
        shutdown(children, redis, settings)


def _up_env(settings: Settings) -> dict[str, str]:
    """The environment every child of `up` gets: this one plus the settings `up` decided."""
    return child_env(
        environment(),
        {
            "TNLLM_REDIS_URL": str(settings.redis_url),
            "TNLLM_DATA_DIR": str(settings.data_dir),
            "TNLLM_MODEL": settings.model,
            "TNLLM_PORT": str(settings.port),
            "TNLLM_FLOWER_PORT": str(settings.flower_port),
        },
    )


def _up_children(settings: Settings, env: dict[str, str], logs: Path) -> tuple[list[Child], list[Child]]:
    """The worker children (one per GPU, round-robin when there are more workers) and the others."""
    gpus = visible_gpus(env)
    workers = [
        Child(
            f"worker-{i}",
            tnllm_argv("worker", "--hostname", f"gpu{i}@%h"),
            env=worker_env(i, env, settings.device, gpus),
            log_path=logs / f"worker-{i}.log",
            stop_timeout=WORKER_STOP_TIMEOUT,
        )
        for i in range(settings.workers)
    ]
    others = [
        Child("webhook-worker", tnllm_argv("webhook-worker"), env=env, log_path=logs / "webhooks.log"),
        Child("api", tnllm_argv("api"), env=env, log_path=logs / "api.log"),
        Child("flower", tnllm_argv("flower"), env=env, log_path=logs / "flower.log"),
    ]
    return workers, others


def _supervise(workers: list[Child], others: list[Child], stop: threading.Event) -> int:
    """Restart crashed workers (their jobs come back through the reaper); stop on a signal."""
    while not stop.wait(1.0):
        for child in workers:
            if child.alive:
                continue
            if child.restarts >= MAX_WORKER_RESTARTS:
                log.error("%s keeps exiting (%s); stopping", child.name, child.returncode)
                return 1
            log.warning("%s exited with %s; restarting:\n%s", child.name, child.returncode, child.log_tail())
            child.restarts += 1
            child.start()
        for child in others:
            if not child.alive:
                log.error("%s exited with %s:\n%s", child.name, child.returncode, child.log_tail())
                return 1
    return 0
