"""Model resolution and `tnllm download`: only ModelScope's snapshot_download is replaced."""

from __future__ import annotations

import importlib
import shutil
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tnllm.cli.main import main
from tnllm.config import Settings
from tnllm.errors import ModelResolutionError, ModelUnavailable
from tnllm.model.demo import is_demo_checkpoint
from tnllm.model.download import COMPLETE_MARKER, resolve_model_path

MODEL_ID = "OpenNLPLab/TransNormerLLM-7B"


class FakeModelScope:
    """Stands in for modelscope's snapshot_download: copies a demo checkpoint into local_dir."""

    def __init__(self, source: Path | None, error: BaseException | None = None) -> None:
        self.source, self.error = source, error
        self.calls: list[dict[str, Any]] = []

    def __call__(
        self, model_id: str, revision: str | None = None, local_dir: str | None = None, **kw: Any
    ) -> str:
        self.calls.append({"model_id": model_id, "revision": revision, "local_dir": local_dir, **kw})
        if self.error is not None:
            raise self.error
        assert local_dir is not None
        if self.source is not None:
            shutil.copytree(self.source, local_dir, dirs_exist_ok=True)
        else:
            (Path(local_dir) / "README.md").write_text("not a checkpoint")
        return local_dir


@pytest.fixture()
def data_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("TNLLM_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.delenv("TNLLM_MODEL", raising=False)
    return tmp_path / "data"


def _install(monkeypatch: pytest.MonkeyPatch, fake: FakeModelScope) -> FakeModelScope:
    # the module, not the function of the same name that modelscope.hub re-exports
    module = importlib.import_module("modelscope.hub.snapshot_download")
    monkeypatch.setattr(module, "snapshot_download", fake)
    return fake


def test_download_into_data_dir_prints_path_and_is_loadable(
    demo_model_dir: Path, data_dir: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    fake = _install(monkeypatch, FakeModelScope(demo_model_dir))
    assert main(["download", "--revision", "v1.0"]) == 0
    target = data_dir / "models" / MODEL_ID
    assert capsys.readouterr().out.strip() == str(target.resolve())
    assert fake.calls == [{"model_id": MODEL_ID, "revision": "v1.0", "local_dir": str(target)}]
    assert (target / COMPLETE_MARKER).is_file()
    from tnllm.model import load_pretrained
    from tnllm.text.tokenizer import Tokenizer

    load_pretrained(target)
    assert Tokenizer.from_pretrained(target).vocab_size == 1024
    # complete for this revision: no second transfer
    assert main(["download", "--revision", "v1.0"]) == 0
    assert len(fake.calls) == 1
    # another revision downloads again (ModelScope resumes / skips what is there)
    assert main(["download", "--revision", "v2.0"]) == 0
    assert len(fake.calls) == 2


def test_download_explicit_id_and_dir(
    demo_model_dir: Path, data_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake = _install(monkeypatch, FakeModelScope(demo_model_dir))
    target = tmp_path / "elsewhere"
    assert main(["download", "OpenNLPLab/TransNormerLLM-1B", "--dir", str(target)]) == 0
    assert fake.calls[0]["model_id"] == "OpenNLPLab/TransNormerLLM-1B"
    assert fake.calls[0]["local_dir"] == str(target)
    assert (target / "config.json").is_file()


def test_offline_is_one_clear_line(
    data_dir: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    _install(monkeypatch, FakeModelScope(None, ConnectionError("[E1020] Connection failed: no route")))
    assert main(["download"]) == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    *steps, err = captured.err.strip().splitlines()
    assert steps == [f"tnllm download: downloading {MODEL_ID} (revision default) from ModelScope into "
                     f"{data_dir.resolve() / 'models' / MODEL_ID}"]  # fmt: skip
    assert err.startswith("tnllm download: error: ") and "Traceback" not in captured.err
    assert "offline or unreachable" in err and MODEL_ID in err
    # download has no --model flag: the hint names the command that has one
    assert "`tnllm up --model demo`" in err and "tnllm download --model" not in err


def test_interrupted_download_says_how_to_resume(
    data_dir: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    _install(monkeypatch, FakeModelScope(None, KeyboardInterrupt()))
    assert main(["download"]) == 130
    assert "again to resume" in capsys.readouterr().err


def test_a_folder_that_is_not_a_checkpoint_is_refused(
    data_dir: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    _install(monkeypatch, FakeModelScope(None))
    assert main(["download", "someone/not-a-model"]) == 1
    assert "is not a TransNormerLLM checkpoint" in capsys.readouterr().err
    assert not (data_dir / "models" / "someone" / "not-a-model" / COMPLETE_MARKER).exists()


def test_bad_model_id(data_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["download", "../../etc"]) == 1
    assert "not a ModelScope model id" in capsys.readouterr().err


def test_resolve_demo_writes_once(data_dir: Path) -> None:
    settings = Settings(model="demo")
    folder = resolve_model_path(settings)
    assert folder == data_dir / "demo-model"
    stamp = (folder / "pytorch_model.bin").stat().st_mtime_ns
    assert resolve_model_path(settings) == folder
    assert (folder / "pytorch_model.bin").stat().st_mtime_ns == stamp
    # an unmarked (interrupted) copy in tnllm's own demo folder is rewritten
    (folder / "tnllm_demo.json").unlink()
    (folder / "pytorch_model.bin").write_bytes(b"truncated")
    assert resolve_model_path(settings) == folder
    assert is_demo_checkpoint(folder) and (folder / "pytorch_model.bin").stat().st_size > 1000


def test_resolve_existing_folder_and_missing_path(
    demo_model_dir: Path, data_dir: Path, tmp_path: Path
) -> None:
    assert resolve_model_path(Settings(model=str(demo_model_dir))) == demo_model_dir
    with pytest.raises(ModelUnavailable, match=r"does not exist$"):  # the command adds its own hint
        resolve_model_path(Settings(model=str(tmp_path / "no" / "such" / "dir")))
    with pytest.raises(ModelResolutionError, match="is a file"):
        resolve_model_path(Settings(model=str(demo_model_dir / "config.json")))


def test_resolve_model_id_downloads_into_data_dir(
    demo_model_dir: Path, data_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake = _install(monkeypatch, FakeModelScope(demo_model_dir))
    folder = resolve_model_path(Settings(model="OpenNLPLab/TransNormerLLM-385M", model_revision="r1"))
    assert folder == data_dir / "models" / "OpenNLPLab" / "TransNormerLLM-385M"
    assert fake.calls[0]["revision"] == "r1"
    _install(monkeypatch, FakeModelScope(None, ConnectionError("offline")))
    # already complete: served without the network
    assert resolve_model_path(Settings(model="OpenNLPLab/TransNormerLLM-385M", model_revision="r1")) == folder
    with pytest.raises(ModelResolutionError, match="offline"):
        resolve_model_path(Settings(model="OpenNLPLab/TransNormerLLM-1B"))


@pytest.mark.slow
def test_real_modelscope_against_a_closed_local_port(tmp_path: Path) -> None:
    """No mock: modelscope itself, pointed at a loopback port nobody listens on (~10 s of retries)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {
        "PATH": "/usr/bin:/bin",
        "HOME": str(tmp_path),
        "MODELSCOPE_ENDPOINT": f"http://127.0.0.1:{port}",
        "MODELSCOPE_CACHE": str(tmp_path / "ms-cache"),
        "TNLLM_DATA_DIR": str(tmp_path / "data"),
    }
    proc = subprocess.run(
        [sys.executable, "-m", "tnllm.cli.main", "download", "OpenNLPLab/TransNormerLLM-385M"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        cwd=Path(__file__).parents[3],
    )
    assert proc.returncode == 1
    assert proc.stdout == ""
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("tnllm download: error: cannot download OpenNLPLab/TransNormerLLM-385M")
    assert "--model demo" in last and "Traceback" not in proc.stderr


def test_one_model_folder_mapping_for_the_api_the_engine_and_downloads(
    demo_model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """config.model_folder is pure (writes and downloads nothing); resolve_model_path (the engine
    factory's) and the API's local_model_folder both answer with it."""
    from tnllm.api.limits import local_model_folder
    from tnllm.config import model_folder

    data = tmp_path / "fresh"
    assert model_folder("demo", data) == data / "demo-model"
    assert model_folder(f" {demo_model_dir} ", data) == demo_model_dir
    assert model_folder("OpenNLPLab/TransNormerLLM-1B", data) == data / "models/OpenNLPLab/TransNormerLLM-1B"
    assert model_folder(str(tmp_path / "missing"), data) is None
    assert model_folder(str(demo_model_dir / "config.json"), data) is None
    assert not data.exists()  # nothing written
    # the API sees a folder only once it is there; the engine's resolution lands on the same path
    demo = Settings(model="demo", data_dir=data)
    assert local_model_folder(demo) is None
    assert resolve_model_path(demo) == model_folder("demo", data) == local_model_folder(demo)
    _install(monkeypatch, FakeModelScope(demo_model_dir))
    hub = Settings(model="OpenNLPLab/TransNormerLLM-385M", data_dir=data)
    assert local_model_folder(hub) is None
    assert resolve_model_path(hub) == model_folder(hub.model, data) == local_model_folder(hub)
    local = Settings(model=str(demo_model_dir), data_dir=data)
    assert resolve_model_path(local) == local_model_folder(local) == demo_model_dir
