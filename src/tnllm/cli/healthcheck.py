"""Container health checks without curl: ``python -m tnllm.cli.healthcheck http|celery ...``.

- ``http URL [--expect TEXT]``: healthy when URL answers 200 (and the body contains TEXT).
- ``celery --node NAME``: healthy when the Celery node NAME answers a ping over the broker
  (``%h`` in NAME is this host name, as in ``celery worker --hostname``).

Exit status 0 = healthy, 1 = not (the reason on stderr), as Docker's HEALTHCHECK expects.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

import httpx


def check_http(url: str, expect: str | None = None, timeout: float = 5.0) -> str | None:
    """None when ``url`` answers 200 (containing ``expect``); otherwise why not."""
    try:
        response = httpx.get(url, timeout=timeout)
    except httpx.HTTPError as exc:
        return f"{url}: {exc.__class__.__name__}: {exc}"
    if response.status_code != 200:
        return f"{url}: HTTP {response.status_code}"
    if expect is not None and expect not in response.text:
        return f"{url}: answer lacks {expect!r}"
    return None


def check_celery(node: str, timeout: float = 5.0) -> str | None:
    """None when the Celery node answers a broker ping; otherwise why not."""
    from celery.utils.nodenames import host_format

    from tnllm.config import Settings
    from tnllm.protocol.celery import make_celery

    node = host_format(node)  # %h etc. exactly as `celery worker --hostname` expands them
    app = make_celery(Settings())
    try:
        replies = app.control.ping(destination=[node], timeout=timeout)
    except Exception as exc:  # broker down, bad URL...: unhealthy, with the reason
        return f"ping {node}: {exc.__class__.__name__}: {exc}"
    finally:
        app.close()
    if not any(node in reply for reply in replies):
        return f"ping {node}: no answer in {timeout}s"
    return None


def main(argv: Sequence[str] | None = None) -> int:
    """Run one check; exit 0 when healthy."""
    parser = argparse.ArgumentParser(
        prog="python -m tnllm.cli.healthcheck", description=__doc__.splitlines()[0]
    )
    sub = parser.add_subparsers(dest="kind", required=True)
    http = sub.add_parser("http")
    http.add_argument("url")
    http.add_argument("--expect")
    http.add_argument("--timeout", type=float, default=5.0)
    cel = sub.add_parser("celery")
    cel.add_argument("--node", required=True)
    cel.add_argument("--timeout", type=float, default=5.0)
    args = parser.parse_args(argv)
    if args.kind == "http":
        problem = check_http(args.url, args.expect, args.timeout)
    else:
        problem = check_celery(args.node, args.timeout)
    if problem:
        print(problem, file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
