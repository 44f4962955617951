"""The caller's side of one submitted request (torch-free: the worker's engine client uses it too)."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Protocol

from tnllm.engine.types import EngineResult
from tnllm.errors import EngineError

log = logging.getLogger(__name__)


class Cancels(Protocol):
    """Whatever ran the request: it can cancel it by id."""

    def cancel(self, request_id: str) -> None: ...


class RequestHandle:
    """Waits for one request's result; ``on_done`` (if given) runs once it is set, on the setter's thread.

    Like ``concurrent.futures.Future``: the caller waits (``result``, ``done``) or cancels; whoever
    runs the request ends it with ``set_result`` / ``set_error``."""

    def __init__(
        self,
        engine: Cancels,
        request_id: str,
        on_done: Callable[[RequestHandle], None] | None = None,
    ) -> None:
        self.request_id = request_id
        self._engine = engine
        self._on_done = on_done
        self._done = threading.Event()
        self._result: EngineResult | None = None
        self._error: BaseException | None = None

    def done(self) -> bool:
        """The request has finished (or failed)."""
        return self._done.is_set()

    def result(self, timeout: float | None = None) -> EngineResult:
        """Wait for the final result; raises TimeoutError, or EngineError if the engine failed."""
        if not self._done.wait(timeout):
            raise TimeoutError(f"request {self.request_id} still running after {timeout} s")
        if self._error is not None:
            # same class as the cause when it is an EngineError (EngineLost stays EngineLost)
            kind = type(self._error) if isinstance(self._error, EngineError) else EngineError
            raise kind(f"request {self.request_id} failed: {self._error}") from self._error
        assert self._result is not None
        return self._result

    @property
    def error(self) -> BaseException | None:
        """Why the request failed (None while running or after a result)."""
        return self._error

    def cancel(self) -> None:
        """Cancel this request (it leaves the batch within one step)."""
        self._engine.cancel(self.request_id)

    # --- the owner's side: the engine (or engine client) that created the handle ends it -----------
    def set_result(self, result: EngineResult) -> None:
        """End the request with its result (the first ``set_*`` call wins; later ones are ignored)."""
        self._finish(result, None)

    def set_error(self, error: BaseException) -> None:
        """End the request with an error (the first ``set_*`` call wins; later ones are ignored)."""
        self._finish(None, error)

    def _finish(self, result: EngineResult | None, error: BaseException | None) -> None:
        if self._done.is_set():
            return
        self._result, self._error = result, error
        self._done.set()
        if self._on_done is not None:
            try:
                self._on_done(self)
            except Exception:  # a consumer's bug must not stop the engine
                log.exception("on_done callback of %s raised", self.request_id)
