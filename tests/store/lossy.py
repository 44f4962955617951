"""A TCP proxy in front of a real Redis that can lose one reply (the command runs, its answer never
comes back and the connection drops: what a client sees when a network path dies mid-call) or play
an outage (every connection is dropped at once while ``down`` is set)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress
from urllib.parse import urlsplit


class LossyProxy:
    """Forwards every connection to Redis; ``lose_reply_to(needle)`` arms it to swallow the answer
    of the next request whose bytes contain ``needle`` and then close that connection."""

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self.needle: bytes | None = None
        self.lost = 0
        self.down = False
        self.refused = 0
        self.server: asyncio.Server | None = None
        self.open: set[asyncio.StreamWriter] = set()

    @property
    def url(self) -> str:
        assert self.server is not None
        host, port = self.server.sockets[0].getsockname()[:2]
        return f"redis://{host}:{port}/0"

    def lose_reply_to(self, needle: bytes) -> None:
        self.needle = needle

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.down:
            self.refused += 1
            await _close(writer)
            return
        up_reader, up_writer = await asyncio.open_connection(self.host, self.port)
        self.open |= {writer, up_writer}
        doomed = asyncio.Event()

        async def upstream() -> None:
            while (data := await reader.read(65536)) and not self.down:
                if self.needle is not None and self.needle in data:
                    self.needle = None
                    doomed.set()
                up_writer.write(data)
                await up_writer.drain()

        async def downstream() -> None:
            while data := await up_reader.read(65536):
                if doomed.is_set():  # the command ran; its answer is lost with the connection
                    self.lost += 1
                    return
                writer.write(data)
                await writer.drain()

        tasks = [asyncio.ensure_future(upstream()), asyncio.ensure_future(downstream())]
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await _close(writer, up_writer)
        self.open -= {writer, up_writer}

    async def aclose(self) -> None:
        assert self.server is not None
        self.server.close()
        await _close(*self.open)
        await self.server.wait_closed()


async def _close(*writers: asyncio.StreamWriter) -> None:
    for w in writers:
        w.close()
    for w in writers:
        with suppress(OSError):
            await w.wait_closed()


@asynccontextmanager
async def lossy_proxy(redis_url: str) -> AsyncIterator[LossyProxy]:
    """A ``LossyProxy`` listening on 127.0.0.1 in front of ``redis_url`` (redis://host:port only)."""
    target = urlsplit(redis_url)
    proxy = LossyProxy(target.hostname or "127.0.0.1", target.port or 6379)
    proxy.server = await asyncio.start_server(proxy._serve, "127.0.0.1", 0)
    try:
        yield proxy
    finally:
        await proxy.aclose()
