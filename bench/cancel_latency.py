"""How much text a running job still emits after its cancel is answered, with ``--rows`` running.

Starts a real redis-server, one `tnllm worker` on the tiny demo model with ``--rows`` engine slots
and `tnllm api` (``bench.queue_overhead.start_services``), submits ``--rows`` long jobs (greedy,
``ignore_eos``), waits until every one streams, then cancels ``--cancels`` of them one at a time
over HTTP. For each: the characters in the job's stream when the cancel answer arrived, and at
the end (the stream equals the result text); the difference is what came after the answer, also
in tokens (at that job's own characters per token); plus answer → terminal record time.

    python -m bench.cancel_latency [--rows 64] [--cancels 32] [--json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx

from bench.queue_overhead import start_services
from tnllm.cli.supervisor import stop_all
from tnllm.store import JobStore, keys


def streamed_chars(store: JobStore, job_id: str) -> int:
    """Characters of the token entries in the job's stream so far."""
    entries = store.client.xrange(keys.stream(job_id))
    return sum(len(f.get("text", "")) for _, f in entries if f.get("t") == "token")


def measure(url: str, store: JobStore, rows: int, cancels: int) -> dict[str, Any]:
    """Submit ``rows`` jobs, cancel ``cancels`` of them while all run; per-cancel figures."""
    body = {"max_new_tokens": 4000, "ignore_eos": True}
    with httpx.Client(base_url=url, timeout=60) as http:
        ids = [http.post("/v1/jobs", json={"prompt": f"story {i}", **body}).json()["id"] for i in range(rows)]
        deadline = time.monotonic() + 120
        while not all(streamed_chars(store, i) > 0 for i in ids):
            if time.monotonic() > deadline:
                raise SystemExit("not every job streamed within 120 s")
            time.sleep(0.05)
        at_answer: dict[str, tuple[int, float, int]] = {}
        for job_id in ids[:cancels]:
            answer = http.post(f"/v1/jobs/{job_id}/cancel")
            answered = time.time()
            at_answer[job_id] = (streamed_chars(store, job_id), answered, answer.status_code)
            time.sleep(0.05)
        for job_id in ids[cancels:]:
            http.post(f"/v1/jobs/{job_id}/cancel")
        results = {i: http.get(f"/v1/jobs/{i}", params={"wait": 30}).json() for i in ids[:cancels]}
    chars, tokens, to_end = [], [], []
    for job_id, (seen, answered, _) in at_answer.items():
        job = results[job_id]
        assert job["status"] == "cancelled", job["status"]
        text, used = job["result"]["text"], job["result"]["usage"]["completion_tokens"]
        assert streamed_chars(store, job_id) == len(text)
        chars.append(len(text) - seen)
        tokens.append((len(text) - seen) * used / max(1, len(text)))
        to_end.append(datetime.fromisoformat(job["finished_at"]).timestamp() - answered)
    codes = sorted({code for _, _, code in at_answer.values()})
    return {
        "rows": rows,
        "cancels": cancels,
        "answer_codes": codes,
        "chars_after_answer": {"mean": statistics.fmean(chars), "max": max(chars), "min": min(chars)},
        "tokens_after_answer": {"mean": statistics.fmean(tokens), "max": max(tokens)},
        "answer_to_cancelled_ms": {"mean": 1000 * statistics.fmean(to_end), "max": 1000 * max(to_end)},
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=64)
    parser.add_argument("--cancels", type=int, default=32)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        server, children, url, settings = start_services(Path(tmp), args.rows)
        store = JobStore.from_settings(settings)
        try:
            report = measure(url, store, args.rows, args.cancels)
        finally:
            store.client.close()
            stop_all(children, 30)
            server.stop()
    print(json.dumps(report, indent=None if args.json else 2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
