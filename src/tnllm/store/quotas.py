"""Per-key limits shared by every API process: a submission rate and a daily token quota.

- Rate: at most ``rate_limit`` admitted submissions per owner in any ``RATE_WINDOW_S`` seconds (a
  sliding window: the zset ``tnllm:rate:{owner}`` holds the admitted submissions' times).
- Quota: completion tokens of an owner's finished jobs per UTC day, added by the finish path
  (``flow.record_finished``, wherever a job ends) to ``tnllm:usage:{owner}:{day}``. A submission
  is refused once the day's total has reached ``token_quota``; jobs already accepted always run,
  so a day can end a little over the quota.

``admit.lua`` checks both and counts the submission in one atomic step (the I/O-free halves are
here; ``AsyncJobStore.admit`` runs it).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from tnllm.store import keys
from tnllm.store.ops import ScriptCall

#: The rate limit's window: ``TNLLM_RATE_LIMIT`` is submissions per minute.
RATE_WINDOW_S = 60
#: The token quota's window: one UTC day.
DAY_S = 24 * 3600
#: Usage counters outlive their day by this much (reading yesterday's total stays possible).
USAGE_TTL_S = 2 * DAY_S


class Verdict(StrEnum):
    """What ``admit.lua`` decided (its own answer words)."""

    OK = "ok"
    RATE = "rate"  # over the submissions-per-minute limit
    TOKENS = "tokens"  # the day's completion tokens reached the quota


@dataclass(frozen=True)
class Admission:
    """The verdict and the counters behind it (for the ``RateLimit`` headers)."""

    verdict: Verdict
    submissions: int  # admitted submissions in the current window (this one included when admitted)
    rate_reset_s: float  # seconds until the oldest of them leaves the window
    tokens_used: int  # completion tokens used today
    quota_reset_s: float  # seconds until the UTC day ends

    @property
    def allowed(self) -> bool:
        """Whether the submission may go ahead."""
        return self.verdict is Verdict.OK


def day(now: float) -> int:
    """The UTC day of ``now`` (days since 1970-01-01)."""
    return int(now // DAY_S)


def admit_call(owner: str, member: str, now: float, rate_limit: int, token_quota: int) -> ScriptCall:
    """ADMIT: check ``owner``'s limits for one more submission (``member``: its job id)."""
    return ScriptCall(
        "admit",
        [keys.rate(owner), keys.usage(owner, day(now))],
        [repr(now), member, rate_limit, RATE_WINDOW_S, token_quota],
    )


def parse_admit(raw: Any, now: float) -> Admission:
    """Decode ADMIT's answer."""
    verdict, submissions, reset, used = (str(x) for x in raw)
    return Admission(
        verdict=Verdict(verdict),
        submissions=int(submissions),
        rate_reset_s=float(reset),
        tokens_used=int(used),
        quota_reset_s=(day(now) + 1) * DAY_S - now,
    )


def add_usage(pipe: Any, owner: str, completion_tokens: int, now: float) -> None:
    """Queue the addition of a finished job's completion tokens to its owner's day (any pipeline)."""
    if completion_tokens <= 0 or not owner:
        return
    key = keys.usage(owner, day(now))
    pipe.incrby(key, int(completion_tokens))
    pipe.expire(key, USAGE_TTL_S)


def ceil_s(seconds: float) -> int:
    """Whole seconds for a header (at least 1 while anything is left)."""
    return max(1, math.ceil(seconds)) if seconds > 0 else 0
