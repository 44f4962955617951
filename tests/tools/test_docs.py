"""The numbers in docs/DEPLOYMENT.md come from the model code and the engine's sizing rule."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

from tnllm.engine import factory
from tnllm.model.config import TransnormerConfig
from tnllm.model.modeling import TransnormerLM

DEPLOYMENT = Path(__file__).resolve().parents[2] / "docs" / "DEPLOYMENT.md"
GIB = 2**30
KEYS = ("decoder_embed_dim", "decoder_layers", "decoder_attention_heads", "glu_dim", "vocab_size")
#: (D, L, H, F, vocab) as the doc's table lists them; LRPE on layer 0, E = D.
CONFIGS = {
    "7B": dict(zip(KEYS, (4096, 30, 32, 11008, 64000), strict=True)),
    "1B": dict(zip(KEYS, (2048, 16, 16, 5632, 64000), strict=True)),
    "385M-like": dict(zip(KEYS, (1024, 24, 8, 2816, 50272), strict=True)),
}


def _rows(text: str, first_cell: str) -> list[list[str]]:
    rows = []
    for line in text.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if line.startswith("|") and cells[0] == first_cell:
            rows.append(cells)
    return rows


def _int(cell: str) -> int:
    return int(re.match(r"[\d,]+", cell).group().replace(",", ""))  # type: ignore[union-attr]


def _meta_model(name: str) -> TransnormerLM:
    cfg = CONFIGS[name]
    lrpe = (1,) + (0,) * (cfg["decoder_layers"] - 1)
    with torch.device("meta"):  # shapes only: no memory, no init
        return TransnormerLM(
            TransnormerConfig(hidden_dim=cfg["decoder_embed_dim"], linear_use_lrpe_list=lrpe, **cfg)
        )


@pytest.mark.parametrize("name", list(CONFIGS))
def test_model_table_matches_the_model_code(name: str) -> None:
    text = DEPLOYMENT.read_text()
    (row,) = _rows(text, name)[:1]
    cfg = CONFIGS[name]
    assert tuple(int(x) for x in row[1].split(";")[0].split(",")) == tuple(cfg[k] for k in KEYS)
    model = _meta_model(name)
    params = sum(p.numel() for p in model.parameters())
    state = model.state_bytes_per_sequence()
    assert _int(row[2]) == params
    assert row[3] == f"{params * 2 / 1e9:.2f} GB"
    assert _int(row[4]) == state and f"({state / 2**20:.1f} MiB)" in row[4]


def test_slot_table_follows_the_engine_sizing_rule() -> None:
    text = DEPLOYMENT.read_text()
    checked = 0
    for memory in ("80 GB", "24 GB"):
        card = int(memory.split()[0]) * GIB
        for row in _rows(text, memory):
            model = _meta_model(row[1].split()[0])
            weights = sum(p.numel() for p in model.parameters()) * 2
            state = model.state_bytes_per_sequence()
            free = card - GIB - weights
            raw = int(free * factory.STATE_MEMORY_FRACTION) // state
            assert row[2] == f"{free / GIB:.1f} GiB"
            assert _int(row[3]) == min(factory.MAX_DERIVED_SLOTS, raw)
            if raw > factory.MAX_DERIVED_SLOTS:
                assert f"({raw})" in row[3] or f"gives {raw})" in row[3]
            assert _int(row[4]) == free // state
            checked += 1
    assert checked == 6
    assert f"min({factory.MAX_DERIVED_SLOTS}, floor({factory.STATE_MEMORY_FRACTION} ×" in text


def test_operations_lists_exactly_the_metrics_the_code_defines() -> None:
    root = DEPLOYMENT.parent.parent
    defined: set[str] = set()
    for path in ("src/tnllm/api/metrics.py", "src/tnllm/worker/metrics.py"):
        defined.update(re.findall(r'"(tnllm_[a-z_]+)"', (root / path).read_text()))
    counters = {"tnllm_http_requests", "tnllm_api_jobs_submitted", "tnllm_api_jobs_rejected"}
    counters |= {"tnllm_jobs_finished", "tnllm_jobs_failed", "tnllm_tokens", "tnllm_webhook_deliveries"}
    counters |= {"tnllm_engine_steps", "tnllm_engine_generated_tokens", "tnllm_engine_finished_requests"}
    counters |= {
        "tnllm_engine_overlapped_steps",
        "tnllm_engine_busy_seconds",
        "tnllm_engine_device_wait_seconds",
        "tnllm_engine_device_busy_seconds",
        "tnllm_engine_prefills",
        "tnllm_engine_forked_choices",
        "tnllm_engine_prefill_tokens",
        "tnllm_engine_cached_tokens",
        "tnllm_state_cache_hits",
        "tnllm_state_cache_misses",
        "tnllm_state_cache_evictions",
        "tnllm_engine_preemptions",
        "tnllm_engine_resumed_tokens",
    }
    exposed = {f"{m}_total" if m in counters else m for m in defined}
    ops = (root / "docs" / "OPERATIONS.md").read_text()
    documented = set(re.findall(r"^\| `(tnllm_[a-z_]+)` \|", ops, flags=re.M))
    assert documented == exposed, (documented - exposed, exposed - documented)
