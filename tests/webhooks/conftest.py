"""Webhook test fixtures: scriptable HTTP receivers on 127.0.0.1 and real webhook-worker processes."""

from __future__ import annotations

import base64
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import redis

from tnllm.config import Settings
from tnllm.store.webhooks import SCHEDULE_KEY
from tnllm.webhooks.pump import SchedulePump
from tnllm.webhooks.runner import WebhookContext, run_delivery

SECRET = "whsec_" + base64.b64encode(b"tnllm-test-secret-0123456789abcd").decode()
SECRET_NEXT = "whsec_" + base64.b64encode(b"tnllm-rotated-secret-9876543210x").decode()
REPO = Path(__file__).resolve().parents[2]


@dataclass
class Hit:
    """One request a receiver got."""

    path: str
    headers: dict[str, str]
    body: bytes
    at: float


@dataclass
class Receiver:
    """A real HTTP server on 127.0.0.1 answering each POST with the next scripted action.

    Actions: an int status (200, 500, 410...), ``("hang", seconds)`` (answer 200 after sleeping),
    ``("redirect", url)`` (302 to url). When the script runs out, ``default`` answers.
    """

    server: ThreadingHTTPServer
    script: list[Any] = field(default_factory=list)
    default: Any = 200
    hits: list[Hit] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def url(self) -> str:
        host, port = self.server.server_address[:2]
        return f"http://{host}:{port}/hook"

    @property
    def port(self) -> int:
        return int(self.server.server_address[1])

    def next_action(self, hit: Hit) -> Any:
        with self.lock:
            self.hits.append(hit)
            return self.script.pop(0) if self.script else self.default

    def wait_hits(self, n: int, timeout: float = 20.0) -> list[Hit]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self.lock:
                if len(self.hits) >= n:
                    return list(self.hits)
            time.sleep(0.02)
        raise AssertionError(f"receiver got {len(self.hits)} requests, expected {n}")


def _handler(receiver_ref: list[Receiver]) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:  # quiet
            pass

        def do_POST(self) -> None:
            length = int(self.headers.get("content-length", "0"))
            body = self.rfile.read(length)
            hit = Hit(self.path, {k.lower(): v for k, v in self.headers.items()}, body, time.time())
            action = receiver_ref[0].next_action(hit)
            try:
                if isinstance(action, tuple) and action[0] == "hang":
                    time.sleep(action[1])
                    action = 200
                if isinstance(action, tuple) and action[0] == "redirect":
                    self.send_response(302)
                    self.send_header("location", action[1])
                    self.send_header("content-length", "0")
                    self.end_headers()
                    return
                payload = json.dumps({"ok": action < 300}).encode()
                self.send_response(int(action))
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)
            except (BrokenPipeError, ConnectionResetError):
                pass  # the sender gave up (timeout): expected for hanging answers

    return Handler


@pytest.fixture
def receiver_factory() -> Iterator[Callable[..., Receiver]]:
    """Start receivers: ``make(script=[500, 200], default=200)``; all are shut down afterwards."""
    made: list[Receiver] = []

    def make(script: list[Any] | None = None, default: Any = 200) -> Receiver:
        ref: list[Receiver] = []
        server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(ref))
        server.daemon_threads = True
        receiver = Receiver(server, list(script or []), default)
        ref.append(receiver)
        threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
        made.append(receiver)
        return receiver

    yield make
    for receiver in made:
        receiver.server.shutdown()
        receiver.server.server_close()


@dataclass
class WorkerProcess:
    """A real ``tnllm webhook-worker`` subprocess."""

    env: dict[str, str]
    log_path: Path
    proc: subprocess.Popen[bytes] | None = None

    def start(self) -> WorkerProcess:
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tnllm.cli.main", "webhook-worker"],
            cwd=REPO,
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
        log.close()
        return self

    def kill(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.kill()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


def worker_env(redis_url: str, **overrides: str) -> dict[str, str]:
    """Environment of a webhook worker: test Redis, test secret, tiny delays, 127.0.0.1 allowed."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("TNLLM_")}
    env.update(
        TNLLM_REDIS_URL=redis_url,
        TNLLM_WEBHOOK_SECRET=SECRET,
        TNLLM_WEBHOOK_RETRY_DELAYS="0.2,0.2,0.2",
        TNLLM_WEBHOOK_TIMEOUT="1",
        TNLLM_WEBHOOK_ALLOWLIST="127.0.0.1",
        TNLLM_WEBHOOK_CONCURRENCY="4",
        TNLLM_LOG_LEVEL="INFO",
        PYTHONUNBUFFERED="1",
    )
    env.update(overrides)
    return env


@pytest.fixture
def webhook_worker_factory(tmp_path: Path) -> Iterator[Callable[..., WorkerProcess]]:
    """Start webhook-worker subprocesses with ``worker_env(redis_url, **overrides)``; stopped after."""
    made: list[WorkerProcess] = []

    def make(redis_url: str, **overrides: str) -> WorkerProcess:
        proc = WorkerProcess(worker_env(redis_url, **overrides), tmp_path / f"webhook-worker-{len(made)}.log")
        made.append(proc.start())
        return proc

    yield make
    for proc in made:
        proc.stop()


def run_job(
    store: Any, job_id: str, url: str | None, *, status: str = "succeeded", events: list[str] | None = None
) -> Any:
    """A real job record through the job store: create (with a webhook), claim, finish with
    ``status``; each transition reports to ``notify_transition`` as the GPU worker does."""
    from tnllm.protocol.jobs import GenerationParams, JobError, JobResult, JobStatus, Usage
    from tnllm.worker.events import notify_transition

    webhook = None if url is None else {"url": url, "events": events or list(DEFAULT_EVENTS)}
    created = store.create(
        job_id=job_id, owner="tester", params=GenerationParams(prompt="hi"), webhook=webhook
    )
    assert created.kind == "created"
    assert store.claim(job_id, "w1").won
    notify_transition(store, store.get(job_id), "job.running")
    final = JobStatus(status)
    result = JobResult(text="hello", finish_reason="stop", usage=Usage(prompt_tokens=1, completion_tokens=1))
    error = JobError(type="internal", message="boom") if final is JobStatus.FAILED else None
    assert store.finish(job_id, "w1", final, result=None if error else result, error=error)
    notify_transition(store, store.get(job_id), f"job.{status}")
    return store.get(job_id)


DEFAULT_EVENTS = ("job.succeeded", "job.failed", "job.cancelled")


@pytest.fixture
def job_store(redis_url: str) -> Iterator[Any]:
    """The real job store on the (flushed) session Redis."""
    from tnllm.store.clients import redis_client
    from tnllm.store.sync import JobStore

    client = redis_client(redis_url)
    yield JobStore(client, Settings(redis_url=redis_url))
    client.close()


def make_ctx(redis_url: str, **overrides: Any) -> WebhookContext:
    """A webhook worker's context in-process: test secret, tiny delays, 127.0.0.1 allowed."""
    values: dict[str, Any] = {
        "redis_url": redis_url,
        "webhook_secret": [SECRET],
        "webhook_retry_delays": [0.05, 0.05, 0.05],
        "webhook_timeout": 1.0,
        "webhook_allowlist": ["127.0.0.1"],
    }
    values.update(overrides)
    return WebhookContext.build(Settings(**values), redis.Redis.from_url(redis_url))


def drive(ctx: WebhookContext, timeout: float = 15.0) -> list[str]:
    """Pump the schedule in-process (dispatch = run the task body now) until nothing is pending."""
    outcomes: list[str] = []
    pump = SchedulePump(ctx.store, lambda v, t: outcomes.append(run_delivery(ctx, v, t)), 60_000)
    deadline = time.monotonic() + timeout
    while ctx.redis.zcard(SCHEDULE_KEY):
        assert time.monotonic() < deadline, f"deliveries still pending: {outcomes}"
        if not pump.pump_once():
            time.sleep(0.01)
    return outcomes
