"""Redis clients from one URL (any kind the broker takes: ``tnllm.protocol.urls``), under ONE policy.

The retry policy, for the sync and the asyncio client alike: a connection error (a pooled
connection closed by a Redis restart, a reset) is retried on a fresh connection; a timeout is not,
since a command that timed out may still run on a slow server and a non-idempotent write must not
run twice. A connection error can also hide a lost reply (the command ran, the answer did not come
back), so every script a retry may replay recognises its own replay (``scripts/*.lua``); the store
itself resends the few scripts that are safe to replay after a timeout (``flow.replayed_on_timeout``).
"""

from __future__ import annotations

from typing import Any

import redis
import redis.asyncio as aioredis
from redis.asyncio.retry import Retry as AsyncRetry
from redis.asyncio.sentinel import Sentinel as AsyncSentinel
from redis.backoff import ExponentialWithJitterBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.retry import Retry
from redis.sentinel import Sentinel

from tnllm.protocol.urls import SentinelURL, is_sentinel, parse_sentinel_url

#: The errors the client retries by itself (timeouts are not among them; see the module docstring).
RETRIED_ERRORS: tuple[type[Exception], ...] = (RedisConnectionError,)
#: Attempts after the first, with jittered exponential backoff from 10 ms up to 0.5 s.
RETRIES = 3
#: Connections per client pool; opened only as callers need them. redis-py 8 caps a pool at 100 by
#: default: a GPU worker runs one Celery thread per slot (256) and the API parks one per ?wait=/SSE.
MAX_POOL_CONNECTIONS = 4096


def _backoff() -> ExponentialWithJitterBackoff:
    return ExponentialWithJitterBackoff(base=0.01, cap=0.5)


def _options(kwargs: dict[str, Any], *, connect_timeout: float, asyncio: bool) -> dict[str, Any]:
    """The store's client options (decoded strings, bounded waits, the retry policy) under ``kwargs``.

    ``socket_timeout`` must stay above the longest ``XREAD BLOCK`` a caller issues.
    """
    retry = (AsyncRetry if asyncio else Retry)(_backoff(), RETRIES, supported_errors=RETRIED_ERRORS)
    return {
        "socket_connect_timeout": connect_timeout,
        "socket_timeout": 30,
        "health_check_interval": 30,
        "max_connections": MAX_POOL_CONNECTIONS,
        "retry": retry,
        "retry_on_error": list(RETRIED_ERRORS),
        **kwargs,
        "decode_responses": True,
    }


def redis_client(url: str, **kwargs: Any) -> redis.Redis:
    """A sync client configured the way the store needs (workers, reaper, webhook worker, tools)."""
    return sync_client(url, **_options(kwargs, connect_timeout=5, asyncio=False))


def async_redis_client(url: str, **kwargs: Any) -> aioredis.Redis:
    """The asyncio client configured the way the store needs (the API: it fails fast, in 3 s, to a 503)."""
    return async_client(url, **_options(kwargs, connect_timeout=3, asyncio=True))


def _master_kwargs(spec: SentinelURL, kwargs: dict[str, Any]) -> dict[str, Any]:
    return {"db": spec.db, "username": spec.username, "password": spec.password, **kwargs}


def _sentinel_kwargs(kwargs: dict[str, Any]) -> dict[str, Any]:
    # Only timeouts apply to the sentinels; auth and decoding are the master's.
    return {k: kwargs[k] for k in ("socket_timeout", "socket_connect_timeout") if k in kwargs}


class _SentinelRedis(redis.Redis):
    """A master client that also closes its connections to the sentinels."""

    sentinel_manager: Sentinel | None = None

    def close(self) -> None:
        super().close()
        for node in self.sentinel_manager.sentinels if self.sentinel_manager else []:
            node.close()


class _AsyncSentinelRedis(aioredis.Redis):
    """The asyncio twin of ``_SentinelRedis``."""

    sentinel_manager: AsyncSentinel | None = None

    async def aclose(self, close_connection_pool: bool | None = None) -> None:
        await super().aclose(close_connection_pool)
        for node in self.sentinel_manager.sentinels if self.sentinel_manager else []:
            await node.aclose()


def sync_client(url: str, *, sentinel_master: str | None = None, **kwargs: Any) -> redis.Redis:
    """A redis-py client for ``url`` (a Sentinel URL gives a client that follows the master)."""
    if not is_sentinel(url):
        return redis.Redis.from_url(url, **kwargs)
    spec = parse_sentinel_url(url, sentinel_master)
    sentinel = Sentinel(spec.sentinels, **_sentinel_kwargs(kwargs))
    client = sentinel.master_for(spec.master, redis_class=_SentinelRedis, **_master_kwargs(spec, kwargs))
    client.sentinel_manager = sentinel
    return client


def async_client(url: str, *, sentinel_master: str | None = None, **kwargs: Any) -> aioredis.Redis:
    """The ``redis.asyncio`` twin of ``sync_client``."""
    if not is_sentinel(url):
        return aioredis.Redis.from_url(url, **kwargs)
    spec = parse_sentinel_url(url, sentinel_master)
    sentinel = AsyncSentinel(spec.sentinels, **_sentinel_kwargs(kwargs))
    client = sentinel.master_for(spec.master, redis_class=_AsyncSentinelRedis, **_master_kwargs(spec, kwargs))
    client.sentinel_manager = sentinel
    return client
