"""`tnllm up` with a model it cannot resolve: one line saying why (and how to get going), no traceback."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tnllm.store.server import free_port

ROOT = Path(__file__).resolve().parents[2]


def _up(tmp_path: Path, model: str, *extra: str) -> subprocess.CompletedProcess[str]:
    env = {
        **{k: v for k, v in os.environ.items() if k == "PYTHONPATH"},  # this checkout's code
        "PATH": "/usr/bin:/bin",
        "HOME": str(tmp_path),
        # real modelscope, pointed at a loopback port nobody listens on: "offline", without a mock
        "MODELSCOPE_ENDPOINT": f"http://127.0.0.1:{free_port()}",
        "MODELSCOPE_CACHE": str(tmp_path / "ms-cache"),
        "TNLLM_DATA_DIR": str(tmp_path / "data"),
    }
    return subprocess.run(
        [sys.executable, "-m", "tnllm.cli.main", "up", *extra, "--model", model, "--port", str(free_port())],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
    )


def _assert_one_line_error(proc: subprocess.CompletedProcess[str], *expected: str) -> None:
    assert proc.returncode == 1, proc.stderr
    assert "Traceback" not in proc.stderr and "Traceback" not in proc.stdout
    errors = [line for line in proc.stderr.splitlines() if line.startswith("tnllm up: error:")]
    assert len(errors) == 1, proc.stderr
    for text in (*expected, "--model demo", "/path/to/checkpoint"):
        assert text in errors[0]
    assert "could not prepare the model" not in proc.stderr  # the parent adds no second message
    assert "model:" not in proc.stdout  # nothing started after the failure


def test_up_with_a_missing_model_folder_fails_in_one_line(tmp_path: Path) -> None:
    proc = _up(tmp_path, str(tmp_path / "no-such-checkpoint"))
    _assert_one_line_error(proc, "does not exist")


@pytest.mark.slow
def test_up_with_an_unknown_model_id_offline_fails_in_one_line(tmp_path: Path) -> None:
    proc = _up(tmp_path, "SomeOrg/Unknown")
    _assert_one_line_error(proc, "cannot download SomeOrg/Unknown from ModelScope")


def test_from_make_the_hint_names_make(tmp_path: Path) -> None:
    """`make run` passes --from-make: the way out is spelled as make takes it, not as a flag."""
    proc = _up(tmp_path, str(tmp_path / "no-such-checkpoint"), "--from-make")
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    (error,) = [line for line in proc.stderr.splitlines() if line.startswith("tnllm up: error:")]
    assert "does not exist; run `make run MODEL=demo`" in error and "--model" not in error
