"""`tnllm api`: uvicorn with one or several worker processes.

Several processes share the port (uvicorn's supervisor); each builds its own app from the
environment (``app_from_environment``), so each has its own Redis connections, finish watcher and
producer. Their HTTP metrics are summed through prometheus-client's multiprocess mode: a folder
named by ``PROMETHEUS_MULTIPROC_DIR`` (a fresh temporary one unless set), empty at start.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

from fastapi import FastAPI

from tnllm.config import Settings, set_environment

#: Most API processes chosen automatically (each holds its own tokenizer and connections).
MAX_AUTO_PROCESSES = 8
#: CPU cores per automatically chosen API process (the rest serve the workers and Redis).
CORES_PER_PROCESS = 4


def api_processes(settings: Settings) -> int:
    """``settings.api_processes``, or for 0 one process per ``CORES_PER_PROCESS`` cores (1 to 8)."""
    if settings.api_processes:
        return settings.api_processes
    return max(1, min(MAX_AUTO_PROCESSES, (os.cpu_count() or 1) // CORES_PER_PROCESS))


def app_from_environment() -> FastAPI:
    """The app of one uvicorn worker process (uvicorn's ``factory``): Settings from the environment."""
    from tnllm.api.main import create_app
    from tnllm.logging import configure_logging

    settings = Settings()
    configure_logging(settings)
    return create_app(settings)


def _metrics_dir(settings: Settings) -> tuple[Path, bool]:
    """The multiprocess metrics folder, emptied; and whether it is ours to remove afterwards."""
    if settings.prometheus_multiproc_dir is None:
        return Path(tempfile.mkdtemp(prefix="tnllm-api-metrics-")), True
    folder = settings.prometheus_multiproc_dir
    folder.mkdir(parents=True, exist_ok=True)
    for stale in folder.glob("*.db"):  # counts of earlier runs would be summed in
        stale.unlink()
    return folder, False


def run_api(settings: Settings, host: str, port: int) -> None:
    """Serve the API until stopped: in this process, or in ``api_processes`` worker processes."""
    import uvicorn

    common = {
        "host": host,
        "port": port,
        "log_config": None,  # keep our handler (JSON lines when log_format=json)
        "log_level": settings.log_level.lower(),
        "timeout_graceful_shutdown": 5,
    }
    processes = api_processes(settings)
    if processes == 1:
        from tnllm.api.main import create_app

        uvicorn.run(create_app(settings), **common)  # type: ignore[arg-type]
        return
    folder, ours = _metrics_dir(settings)
    set_environment("PROMETHEUS_MULTIPROC_DIR", str(folder))  # read by each process at its start
    try:
        uvicorn.run(
            f"{__name__}:app_from_environment",
            factory=True,
            workers=processes,
            **common,  # type: ignore[arg-type]
        )
    finally:
        if ours:
            shutil.rmtree(folder, ignore_errors=True)
