"""Prometheus metrics of the API process (all named ``tnllm_*``) and the ``/metrics`` rendering.

Three sources end up on one page:
- per-process metrics of this API process (``ApiMetrics``): HTTP requests by route template and
  status, request and submit latency; recorded by ``MetricsMiddleware`` (pure ASGI, so SSE streams
  pass through untouched);
- queued jobs per priority (the job store's queue) and Celery messages per queue and priority (the
  broker's lists), read from Redis at scrape time;
- cluster-wide job counters (terminal states, run and queue-time histograms, tokens, webhook
  deliveries) that workers and the API add to one Redis hash (``tnllm/store/stats.py``).

Several uvicorn worker processes: start them with ``PROMETHEUS_MULTIPROC_DIR`` pointing at an empty
directory (``Settings.prometheus_multiproc_dir`` reads it); prometheus-client then keeps the
per-process values in files there and ``render`` sums them with a ``MultiProcessCollector``. The
Redis-backed parts are cluster-wide already.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from tnllm.config import Settings
from tnllm.protocol.celery import broker_lists
from tnllm.protocol.tasks import (
    GENERATE_QUEUE,
    MAX_PRIORITY,
    MIN_PRIORITY,
    WEBHOOK_QUEUE,
)
from tnllm.store import eta, flow, keys
from tnllm.store import stats as jobstats

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300)
_METHODS = frozenset({"GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"})
UNMATCHED = "<unmatched>"

CONTENT_TYPE = CONTENT_TYPE_LATEST


class ApiMetrics:
    """The API process's own metrics, in their own registry (one per app, so tests can build many)."""

    def __init__(
        self,
        registry: CollectorRegistry | None = None,
        *,
        submit_routes: Iterable[tuple[str, str]] = (("POST", "/v1/jobs"),),
        multiproc_dir: Path | None = None,
    ) -> None:
        self.registry = registry if registry is not None else CollectorRegistry(auto_describe=True)
        self.multiproc_dir = multiproc_dir
        self.submit_routes = frozenset(submit_routes)
        self.requests = Counter(
            "tnllm_http_requests",
            "HTTP requests answered, by method, route template and status code.",
            ["method", "route", "status"],
            registry=self.registry,
        )
        self.request_seconds = Histogram(
            "tnllm_http_request_duration_seconds",
            "Time from request to the end of the response body, by method and route template.",
            ["method", "route"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.submit_seconds = Histogram(
            "tnllm_job_submit_seconds",
            "Latency of accepting a job: validation, the Redis record and the Celery message.",
            ["status"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )

        self.jobs_submitted = Counter(
            "tnllm_api_jobs_submitted", "Jobs stored and queued by this API process.", registry=self.registry
        )
        self.jobs_rejected = Counter(
            "tnllm_api_jobs_rejected", "Submissions refused, by reason.", ["reason"], registry=self.registry
        )

    def observe_request(self, method: str, route: str, status: int, seconds: float) -> None:
        """Record one answered request."""
        method = method if method in _METHODS else "OTHER"
        self.requests.labels(method, route, str(status)).inc()
        self.request_seconds.labels(method, route).observe(seconds)
        if (method, route) in self.submit_routes:
            self.submit_seconds.labels(str(status)).observe(seconds)

    def render_local(self) -> bytes:
        """Exposition text of the per-process metrics (summed over processes in multiprocess mode)."""
        if self.multiproc_dir is None:
            return generate_latest(self.registry)
        from prometheus_client import multiprocess

        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry, path=str(self.multiproc_dir))
        return generate_latest(registry)


def make_metrics(settings: Settings | None = None) -> ApiMetrics:
    """The API's metrics for one app (multiprocess mode when ``PROMETHEUS_MULTIPROC_DIR`` is set)."""
    if settings is None:
        return ApiMetrics()
    return ApiMetrics(multiproc_dir=settings.prometheus_multiproc_dir)


def route_template(scope: Scope) -> str:
    """The matched route's path template (``/v1/jobs/{job_id}``), never the raw path (cardinality)."""
    route = scope.get("route")
    path = getattr(route, "path_format", None) or getattr(route, "path", None)
    return path if isinstance(path, str) and path else UNMATCHED


class MetricsMiddleware:
    """Pure ASGI middleware: counts every HTTP response by route template and status."""

    def __init__(self, app: ASGIApp, metrics: ApiMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 500  # what the client gets if the app raises before answering

        async def send_wrapper(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            self.metrics.observe_request(
                scope.get("method", "GET"), route_template(scope), status, time.perf_counter() - start
            )


# --- scrape-time values read from Redis -------------------------------------------------------


async def read_broker_depths(redis: Any, queues: Sequence[str]) -> dict[tuple[str, int], int]:
    """``LLEN`` of every broker list (``protocol.celery.broker_lists``): ``{(queue, job priority):
    messages waiting}``."""
    names = [(q, step, name) for q in queues for step, name in broker_lists(q).items()]
    async with redis.pipeline(transaction=False) as pipe:
        for _, _, name in names:
            pipe.llen(name)
        counts = await pipe.execute()
    # kombu pops lower steps first; the job priority is the reverse (tnllm.protocol.tasks.broker_priority)
    return {(q, MAX_PRIORITY - step): int(n) for (q, step, _), n in zip(names, counts, strict=True)}


async def read_queued_jobs(redis: Any) -> dict[int, int]:
    """Queued jobs in the job store, by job priority (one score band of ``tnllm:queue`` each)."""
    priorities = range(MIN_PRIORITY, MAX_PRIORITY + 1)
    async with redis.pipeline(transaction=False) as pipe:
        for p in priorities:
            low = keys.queue_score(p, 0, MAX_PRIORITY)
            pipe.zcount(keys.QUEUE, low, f"({low + keys.PRIORITY_BAND}")
        counts = await pipe.execute()
    return {p: int(n) for p, n in zip(priorities, counts, strict=True)}


def _cluster_families(
    stats: jobstats.JobStats, queued: Mapping[int, int], broker: Mapping[tuple[str, int], int]
) -> list[Metric]:
    depth = GaugeMetricFamily(
        "tnllm_queue_depth", "Jobs queued, by job priority (higher runs first).", labels=["priority"]
    )
    for priority, n in sorted(queued.items()):
        depth.add_metric([str(priority)], n)
    messages = GaugeMetricFamily(
        "tnllm_broker_messages",
        "Celery messages waiting in the broker, by queue and job priority.",
        labels=["queue", "priority"],
    )
    for (queue, priority), n in sorted(broker.items()):
        messages.add_metric([queue, str(priority)], n)
    finished = CounterMetricFamily(
        "tnllm_jobs_finished", "Jobs that reached a terminal state, by state.", labels=["state"]
    )
    for state, n in stats.finished.items():
        finished.add_metric([state], n)
    failed = CounterMetricFamily("tnllm_jobs_failed", "Failed jobs by error code.", labels=["reason"])
    for reason, n in sorted(stats.failed_reasons.items()):
        failed.add_metric([reason], n)
    tokens = CounterMetricFamily("tnllm_tokens", "Tokens of finished jobs, by kind.", labels=["kind"])
    for kind, n in stats.tokens.items():
        tokens.add_metric([kind], n)
    hooks = CounterMetricFamily(
        "tnllm_webhook_deliveries", "Webhook delivery attempts, by outcome.", labels=["outcome"]
    )
    for outcome, n in stats.webhooks.items():
        hooks.add_metric([outcome], n)
    out: list[Metric] = [depth, messages, finished, failed, tokens, hooks]
    for name, doc, hist in (
        (
            "tnllm_job_duration_seconds",
            "Time a job ran on a worker (start to terminal state).",
            stats.duration,
        ),
        ("tnllm_job_queue_seconds", "Time a job waited in the queue before a worker took it.", stats.queued),
    ):
        assert hist is not None
        family = HistogramMetricFamily(name, doc)
        family.add_metric([], [(_le(le), float(n)) for le, n in hist.buckets], hist.sum)
        out.append(family)
    return out


def _le(bound: float) -> str:
    return floatToGoString(bound)  # the same spelling prometheus-client's own histograms use


class _Static(Collector):
    def __init__(self, families: list[Metric]) -> None:
        self.families = families

    def collect(self) -> Iterable[Metric]:
        return self.families


async def render(
    metrics: ApiMetrics,
    redis: Any,
    *,
    queues: Sequence[str] = (GENERATE_QUEUE, WEBHOOK_QUEUE),
) -> bytes:
    """The whole ``/metrics`` page: this process's metrics plus the Redis-backed cluster view."""
    queued = await read_queued_jobs(redis)
    broker = await read_broker_depths(redis, queues)
    stats = jobstats.parse(await redis.hgetall(jobstats.KEY))
    cluster = CollectorRegistry()
    families = _cluster_families(stats, queued, broker)
    families.append(await _queue_wait(redis))
    cluster.register(_Static(families))
    return metrics.render_local() + generate_latest(cluster)


async def _queue_wait(redis: Any) -> Metric:
    """The estimated wait of the last queued job (``store.eta``): how long a job sent now waits."""
    wait = GaugeMetricFamily(
        "tnllm_queue_estimated_wait_seconds",
        "Estimated seconds until the last queued job starts (0: nothing queued; absent: no live worker).",
    )
    last = await redis.zrange(keys.QUEUE, -1, -1)
    if not last:
        wait.add_metric([], 0.0)
        return wait
    estimate = await flow.run_async(eta.estimate(last[0]), redis, {})
    if estimate is not None and estimate.start_s is not None:
        wait.add_metric([], estimate.start_s)
    return wait
