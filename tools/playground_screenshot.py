"""Take the README's screenshot of the playground (docs/img/playground.png).

``python -m tools.playground_screenshot [--out PATH]`` starts a demo stack in a temporary folder
(embedded redis-server, one worker on the tiny demo model on CPU, the API), drives the system's
headless ``chromium`` through Playwright (as the browser tests do; no browser download) to run a
few jobs from the page, and saves a screenshot of it. Everything it started is stopped at the end.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import httpx

from tnllm.cli.supervisor import Child, child_env, stop_all, tnllm_argv
from tnllm.store.server import RedisServer, free_port

OUT = Path(__file__).resolve().parent.parent / "docs" / "img" / "playground.png"
VIEWPORT = {"width": 1400, "height": 1000}
PROMPTS = [("Write a haiku about queues.", "24"), ("What is linear attention?", "64")]


@contextlib.contextmanager
def demo_stack(folder: Path) -> Iterator[str]:
    """Redis, a demo-model worker and the API; yields the API's base URL."""
    redis = RedisServer(folder / "redis", die_with_parent=True).start()
    port = free_port()
    env = child_env(
        os.environ,
        {"TNLLM_REDIS_URL": redis.url, "TNLLM_MODEL": "demo", "TNLLM_DATA_DIR": str(folder / "data"),
         "TNLLM_DEVICE": "cpu", "TNLLM_ENGINE_SLOTS": "4"},
    )  # fmt: skip
    children = [
        Child("worker", tnllm_argv("worker"), env=env, log_path=folder / "worker.log").start(),
        Child("api", tnllm_argv("api", "--port", str(port)), env=env, log_path=folder / "api.log").start(),
    ]
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_ready(url, children)
        yield url
    finally:
        stop_all(children, 20)
        redis.stop()


def _wait_ready(url: str, children: list[Child], timeout: float = 180.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for child in children:
            if not child.alive:
                raise RuntimeError(f"{child.name} exited:\n{child.log_tail(30)}")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                return
        time.sleep(0.3)
    raise TimeoutError("the demo stack did not get ready")


def shoot(url: str, out: Path, chromium: str) -> None:
    """Run jobs from the page (a cancelled one, then prompts) and save the screenshot."""
    from playwright.sync_api import expect, sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=chromium, headless=True)
        page = browser.new_page(viewport=VIEWPORT, device_scale_factor=1)
        page.goto(f"{url}/ui")
        status = page.locator("#job-status")
        page.get_by_role("textbox", name="Prompt").fill("Count to a million.")
        page.locator("#max_new_tokens").fill("4000")
        page.locator("#ignore_eos").check()
        page.get_by_role("button", name="Submit").click()
        expect(page.locator("#output")).not_to_be_empty(timeout=60_000)
        page.get_by_role("button", name="Cancel", exact=True).click()
        expect(status).to_have_text("cancelled", timeout=30_000)
        page.locator("#ignore_eos").uncheck()
        for prompt, tokens in PROMPTS:
            page.get_by_role("textbox", name="Prompt").fill(prompt)
            page.locator("#max_new_tokens").fill(tokens)
            page.get_by_role("button", name="Submit").click()
            expect(status).to_have_text("succeeded", timeout=60_000)
        page.get_by_role("button", name="Refresh").click()
        page.locator("#jobs tr").first.get_by_role("button").first.click()
        expect(page.locator("#details")).to_be_visible()
        out.parent.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(out), full_page=False)
        browser.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=OUT, help=f"where to write the PNG (default {OUT})")
    parser.add_argument("--chromium", default=shutil.which("chromium"), help="the chromium binary")
    args = parser.parse_args(argv)
    if not args.chromium:
        parser.error("no chromium found: install it with `apt-get install chromium`")
    with tempfile.TemporaryDirectory(prefix="tnllm-shot-") as tmp, demo_stack(Path(tmp)) as url:
        shoot(url, args.out, args.chromium)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
