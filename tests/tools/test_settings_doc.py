"""README's configuration table is generated from Settings and kept current."""

from __future__ import annotations

from pathlib import Path

from tnllm.config import Settings
from tools import settings_doc


def test_readme_settings_table_is_current() -> None:
    assert settings_doc.main(["--check"]) == 0, (
        "README.md's settings table is stale: run `python -m tools.settings_doc` and commit README.md"
    )


def test_table_lists_every_field_with_env_and_default() -> None:
    table = settings_doc.render_table()
    for name in Settings.model_fields:
        assert f"| `{name}` |" in table
    assert "| `redis_url` | `TNLLM_REDIS_URL` | `unset` |" in table
    assert "| `api_keys` | `TNLLM_API_KEYS` | `(empty)` |" in table
    assert "`PROMETHEUS_MULTIPROC_DIR`" in table
    assert "| `log_content` | `TNLLM_LOG_CONTENT` | `false` |" in table


def test_check_detects_stale_and_write_fixes(tmp_path: Path) -> None:
    readme = tmp_path / "README.md"
    readme.write_text(f"# x\n\n{settings_doc.START}\n| old |\n{settings_doc.END}\nafter\n")
    assert settings_doc.main(["--check", "--readme", str(readme)]) == 1
    assert settings_doc.main(["--readme", str(readme)]) == 0
    assert settings_doc.main(["--check", "--readme", str(readme)]) == 0
    text = readme.read_text()
    assert "| old |" not in text and text.endswith("after\n") and "`TNLLM_MODEL`" in text
    readme.write_text("no markers\n")
    assert settings_doc.main(["--check", "--readme", str(readme)]) == 1


def test_api_reference_is_current() -> None:
    from tools import api_doc

    assert api_doc.main(["--check"]) == 0, (
        "docs/API.md's reference is stale: run `python -m tools.api_doc` and commit docs/API.md"
    )
    text = api_doc.render()
    for endpoint in ("`POST /v1/jobs`", "`GET /v1/jobs/{job_id}/stream`", "`POST /`", "#### JobPublic"):
        assert endpoint in text
