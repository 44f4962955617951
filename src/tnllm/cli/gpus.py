"""Which GPU each worker process of `tnllm up --workers N` gets (torch-free).

One worker process per GPU: worker ``i`` sees only GPU ``gpus[i % len(gpus)]`` through
``CUDA_VISIBLE_DEVICES`` (so inside it the GPU is ``cuda:0``). The GPUs are those already visible
to the launcher (its ``CUDA_VISIBLE_DEVICES``), else the ones ``nvidia-smi`` lists. Without GPUs,
or with an explicit ``TNLLM_DEVICE`` other than ``auto``/``cuda``, nothing is pinned.
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Mapping


def visible_gpus(env: Mapping[str, str]) -> list[str]:
    """GPU ids the launcher may hand out ([] when there are none)."""
    listed = env.get("CUDA_VISIBLE_DEVICES")
    if listed is not None:
        return [g.strip() for g in listed.split(",") if g.strip() and g.strip() != "-1"]
    smi = shutil.which("nvidia-smi")
    if not smi:
        return []
    try:
        out = subprocess.run(
            [smi, "--query-gpu=index", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=20,
            check=True,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    return [line.strip() for line in out.splitlines() if line.strip().isdigit()]


def worker_env(index: int, env: Mapping[str, str], device: str, gpus: list[str]) -> dict[str, str]:
    """The environment of worker ``index``: ``env`` with its GPU pinned when there is one to pin."""
    out = dict(env)
    if gpus and device in ("auto", "cuda"):
        out["CUDA_VISIBLE_DEVICES"] = gpus[index % len(gpus)]
    return out
