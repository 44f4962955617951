"""`tnllm up`'s shutdown on real processes: it says what it waits for, and a second Ctrl-C stops at
once; the running jobs then come back as from a lost worker and finish on the next one, none lost."""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
from pathlib import Path

import httpx
import pytest

from tests.fixtures.services import E2E_ENV, Stack
from tnllm.cli.supervisor import tnllm_argv
from tnllm.store import keys
from tnllm.store.server import RedisServer, free_port

pytestmark = pytest.mark.slow

JOBS = 4
#: Long enough to be running through both signals (a few seconds on a CPU), short to redo.
TOKENS = 3000


class Console:
    """The lines `tnllm up` prints, read on a thread as they come."""

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        self.lines: list[str] = []
        assert proc.stdout is not None
        self._out = proc.stdout
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for line in self._out:
            self.lines.append(line.rstrip("\n"))

    def wait_for(self, text: str, timeout: float) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for line in self.lines:
                if text in line:
                    return line
            time.sleep(0.05)
        raise AssertionError(f"no {text!r} in {timeout} s:\n" + "\n".join(self.lines))


def test_second_ctrl_c_stops_at_once_and_loses_no_job(
    module_redis: RedisServer, demo_model_dir: Path, tmp_path: Path
) -> None:
    port = free_port()
    env = {
        **os.environ,
        **E2E_ENV,
        "TNLLM_DATA_DIR": str(tmp_path / "data"),
        "TNLLM_ENGINE_SLOTS": str(JOBS),
        "TNLLM_WORKER_SHUTDOWN_GRACE": "30",
    }
    argv = ["up", "--model", str(demo_model_dir), "--redis-url", module_redis.url, "--port", str(port)]
    proc = subprocess.Popen(
        tnllm_argv(*argv, "--flower-port", str(free_port())),
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    spare = Stack(module_redis.url, demo_model_dir, tmp_path / "spare", TNLLM_ENGINE_SLOTS=str(JOBS))
    store = spare.store()
    try:
        console = Console(proc)
        console.wait_for("ready.", 120)
        body = {"prompt": "Go on", "max_new_tokens": TOKENS, "ignore_eos": True}
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30) as api:
            ids = [api.post("/v1/jobs", json=body).json()["id"] for _ in range(JOBS)]
        deadline = time.monotonic() + 60
        while not all(r and r.status == "running" for r in (store.get(i) for i in ids)):
            assert time.monotonic() < deadline, "the jobs never all ran"
            time.sleep(0.05)
        # the next worker starts loading now (it takes nothing: every job is running elsewhere)
        worker = spare.start_worker("spare", wait=False)

        proc.send_signal(signal.SIGINT)
        said = console.wait_for("stopping: waiting up to 30 s for", 20)
        assert f"for {JOBS} running jobs to finish" in said and "Ctrl-C again to stop at once" in said
        stopped_at = time.monotonic()
        proc.send_signal(signal.SIGINT)
        assert proc.wait(20) == 0
        assert time.monotonic() - stopped_at < 10
        assert "go back to the queue" in console.wait_for("stopping at once", 1)
        assert console.lines[-1] == "stopped."
        assert [store.get(i).status for i in ids] == ["running"] * JOBS  # type: ignore[union-attr]

        spare.wait_worker(worker)
        deadline = time.monotonic() + 120
        while not all(r and r.terminal for r in (store.get(i) for i in ids)):
            assert time.monotonic() < deadline, [store.get(i) for i in ids]
            time.sleep(0.2)
        records = [store.get(i) for i in ids]
        assert [r.status for r in records] == ["succeeded"] * JOBS  # type: ignore[union-attr]
        assert all(r.attempt == 2 and r.result.usage.completion_tokens == TOKENS for r in records)  # type: ignore[union-attr]
        assert len({r.result.text for r in records}) == 1  # type: ignore[union-attr]  # greedy: one text
        for i in ids:  # each finished once
            assert sum(f.get("t") == "done" for _, f in store.client.xrange(keys.stream(i))) == 1
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()
        store.client.close()
        spare.close()
