"""One delivery attempt and the retry decision after it.

An attempt is one signed POST through the pinned transport, never following redirects, cut off
after ``Settings.webhook_timeout`` seconds in total (connect + send + wait + read), whatever the
receiver does. Any 2xx delivers; 410 Gone stops; everything else (other statuses, redirects,
timeouts, connection and DNS errors) is retried on the ``webhook_retry_delays`` schedule with
jitter; a URL whose addresses are refused at delivery time fails without retry.
"""

from __future__ import annotations

import asyncio
import random
import time
from dataclasses import dataclass
from typing import Any, Literal

import httpx

from tnllm.errors import ResolutionError, WebhookURLError
from tnllm.store.webhooks import iso, now_ms
from tnllm.webhooks.transport import PinnedTransport

Outcome = Literal["delivered", "retry", "stop"]
#: bytes of a receiver's answer we read (and discard): enough to finish a normal reply
MAX_RESPONSE_BYTES = 64 * 1024
#: delays are scaled by a random factor in [1 - JITTER, 1 + JITTER] so failed receivers that
#: recover are not hit by every queued retry in the same second
JITTER = 0.1
USER_AGENT = "tnllm-webhooks/1"


@dataclass(frozen=True)
class AttemptResult:
    """One row of a delivery's ``attempts`` log, plus what to do next."""

    at_ms: int
    status_code: int | None
    error: str | None
    duration_ms: int
    outcome: Outcome

    def log_row(self) -> dict[str, Any]:
        return {
            "at": iso(self.at_ms),
            "status_code": self.status_code,
            "error": self.error,
            "duration_ms": self.duration_ms,
        }


async def attempt(
    url: str, body: str, headers: dict[str, str], timeout: float, transport: PinnedTransport
) -> AttemptResult:
    """POST ``body`` to ``url`` once; never raises for receiver-side problems."""
    at = now_ms()
    start = time.monotonic()
    status: int | None = None
    error: str | None = None
    outcome: Outcome = "retry"
    all_headers = {"content-type": "application/json", "user-agent": USER_AGENT, **headers}
    try:
        async with (
            asyncio.timeout(timeout),
            httpx.AsyncClient(transport=transport, follow_redirects=False, timeout=timeout) as client,
            client.stream("POST", url, content=body.encode(), headers=all_headers) as response,
        ):
            status = response.status_code
            await _drain(response)
        if 200 <= status < 300:
            outcome = "delivered"
        elif status == 410:
            outcome, error = "stop", "410 Gone: receiver asked to stop"
        elif response.is_redirect:
            error = f"redirect not followed ({status} to {response.headers.get('location', '?')})"
        else:
            error = f"HTTP {status}"
    except TimeoutError:
        error = f"timed out after {timeout:g} s"
    except ResolutionError as exc:
        error = str(exc)
    except WebhookURLError as exc:
        outcome, error = "stop", str(exc)
    except httpx.HTTPError as exc:
        error = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
    duration = int((time.monotonic() - start) * 1000)
    return AttemptResult(at, status, error, duration, outcome)


async def _drain(response: httpx.Response) -> None:
    read = 0
    async for chunk in response.aiter_raw():
        read += len(chunk)
        if read >= MAX_RESPONSE_BYTES:
            break


def next_delay(delays: list[float], attempts_made: int, rng: random.Random | None = None) -> float | None:
    """Seconds before the next attempt after ``attempts_made`` failures, or None when out of retries."""
    if attempts_made < 1 or attempts_made > len(delays):
        return None
    base = max(0.0, float(delays[attempts_made - 1]))
    return base * (rng or random).uniform(1 - JITTER, 1 + JITTER)
