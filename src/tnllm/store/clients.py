"""Redis clients from one URL, for every kind the Celery broker accepts.

``redis://``, ``rediss://`` (TLS) and ``unix://`` go to redis-py's ``from_url``. ``sentinel://`` uses
kombu's syntax so the job store and the broker share ``TNLLM_REDIS_URL``:
``sentinel://[:PASSWORD@]HOST[:PORT][/DB][?master_name=NAME][;sentinel://HOST2[:PORT]...]``.
The password and database (from the first address that gives them) belong to the master; the
sentinels themselves are asked without auth, as kombu does. The master name comes from
``?master_name=``, else ``sentinel_master`` (``Settings.redis_sentinel_master``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs, unquote, urlencode, urlsplit, urlunsplit

import redis
import redis.asyncio as aioredis
from redis.asyncio.sentinel import Sentinel as AsyncSentinel
from redis.sentinel import Sentinel

SENTINEL_SCHEME = "sentinel"
DEFAULT_SENTINEL_PORT = 26379
DEFAULT_MASTER = "mymaster"


@dataclass(frozen=True)
class SentinelURL:
    """A parsed ``sentinel://`` URL."""

    sentinels: list[tuple[str, int]]
    master: str
    db: int = 0
    username: str | None = None
    password: str | None = None


def is_sentinel(url: str) -> bool:
    """True for kombu-style ``sentinel://`` URLs."""
    return url.strip().lower().startswith(f"{SENTINEL_SCHEME}://")


def parse_sentinel_url(url: str, sentinel_master: str | None = None) -> SentinelURL:
    """Split a ``sentinel://a:26379;sentinel://b:26379/0?master_name=m`` URL; ValueError if malformed."""
    sentinels: list[tuple[str, int]] = []
    master, db, username, password = None, None, None, None
    for part in (p.strip() for p in url.split(";")):
        if not part:
            continue
        u = urlsplit(part)
        if u.scheme.lower() != SENTINEL_SCHEME or not u.hostname:
            raise ValueError(f"not a sentinel://host[:port] address: {part!r}")
        sentinels.append((u.hostname, u.port or DEFAULT_SENTINEL_PORT))
        if password is None and u.password is not None:
            password = unquote(u.password)
            username = unquote(u.username) if u.username else None
        path = u.path.strip("/")
        if db is None and path:
            if not path.isdigit():
                raise ValueError(f"the database in a sentinel URL must be a number, got {path!r}")
            db = int(path)
        master = master or parse_qs(u.query).get("master_name", [None])[0]
    if not sentinels:
        raise ValueError("empty sentinel URL")
    return SentinelURL(sentinels, master or sentinel_master or DEFAULT_MASTER, db or 0, username, password)


def broker_url(url: str) -> str:
    """``url`` as kombu takes it: ``?master_name=`` removed from sentinel addresses (kombu would pass
    it to the connection and fail; the broker gets the name from its transport options)."""
    if not is_sentinel(url):
        return url
    parts = []
    for part in (p.strip() for p in url.split(";") if p.strip()):
        u = urlsplit(part)
        query = {k: v for k, v in parse_qs(u.query).items() if k != "master_name"}
        parts.append(urlunsplit(u._replace(query=urlencode(query, doseq=True))))
    return ";".join(parts)


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
