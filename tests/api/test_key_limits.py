"""Per-key rate limits and token quotas across TWO API processes (real uvicorn subprocesses) on one
Redis, with a real worker on the demo model finishing the jobs whose tokens count."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from tests.fixtures.services import Stack
from tnllm.store.server import RedisServer

pytestmark = pytest.mark.slow

RATE, QUOTA, NEW = 5, 20, 8
KEYS = ("key-rate", "key-other", "key-quota")
MakeClient = Callable[[str, str], httpx.Client]


@pytest.fixture(scope="module")
def apis(
    module_redis: RedisServer, demo_model_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[list[str]]:
    stack = Stack(
        module_redis.url,
        demo_model_dir,
        tmp_path_factory.mktemp("limits"),
        TNLLM_ENGINE_SLOTS="4",
        TNLLM_API_KEYS=",".join(KEYS),
        TNLLM_RATE_LIMIT=str(RATE),
        TNLLM_TOKEN_QUOTA=str(QUOTA),
    )
    try:
        stack.start_worker("w1", wait=False)
        urls = [stack.start_api("api1")[1], stack.start_api("api2")[1]]
        stack.wait_worker(stack.children[0])
        yield urls
    finally:
        stack.close()


@pytest.fixture
def client() -> Iterator[Callable[[str, str], httpx.Client]]:
    """Make clients of one API process for one key; all closed afterwards."""
    made: list[httpx.Client] = []

    def make(url: str, key: str) -> httpx.Client:
        made.append(httpx.Client(base_url=url, headers={"Authorization": f"Bearer {key}"}, timeout=30))
        return made[-1]

    yield make
    for c in made:
        c.close()


def _job(new: int = NEW) -> dict[str, object]:
    return {"prompt": "Count to ten", "max_new_tokens": new, "ignore_eos": True}


def _rejected(urls: list[str], reason: str) -> float:
    total = 0.0
    for url in urls:
        page = httpx.get(f"{url}/metrics", timeout=30).text
        found = re.search(rf'^tnllm_api_jobs_rejected_total\{{reason="{reason}"\}} (\S+)$', page, re.M)
        total += float(found.group(1)) if found else 0.0
    return total


def test_rate_limit_is_shared_by_both_api_processes(apis: list[str], client: MakeClient) -> None:
    clients = [client(url, KEYS[0]) for url in apis]
    answers = [clients[i % 2].post("/v1/jobs", json=_job(1)) for i in range(RATE + 3)]
    assert [r.status_code for r in answers] == [202] * RATE + [429] * 3
    # accepted answers say what is left, counted over both processes
    for i, r in enumerate(answers[:RATE]):
        assert r.headers["ratelimit"].startswith(f'"submissions";r={RATE - 1 - i};t='), r.headers
    refused = answers[-1]
    error = refused.json()["error"]
    assert error["type"] == "rate_limited" and error["policy"] == "submissions"
    assert 0 < int(refused.headers["retry-after"]) <= 60
    assert (
        refused.headers["ratelimit-policy"]
        == f'"submissions";q={RATE};w=60, "completion-tokens";q={QUOTA};w=86400'
    )
    submissions = refused.headers["ratelimit"].split(", ")[0]
    assert re.fullmatch(r'"submissions";r=0;t=(\d+)', submissions)
    assert int(submissions.rsplit("=", 1)[1]) == int(refused.headers["retry-after"])
    # the tutorial route is a submission route too
    assert clients[1].post("/", json={"prompt": "hi"}).status_code == 429
    # another key is not limited by this one's submissions
    other = client(apis[1], KEYS[1])
    assert other.post("/v1/jobs", json=_job(1)).status_code == 202
    # every accepted job still runs: a limit only refuses new submissions
    for r in answers[:RATE]:
        final = clients[0].get(f"/v1/jobs/{r.json()['id']}", params={"wait": 30}).json()
        assert final["status"] == "succeeded", final
    assert _rejected(apis, "rate_limit") == 4


def test_token_quota_counts_finished_jobs_for_every_api_process(apis: list[str], client: MakeClient) -> None:
    clients = [client(url, KEYS[2]) for url in apis]
    # under the quota nothing is refused, however much the accepted jobs will use (3 x 8 > 20)
    accepted = [clients[i % 2].post("/v1/jobs", json=_job()) for i in range(3)]
    assert all(r.status_code == 202 for r in accepted), [r.text for r in accepted]
    for r in accepted:
        final = clients[0].get(f"/v1/jobs/{r.json()['id']}", params={"wait": 30}).json()
        assert final["status"] == "succeeded" and final["result"]["usage"]["completion_tokens"] == NEW
    for client in clients:  # 24 tokens used >= 20: both processes refuse the next one
        refused = client.post("/v1/jobs", json=_job())
        assert refused.status_code == 429, refused.text
        assert refused.json()["error"]["type"] == "quota_exceeded"
        assert f'"completion-tokens";r=0;t={refused.headers["retry-after"]}' in refused.headers["ratelimit"]
        assert 0 < int(refused.headers["retry-after"]) <= 86400
    assert _rejected(apis, "token_quota") == 2
