"""Every job error type the code writes is a ``JobErrorType`` member (checked on the source: each
``JobError(...)`` in the package names its type as ``JobErrorType.<MEMBER>``, never a free string)."""

from __future__ import annotations

import ast
from pathlib import Path

from tnllm.protocol.jobs import JobError, JobErrorType

PACKAGE = Path(__file__).resolve().parents[2] / "src" / "tnllm"


def _job_error_calls() -> list[tuple[str, ast.Call]]:
    calls = []
    for path in sorted(PACKAGE.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Call):
                func = node.func
                name = func.id if isinstance(func, ast.Name) else getattr(func, "attr", None)
                if name == "JobError":
                    calls.append((f"{path.relative_to(PACKAGE)}:{node.lineno}", node))
    return calls


def test_every_job_error_written_names_a_member() -> None:
    calls = _job_error_calls()
    assert len(calls) >= 4  # the job runner's three, the reaper's one
    wrong = []
    for where, call in calls:
        kind = next((k.value for k in call.keywords if k.arg == "type"), None)
        ok = (
            isinstance(kind, ast.Attribute)
            and isinstance(kind.value, ast.Name)
            and kind.value.id == "JobErrorType"
            and kind.attr in JobErrorType.__members__
        )
        if not ok:
            wrong.append(where)
    assert wrong == []


def test_the_wire_values_are_unchanged_and_old_records_still_read() -> None:
    assert {t.value for t in JobErrorType} == {"worker_lost", "timeout", "invalid_request", "engine_error"}
    error = JobError(type=JobErrorType.WORKER_LOST, message="m")
    assert error.model_dump(mode="json") == {"type": "worker_lost", "message": "m"}
    assert (
        JobError.model_validate({"type": "from_an_older_version", "message": "m"}).type
        == "from_an_older_version"
    )
