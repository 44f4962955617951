"""GPU test set-up: shrink fla's autotuning so each kernel variant compiles once instead of ~48 times.

Production keeps fla's full autotune (run once at worker start); correctness does not depend on the
tile configuration, and without this each new (dtype, width) variant costs ~30 s of tuning.
"""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session", autouse=True)
def _fla_single_config() -> None:
    import torch

    if not torch.cuda.is_available():
        return
    try:
        import fla.ops.common.chunk_h as chunk_h
        import fla.ops.common.chunk_o as chunk_o
        from triton.runtime.autotuner import Autotuner
    except ImportError:
        return
    for mod in (chunk_h, chunk_o):
        for obj in vars(mod).values():
            for _ in range(3):  # @triton.heuristics wraps the autotuner: look through .fn
                if isinstance(obj, Autotuner) and len(obj.configs) > 1:
                    small = [c for c in obj.configs if c.num_warps == 4 and c.num_stages in (None, 2, 3)]
                    obj.configs = (small or obj.configs)[:1]
                    break
                obj = getattr(obj, "fn", None)
