"""The workers' model preparation, shown in ``tnllm up``'s console while it waits for them.

Each worker logs its steps (loading the weights, building the engine, tuning and capturing CUDA
graphs on a GPU, the engine ready) into its own log file; ``LogFollower`` reads what was added
since the last look and keeps the lines of those steps, in the text or the JSON log format.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

#: Loggers whose records are the steps of getting a worker's model ready.
STEP_LOGGERS = re.compile(r"^tnllm\.(model|engine|worker\.runtime)(\.|$)")
#: ``ts time LEVEL logger message`` (tnllm.logging.TextFormatter).
_TEXT = re.compile(r"^\S+ \S+ (?P<level>INFO|WARNING|ERROR|CRITICAL) (?P<logger>\S+) (?P<msg>.*)$")


def step_of(line: str) -> str | None:
    """The message of a preparation step logged on ``line``, else None."""
    if line.startswith("{"):
        try:
            record = json.loads(line)
        except ValueError:
            return None
        logger, message = str(record.get("logger", "")), str(record.get("msg", ""))
        level = str(record.get("level", ""))
    else:
        match = _TEXT.match(line)
        if match is None:
            return None
        logger, message, level = match["logger"], match["msg"], match["level"]
    if not STEP_LOGGERS.match(logger) or level == "DEBUG":
        return None
    return message if level == "INFO" else f"{level.lower()}: {message}"


class LogFollower:
    """New step lines of one worker's log file, from where it stood when the follower was made."""

    def __init__(self, name: str, path: Path) -> None:
        self.name = name
        self.path = path
        self._offset = path.stat().st_size if path.exists() else 0
        self._partial = b""

    def steps(self) -> list[str]:
        """``worker-0: loaded ... in 5.6s`` for each step logged since the last call."""
        try:
            with self.path.open("rb") as log:
                log.seek(self._offset)
                data = log.read()
        except OSError:
            return []
        self._offset += len(data)
        *lines, self._partial = (self._partial + data).split(b"\n")
        found = (step_of(line.decode(errors="replace")) for line in lines)
        return [f"{self.name}: {step}" for step in found if step is not None]
