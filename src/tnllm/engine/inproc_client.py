"""``InprocEngineClient``: the ``EngineClient`` whose engine runs on a thread of this process.

Used when ``TNLLM_ENGINE_PROCESS=false``: ``start`` builds the engine as the engine process would
(``build_engine``: load, tune kernels, capture graphs) and starts its step loop.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from tnllm.config import EngineConfig
from tnllm.engine.handle import RequestHandle
from tnllm.engine.types import EngineRequest, EngineStats, TokenEvent
from tnllm.engine.wire import EngineInfo
from tnllm.errors import EngineError

if TYPE_CHECKING:
    from tnllm.engine.core import Engine

OnToken = Callable[[TokenEvent], None]


class InprocEngineClient:
    """The engine on a thread of this process (``build_engine`` + ``Engine.start``)."""

    def __init__(self, config: EngineConfig) -> None:
        self.config = config
        self.info: EngineInfo | None = None
        self.tokenizer: Any = None
        self.engine: Engine | None = None

    def start(self) -> None:
        from tnllm.engine.factory import build_engine, engine_info, model_path

        if self.engine is not None:
            return
        path = model_path(self.config)
        engine = build_engine(self.config.model_copy(update={"model": str(path)}))
        engine.start()
        self.engine, self.tokenizer, self.info = engine, engine.tokenizer, engine_info(engine, path)

    @property
    def engine_info(self) -> EngineInfo:
        """``info``, or EngineError before ``start``."""
        if self.info is None:
            raise EngineError("the engine is not started")
        return self.info

    @property
    def slots(self) -> int:
        """Sequences the engine runs at once."""
        return self.engine_info.slots

    def _engine(self) -> Engine:
        if self.engine is None:
            raise EngineError("the engine is not started")
        return self.engine

    def stop(self, timeout: float | None = 30.0) -> None:
        if self.engine is not None:
            self.engine.stop(timeout)

    def submit(
        self,
        req: EngineRequest,
        on_token: OnToken | None = None,
        on_done: Callable[[RequestHandle], None] | None = None,
    ) -> RequestHandle:
        return self._engine().submit(req, on_token, on_done)

    def cancel(self, request_id: str) -> None:
        self._engine().cancel(request_id)

    def unpin(self, tag: str) -> None:
        self._engine().unpin(tag)

    def stats(self) -> EngineStats:
        return self._engine().stats()

    def gpu_memory(self) -> dict[str, float] | None:
        from tnllm.engine.stats import gpu_memory_bytes

        return gpu_memory_bytes(self._engine().device)
