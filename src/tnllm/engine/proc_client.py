"""``ProcessEngineClient``: the ``EngineClient`` whose engine runs in a child process (torch-free here).

``start()`` spawns ``python -m tnllm.engine.child`` on one end of a socket pair, sends it the
``EngineConfig`` (never the whole settings: no secret crosses the wire) and waits until its model
is loaded (or raises ``EngineLoadFailed`` with the child's error). Requests are checked here first,
with the engine's own rules, so a bad one is refused at once; a reader thread hands the engine's
deltas to each request's ``on_token`` and ends its ``RequestHandle``. If the engine process dies,
every running request ends with ``EngineLost`` and ``on_lost`` is called (the worker shuts down
and its supervisor restarts it).
"""

from __future__ import annotations

import contextlib
import logging
import socket
import subprocess
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from tnllm.config import EngineConfig
from tnllm.engine.handle import RequestHandle
from tnllm.engine.types import EngineRequest, EngineStats, TokenEvent
from tnllm.engine.validation import check_request
from tnllm.engine.wire import (
    EngineInfo,
    config_to_wire,
    decode,
    encode,
    request_to_wire,
    result_from_wire,
    stats_from_wire,
    token_from_wire,
)
from tnllm.errors import EngineError, EngineLoadFailed, EngineLost, RequestRejected

log = logging.getLogger(__name__)

OnToken = Callable[[TokenEvent], None]


@dataclass
class _Running:
    handle: RequestHandle
    on_token: OnToken | None


class ProcessEngineClient:
    """An ``Engine`` in a child process, with the calls a worker makes of one."""

    def __init__(self, config: EngineConfig, *, on_lost: Callable[[int | None], None] | None = None) -> None:
        self.config = config
        self.on_lost = on_lost
        self.info: EngineInfo | None = None
        self.tokenizer: Any = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._conn: Connection | None = None
        self._send_lock = threading.Lock()
        self._lock = threading.Lock()
        self._running: dict[str, _Running] = {}
        self._stats: EngineStats | None = None
        self._memory: dict[str, float] | None = None
        self._stopping = False
        self._lost: EngineLost | None = None
        self._reader: threading.Thread | None = None

    # --- start and stop -------------------------------------------------------------------------
    def start(self) -> None:
        """Spawn the engine process and wait until its model is loaded (no time limit: a first
        download or kernel tuning may take minutes); raises EngineLoadFailed if it cannot load."""
        if self._proc is not None:
            return
        ours, theirs = socket.socketpair()
        with theirs:
            self._proc = subprocess.Popen(
                [sys.executable, "-m", "tnllm.engine.child", "--fd", str(theirs.fileno())],
                pass_fds=(theirs.fileno(),),
                stdin=subprocess.DEVNULL,
            )
        self._conn = Connection(ours.detach())
        try:
            self._send(self.start_message())
            message = self._wait_ready()
        except BaseException:
            self._kill()
            raise
        info = EngineInfo(**message["info"])
        from tnllm.text.tokenizer import load_tokenizer

        self.tokenizer = load_tokenizer(Path(info.model_path), self.config) if info.has_tokenizer else None
        self._stats = EngineStats(  # until the first report: an idle engine
            slots=info.slots, active=0, waiting=0, occupancy=0.0, tokens_per_s=0.0, step_time_s=0.0,
            steps=0, generated_tokens=0, finished_requests=0,
        )  # fmt: skip
        self.info = info
        self._reader = threading.Thread(target=self._read_loop, name="tnllm-engine-reader", daemon=True)
        self._reader.start()
        log.info("engine process %d ready: %d slots on %s/%s", self.pid, info.slots, info.device, info.dtype)

    def start_message(self) -> dict[str, Any]:
        """The first frame's message: the engine config, all the engine process is told."""
        return {"op": "start", "config": config_to_wire(self.config)}

    def _wait_ready(self) -> dict[str, Any]:
        assert self._conn is not None and self._proc is not None
        while True:
            try:
                if self._conn.poll(0.5):
                    message = decode(self._conn.recv_bytes())
                    break
            except (EOFError, OSError):
                message = {"op": "exited"}
                break
            if self._proc.poll() is not None:
                message = {"op": "exited"}
                break
        if message["op"] == "ready":
            return message
        code = self._proc.wait()
        if message["op"] == "load_failed":
            raise EngineLoadFailed(str(message.get("error")))
        raise EngineLoadFailed(f"the engine process exited with code {code} before its model was loaded")

    def stop(self, timeout: float | None = 30.0) -> None:
        """Stop the engine process (it fails what still runs); kill it if it does not exit in time."""
        with self._lock:
            self._stopping = True
        proc = self._proc
        if proc is None:
            return
        with contextlib.suppress(OSError):
            self._send({"op": "stop"})
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            log.warning("engine process %d did not stop in %s s; killing it", proc.pid, timeout)
            self._kill()
        if self._reader is not None:
            self._reader.join(10)
        if self._conn is not None:
            self._conn.close()
        self._fail_all(EngineError("the engine was stopped"))

    def _kill(self) -> None:
        if self._proc is not None and self._proc.poll() is None:
            self._proc.kill()
            self._proc.wait()

    # --- the calls a worker makes ---------------------------------------------------------------
    @property
    def engine_info(self) -> EngineInfo:
        """``info``, or EngineError before ``start``."""
        if self.info is None:
            raise EngineError("the engine process is not started")
        return self.info

    @property
    def slots(self) -> int:
        """Sequences the engine runs at once."""
        return self.engine_info.slots

    @property
    def pid(self) -> int | None:
        """The engine process's pid (None before ``start``)."""
        return None if self._proc is None else self._proc.pid

    def submit(
        self,
        req: EngineRequest,
        on_token: OnToken | None = None,
        on_done: Callable[[RequestHandle], None] | None = None,
    ) -> RequestHandle:
        """Send a request; raises RequestRejected for a bad one (the engine's checks, run here),
        EngineLost when the engine process is gone."""
        info = self.engine_info
        check_request(
            req,
            vocab_size=info.vocab_size,
            max_context=info.max_context,
            has_tokenizer=info.has_tokenizer,
            slots=info.slots,
        )
        handle = RequestHandle(self, req.request_id, on_done)
        with self._lock:
            if self._lost is not None:
                raise EngineLost(str(self._lost))
            if self._stopping:
                raise EngineError("the engine is stopping")
            if req.request_id in self._running:
                raise RequestRejected(f"request id {req.request_id!r} is already running")
            self._running[req.request_id] = _Running(handle, on_token)
        try:
            self._send({"op": "submit", "request": request_to_wire(req)})
        except OSError as exc:
            with self._lock:
                self._running.pop(req.request_id, None)
            raise EngineLost(f"the engine process is gone ({exc})") from exc
        return handle

    def cancel(self, request_id: str) -> None:
        """Cancel a running request (it leaves the batch within one step)."""
        with self._lock:
            if request_id not in self._running:
                return
        with contextlib.suppress(OSError):  # gone: the reader ends every request
            self._send({"op": "cancel", "id": request_id})

    def unpin(self, tag: str) -> None:
        """Release the engine's saved states pinned under ``tag`` (asynchronous)."""
        with contextlib.suppress(OSError):  # gone: its states went with it
            self._send({"op": "unpin", "tag": tag})

    def stats(self) -> EngineStats:
        """The engine's latest stats (reported every ``STATS_INTERVAL_S``)."""
        if self._stats is None:
            raise EngineError("the engine process is not started")
        return self._stats

    def gpu_memory(self) -> dict[str, float] | None:
        """The engine device's memory as last reported (None on CPU)."""
        return self._memory

    # --- the wire -------------------------------------------------------------------------------
    def _send(self, message: dict[str, Any]) -> None:
        frame = encode(message)
        with self._send_lock:
            if self._conn is None:
                raise OSError("no connection")
            self._conn.send_bytes(frame)

    def _read_loop(self) -> None:
        assert self._conn is not None and self._proc is not None
        while True:
            try:
                message = decode(self._conn.recv_bytes())
            except (EOFError, OSError):
                break
            for event in message.get("events", ()):
                self._dispatch(event)
            if "stats" in message:
                self._stats = stats_from_wire(message["stats"])
                self._memory = message.get("memory")
        code: int | None = None
        with contextlib.suppress(subprocess.TimeoutExpired):
            code = self._proc.wait(10)
        with self._lock:
            stopping = self._stopping
        if stopping:
            self._fail_all(EngineError("the engine was stopped"))
            return
        lost = EngineLost(f"the engine process exited unexpectedly (exit code {code})")
        with self._lock:
            self._lost = lost
        log.error("%s; failing its %d running requests", lost, len(self._running))
        self._fail_all(lost)
        if self.on_lost is not None:
            self.on_lost(code)

    def _dispatch(self, event: list[Any]) -> None:
        kind = event[0]
        if kind == "t":
            with self._lock:
                running = self._running.get(event[1])
            if running is not None and running.on_token is not None:
                try:
                    running.on_token(token_from_wire(event))
                except Exception:  # a consumer's bug must not stop the other requests
                    log.exception("on_token callback of %s raised", event[1])
        elif kind == "d":
            result = result_from_wire(event[1])
            with self._lock:
                running = self._running.pop(result.request_id, None)
            if running is not None:
                running.handle.set_result(result)
        elif kind == "f":
            with self._lock:
                running = self._running.pop(event[1], None)
            if running is not None:
                running.handle.set_error(EngineError(event[2]))

    def _fail_all(self, err: EngineError) -> None:
        with self._lock:
            running, self._running = self._running, {}
        for item in running.values():
            item.handle.set_error(err)
