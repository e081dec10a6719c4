"""`GET /billing`: the billing dashboard, a static page whose script reads the billing JSON
APIs with the token the user signs in with (the page itself holds no data, so it needs no
token). Its script and stylesheet come from `billing.dashboard`; plotly.js from the
installed `plotly` Python package (`plotly/package_data/plotly.min.js`), found on the first
request and kept in memory: never a CDN, never a copy in the repository.

Every answer carries a strict Content-Security-Policy: scripts and styles from this origin
only — no inline script, no eval, no inline style (not even `style-src 'unsafe-inline'`).
plotly.js draws under it, checked in Chromium: the page marks its stylesheet as plotly's
global style element (`id="plotly.js-style-global"`, class `no-inline-styles`: plotly's own
switch), so plotly injects no `<style>`, and `app.css` carries the rules it would have
injected; a placeholder element keeps the bundled maplibre-gl from injecting its stylesheet;
everything else plotly styles through the CSSOM (`element.style`), which CSP allows. Its
mode bar saves charts as SVG (a PNG goes through a `blob:` image, which `img-src` refuses).

The page is never cached; the assets are, briefly (with an ETag), and answer gzip to clients
that accept it (plotly.js: 4.6 MiB, 1.4 MiB gzipped).
"""

from __future__ import annotations

import functools
import gzip
import hashlib
import importlib.util
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, Response

from billing.dashboard import asset
from control_plane.errors import NotFound

router = APIRouter()


def _answers(media_type: str, description: str) -> dict[int | str, dict[str, Any]]:
    """What a route answers: not JSON, so its media type (the OpenAPI contract test)."""
    return {
        200: {"content": {media_type: {"schema": {"type": "string"}}}, "description": description}
    }


CONTENT_SECURITY_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; font-src 'self'; base-uri 'none'; form-action 'none'; "
    "frame-ancestors 'none'"
)
SECURITY_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
}
HTML = "text/html; charset=utf-8"
JAVASCRIPT = "text/javascript; charset=utf-8"
CSS = "text/css; charset=utf-8"
ASSET_MAX_AGE_S = 300  # a new release's assets reach open browsers within minutes
PLOTLY_JS = Path("package_data") / "plotly.min.js"  # inside the installed `plotly` package


@dataclass(frozen=True)
class _Asset:
    body: bytes
    gzipped: bytes
    etag: str
    media_type: str


def _prepared(body: bytes, media_type: str) -> _Asset:
    digest = hashlib.sha256(body).hexdigest()[:32]
    return _Asset(body, gzip.compress(body, mtime=0), f'"{digest}"', media_type)


@functools.cache
def _static(name: str, media_type: str) -> _Asset:
    return _prepared(asset(name), media_type)


def plotly_js_path() -> Path | None:
    """Where the installed `plotly` package keeps plotly.js (found without importing
    `plotly`); None when the package or the file is missing."""
    spec = importlib.util.find_spec("plotly")
    if spec is None or not spec.submodule_search_locations:
        return None
    for folder in spec.submodule_search_locations:
        path = Path(folder) / PLOTLY_JS
        if path.is_file():
            return path
    return None


@functools.cache
def _plotly() -> _Asset:
    path = plotly_js_path()
    if path is None:
        raise NotFound("plotly.js is not installed: install the `plotly` Python package")
    return _prepared(path.read_bytes(), JAVASCRIPT)


def _accepts_gzip(request: Request) -> bool:
    for coding in request.headers.get("accept-encoding", "").split(","):
        name, _, params = coding.strip().partition(";")
        if name.strip().lower() == "gzip":
            quality = params.strip().replace(" ", "").lower()
            return quality not in ("q=0", "q=0.0", "q=0.00", "q=0.000")
    return False


def _served(request: Request, found: _Asset) -> Response:
    headers = {
        **SECURITY_HEADERS,
        "Cache-Control": f"public, max-age={ASSET_MAX_AGE_S}",
        "ETag": found.etag,
        "Vary": "Accept-Encoding",
    }
    if found.etag in request.headers.get("if-none-match", ""):
        return Response(status_code=304, headers=headers)
    if _accepts_gzip(request):
        headers["Content-Encoding"] = "gzip"
        return Response(found.gzipped, media_type=found.media_type, headers=headers)
    return Response(found.body, media_type=found.media_type, headers=headers)


@router.get(
    "/billing",
    response_class=HTMLResponse,
    include_in_schema=False,
    responses=_answers("text/html", "the dashboard page"),
)
def dashboard_page() -> HTMLResponse:
    """The page: no data in it, never cached (a sign-out leaves nothing behind)."""
    headers = {**SECURITY_HEADERS, "Cache-Control": "no-store"}
    return HTMLResponse(asset("index.html"), headers=headers, media_type=HTML)


@router.get(
    "/billing/assets/app.js",
    response_class=Response,
    response_model=None,
    include_in_schema=False,
    responses=_answers("text/javascript", "the page's script"),
)
def dashboard_script(request: Request) -> Response:
    return _served(request, _static("app.js", JAVASCRIPT))


@router.get(
    "/billing/assets/app.css",
    response_class=Response,
    response_model=None,
    include_in_schema=False,
    responses=_answers("text/css", "the page's stylesheet"),
)
def dashboard_stylesheet(request: Request) -> Response:
    return _served(request, _static("app.css", CSS))


@router.get(
    "/billing/assets/plotly.min.js",
    response_class=Response,
    response_model=None,
    include_in_schema=False,
    responses=_answers("text/javascript", "plotly.js, from the installed plotly package"),
)
def plotly_script(request: Request) -> Response:
    return _served(request, _plotly())
