"""Where a short job's milliseconds and Redis round trips go (used by ``bench.queue_overhead``).

Two probes on the running stack:

- ``trace_jobs``: sequential jobs under Redis ``MONITOR``. Every command reaches MONITOR with the
  server's clock and the client's address, so one job's life reads as a timeline on both sides:
  the API's create script and broker publish, the worker's claim and finish scripts, the API
  waiter's re-read. Client-side stamps (same machine, same clock) bracket it. Round trips: the
  commands a client sent, a pipeline counted once (Lua-internal calls are left out).
- ``commandstats``: ``INFO commandstats`` deltas over a burst, divided by the jobs: round trips per
  job of every client together (background heartbeats included, amortized).
"""

from __future__ import annotations

import hashlib
import statistics
import threading
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

import httpx
import redis

from tnllm.store import scripts

#: Milestones of one job, in the order they happen (server clock unless said otherwise).
STAGES = [
    ("request -> create script", "post", "create"),
    ("create -> broker LPUSH (publish)", "create", "publish"),
    ("LPUSH -> claim script (BRPOP wake, Celery, record read)", "publish", "claim"),
    ("claim -> first token write (engine admission, prefill, token, pump)", "claim", "append"),
    ("first token write -> finish script", "append", "finish"),
    ("finish -> waiter re-read (wake-up)", "finish", "reread"),
    ("re-read -> client has the result", "reread", "done"),
]


def _sha_names() -> dict[str, str]:
    return {hashlib.sha1(body.encode()).hexdigest(): name for name, body in scripts.ALL.items()}


class Monitor:
    """Collects MONITOR lines in a thread: (server time, client 'addr:port', args)."""

    def __init__(self, url: str) -> None:
        self.client = redis.Redis.from_url(url, decode_responses=True)
        self.lines: list[tuple[float, str, list[str]]] = []
        self._stop = threading.Event()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Monitor:
        self._thread.start()
        self._ready.wait(10)
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self.client.set("bench:monitor:stop", "1")  # one more command wakes next_command()
        self._thread.join(10)
        self.client.close()

    def _run(self) -> None:
        with self.client.monitor() as mon:
            self._ready.set()
            while not self._stop.is_set():
                cmd = mon.next_command()
                if cmd.get("client_type") == "lua":
                    continue
                addr = f"{cmd.get('client_address')}:{cmd.get('client_port')}"
                self.lines.append((float(cmd["time"]), addr, str(cmd["command"]).split()))


def _milestones(
    lines: list[tuple[float, str, list[str]]], job_id: str, shas: dict[str, str], roles: dict[str, str]
) -> dict[str, Any]:
    """First create / publish / claim / token append, the finish and the API's last HGETALL of
    ``job_id``."""
    found: dict[str, Any] = {}
    for t, addr, args in lines:
        name = args[0].upper() if args else ""
        if name in ("EVALSHA", "EVAL") and any(job_id in a for a in args):
            script = shas.get(args[1], "eval") if name == "EVALSHA" else "eval"
            if script == "create" and "create" not in found:
                found["create"] = t
            elif script == "claim" and "claim" not in found:
                found["claim"] = t
            elif script.startswith("append") and "append" not in found:
                found["append"] = t
            elif script == "finish":
                found["finish"] = t
        elif (
            name == "LPUSH"
            and "publish" not in found
            and "create" in found
            and args[1].startswith("generate")
        ):
            found["publish"] = t
        elif name == "HGETALL" and job_id in args[1] and "finish" in found and roles.get(addr) == "api":
            found["reread"] = t
    if "create" in found and "claim" in found:  # no LPUSH of its own: create wrote the message
        found.setdefault("publish", found["create"])
    if "finish" in found:  # the token went with the finish
        found.setdefault("append", found["finish"])
    return found


API_SCRIPTS = {"create", "discard", "cancel"}


def connection_roles(lines: list[tuple[float, str, list[str]]], shas: dict[str, str]) -> dict[str, str]:
    """Each connection's role, from the commands only one side sends: the API creates jobs and
    publishes (SMEMBERS/LPUSH on the broker lists); the worker pops (BRPOP) and runs the job scripts."""
    roles: dict[str, str] = {}
    for _t, addr, args in lines:
        name = args[0].upper() if args else ""
        if name == "EVALSHA":
            roles.setdefault(addr, "api" if shas.get(args[1]) in API_SCRIPTS else "worker")
        elif name in ("SMEMBERS", "LPUSH"):
            roles.setdefault(addr, "api")
        elif name in ("BRPOP", "ZADD") and any(a.startswith(("generate", "unacked")) for a in args[1:2]):
            roles.setdefault(addr, "worker")
    return roles


#: Commands of one connection closer together than this are one pipelined round trip.
PIPELINE_GAP_S = 0.0001


def _round_trips(
    lines: list[tuple[float, str, list[str]]], start: float, end: float, roles: dict[str, str]
) -> dict[str, Counter[str]]:
    """Round trips each role made in [start, end], by the first command of each: a MULTI..EXEC
    block, or commands of one connection less than ``PIPELINE_GAP_S`` apart, count once."""
    by_role: dict[str, Counter[str]] = {"api": Counter(), "worker": Counter(), "other": Counter()}
    shas = _sha_names()
    last: dict[str, float] = {}
    in_multi: set[str] = set()
    for t, addr, args in lines:
        if not start <= t <= end or not args or args[0].upper() in ("MONITOR", "SET"):
            continue
        name = args[0].upper()
        pipelined = addr in in_multi or t - last.get(addr, -1.0) < PIPELINE_GAP_S
        last[addr] = t
        if name == "MULTI":
            in_multi.add(addr)
        elif name == "EXEC":
            in_multi.discard(addr)
        if pipelined:
            continue
        if name == "EVALSHA":
            name = f"EVALSHA {shas.get(args[1], '?')}"
        by_role[roles.get(addr, "other")][name] += 1
    return by_role


def trace_jobs(url: str, redis_url: str, body: dict[str, Any], n: int) -> dict[str, Any]:
    """Trace ``n`` sequential jobs under MONITOR: per-stage times (ms) and round trips per job."""
    http = httpx.Client(base_url=url, timeout=60)
    shas = _sha_names()
    jobs: list[tuple[str, float, float, float]] = []
    with Monitor(redis_url) as mon:
        for _ in range(n):
            t0 = time.time()
            job_id = http.post("/v1/jobs", json=body).json()["id"]
            t1 = time.time()
            job = http.get(f"/v1/jobs/{job_id}", params={"wait": 30}).json()
            t2 = time.time()
            assert job["status"] == "succeeded", job
            jobs.append((job_id, t0, t1, t2))
            time.sleep(0.05)  # a gap, so each job's window holds only its own commands
    http.close()
    stages: dict[str, list[float]] = {name: [] for name, _, _ in STAGES}
    trips: list[dict[str, Counter[str]]] = []
    roles = connection_roles(mon.lines, shas)
    for job_id, t0, _t1, t2 in jobs:
        m = _milestones(mon.lines, job_id, shas, roles)
        m["post"], m["done"] = t0, t2
        if not all(k in m for _, a, b in STAGES for k in (a, b)):
            continue
        for name, a, b in STAGES:
            stages[name].append(1000 * (m[b] - m[a]))
        trips.append(_round_trips(mon.lines, t0, t2, roles))
    return {
        "traced_jobs": len(trips),
        "stages_ms": {
            k: {"p50": statistics.median(v), "mean": statistics.fmean(v)} for k, v in stages.items() if v
        },
        "round_trips_per_job": _mean_trips(trips),
    }


def _mean_trips(trips: list[dict[str, Counter[str]]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for role in ("api", "worker", "other"):
        names: Counter[str] = Counter()
        for t in trips:
            names.update(t[role])
        total = sum(names.values()) / max(1, len(trips))
        out[role] = {"total": total, "by_command": {k: v / len(trips) for k, v in names.most_common()}}
    return out


def commandstats(client: redis.Redis) -> dict[str, int]:
    """Calls per command so far (``INFO commandstats``)."""
    info: dict[str, Any] = client.info("commandstats")
    return {k.removeprefix("cmdstat_"): int(v["calls"]) for k, v in info.items()}


def per_unit_calls(client: redis.Redis, units: int, work: Callable[[], None]) -> dict[str, Any]:
    """Redis commands per unit of ``work`` (INFO commandstats before and after)."""
    before = commandstats(client)
    work()
    after = commandstats(client)
    delta = {k: (after[k] - before.get(k, 0)) / units for k in after if after[k] != before.get(k, 0)}
    delta.pop("info", None)
    return {"total": sum(delta.values()), "by_command": dict(sorted(delta.items(), key=lambda kv: -kv[1]))}
