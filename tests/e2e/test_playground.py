"""The playground and the docs in a real headless Chromium (the system's ``chromium``, driven by
Playwright; no browser is downloaded), against real processes: one redis-server, one Celery worker
on the demo model, a webhook worker, two APIs (one open, one with API keys) and a webhook
receiver on 127.0.0.1.

Every page runs with the network cut off: a request to any host but the API's is aborted and
recorded, and each test ends by checking none was attempted and no script error was thrown.
"""

from __future__ import annotations

import base64
import re
import shutil
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest

from tests.fixtures.services import Stack
from tnllm.cli.supervisor import Child, tnllm_argv
from tnllm.store.server import RedisServer

pytestmark = pytest.mark.slow
playwright_api = pytest.importorskip(
    "playwright.sync_api", reason="playwright is not installed: pip install -e '.[dev]'"
)
from playwright.sync_api import Browser, Page, Route, expect  # noqa: E402

CHROMIUM = next((p for p in map(shutil.which, ("chromium", "chromium-browser", "google-chrome")) if p), None)
if CHROMIUM is None:
    pytest.skip(
        "no chromium on this machine: install it with `apt-get install chromium` (Debian/Ubuntu)",
        allow_module_level=True,
    )

API_KEY = "playground-key"
LOCAL_HOSTS = {"127.0.0.1", "localhost"}
REDOC_LOGO = "https://cdn.redoc.ly/redoc/logo-mini.svg"
WEBHOOK_SECRET = "whsec_" + base64.b64encode(b"playground-test-secret-012345678").decode()


class _Receiver(BaseHTTPRequestHandler):
    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        self.send_response(204)
        self.end_headers()

    def log_message(self, *args: object) -> None:  # quiet
        pass


@pytest.fixture(scope="module")
def receiver() -> Iterator[str]:
    """A webhook receiver on 127.0.0.1 answering 204; yields its URL."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Receiver)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/hook"
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture(scope="module")
def urls(
    module_redis: RedisServer, demo_model_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[str, str]]:
    """Base URLs of the two APIs (``open``, ``keys``) in front of one worker."""
    stack = Stack(
        module_redis.url,
        demo_model_dir,
        tmp_path_factory.mktemp("playground"),
        TNLLM_ENGINE_SLOTS="4",
        TNLLM_STREAM_FLUSH_INTERVAL="0.02",
        TNLLM_WEBHOOK_SECRET=WEBHOOK_SECRET,
        TNLLM_WEBHOOK_ALLOWLIST="127.0.0.1",
    )
    try:
        hooks = Child("hooks", tnllm_argv("webhook-worker"), env=stack.env, log_path=stack.tmp / "hooks.log")
        stack.children.append(hooks.start())
        stack.start_worker("w1")
        _, open_url = stack.start_api("api")
        _, keys_url = stack.start_api("api-keys", TNLLM_API_KEYS=API_KEY)
        yield {"open": open_url, "keys": keys_url}
    finally:
        stack.close()


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with playwright_api.sync_playwright() as pw:
        chromium = pw.chromium.launch(executable_path=CHROMIUM, headless=True)
        try:
            yield chromium
        finally:
            chromium.close()


@pytest.fixture
def blocked() -> list[str]:
    """URLs the page tried to fetch from another host (aborted)."""
    return []


@pytest.fixture
def page(browser: Browser, blocked: list[str]) -> Iterator[Page]:
    """A fresh browser context (own sessionStorage) whose requests may reach only this machine."""
    context = browser.new_context(viewport={"width": 1366, "height": 900})
    errors: list[str] = []

    def guard(route: Route) -> None:
        if urlsplit(route.request.url).hostname in LOCAL_HOSTS:
            route.continue_()
        else:
            blocked.append(route.request.url)
            route.abort()

    context.route("**/*", guard)
    tab = context.new_page()
    tab.on("pageerror", lambda exc: errors.append(str(exc)))
    tab.set_default_timeout(30_000)
    try:
        yield tab
        assert blocked == [], f"the page tried to reach the network: {blocked}"
        assert errors == [], f"script errors: {errors}"
    finally:
        context.close()


#: Records every text the output showed, with the job status shown at that moment.
RECORD_OUTPUT = """
document.addEventListener("DOMContentLoaded", () => {
  window.seen = [];
  const out = document.getElementById("output"), status = document.getElementById("job-status");
  new MutationObserver(() => window.seen.push([out.textContent, status.textContent]))
    .observe(out, { childList: true, characterData: true, subtree: true });
});
"""


def _open(page: Page, base: str) -> None:
    page.add_init_script(RECORD_OUTPUT)
    page.goto(f"{base}/")  # a browser's GET / lands on the playground
    assert urlsplit(page.url).path == "/ui"
    expect(page.get_by_role("heading", name="tnllm playground")).to_be_visible()


def _submit(page: Page, prompt: str, **fields: str) -> None:
    page.get_by_role("textbox", name="Prompt").fill(prompt)
    for name, value in fields.items():
        if name == "ignore_eos":
            page.locator("#ignore_eos").check()
        else:
            page.locator(f"#{name}").fill(value)
    page.get_by_role("button", name="Submit").click()


def _job(base: str, job_id: str, key: str | None = None) -> dict[str, object]:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    r = httpx.get(f"{base}/v1/jobs/{job_id}", headers=headers, timeout=10)
    assert r.status_code == 200, r.text
    return dict(r.json())


def _check_streamed(page: Page, base: str, key: str | None = None) -> dict[str, object]:
    """The job shown ended succeeded, its text grew in steps before the end and is the job's text."""
    expect(page.locator("#job-status")).to_have_text("succeeded", timeout=60_000)
    job = _job(base, page.locator("#job-id").inner_text(), key)
    result = job["result"]
    assert isinstance(result, dict) and result["text"]
    assert page.locator("#output").inner_text() == result["text"]
    seen: list[list[str]] = page.evaluate("window.seen")
    partial = {text for text, status in seen if status not in {"succeeded", "failed", "cancelled"}}
    partial.discard("")
    assert len(partial) >= 2, f"tokens did not arrive incrementally: {seen}"
    assert all(result["text"].startswith(text) for text in partial)
    assert result["text"] not in partial or len(partial) > 2
    return job


def test_prompt_streams_tokens_and_succeeds(page: Page, urls: dict[str, str]) -> None:
    base = urls["open"]
    _open(page, base)
    unlabelled = page.evaluate(
        "[...document.querySelectorAll('input, textarea')].filter(e => !e.labels.length).map(e => e.id)"
    )
    assert unlabelled == [], f"form controls without a label: {unlabelled}"
    _submit(page, "Tell me about linear attention.", max_new_tokens="400", ignore_eos="on", seed="7")
    job = _check_streamed(page, base)
    assert job["max_new_tokens"] == 400 and job["seed"] == 7 and job["ignore_eos"] is True
    # the job list shows it; its details show the job's usage and timings
    row = page.locator(f'#jobs tr[data-id="{job["id"]}"]')
    expect(row.locator("td.status")).to_have_text("succeeded")
    row.get_by_role("button").first.click()
    usage = job["result"]["usage"]  # type: ignore[index]
    details = page.locator("#details")
    expect(details.locator('dd[data-field="completion tokens"]')).to_have_text("400")
    expect(details.locator('dd[data-field="prompt tokens"]')).to_have_text(str(usage["prompt_tokens"]))
    expect(details.locator('dd[data-field="finish reason"]')).to_have_text("length")
    expect(details.locator("#deliveries")).to_contain_text("no webhook")


def test_chat_mode_keeps_the_conversation(page: Page, urls: dict[str, str]) -> None:
    base = urls["open"]
    _open(page, base)
    page.get_by_role("radio", name="Chat").check()
    page.get_by_label("Your message").fill("Hello there")
    page.locator("#max_new_tokens").fill("8")
    page.get_by_role("button", name="Submit").click()
    expect(page.locator("#job-status")).to_have_text("succeeded", timeout=60_000)
    first = _job(base, page.locator("#job-id").inner_text())
    assert first["messages"] == [{"role": "user", "content": "Hello there"}]
    expect(page.locator("#conversation li")).to_have_count(2)
    page.get_by_label("Your message").fill("And then?")
    page.get_by_role("button", name="Submit").click()
    expect(page.locator("#job-id")).not_to_have_text(str(first["id"]))
    expect(page.locator("#job-status")).to_have_text("succeeded", timeout=60_000)
    second = _job(base, page.locator("#job-id").inner_text())
    answer = first["result"]["text"]  # type: ignore[index]
    assert second["messages"] == [
        {"role": "user", "content": "Hello there"},
        {"role": "assistant", "content": answer},
        {"role": "user", "content": "And then?"},
    ]


def test_cancel_a_long_job_from_the_page(page: Page, urls: dict[str, str]) -> None:
    base = urls["open"]
    _open(page, base)
    _submit(page, "Go on forever.", max_new_tokens="4000", ignore_eos="on")
    expect(page.locator("#output")).not_to_be_empty(timeout=60_000)  # it is running
    page.get_by_role("button", name="Cancel", exact=True).click()
    expect(page.locator("#job-status")).to_have_text("cancelled", timeout=30_000)
    job = _job(base, page.locator("#job-id").inner_text())
    result = job["result"]
    assert job["status"] == "cancelled" and isinstance(result, dict)
    assert result["finish_reason"] == "cancelled" and result["usage"]["completion_tokens"] < 4000
    expect(page.locator(f'#jobs tr[data-id="{job["id"]}"] td.status')).to_have_text("cancelled")


def test_webhook_deliveries_in_the_details(page: Page, urls: dict[str, str], receiver: str) -> None:
    base = urls["open"]
    _open(page, base)
    _submit(page, "Call me back.", max_new_tokens="8", webhook_url=receiver)
    expect(page.locator("#job-status")).to_have_text("succeeded", timeout=60_000)
    job_id = page.locator("#job-id").inner_text()
    page.locator(f'#jobs tr[data-id="{job_id}"]').get_by_role("button").first.click()
    # the details refresh by themselves until the webhook worker has delivered
    cells = page.locator("#deliveries tr td")
    expect(cells).to_have_text(["job.succeeded", "delivered", "1", "HTTP 204"], timeout=30_000)
    job = _job(base, job_id)
    assert job["webhook"]["deliveries"][0]["state"] == "delivered"  # type: ignore[index]


def test_queue_positions_and_cancel_from_the_list(page: Page, urls: dict[str, str]) -> None:
    base = urls["open"]
    api = httpx.Client(base_url=base, timeout=10)
    long = {"max_new_tokens": 4000, "ignore_eos": True}
    ids = [api.post("/v1/jobs", json={"prompt": f"busy {i}", **long}).json()["id"] for i in range(6)]
    try:
        _open(page, base)
        queued = [i for i in ids if api.get(f"/v1/jobs/{i}").json()["status"] == "queued"]
        assert len(queued) >= 2, "the worker's 4 slots should leave two jobs queued"
        first, second = (page.locator(f'#jobs tr[data-id="{i}"]') for i in queued[:2])
        expect(first.locator("td").nth(2)).to_have_text("#1")
        expect(second.locator("td").nth(2)).to_have_text("#2")
        first.get_by_role("button", name=f"Cancel job {queued[0]}").click()
        expect(first.locator("td.status")).to_have_text("cancelled")
        expect(second.locator("td").nth(2)).to_have_text("#1")  # it moved up, as the list refreshed
        assert api.get(f"/v1/jobs/{queued[0]}").json()["status"] == "cancelled"
        # a job submitted from the page now waits behind them, and says where
        _submit(page, "Me too.", max_new_tokens="8")
        expect(page.locator("#job-status")).to_have_text(re.compile(r"^queued \(#\d+\)$"))
        page.get_by_role("button", name="Cancel", exact=True).click()
        expect(page.locator("#job-status")).to_have_text("cancelled")
        mine = _job(base, page.locator("#job-id").inner_text())
        assert mine["status"] == "cancelled" and mine["started_at"] is None
    finally:
        for job_id in ids:
            api.post(f"/v1/jobs/{job_id}/cancel")
        api.close()


def test_api_keys(page: Page, browser: Browser, urls: dict[str, str]) -> None:
    base = urls["keys"]
    _open(page, base)
    missing = "401: missing API key: send `Authorization: Bearer <key>`"
    expect(page.locator("#jobs-message")).to_have_text(missing)  # the job list's answer
    _submit(page, "Hello")
    expect(page.locator("#message")).to_have_text(missing)
    page.get_by_label("API key").fill("wrong")
    page.get_by_role("button", name="Use key").click()
    expect(page.locator("#jobs-message")).to_have_text("401: invalid API key")

    page.get_by_label("API key").fill(API_KEY)
    page.get_by_role("button", name="Use key").click()
    expect(page.locator("#jobs-message")).to_have_text("")
    assert page.get_by_label("API key").input_value() == ""  # not left in the field
    storage = page.evaluate("[{...sessionStorage}, {...localStorage}, document.cookie]")
    assert storage == [{"tnllm.apiKey": API_KEY}, {}, ""]
    _submit(page, "Tell me a story.", max_new_tokens="400", ignore_eos="on")
    _check_streamed(page, base, key=API_KEY)
    page.get_by_role("button", name="Forget").click()
    assert page.evaluate("sessionStorage.length") == 0

    other = browser.new_context()  # another session starts without the key
    try:
        fresh = other.new_page()
        fresh.goto(f"{base}/ui")
        expect(fresh.locator("#jobs-message")).to_have_text(missing)
    finally:
        other.close()


def test_docs_render_offline(page: Page, urls: dict[str, str]) -> None:
    base = urls["open"]
    spec = httpx.get(f"{base}/openapi.json", timeout=10).json()
    operations = sum(len(methods) for methods in spec["paths"].values())
    page.goto(f"{base}/docs")
    blocks = page.locator(".opblock")
    expect(blocks.first).to_be_visible()
    expect(blocks).to_have_count(operations)
    expect(page.locator(".opblock-summary-path", has_text="/v1/jobs/{job_id}/stream")).to_be_visible()


def test_redoc_renders_offline(page: Page, blocked: list[str], urls: dict[str, str]) -> None:
    page.goto(f"{urls['open']}/redoc")
    expect(page.get_by_role("heading", name="Submit a generation job").first).to_be_visible()
    expect(page.get_by_role("heading", name="Stream a job's tokens (Server-Sent Events)")).to_be_visible()
    # ReDoc's footer always tries the Redocly logo from its CDN and hides it when that fails (it
    # has no option to skip it): the one request allowed to fail here.
    blocked[:] = [url for url in blocked if url != REDOC_LOGO]
