"""Where a model lives: ``demo``, a local folder, or a ModelScope id downloaded into the data dir.

ModelScope's ``snapshot_download`` does the transfer (progress bars, resume of partial files); it
is imported only when a download actually happens.
"""

from __future__ import annotations

import importlib
import json
import logging
from pathlib import Path
from typing import Any

from tnllm.config import DEMO_MODEL, is_model_id, model_folder
from tnllm.errors import ModelResolutionError, ModelUnavailable

log = logging.getLogger(__name__)

COMPLETE_MARKER = "tnllm_download.json"


def model_dir_for(model_id: str, data_dir: str | Path) -> Path:
    """``<data_dir>/models/<owner>/<name>``: where a ModelScope model is kept."""
    if not is_model_id(model_id):
        raise ModelResolutionError(f"{model_id!r} is not a ModelScope model id (owner/name)")
    return Path(data_dir) / "models" / model_id


def resolve_model_path(settings: Any) -> Path:
    """The local checkpoint folder for ``settings.model`` (``tnllm.config.model_folder``), creating
    or downloading it if needed: the demo checkpoint is written once, a ModelScope id downloaded
    unless already complete.
    """
    model = str(settings.model).strip()
    folder = model_folder(model, Path(settings.data_dir))
    if model == DEMO_MODEL:
        from tnllm.model.demo import is_demo_checkpoint, write_demo_checkpoint

        assert folder is not None
        if not is_demo_checkpoint(folder):
            log.info("writing the tiny demo checkpoint to %s", folder)
            write_demo_checkpoint(folder, size="tiny", replace_any=True)
        return folder
    if folder is None:
        if Path(model).expanduser().exists():
            raise ModelResolutionError(f"model {model!r} is a file; give the checkpoint folder")
        raise ModelUnavailable(f"model folder {model!r} does not exist")
    if folder == Path(model).expanduser():  # an existing folder, named as itself
        return folder
    return download_model(model, folder, settings.model_revision)


def download_model(model_id: str, target: str | Path, revision: str | None = None) -> Path:
    """Download ``model_id`` into ``target`` (resuming partial files) and check it is a checkpoint.

    A folder already completed for the same revision is returned without network access.
    """
    folder = Path(target)
    marker = folder / COMPLETE_MARKER
    if marker.is_file() and _marker_matches(marker, model_id, revision):
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    snapshot_download = _snapshot_download()
    log.info("downloading %s (revision %s) from ModelScope into %s", model_id, revision or "default", folder)
    try:
        snapshot_download(model_id, revision=revision, local_dir=str(folder))
    except Exception as exc:  # modelscope raises many types; all mean "no checkpoint"
        raise ModelUnavailable(_download_failure(model_id, exc)) from exc
    validate_checkpoint_folder(folder)
    marker.write_text(json.dumps({"model_id": model_id, "revision": revision}) + "\n", encoding="utf-8")
    return folder


def _snapshot_download() -> Any:
    """ModelScope's ``snapshot_download`` (looked up at call time; the one thing tests replace)."""
    try:
        module = importlib.import_module("modelscope.hub.snapshot_download")
    except ImportError as exc:
        raise ModelUnavailable(
            "downloading needs the `modelscope` package (pip install 'tnllm[worker]')"
        ) from exc
    return module.snapshot_download


def _marker_matches(marker: Path, model_id: str, revision: str | None) -> bool:
    try:
        data = json.loads(marker.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(data, dict) and data.get("model_id") == model_id and data.get("revision") == revision


def _download_failure(model_id: str, exc: BaseException) -> str:
    # one short line: urllib3's "(Caused by NewConnectionError(...))" tail adds nothing for a person
    reason = " ".join(str(exc).split()).split(" (Caused by ")[0] or type(exc).__name__
    if len(reason) > 200:
        reason = reason[:199] + "…"
    if isinstance(exc, OSError):  # ConnectionError, timeouts, modelscope's NetworkError
        return f"cannot download {model_id} from ModelScope (offline or unreachable: {reason})"
    return f"cannot download {model_id} from ModelScope ({reason})"


def validate_checkpoint_folder(folder: str | Path) -> None:
    """Raise ``ModelResolutionError`` unless ``folder`` holds an official-format TransNormerLLM checkpoint."""
    from tnllm.errors import CheckpointError
    from tnllm.model.config import TransnormerConfig
    from tnllm.model.loading import weight_files

    path = Path(folder)
    try:
        TransnormerConfig.from_file(path)
        weight_files(path)
    except CheckpointError as exc:
        raise ModelResolutionError(f"{path} is not a TransNormerLLM checkpoint: {exc}") from exc
    if not (path / "tokenizer.model").is_file():
        log.warning("%s has no tokenizer.model: only --prompt-ids generation will work", path)
