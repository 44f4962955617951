"""`tnllm --version`, and the model commands living in the cli room (their behaviour is tested in
tests/model/test_download.py and tests/model/test_demo.py, through the same ``main``)."""

from __future__ import annotations

import importlib
import subprocess
import sys
from pathlib import Path

import pytest

import tnllm
from tnllm.cli.main import HANDLERS, main


def test_version_prints_the_package_version(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["--version"])
    assert exit_info.value.code == 0
    assert capsys.readouterr().out.strip() == f"tnllm {tnllm.__version__}"


def test_version_of_the_installed_command() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "tnllm", "--version"], capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == f"tnllm {tnllm.__version__}"


def test_every_command_is_implemented_in_the_cli_room() -> None:
    for command, target in HANDLERS.items():
        module, _, func = target.partition(":")
        assert module.startswith("tnllm.cli."), command
        assert callable(getattr(importlib.import_module(module), func)), command
    for library in ("tnllm.model.download", "tnllm.model.demo"):
        assert not [name for name in vars(importlib.import_module(library)) if name.startswith("cmd_")]


def test_demo_model_prints_the_folder_it_wrote(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "demo"
    assert main(["demo-model", str(out), "--seed", "1"]) == 0
    assert capsys.readouterr().out.strip() == str(out.resolve())
    assert (out / "config.json").is_file() and (out / "tokenizer.model").is_file()
