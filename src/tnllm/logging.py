"""Log configuration of every tnllm process: JSON lines or text, job ids, no private content.

``configure_logging(settings)`` is called once by each entrypoint (API lifespan, worker start, the
launcher). With ``log_format == "json"`` every record is one JSON object on one line:
``{"ts", "level", "logger", "msg", "job_id"?, "exc"?, ...extra}``; otherwise a plain text line.

The job id comes from ``job_context(job_id)`` (a contextvar, so it follows the thread or asyncio
task that runs the job) or from ``extra={"job_id": ...}``. Prompts and outputs are private: log them
only through the ``CONTENT_FIELDS`` extras (``extra={"prompt": text}``); unless
``settings.log_content`` is on, those values are replaced by their length before any handler sees
them. Free text in a message is the caller's responsibility: never format content into ``msg``.
"""

from __future__ import annotations

import contextlib
import contextvars
import datetime as dt
import json
import logging
import sys
from collections.abc import Iterator
from typing import IO, Any, Protocol

#: The job the current thread / asyncio task works on; ``None`` outside a job.
job_id_var: contextvars.ContextVar[str | None] = contextvars.ContextVar("tnllm_job_id", default=None)

#: ``extra`` keys that carry private text; redacted unless ``log_content`` is on.
CONTENT_FIELDS = frozenset({"prompt", "messages", "output", "text", "completion", "delta"})

# Attributes every LogRecord has; anything else on a record came from ``extra=``.
_RECORD_ATTRS = frozenset(vars(logging.makeLogRecord({}))) | {"message", "asctime", "taskName"}
_HANDLER_MARK = "_tnllm_handler"


class _LogSettings(Protocol):
    @property
    def log_format(self) -> str: ...
    @property
    def log_level(self) -> str: ...
    @property
    def log_content(self) -> bool: ...


@contextlib.contextmanager
def job_context(job_id: str | None) -> Iterator[None]:
    """Tag every log record emitted inside the block (same thread / task) with ``job_id``."""
    token = job_id_var.set(job_id)
    try:
        yield
    finally:
        job_id_var.reset(token)


def redact(value: Any) -> str:
    """What a private value becomes in the logs: its size, never its text."""
    try:
        size = len(value)
    except TypeError:
        return "<redacted>"
    return f"<redacted {size} chars>" if isinstance(value, str) else f"<redacted {size} items>"


class ContextFilter(logging.Filter):
    """Adds ``job_id`` from the contextvar and redacts content extras (a handler filter)."""

    def __init__(self, log_content: bool = False) -> None:
        super().__init__()
        self.log_content = log_content

    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(record, "job_id", None) is None:
            record.job_id = job_id_var.get() or _job_of_celery_record(record)
        if not self.log_content:
            for name in CONTENT_FIELDS & vars(record).keys():
                setattr(record, name, redact(getattr(record, name)))
        return True


def _job_of_celery_record(record: logging.LogRecord) -> str | None:
    # Celery's "Task ... received" line (consumer thread, outside any job) carries the task's
    # argsrepr in `data`; ours reads "job=<id> ..." (tnllm.cli.flower.task_display).
    data = getattr(record, "data", None)
    args = data.get("args") if isinstance(data, dict) else None
    if isinstance(args, str) and args.startswith("job="):
        return args[4:].split(" ", 1)[0] or None
    return None


def _extras(record: logging.LogRecord) -> dict[str, Any]:
    return {k: v for k, v in vars(record).items() if k not in _RECORD_ATTRS and k != "job_id"}


class JsonFormatter(logging.Formatter):
    """One JSON object per record, on one line (newlines inside values are escaped by json)."""

    def format(self, record: logging.LogRecord) -> str:
        ts = dt.datetime.fromtimestamp(record.created, tz=dt.UTC)
        out: dict[str, Any] = {
            "ts": ts.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        job_id = getattr(record, "job_id", None)
        if job_id is not None:
            out["job_id"] = job_id
        for key, value in _extras(record).items():
            out.setdefault(key, value)
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        if record.stack_info:
            out["stack"] = self.formatStack(record.stack_info)
        return json.dumps(out, default=str, ensure_ascii=False)


class TextFormatter(logging.Formatter):
    """``ts LEVEL logger [job=<id>] message key=value...`` for people reading a terminal."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s%(job)s %(message)s%(kv)s")

    def format(self, record: logging.LogRecord) -> str:
        job_id = getattr(record, "job_id", None)
        record.job = f" [job={job_id}]" if job_id else ""
        extras = _extras(record)
        extras.pop("job", None)
        extras.pop("kv", None)
        record.kv = "".join(f" {k}={v}" for k, v in extras.items())
        return super().format(record)


def make_handler(settings: _LogSettings, stream: IO[str] | None = None) -> logging.Handler:
    """A stream handler with the formatter and filter ``settings`` ask for."""
    handler = logging.StreamHandler(stream if stream is not None else sys.stderr)
    handler.setFormatter(JsonFormatter() if settings.log_format == "json" else TextFormatter())
    handler.addFilter(ContextFilter(log_content=settings.log_content))
    setattr(handler, _HANDLER_MARK, True)
    return handler


def configure_logging(settings: _LogSettings, stream: IO[str] | None = None) -> logging.Handler:
    """Install tnllm's handler on the root logger (replacing one installed before) and set the level.

    Other handlers stay (pytest's capture, for one). Returns the installed handler.
    """
    root = logging.getLogger()
    for old in [h for h in root.handlers if getattr(h, _HANDLER_MARK, False)]:
        root.removeHandler(old)
        old.close()
    handler = make_handler(settings, stream)
    root.addHandler(handler)
    root.setLevel(settings.log_level.upper())
    logging.captureWarnings(True)  # warnings become records (JSON lines too), logger "py.warnings"
    _claim_celery_logging()
    # uvicorn and celery log through their own loggers; let them reach our root handler only once.
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access", "celery"):
        lg = logging.getLogger(name)
        lg.handlers = [h for h in lg.handlers if not isinstance(h, logging.StreamHandler)]
        lg.propagate = True
    return handler


def quiet_celery_argv(settings: _LogSettings) -> list[str]:
    """Celery's leading CLI options: ``--quiet`` (no ASCII-art banner on stdout) in JSON mode."""
    return ["--quiet"] if settings.log_format == "json" else []


def _celery_logging_is_ours(**_: Any) -> None:
    """A ``setup_logging`` receiver: its presence tells Celery not to replace the root handlers."""


#: Celery tasks whose first argument names their job (``id`` or ``id|n``); see ``tag_job_tasks``.
_JOB_TASKS: set[str] = set()


def tag_job_tasks(*task_names: str) -> None:
    """Tag every record logged while one of these Celery tasks runs with the job its first argument
    names (``id`` or ``id|n``). The Celery app factory registers its tasks (``protocol.celery``)."""
    _JOB_TASKS.update(task_names)


def task_job_id(task_name: str, args: Any) -> str | None:
    """The job a Celery task works on, from its arguments (generate: the id; webhook: ``id|n``)."""
    if not args or task_name not in _JOB_TASKS:
        return None
    return str(args[0]).partition("|")[0] or None


_task_tokens: dict[str, contextvars.Token[str | None]] = {}


def _on_task_prerun(task_id: str = "", task: Any = None, args: Any = None, **_: Any) -> None:
    job_id = task_job_id(getattr(task, "name", ""), args)
    if job_id:
        _task_tokens[task_id] = job_id_var.set(job_id)


def _on_task_postrun(task_id: str = "", **_: Any) -> None:
    # prerun and postrun run in the task's thread, so the reset restores that thread's context
    token = _task_tokens.pop(task_id, None)
    if token is not None:
        job_id_var.reset(token)


def _claim_celery_logging() -> None:
    try:
        from celery import signals
    except ImportError:  # a process without Celery has nothing to claim
        return
    signals.setup_logging.connect(_celery_logging_is_ours, weak=False, dispatch_uid="tnllm.logging")
    # Every record logged while a task runs (Celery's own "succeeded" line too) carries its job id.
    signals.task_prerun.connect(_on_task_prerun, weak=False, dispatch_uid="tnllm.logging.prerun")
    signals.task_postrun.connect(_on_task_postrun, weak=False, dispatch_uid="tnllm.logging.postrun")
