"""The worker's engine: what the worker asks of one, and starting it (child process or in-process).

By default the engine runs in a child process of its own (``tnllm.engine.client.EngineClient``:
the model, the GPU and the step loop there, so this process's Celery threads never hold the
engine's GIL); with ``engine_process=false`` it runs on a thread of this process
(``tnllm.engine.factory.build_engine``). Either way the worker sees a ``WorkerEngine``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from tnllm.config import Settings
from tnllm.engine.handle import RequestHandle
from tnllm.engine.types import EngineRequest, EngineStats, TokenEvent
from tnllm.text.tokenizer import Tokenizer

#: The GPU memory figures of the engine's device (None on CPU), read when metrics are scraped.
MemoryProbe = Callable[[], dict[str, float] | None]


class WorkerEngine(Protocol):
    """The calls the worker makes of its engine (an ``Engine`` or an ``EngineClient``)."""

    @property
    def slots(self) -> int: ...

    @property
    def tokenizer(self) -> Tokenizer | None:
        """The model's tokenizer (None when the folder has none: token-id prompts only)."""
        ...

    def submit(
        self,
        req: EngineRequest,
        on_token: Callable[[TokenEvent], None] | None = None,
        on_done: Callable[[RequestHandle], None] | None = None,
    ) -> RequestHandle: ...

    def cancel(self, request_id: str) -> None: ...

    def stats(self) -> EngineStats: ...

    def stop(self, timeout: float | None = 30.0) -> None: ...


@dataclass(frozen=True)
class StartedEngine:
    """An engine whose step loop runs, with what metrics report about it."""

    engine: WorkerEngine
    device: str
    dtype: str
    memory: MemoryProbe


def start_engine(settings: Settings, on_lost: Callable[[int | None], None]) -> StartedEngine:
    """Load the model and start the engine's step loop (in the engine process, or on a thread here
    when ``engine_process`` is off). ``on_lost(exit_code)`` runs if the engine process dies."""
    if settings.engine_process:
        from tnllm.engine.client import EngineClient

        client = EngineClient(settings, on_lost=on_lost)
        client.start()
        assert client.info is not None
        return StartedEngine(client, client.info.device, client.info.dtype, client.gpu_memory)
    from tnllm.engine.factory import build_engine, describe_engine
    from tnllm.worker.metrics import gpu_memory_bytes

    engine = build_engine(settings)
    engine.start()
    device, dtype = describe_engine(engine)
    return StartedEngine(engine, device, dtype, lambda: gpu_memory_bytes(engine.device))
