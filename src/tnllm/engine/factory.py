"""build_engine(config): resolve the checkpoint, load model and tokenizer, size the pool, pick the backend."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import torch

from tnllm.config import EngineConfig
from tnllm.engine.backend import select_backend
from tnllm.engine.core import Engine
from tnllm.engine.states import StateBudgets, StateStore, model_fingerprint
from tnllm.engine.wire import EngineInfo

log = logging.getLogger(__name__)

CPU_DEFAULT_SLOTS = 64
MAX_DERIVED_SLOTS = 256
# Share of free memory the state pool may take; the rest is for weights' activations and prefill.
STATE_MEMORY_FRACTION = 0.4


def resolve_device(name: str) -> torch.device:
    """``auto`` → cuda when available, else cpu; anything else as given."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    """``auto`` → bfloat16 on CUDA, float32 elsewhere; else the named dtype."""
    if name == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    dtypes = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
    if name not in dtypes:
        raise ValueError(f"unknown dtype {name!r} (expected one of auto, {', '.join(dtypes)})")
    return dtypes[name]


def resolve_state_dtype(name: str, device: torch.device) -> torch.dtype:
    """The recurrent-state dtype: float32, or bfloat16 on CUDA only (the reference CPU ops keep fp32)."""
    if name == "float32":
        return torch.float32
    if name == "bfloat16":
        if device.type != "cuda":
            raise ValueError(f"state_dtype bfloat16 needs a CUDA device (this worker runs on {device})")
        return torch.bfloat16
    raise ValueError(f"unknown state_dtype {name!r} (expected float32 or bfloat16)")


def derive_slots(model: Any, device: torch.device, state_dtype: torch.dtype = torch.float32) -> int:
    """How many sequences fit: a share of free device memory over the per-sequence state size."""
    per_seq = int(model.state_bytes_per_sequence(state_dtype))
    if device.type == "cuda":
        free, _total = torch.cuda.mem_get_info(device)
        return max(1, min(MAX_DERIVED_SLOTS, int(free * STATE_MEMORY_FRACTION) // per_seq))
    try:
        avail = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError):
        return CPU_DEFAULT_SLOTS
    return max(1, min(CPU_DEFAULT_SLOTS, int(avail * STATE_MEMORY_FRACTION) // per_seq))


def model_path(config: EngineConfig) -> Path:
    """The checkpoint folder of ``config.model`` (``tnllm.config.model_folder``), written (demo)
    or downloaded first when it is not there yet."""
    from tnllm.model.download import resolve_model_path

    return Path(resolve_model_path(config))


def engine_info(engine: Engine, path: Path) -> EngineInfo:
    """What an engine client reports of its engine: limits, and the device and weight dtype as
    text (``"cuda:0"``, ``"bfloat16"``, the worker's metrics labels)."""
    return EngineInfo(
        slots=int(engine.slots),
        device=str(engine.device),
        dtype=str(next(engine.model.parameters()).dtype).removeprefix("torch."),
        max_context=int(engine.max_context),
        vocab_size=int(engine.vocab_size),
        has_tokenizer=engine.tokenizer is not None,
        model_path=str(path),
    )


def build_state_store(
    config: EngineConfig, model: Any, device: torch.device, state_dtype: torch.dtype
) -> StateStore | None:
    """The engine's state store (None when ``state_cache`` is off); files under ``<data_dir>/states``."""
    if not config.state_cache:
        return None
    budgets = StateBudgets(
        device=config.state_cache_device_bytes,
        host=config.state_cache_host_bytes,
        disk=config.state_cache_disk_bytes,
    )
    store = StateStore(
        model_fingerprint(model, state_dtype),
        device=device,
        dtype=state_dtype,
        budgets=budgets,
        directory=Path(config.data_dir) / "states",
        min_tokens=config.state_cache_min_tokens,
    )
    log.info("engine: state cache %s (%d states found on disk)", budgets, len(store))
    return store


def build_engine(config: EngineConfig) -> Engine:
    """The engine a worker process (or ``tnllm generate``) runs: model, tokenizer, slot pool, and the
    backend (``select_backend``: the CUDA fast path where it fits, else the reference model)."""
    from tnllm.model import load_pretrained
    from tnllm.text.tokenizer import load_tokenizer

    path = model_path(config)
    device = resolve_device(config.device)
    dtype = resolve_dtype(config.dtype, device)
    state_dtype = resolve_state_dtype(config.state_dtype, device)
    model = load_pretrained(path, device=device, dtype=dtype)
    model.eval()
    tokenizer = load_tokenizer(path, config)
    slots = config.engine_slots or derive_slots(model, device, state_dtype)
    log.info(
        "engine: model %s on %s/%s, %d slots (%s state), prefill budget %d tokens",
        path,
        device,
        dtype,
        slots,
        config.state_dtype,
        config.prefill_token_budget,
    )
    engine = Engine(
        model,
        tokenizer,
        slots=slots,
        prefill_token_budget=config.prefill_token_budget,
        max_context=config.max_context,
        state_dtype=state_dtype,
        backend=select_backend(model),
        preempt_gap=config.preempt_priority_gap if config.preemption else None,
        states=build_state_store(config, model, device, state_dtype),
    )
    # the fast backend tunes every kernel variant now and captures the decode graphs for this pool
    if engine.runner.prepare(max_batch=slots):
        log.info("engine: CUDA graphs captured for decode batches up to %d", slots)
    return engine
