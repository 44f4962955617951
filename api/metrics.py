"""The API process's Prometheus registry (one per app, so tests can build many apps).

The metric definitions of the operations work register on this registry; ``/metrics`` exposes it.
"""

from __future__ import annotations

from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter


@dataclass
class ApiMetrics:
    """Counters the API itself updates."""

    registry: CollectorRegistry
    jobs_submitted: Counter
    jobs_rejected: Counter


def make_metrics() -> ApiMetrics:
    """A fresh registry with the API's own metrics."""
    registry = CollectorRegistry(auto_describe=True)
    return ApiMetrics(
        registry=registry,
        jobs_submitted=Counter(
            "tnllm_api_jobs_submitted", "Jobs stored and queued by this API process", registry=registry
        ),
        jobs_rejected=Counter(
            "tnllm_api_jobs_rejected",
            "Submissions refused, by reason",
            ["reason"],
            registry=registry,
        ),
    )
