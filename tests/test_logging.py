"""Log lines: JSON objects with the job id, text otherwise, private content redacted."""

from __future__ import annotations

import io
import json
import logging
import threading
from collections.abc import Iterator

import pytest

from tnllm.config import Settings
from tnllm.logging import configure_logging, job_context


@pytest.fixture
def capture() -> Iterator[io.StringIO]:
    stream = io.StringIO()
    yield stream
    # leave the root logger as pytest configured it
    root = logging.getLogger()
    for h in [h for h in root.handlers if getattr(h, "_tnllm_handler", False)]:
        root.removeHandler(h)
    root.setLevel(logging.WARNING)
    logging.captureWarnings(False)


def _lines(stream: io.StringIO) -> list[dict]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def test_json_lines_carry_job_id_from_context(capture: io.StringIO) -> None:
    configure_logging(Settings(log_format="json", log_level="DEBUG"), stream=capture)
    log = logging.getLogger("tnllm.test")
    log.info("before")
    with job_context("job-123"):
        log.info("inside %s", "a job\nwith newline", extra={"prompt_tokens": 7})
    log.warning("after", extra={"job_id": "explicit"})
    lines = _lines(capture)
    assert len(lines) == 3, capture.getvalue()
    assert "job_id" not in lines[0]
    assert lines[1]["job_id"] == "job-123"
    assert lines[1]["msg"] == "inside a job\nwith newline"
    assert lines[1]["prompt_tokens"] == 7
    assert lines[1]["level"] == "INFO" and lines[1]["logger"] == "tnllm.test"
    assert lines[1]["ts"].endswith("Z")
    assert lines[2]["job_id"] == "explicit"


def test_job_context_is_per_thread(capture: io.StringIO) -> None:
    configure_logging(Settings(log_format="json"), stream=capture)
    log = logging.getLogger("tnllm.test")
    barrier = threading.Barrier(2)

    def run(job: str) -> None:
        with job_context(job):
            barrier.wait()
            log.info("working")

    threads = [threading.Thread(target=run, args=(j,)) for j in ("a", "b")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(line["job_id"] for line in _lines(capture)) == ["a", "b"]


def test_content_redacted_unless_log_content(capture: io.StringIO) -> None:
    configure_logging(Settings(log_format="json"), stream=capture)
    log = logging.getLogger("tnllm.test")
    log.info("prompt received", extra={"prompt": "my secret diary", "messages": [{"a": 1}]})
    line = _lines(capture)[0]
    assert "secret" not in capture.getvalue()
    assert line["prompt"] == "<redacted 15 chars>"
    assert line["messages"] == "<redacted 1 items>"

    capture.truncate(0)
    capture.seek(0)
    configure_logging(Settings(log_format="json", log_content=True), stream=capture)
    log.info("prompt received", extra={"prompt": "my secret diary"})
    assert _lines(capture)[0]["prompt"] == "my secret diary"


def test_text_format_and_exceptions(capture: io.StringIO) -> None:
    configure_logging(Settings(log_format="text"), stream=capture)
    log = logging.getLogger("tnllm.test")
    with job_context("j1"):
        log.info("done", extra={"tokens": 3})
    text = capture.getvalue()
    assert "INFO tnllm.test [job=j1] done tokens=3" in text
    with pytest.raises(json.JSONDecodeError):
        json.loads(text.splitlines()[0])

    capture.truncate(0)
    capture.seek(0)
    configure_logging(Settings(log_format="json"), stream=capture)
    try:
        raise RuntimeError("boom")
    except RuntimeError:
        log.exception("failed")
    line = _lines(capture)[0]
    assert line["level"] == "ERROR" and "RuntimeError: boom" in line["exc"]


def test_configure_twice_keeps_one_handler(capture: io.StringIO) -> None:
    configure_logging(Settings(log_format="json"), stream=capture)
    configure_logging(Settings(log_format="json"), stream=capture)
    logging.getLogger("tnllm.test").info("once")
    assert len(_lines(capture)) == 1


def test_job_ids_of_celery_tasks_and_records(capture: io.StringIO) -> None:
    from tnllm.logging import task_job_id
    from tnllm.protocol.celery import make_celery
    from tnllm.protocol.tasks import ECHO_TASK, GENERATE_TASK, WEBHOOK_TASK

    make_celery(Settings(redis_url="redis://127.0.0.1:1/0")).close()  # registers its job tasks
    assert task_job_id(GENERATE_TASK, ["j1"]) == "j1"
    assert task_job_id(WEBHOOK_TASK, ["j2|3", 7]) == "j2"
    assert task_job_id(ECHO_TASK, ["k", "v"]) is None and task_job_id(GENERATE_TASK, []) is None
    configure_logging(Settings(log_format="json"), stream=capture)
    # Celery's consumer logs "received" with the task's argsrepr in `data`
    logging.getLogger("celery.worker.strategy").info(
        "Task received", extra={"data": {"args": "job=j9 prompt_tokens=3 priority=0"}}
    )
    logging.getLogger("celery.worker.strategy").info("other", extra={"data": {"args": "('x',)"}})
    first, second = _lines(capture)
    assert first["job_id"] == "j9" and "job_id" not in second
