"""``create_app(settings)``: the FastAPI application of tnllm (never imports torch).

The lifespan owns the per-process services: the redis.asyncio client and job store, the pub/sub
finish watcher, the Celery producer, the prompt token counter and the metrics registry.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator

import anyio
from fastapi import FastAPI
from fastapi_offline import FastAPIOffline

from tnllm.api.body import StrictJsonMiddleware
from tnllm.api.contract import install_openapi
from tnllm.api.deps import Services
from tnllm.api.errors import install_error_handlers
from tnllm.api.limits import BodyLimitMiddleware, PromptCounter
from tnllm.api.metrics import ApiMetrics, MetricsMiddleware, make_metrics
from tnllm.api.notify import FinishWatcher
from tnllm.api.openai.batching import Batches, BatchFinalizer
from tnllm.api.openai.errors import malformed_refusal, oversize_refusal
from tnllm.api.producer import JobProducer
from tnllm.api.routes import batches, compat, health, jobs, openai, pause, prefixes, ui
from tnllm.config import Settings
from tnllm.store import AsyncJobStore, async_redis_client

log = logging.getLogger(__name__)

#: Where Swagger UI's and ReDoc's own files are served.
DOCS_STATIC_URL = "/docs/static"

DESCRIPTION = """\
Queue-backed text generation with TransNormerLLM.

Submit with `POST /v1/jobs` (answer: 202 + job object), then poll `GET /v1/jobs/{id}` (`?wait=N` to
long-poll), stream tokens with `GET /v1/jobs/{id}/stream` (SSE) or cancel. Errors are always
`{"error": {"type", "message", ...}}`. When API keys are configured, send `Authorization: Bearer <key>`;
jobs belong to the key that made them.
"""


def build_services(settings: Settings, metrics: ApiMetrics) -> Services:
    """The per-process services (no I/O happens until they are used)."""
    if not settings.redis_url:
        raise ValueError("the API needs TNLLM_REDIS_URL (or start everything with `tnllm up`)")
    client = async_redis_client(
        settings.redis_url, sentinel_master=settings.redis_sentinel_master, **settings.redis_socket_options()
    )
    return Services(
        settings=settings,
        store=AsyncJobStore(client, settings),
        watcher=FinishWatcher(client),
        producer=JobProducer(settings),
        counter=PromptCounter(settings),
        metrics=metrics,
    )


def create_app(settings: Settings) -> FastAPI:
    """The API application; ``settings`` is the process's one Settings object."""
    metrics = make_metrics(settings)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        services = build_services(settings, metrics)
        app.state.services = services
        services.watcher.start()
        finalizer = BatchFinalizer(Batches(services), settings.batch_poll_interval)
        finalizer.start()
        app.state.batch_finalizer = finalizer
        # Load the tokenizer off the event loop now rather than inside the first request.
        await anyio.to_thread.run_sync(services.counter.tokenizer)
        try:
            yield
        finally:
            await finalizer.stop()
            await services.watcher.stop()
            services.producer.close()
            await services.store.client.aclose()

    # /docs and /redoc with Swagger UI's and ReDoc's assets from the fastapi-offline package (no CDN);
    # no validator badge either: it would call swagger.io.
    app = FastAPIOffline(
        title="tnllm",
        version="0.1.0",
        description=DESCRIPTION,
        lifespan=lifespan,
        docs_url="/docs",
        redoc_url="/redoc",
        static_url=DOCS_STATIC_URL,
        swagger_ui_parameters={"validatorUrl": None},
    )
    install_error_handlers(app)
    app.add_middleware(  # inside the size limit; OpenAI's error shape on its routes
        StrictJsonMiddleware, max_depth=settings.max_body_depth, refusal=malformed_refusal
    )
    app.add_middleware(
        BodyLimitMiddleware,
        max_bytes=settings.max_body_bytes,
        overrides={"/v1/files": settings.batch_max_file_bytes + 64 * 1024},  # + multipart framing
        refusal=oversize_refusal,
    )
    app.add_middleware(MetricsMiddleware, metrics=metrics)  # outermost: sees 413s too
    app.include_router(jobs.router)
    app.include_router(pause.router)
    app.include_router(prefixes.router)
    app.include_router(health.router)
    app.include_router(compat.router)
    app.include_router(openai.router)
    app.include_router(batches.router)
    app.include_router(ui.router)
    app.mount(ui.STATIC_URL, ui.static_files(), name="ui-static")
    install_openapi(app, settings)  # the document adds what every route inherits (tnllm.api.contract)
    return app
