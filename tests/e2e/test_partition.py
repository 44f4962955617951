"""A silent network partition between one worker and Redis (packets dropped, nothing reset).

The test makes a network namespace joined to this one by a veth pair; Redis listens on this side's
address, worker A runs inside the namespace, worker B beside Redis. The partition is a bogus
permanent neighbour entry on both ends of the pair: every frame goes to a MAC nobody has, so the
packets vanish without an RST or an ICMP error (this machine's kernel has no netfilter or tc
classifiers; this needs only `ip`). A notices within a bounded time (its Redis calls time out),
B takes A's jobs over once their leases expire, and after the partition heals A drops its stale
runs (nothing written twice) and serves again. Needs root and network namespaces: skipped without.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.client import Producer, debug
from tests.e2e.test_outage import reference_texts, stream_text
from tests.fixtures.services import Stack
from tnllm.cli.supervisor import Child, tnllm_argv
from tnllm.store import GenerationParams, JobStatus
from tnllm.store.server import RedisServer

pytestmark = pytest.mark.slow

SOCKET_TIMEOUT = 6.0  # TNLLM_REDIS_SOCKET_TIMEOUT of both workers
PARTITION_ENV = {
    "TNLLM_REDIS_SOCKET_TIMEOUT": str(SOCKET_TIMEOUT),
    "TNLLM_REDIS_HEALTH_CHECK_INTERVAL": "2",
    "TNLLM_REDIS_TCP_KEEPALIVE": "3",
    "TNLLM_DEBUG_FAULTS": "1",
    "TNLLM_WORKER_PREEMPT_RESERVE": "0",  # a worker takes exactly as many jobs as it has slots
}


def _ip(*args: str, netns: str | None = None, check: bool = True) -> subprocess.CompletedProcess[str]:
    prefix = ["ip", "netns", "exec", netns] if netns else []
    return subprocess.run([*prefix, "ip", *args], capture_output=True, text=True, check=check, timeout=10)


class Link:
    """A namespace ``ns`` and a veth pair: ``host_ip`` on this side, ``ns_ip`` inside."""

    def __init__(self) -> None:
        tag = os.getpid() % 100000
        self.ns, self.host_dev, self.ns_dev = f"tnllm-p{tag}", f"tnh{tag}", f"tnn{tag}"
        self.host_ip, self.ns_ip = f"10.{200 + tag % 50}.{tag // 50 % 250}.1", ""
        self.ns_ip = self.host_ip[:-1] + "2"

    def up(self) -> None:
        _ip("netns", "add", self.ns)
        _ip("link", "add", self.host_dev, "type", "veth", "peer", "name", self.ns_dev)
        _ip("link", "set", self.ns_dev, "netns", self.ns)
        _ip("addr", "add", f"{self.host_ip}/30", "dev", self.host_dev)
        _ip("link", "set", self.host_dev, "up")
        _ip("addr", "add", f"{self.ns_ip}/30", "dev", self.ns_dev, netns=self.ns)
        _ip("link", "set", self.ns_dev, "up", netns=self.ns)
        _ip("link", "set", "lo", "up", netns=self.ns)

    def down(self) -> None:
        _ip("link", "del", self.host_dev, check=False)
        _ip("netns", "del", self.ns, check=False)

    def partition(self) -> None:
        """Silently drop everything between the two ends (frames sent to a MAC nobody has)."""
        nowhere = ("nud", "permanent", "lladdr", "02:00:00:00:00:0a")  # a MAC no interface has
        _ip("neigh", "replace", self.ns_ip, "dev", self.host_dev, *nowhere)
        _ip("neigh", "replace", self.host_ip, "dev", self.ns_dev, *nowhere, netns=self.ns)

    def heal(self) -> None:
        _ip("neigh", "del", self.ns_ip, "dev", self.host_dev, check=False)
        _ip("neigh", "del", self.host_ip, "dev", self.ns_dev, check=False, netns=self.ns)


@pytest.fixture
def link() -> Iterator[Link]:
    if os.geteuid() != 0:
        pytest.skip("the partition test needs root (network namespaces, veth, neighbour entries)")
    if shutil.which("ip") is None:
        pytest.skip("the partition test needs iproute2's `ip`")
    link = Link()
    try:
        link.up()
    except subprocess.CalledProcessError as exc:
        link.down()
        pytest.skip(f"the kernel refused a network namespace or veth pair: {exc.stderr.strip()}")
    try:
        yield link
    finally:
        link.down()


def test_a_silently_partitioned_worker_loses_its_jobs_once_and_serves_again(
    link: Link, tmp_path: Path, demo_model_dir: Path
) -> None:
    redis = RedisServer(tmp_path / "redis", host=link.host_ip, die_with_parent=True).start()
    stack = Stack(redis.url, demo_model_dir, tmp_path / "stack", **PARTITION_ENV)
    jobs = Producer(stack.settings())
    try:
        # worker A inside the namespace: its only way to Redis is the veth pair
        a = Child(
            "a", ["ip", "netns", "exec", link.ns, *tnllm_argv("worker", "--hostname", "a@test")],
            env={**stack.env, "TNLLM_ENGINE_SLOTS": "4"}, log_path=tmp_path / "a.log", stop_timeout=20,
        ).start()  # fmt: skip
        stack.children.append(a)
        stack.wait_worker(a)
        hold_until = time.time() + 30
        made = []
        for i in range(4):
            params = {"prompt": f"partition job {i}", "max_new_tokens": 32, "ignore_eos": True}
            made.append((jobs.submit(**params, metadata=debug(until=hold_until)), params))
        ids = [job_id for job_id, _ in made]
        deadline = time.monotonic() + 30
        while not all((r := jobs.store.get(i)) is not None and r.status is JobStatus.RUNNING for i in ids):
            assert time.monotonic() < deadline
            time.sleep(0.05)
        owners = [r.lease_owner or "" for r in map(jobs.store.get, ids) if r is not None]
        assert len(owners) == 4 and all(owner.startswith("a@test") for owner in owners), owners
        b = stack.start_worker("b", TNLLM_ENGINE_SLOTS="4")

        link.partition()
        cut = time.monotonic()
        noticed = None
        while noticed is None:  # A's own Redis calls time out: it knows it is cut off
            if "Redis unavailable" in a.log_tail(200):
                noticed = time.monotonic() - cut
            assert time.monotonic() - cut < SOCKET_TIMEOUT + 10, a.log_tail(40)
            time.sleep(0.2)
        print(f"worker A noticed the partition after {noticed:.1f}s")
        # A's leases expire unrenewed; B's reaper requeues its jobs once and B runs them
        deadline = time.monotonic() + 60
        while not all((r := jobs.store.get(i)) is not None and r.attempt == 2 for i in ids):
            assert time.monotonic() < deadline, "A's jobs were not taken over"
            time.sleep(0.1)
        link.heal()
        records = jobs.wait_all(ids, timeout=90)
        expected = reference_texts(stack, [GenerationParams(**p) for _, p in made])
        for record, text in zip(records, expected, strict=True):
            assert record.status is JobStatus.SUCCEEDED and record.attempt == 2, record
            assert (record.lease_owner or "").startswith("b@test")
            assert record.result is not None and record.result.text == text
            streamed, resets = stream_text(jobs, record.id)
            assert streamed == text and resets == []  # taken over and resumed: no reset
            assert len(jobs.done_entries(record.id)) == 1

        # healed: A is back (heartbeat) and consumes again, on a connection that replaced the dead one
        b.signal(signal.SIGTERM)
        assert b.wait(timeout=30) == 0
        after = jobs.submit("after the partition", max_new_tokens=4)
        (done,) = jobs.wait_all([after], timeout=60)
        assert done.status is JobStatus.SUCCEEDED and (done.lease_owner or "").startswith("a@test")
        for job_id in ids:  # A's stale runs wrote nothing after the takeover
            assert len(jobs.done_entries(job_id)) == 1 and stream_text(jobs, job_id)[1] == []
    finally:
        jobs.close()
        stack.close()
        redis.stop()
