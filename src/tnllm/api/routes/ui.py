"""The browser playground: ``/ui`` (plain HTML, JS and CSS shipped in ``tnllm/api/static/ui``, no
CDN, no build step) and ``GET /``, which sends a browser there.

The page talks to the public API only (``/v1/jobs``, its SSE stream, cancel), with the API key the
user typed (kept in the tab's ``sessionStorage``), so it can do nothing a client could not.
"""

from __future__ import annotations

from functools import cache
from importlib import resources
from pathlib import Path

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, RedirectResponse
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException as StarletteHTTPException

router = APIRouter(tags=["ui"])

#: Where the page's script and style sheet are served (mounted by ``create_app``).
STATIC_URL = "/ui/static"
#: Placeholder in index.html replaced by the app's root path (the page works behind a path prefix).
_ROOT_MARK = "{{root}}"


def static_dir() -> Path:
    """The folder of the playground's files inside the installed package."""
    return Path(str(resources.files("tnllm.api") / "static" / "ui"))


def static_files() -> StaticFiles:
    """The ASGI app serving ``static_dir()`` (``check_dir`` off: no I/O at construction)."""
    return StaticFiles(directory=static_dir(), check_dir=False)


@cache
def _index_template() -> str:
    return (static_dir() / "index.html").read_text(encoding="utf-8")


def wants_html(request: Request) -> bool:
    """True when the client asks for a page (a browser's navigation sends ``Accept: text/html``)."""
    return "text/html" in request.headers.get("accept", "").lower()


@router.get("/", include_in_schema=False)
async def root(request: Request) -> RedirectResponse:
    """A browser goes to the playground; any other GET keeps the old answer (405: ``POST /`` is the
    tutorial's endpoint)."""
    if not wants_html(request):
        raise StarletteHTTPException(405, headers={"Allow": "POST"})
    return RedirectResponse(f"{request.scope.get('root_path', '')}/ui", status_code=303)


@router.get("/ui", include_in_schema=False, response_class=HTMLResponse)
async def playground(request: Request) -> HTMLResponse:
    """The playground page."""
    page = _index_template().replace(_ROOT_MARK, request.scope.get("root_path", ""))
    return HTMLResponse(page, headers={"Cache-Control": "no-cache"})
