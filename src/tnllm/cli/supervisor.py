"""Child processes of `tnllm up`: start with TNLLM_* env and a log file, watch, stop in order.

Children run in their own session so a terminal Ctrl-C reaches only the launcher, which then stops
them in a safe order; each also gets SIGTERM from the kernel if the launcher dies without cleaning up.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import IO

log = logging.getLogger(__name__)

_PR_SET_PDEATHSIG = 1


def _child_setup() -> None:  # pragma: no cover - runs between fork and exec
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


def tnllm_argv(*args: str) -> list[str]:
    """argv running a `tnllm` subcommand with this interpreter (works without the console script)."""
    return [sys.executable, "-m", "tnllm.cli.main", *args]


class Child:
    """One supervised child process whose output goes to ``log_path``."""

    def __init__(
        self,
        name: str,
        argv: Sequence[str],
        *,
        env: Mapping[str, str],
        log_path: Path,
        stop_signal: int = signal.SIGTERM,
        stop_timeout: float = 30.0,
    ) -> None:
        self.name = name
        self.argv = list(argv)
        self.env = dict(env)
        self.log_path = log_path
        self.stop_signal = stop_signal
        self.stop_timeout = stop_timeout
        self.process: subprocess.Popen[bytes] | None = None
        self.restarts = 0
        self._log: IO[bytes] | None = None

    @property
    def alive(self) -> bool:
        """True while the process runs."""
        return self.process is not None and self.process.poll() is None

    @property
    def returncode(self) -> int | None:
        """Exit status once it has exited."""
        return None if self.process is None else self.process.poll()

    def start(self) -> Child:
        """Spawn the process (output appended to the log file)."""
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log = open(self.log_path, "ab")  # noqa: SIM115 - closed in _closed()
        self.process = subprocess.Popen(
            self.argv,
            env=self.env,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=_child_setup,
        )
        log.debug("started %s (pid %s): %s", self.name, self.process.pid, " ".join(self.argv))
        return self

    def signal(self, signum: int) -> None:
        """Send ``signum`` if it still runs."""
        if self.alive and self.process is not None:
            with contextlib.suppress(ProcessLookupError):
                self.process.send_signal(signum)

    def stop(self, timeout: float | None = None) -> int | None:
        """Send the stop signal, wait up to ``timeout`` (default ``stop_timeout``), then SIGKILL."""
        proc = self.process
        if proc is None:
            return None
        self.signal(self.stop_signal)
        try:
            proc.wait(self.stop_timeout if timeout is None else timeout)
        except subprocess.TimeoutExpired:
            log.warning("%s did not stop in time; killing it", self.name)
            proc.kill()
            proc.wait()
        self._closed()
        return proc.returncode

    def wait(self, timeout: float | None = None) -> int | None:
        """Wait for exit; None if it still runs after ``timeout``."""
        if self.process is None:
            return None
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            return None

    def log_tail(self, lines: int = 20) -> str:
        """The last lines of the child's log."""
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def _closed(self) -> None:
        if self._log is not None:
            self._log.close()
            self._log = None


def stop_all(children: Sequence[Child], timeout: float) -> None:
    """Signal all children at once, then wait for each within a shared deadline."""
    for child in children:
        child.signal(child.stop_signal)
    deadline = time.monotonic() + timeout
    for child in children:
        child.stop(max(0.5, deadline - time.monotonic()))


def child_env(base: Mapping[str, str], overrides: Mapping[str, str]) -> dict[str, str]:
    """The environment of a child: ``base`` plus TNLLM_* overrides (and unbuffered output)."""
    env = dict(base)
    env.update(overrides)
    env.setdefault("PYTHONUNBUFFERED", "1")
    return env


def pid_alive(pid: int) -> bool:
    """True if a process with this id exists."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def child_pids(pid: int) -> list[int]:
    """The processes whose parent is ``pid`` (Linux ``/proc``; a worker's engine process, say)."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                parent = int(f.read().rsplit(")", 1)[1].split()[1])  # the name may hold spaces
        except (OSError, ValueError, IndexError):
            continue  # gone meanwhile, or not readable
        if parent == pid:
            found.append(int(entry))
    return found
