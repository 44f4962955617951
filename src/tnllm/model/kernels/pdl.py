"""Programmatic dependent launch (PDL, Hopper and later) for the fast path's Triton kernels.

A decode step is ~150–240 short kernels in a row; normally the GPU lets one kernel drain before it
schedules the next. A kernel launched with PDL is scheduled while its predecessor's last wave runs
and waits on-chip (``griddepcontrol.wait``) for that predecessor's results; each of our kernels
lets its successor be scheduled as soon as it has started (``griddepcontrol.launch_dependents``).
Every kernel waits before it touches memory (``dependent_launch_prologue``, its first statement),
so each kernel's completion still implies all earlier ones completed. ``enabled()`` decides once
per process (CUDA capability 9.0+ and a Triton that has the ``gdc`` calls); ``set_enabled``
overrides it (benchmarks' A/B; graphs captured afterwards use the new setting).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

_enabled: bool | None = None


@triton.jit
def dependent_launch_prologue(PDL: tl.constexpr):
    """The first statement of each of our kernels: with PDL, let the next kernel be scheduled now,
    then wait for the previous kernel's results before touching memory."""
    if PDL:
        tl.extra.cuda.gdc_launch_dependents()
        tl.extra.cuda.gdc_wait()


def supported() -> bool:
    """This GPU and Triton can launch with PDL."""
    if not torch.cuda.is_available() or torch.cuda.get_device_capability()[0] < 9:
        return False
    try:
        import triton.language as tl

        cuda = tl.extra.cuda
        return hasattr(cuda, "gdc_wait") and hasattr(cuda, "gdc_launch_dependents")
    except (ImportError, AttributeError):
        return False


def enabled() -> bool:
    """Whether the fast path's kernels launch with PDL (decided on first call)."""
    global _enabled
    if _enabled is None:
        _enabled = supported()
    return _enabled


def set_enabled(on: bool) -> None:
    """Turn PDL on (where supported) or off for launches from now on."""
    global _enabled
    _enabled = bool(on) and supported()


def launch_args() -> dict[str, bool]:
    """Keyword arguments for a launch of one of our kernels: its ``PDL`` constexpr and, when on,
    Triton's ``launch_pdl``."""
    on = enabled()
    return {"PDL": True, "launch_pdl": True} if on else {"PDL": False}
