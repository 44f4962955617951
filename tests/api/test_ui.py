"""The playground's routes and the offline docs, over HTTP (the browser tests are in
tests/e2e/test_playground.py): ``GET /`` per Accept, ``/ui`` and its files, /docs and /redoc
referencing only files this app serves."""

from __future__ import annotations

import re

import httpx
import pytest

from tnllm.api.routes.ui import static_dir

BROWSER_ACCEPT = "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8"


async def test_browser_get_root_redirects_to_playground(client: httpx.AsyncClient) -> None:
    r = await client.get("/", headers={"Accept": BROWSER_ACCEPT})
    assert r.status_code == 303 and r.headers["location"] == "/ui"


@pytest.mark.parametrize("accept", [None, "application/json", "*/*"])
async def test_other_get_root_keeps_405(client: httpx.AsyncClient, accept: str | None) -> None:
    headers = {"Accept": accept} if accept else {}
    r = await client.get("/", headers=headers)
    assert r.status_code == 405 and r.headers["allow"] == "POST"
    assert r.json() == {"error": {"type": "method_not_allowed", "message": "Method Not Allowed"}}


async def test_root_path_prefixes_redirect_and_assets(client: httpx.AsyncClient, app: object) -> None:
    transport = httpx.ASGITransport(app=app, root_path="/gen")  # type: ignore[arg-type]
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as c:
        r = await c.get("/", headers={"Accept": BROWSER_ACCEPT})
        assert r.headers["location"] == "/gen/ui"
        page = (await c.get("/ui")).text
    assert '<meta name="tnllm-root" content="/gen">' in page
    assert 'src="/gen/ui/static/app.js"' in page and "{{root}}" not in page


async def test_playground_page_and_its_files(client: httpx.AsyncClient) -> None:
    r = await client.get("/ui")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    page = r.text
    assets = re.findall(r'(?:src|href)="([^"]+)"', page)
    assert "/ui/static/app.js" in assets and "/ui/static/style.css" in assets
    for url in assets:
        assert url.startswith("/"), f"{url}: the page must load nothing from another host"
    for name, kind in [("app.js", "javascript"), ("style.css", "text/css")]:
        asset = await client.get(f"/ui/static/{name}")
        assert asset.status_code == 200 and kind in asset.headers["content-type"]
        assert asset.text == (static_dir() / name).read_text(encoding="utf-8")
    assert (await client.get("/ui/static/missing.js")).status_code == 404


@pytest.mark.parametrize("path", ["/docs", "/redoc"])
async def test_docs_load_only_local_assets(client: httpx.AsyncClient, path: str) -> None:
    r = await client.get(path)
    assert r.status_code == 200
    urls = re.findall(r'(?:src|href)="([^"]+)"', r.text)
    assert urls, r.text
    for url in urls:
        assert url.startswith("/docs/static/"), url
        asset = await client.get(url)
        assert asset.status_code == 200 and len(asset.content) > 1000, url
    assert "https://" not in r.text  # no CDN script, style or font
    if path == "/docs":
        assert '"validatorUrl": null' in r.text  # the validator badge would call swagger.io


async def test_ui_routes_are_not_in_the_api_schema(client: httpx.AsyncClient) -> None:
    spec = (await client.get("/openapi.json")).json()
    assert "/ui" not in spec["paths"] and "get" not in spec["paths"]["/"]
