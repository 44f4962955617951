"""`tnllm up` shows the workers' preparation steps: the lines it picks from a worker's log."""

from __future__ import annotations

import json
from pathlib import Path

from tnllm.cli.progress import LogFollower, step_of


def test_steps_are_the_model_and_engine_lines_in_either_log_format() -> None:
    text = "2026-12-04 20:01:30,079 INFO tnllm.model.loading loaded /m (12 tensors) in 5.59s"
    assert step_of(text) == "loaded /m (12 tensors) in 5.59s"
    assert step_of("2026-12-04 20:01:30,079 WARNING tnllm.engine.runner slow") == "warning: slow"
    assert step_of("2026-12-04 20:01:31,184 INFO celery.worker.consumer Connected to redis") is None
    assert step_of("2026-12-04 20:01:31,184 INFO tnllm.worker.metrics metrics on :1") is None
    assert step_of(" -------------- gpu0@vm v5.7.0 (collider)") is None
    record = {"ts": "x", "level": "INFO", "logger": "tnllm.worker.runtime", "msg": "engine ready"}
    assert step_of(json.dumps(record)) == "engine ready"
    assert step_of("{not json") is None


def test_the_follower_reads_only_what_was_added_and_whole_lines(tmp_path: Path) -> None:
    log = tmp_path / "worker-0.log"
    log.write_text("2026-12-04 20:00:00,000 INFO tnllm.model.loading from an earlier run\n")
    follower = LogFollower("worker-0", log)
    assert follower.steps() == []
    with log.open("a") as out:
        out.write("2026-12-04 20:01:30,079 INFO tnllm.model.loading loaded /m in 5.6s\n2026-12-04 20:0")
    assert follower.steps() == ["worker-0: loaded /m in 5.6s"]
    with log.open("a") as out:
        out.write("1:31,000 INFO tnllm.worker.runtime engine ready (64 slots) in 9.3s\n")
    assert follower.steps() == ["worker-0: engine ready (64 slots) in 9.3s"]
    assert LogFollower("worker-1", tmp_path / "missing.log").steps() == []
