"""Settings parse the environment the way the docs say."""

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
