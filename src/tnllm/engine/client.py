"""``EngineClient``: the calls a worker makes of its engine, wherever the engine runs.

Two implementations: ``proc_client.ProcessEngineClient`` (the engine in a child process, the
default) and ``inproc_client.InprocEngineClient`` (the engine on a thread of this process,
``TNLLM_ENGINE_PROCESS=false``). ``make_engine_client`` picks one from the settings; the worker
talks only to this interface. It is a ``Protocol`` (checked by mypy where ``make_engine_client``
returns an implementation), so the implementations need not import this module, which imports
them. Importing it does not import torch.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

from tnllm.config import Settings
from tnllm.engine.handle import RequestHandle
from tnllm.engine.types import EngineRequest, EngineStats, TokenEvent
from tnllm.engine.wire import EngineInfo

OnToken = Callable[[TokenEvent], None]
OnLost = Callable[[int | None], None]


class EngineClient(Protocol):
    """Start an engine, submit and cancel requests, read its stats, stop it."""

    #: set by ``start``: the engine's limits and identity
    info: EngineInfo | None
    #: the checkpoint's tokenizer (None when it has none), set by ``start``
    tokenizer: Any

    def start(self) -> None:
        """Load the model and start the step loop; raises EngineLoadFailed if it cannot load."""

    def stop(self, timeout: float | None = 30.0) -> None:
        """Stop the engine; requests still running fail with EngineError."""

    def submit(
        self,
        req: EngineRequest,
        on_token: OnToken | None = None,
        on_done: Callable[[RequestHandle], None] | None = None,
    ) -> RequestHandle:
        """Queue a request; raises RequestRejected for a bad one before it takes a slot.
        ``on_token`` and ``on_done`` run on the engine's (or the reader's) thread: keep them short."""

    def cancel(self, request_id: str) -> None:
        """Cancel a running request (it leaves the batch within one step)."""

    def unpin(self, tag: str) -> None:
        """Release the engine's saved states pinned under ``tag``."""

    def stats(self) -> EngineStats:
        """The engine's latest stats."""

    def gpu_memory(self) -> dict[str, float] | None:
        """The engine device's memory (None on CPU)."""

    @property
    def engine_info(self) -> EngineInfo:
        """``info``, or EngineError before ``start``."""

    @property
    def slots(self) -> int:
        """Sequences the engine runs at once."""


def make_engine_client(settings: Settings, *, on_lost: OnLost | None = None) -> EngineClient:
    """The worker's engine: in a child process unless ``settings.engine_process`` is off (then
    ``on_lost`` is never called: the engine cannot die apart from this process)."""
    if settings.engine_process:
        from tnllm.engine.proc_client import ProcessEngineClient

        return ProcessEngineClient(settings.engine_config(), on_lost=on_lost)
    from tnllm.engine.inproc_client import InprocEngineClient

    return InprocEngineClient(settings.engine_config())
