"""A TCP proxy in front of the real API that can break connections the way a network does.

Each accepted connection is piped to the upstream server by two threads. A ``Fault`` picks the
connection by its request (``match`` on the request's first bytes) and either cuts it after the
server sent ``after`` occurrences of a marker (``cut``: a TCP reset, mid-response), or swallows the
server's whole answer and resets (``swallow``: the request was handled, the client never hears), or
answers with a canned response without asking the server (``answer``). Every request head seen is
kept in ``requests`` so a test can check what the client sent, and each fault that struck in
``applied`` (``cut``, ``swallowed``, ``answered``).
"""

from __future__ import annotations

import contextlib
import socket
import struct
import threading
from dataclasses import dataclass


@dataclass
class Fault:
    """One fault, applied to the next ``times`` connections whose request head contains ``match``."""

    match: bytes
    mode: str  # "cut" | "swallow" | "answer"
    marker: bytes = b"event: token"
    after: int = 3
    answer: bytes = b""
    times: int = 1


def _reset(sock: socket.socket) -> None:
    """Close with a TCP RST (SO_LINGER 0), as a dropped peer or a killed proxy does. SHUT_RD first:
    it sends nothing but wakes a thread blocked reading this socket, whose open call would
    otherwise hold the socket (and so the reset) back until its read returned."""
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        sock.shutdown(socket.SHUT_RD)
    with contextlib.suppress(OSError):
        sock.close()


def _cut_point(data: bytes, fault: Fault, seen: int) -> tuple[int | None, int]:
    """Where to cut ``data``: at the start of the marker occurrence number ``fault.after``."""
    start = data.find(fault.marker)
    while start != -1:
        seen += 1
        if seen >= fault.after:
            return start, seen
        start = data.find(fault.marker, start + 1)
    return None, seen


class Proxy:
    """``url`` forwards to ``upstream`` (host, port); ``faults`` are consumed in order of match."""

    def __init__(self, upstream: tuple[str, int]) -> None:
        self.upstream = upstream
        self.faults: list[Fault] = []
        self.requests: list[bytes] = []
        self.applied: list[str] = []
        self._lock = threading.Lock()
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self._listener.getsockname()[1]}"
        threading.Thread(target=self._accept, daemon=True).start()

    def close(self) -> None:
        """Stop accepting (open pipes end with their peers)."""
        with contextlib.suppress(OSError):
            self._listener.close()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(client,), daemon=True).start()

    def _fault_for(self, head: bytes) -> Fault | None:
        with self._lock:
            self.requests.append(head)
            for fault in self.faults:
                if fault.times > 0 and fault.match in head:
                    fault.times -= 1
                    if fault.mode == "answer":
                        self.applied.append("answered")
                    return fault
        return None

    def _serve(self, client: socket.socket) -> None:
        link = _Link(client)
        try:
            while True:
                data = client.recv(65536)
                if not data:
                    break
                if data[:4] in _METHODS:  # a request starts: is it one a fault is for?
                    link.fault = self._fault_for(data)
                if link.fault is not None and link.fault.mode == "answer":
                    client.sendall(link.fault.answer)
                    link.reset()
                    return
                if link.server is None:
                    link.server = socket.create_connection(self.upstream)
                    link.open += 1
                    threading.Thread(target=self._pipe, args=(link,), daemon=True).start()
                link.server.sendall(data)
        except OSError:
            pass
        finally:
            link.finish()

    def _pipe(self, link: _Link) -> None:
        """Copy the server's answers to the client, applying the fault of the current request."""
        assert link.server is not None
        seen = 0
        try:
            while True:
                data = link.server.recv(65536)
                fault = link.fault
                if not data:
                    break
                if fault is not None and fault.mode == "swallow":
                    self.applied.append("swallowed")
                    link.reset()  # the server answered; the client never hears it
                    return
                if fault is not None and fault.mode == "cut":
                    cut, seen = _cut_point(data, fault, seen)
                    if cut is not None:
                        link.client.sendall(data[:cut])  # the events before the marker reaching `after`
                        self.applied.append("cut")
                        link.reset()
                        return
                link.client.sendall(data)
        except OSError:
            pass
        finally:
            link.finish()


_METHODS = (b"GET ", b"POST", b"PUT ", b"DELE", b"HEAD", b"PATC")


class _Link:
    """One client connection and its upstream one; the fault of the request it carries now. Each
    of its (one or two) threads calls ``finish`` when done: the last one closes both sockets."""

    def __init__(self, client: socket.socket) -> None:
        self.client = client
        self.server: socket.socket | None = None
        self.fault: Fault | None = None
        self.open = 1
        self._lock = threading.Lock()

    def sockets(self) -> list[socket.socket]:
        return [s for s in (self.client, self.server) if s is not None]

    def reset(self) -> None:
        """Both connections end with a TCP reset."""
        for sock in self.sockets():
            _reset(sock)

    def finish(self) -> None:
        for sock in self.sockets():
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)  # wakes the other thread's recv
        with self._lock:
            self.open -= 1
            last = self.open == 0
        if last:
            for sock in self.sockets():
                sock.close()
