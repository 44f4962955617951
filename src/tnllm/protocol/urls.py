"""Redis URLs as the job store and the Celery broker both read them (pure parsing, no I/O).

``redis://``, ``rediss://`` (TLS) and ``unix://`` pass through. ``sentinel://`` uses kombu's syntax so
the job store and the broker share ``TNLLM_REDIS_URL``:
``sentinel://[:PASSWORD@]HOST[:PORT][/DB][?master_name=NAME][;sentinel://HOST2[:PORT]...]``.
The password and database (from the first address that gives them) belong to the master; the
sentinels themselves are asked without auth, as kombu does. The master name comes from
``?master_name=``, else ``sentinel_master`` (``Settings.redis_sentinel_master``).
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import parse_qs, unquote, urlencode, urlsplit, urlunsplit

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
