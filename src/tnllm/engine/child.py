"""The engine process: ``python -m tnllm.engine.child --fd N``, started by ``ProcessEngineClient``.

It reads the worker's ``EngineConfig`` from the socket, builds the engine exactly as an in-process worker
does (``build_engine``: load, tune kernels, capture graphs), reports ``ready`` and then serves:
the main thread reads submits and cancels, the engine steps on its own thread, and a sender
thread batches the engine's deltas and results into frames. It ignores SIGINT and SIGTERM: the
worker decides when it stops (a warm shutdown lets running jobs finish first), by a ``stop``
message or by closing the socket (the worker exited or was killed).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import logging
import queue
import signal
import threading
import time
from collections.abc import Sequence
from multiprocessing.connection import Connection
from typing import Any

from tnllm.engine.handle import RequestHandle
from tnllm.engine.types import TokenEvent
from tnllm.engine.wire import (
    STATS_INTERVAL_S,
    EngineInfo,
    config_from_wire,
    decode,
    encode,
    request_from_wire,
    result_to_wire,
    token_to_wire,
)
from tnllm.errors import EngineError

log = logging.getLogger(__name__)

#: Exit status when the model cannot be loaded (the worker's own: ``worker.process.EXIT_MODEL_LOAD_FAILED``).
EXIT_LOAD_FAILED = 3
#: After the first event of a step, wait this long for the rest of it before sending a frame: one
#: frame per step instead of one per sequence.
BATCH_DELAY_S = 0.002

_STOP = object()


class EngineHost:
    """Serves one engine over ``conn`` until the worker says stop or goes away."""

    def __init__(self, engine: Any, conn: Connection, info: EngineInfo) -> None:
        self.engine = engine
        self.conn = conn
        self.info = info
        self._out: queue.SimpleQueue[Any] = queue.SimpleQueue()

    def serve(self) -> int:
        """Report ready, start the engine, relay messages; returns the exit status."""
        from tnllm.engine.stats import gpu_memory_bytes

        self.conn.send_bytes(encode({"op": "ready", "info": dataclasses.asdict(self.info)}))
        self.engine.start()
        sender = threading.Thread(
            target=self._send_loop, args=(gpu_memory_bytes,), name="tnllm-engine-sender", daemon=True
        )
        sender.start()
        try:
            self._read_loop()
        finally:
            self.engine.stop()  # what is still running fails with "the engine was stopped"
            self._out.put(_STOP)
            sender.join(10)
            self.conn.close()
        return 0

    def _read_loop(self) -> None:
        while True:
            try:
                frame = self.conn.recv_bytes()
            except (EOFError, OSError):
                log.info("engine process: the worker closed the connection; stopping")
                return
            message = decode(frame)
            op = message["op"]
            if op == "submit":
                self._submit(message["request"])
            elif op == "cancel":
                self.engine.cancel(message["id"])
            elif op == "unpin":
                self.engine.unpin(str(message["tag"]))
            elif op == "stop":
                return
            else:
                log.warning("engine process: unknown message %r ignored", op)

    def _submit(self, wire: dict[str, Any]) -> None:
        try:
            req = request_from_wire(wire)
            self.engine.submit(req, on_token=self._token, on_done=self._done)
        except (ValueError, EngineError) as exc:  # the client checks first; this is a stopping engine
            self._out.put(["f", str(wire.get("id")), str(exc)])

    # engine-thread callbacks: a queue put each, never I/O
    def _token(self, event: TokenEvent) -> None:
        self._out.put(token_to_wire(event))

    def _done(self, handle: RequestHandle) -> None:
        if handle.error is None:
            self._out.put(["d", result_to_wire(handle.result(0))])
        else:
            self._out.put(["f", handle.request_id, str(handle.error)])

    def _send_loop(self, gpu_memory: Any) -> None:
        last_stats = 0.0
        stop = False
        while not stop:
            events: list[Any] = []
            try:
                first = self._out.get(timeout=STATS_INTERVAL_S)
            except queue.Empty:
                first = None
            if first is _STOP:
                stop = True
            elif first is not None:
                events.append(first)
                time.sleep(BATCH_DELAY_S)
            while True:
                try:
                    item = self._out.get_nowait()
                except queue.Empty:
                    break
                if item is _STOP:
                    stop = True
                else:
                    events.append(item)
            message: dict[str, Any] = {"op": "events", "events": events}
            now = time.monotonic()
            if stop or now - last_stats >= STATS_INTERVAL_S:
                last_stats = now
                message["stats"] = dataclasses.asdict(self.engine.stats())
                message["memory"] = gpu_memory(self.engine.device)
            if events or "stats" in message:
                try:
                    self.conn.send_bytes(encode(message))
                except OSError:  # the worker is gone: nobody to tell
                    return


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the engine process."""
    from tnllm.logging import configure_logging

    parser = argparse.ArgumentParser(description="tnllm engine process (started by a GPU worker)")
    parser.add_argument("--fd", type=int, required=True, help="the socket shared with the worker")
    args = parser.parse_args(argv)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    conn = Connection(args.fd)
    try:
        start = decode(conn.recv_bytes())
    except (EOFError, OSError):
        return 1
    config = config_from_wire(start["config"])
    configure_logging(config)
    try:
        from tnllm.engine.factory import build_engine, engine_info, model_path

        path = model_path(config)  # downloads once; the engine and the worker's tokenizer use it
        engine = build_engine(config.model_copy(update={"model": str(path)}))
        info = engine_info(engine, path)
    except Exception as exc:
        log.exception("engine process: the model failed to load")
        with contextlib.suppress(OSError):
            conn.send_bytes(encode({"op": "load_failed", "error": f"{type(exc).__name__}: {exc}"}))
        return EXIT_LOAD_FAILED
    return EngineHost(engine, conn, info).serve()


if __name__ == "__main__":
    raise SystemExit(main())
