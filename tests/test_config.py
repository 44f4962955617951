"""Settings parse the environment the way the docs say."""

from pathlib import Path

import pytest
from pydantic import ValidationError

from tnllm.config import Settings


def test_csv_lists_from_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TNLLM_API_KEYS", "a, b,,c")
    monkeypatch.setenv("TNLLM_WEBHOOK_RETRY_DELAYS", "1,2.5")
    s = Settings()
    assert s.api_keys == ["a", "b", "c"]
    assert s.webhook_retry_delays == [1.0, 2.5]


def test_visibility_timeout_must_exceed_time_limit() -> None:
    with pytest.raises(ValidationError, match="visibility_timeout"):
        Settings(job_time_limit=100, visibility_timeout=50)


def test_served_name_is_the_setting_else_the_model_id_else_the_folder(tmp_path: Path) -> None:
    folder = tmp_path / "my-checkpoint"
    folder.mkdir()
    assert Settings(model="OpenNLPLab/TransNormerLLM-7B").served_name() == "OpenNLPLab/TransNormerLLM-7B"
    assert Settings(model="demo").served_name() == "demo"
    assert Settings(model=str(folder)).served_name() == "my-checkpoint"
    assert Settings(model=str(folder), served_model_name="tn").served_name() == "tn"
