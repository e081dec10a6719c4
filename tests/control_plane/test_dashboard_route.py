"""The billing dashboard's routes (`control_plane.api.dashboard`): the page and its assets
with their security headers and content types, plotly.js served byte for byte from the
installed `plotly` package, and a page with nothing inline (no script text, no event handler
attributes, no style). A FastAPI app holding this router alone: no database."""

from __future__ import annotations

import gzip
import importlib.resources
import importlib.util
import re
from collections.abc import Iterator, Mapping
from html.parser import HTMLParser
from pathlib import Path

import pytest
from fastapi import FastAPI
from fastapi.routing import APIRoute
from fastapi.testclient import TestClient

from billing.dashboard import asset
from control_plane.api import dashboard
from control_plane.errors import install_error_handlers

CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; font-src 'self'; base-uri 'none'; form-action 'none'; "
    "frame-ancestors 'none'"
)
SECURITY = {
    "content-security-policy": CSP,
    "x-content-type-options": "nosniff",
    "x-frame-options": "DENY",
    "referrer-policy": "no-referrer",
}
JS = "text/javascript; charset=utf-8"
ASSETS = [
    ("/billing/assets/app.js", JS, "app.js"),
    ("/billing/assets/app.css", "text/css; charset=utf-8", "app.css"),
]
PLOTLY = "/billing/assets/plotly.min.js"


def _app() -> FastAPI:
    app = FastAPI()
    install_error_handlers(app)
    app.include_router(dashboard.router)
    return app


@pytest.fixture
def client() -> Iterator[TestClient]:
    with TestClient(_app()) as test_client:
        yield test_client


def _installed_plotly_js() -> bytes:
    """plotly.min.js as the installed wheel holds it, found two ways that must agree."""
    spec = importlib.util.find_spec("plotly")
    assert spec is not None and spec.submodule_search_locations
    on_disk = Path(spec.submodule_search_locations[0]) / "package_data" / "plotly.min.js"
    packaged = importlib.resources.files("plotly") / "package_data" / "plotly.min.js"
    assert on_disk.read_bytes() == packaged.read_bytes()
    return on_disk.read_bytes()


def _assert_secured(headers: Mapping[str, str]) -> None:
    for name, value in SECURITY.items():
        assert headers[name] == value, name


def test_the_page_is_html_never_cached_and_locked_down(client: TestClient) -> None:
    response = client.get("/billing")
    assert response.status_code == 200
    assert response.headers["content-type"] == "text/html; charset=utf-8"
    assert response.headers["cache-control"] == "no-store"
    _assert_secured(response.headers)
    assert response.content == asset("index.html")
    assert "authorization" not in {name.lower() for name in response.headers}


@pytest.mark.parametrize(("path", "content_type", "name"), ASSETS)
def test_each_asset_has_its_type_headers_and_bytes(
    client: TestClient, path: str, content_type: str, name: str
) -> None:
    response = client.get(path, headers={"Accept-Encoding": "identity"})
    assert response.status_code == 200
    assert response.headers["content-type"] == content_type
    assert "content-encoding" not in response.headers
    assert response.headers["cache-control"] == f"public, max-age={dashboard.ASSET_MAX_AGE_S}"
    _assert_secured(response.headers)
    assert response.content == asset(name)


def test_plotly_js_is_the_installed_packages_file_byte_for_byte(client: TestClient) -> None:
    expected = _installed_plotly_js()
    assert expected.startswith(b"/**\n* plotly.js v")
    plain = client.get(PLOTLY, headers={"Accept-Encoding": "identity"})
    assert plain.status_code == 200
    assert plain.headers["content-type"] == JS
    _assert_secured(plain.headers)
    assert plain.content == expected
    assert int(plain.headers["content-length"]) == len(expected)
    found = dashboard.plotly_js_path()
    assert found is not None and found.read_bytes() == expected
    assert found.parts[-3:] == ("plotly", "package_data", "plotly.min.js")


def test_assets_answer_gzip_when_accepted(client: TestClient) -> None:
    expected = _installed_plotly_js()
    with client.stream("GET", PLOTLY, headers={"Accept-Encoding": "gzip"}) as response:
        raw = b"".join(response.iter_raw())
        assert response.headers["content-encoding"] == "gzip"
        assert response.headers["vary"] == "Accept-Encoding"
        assert response.headers["content-type"] == JS
    assert len(raw) < len(expected) / 2
    assert gzip.decompress(raw) == expected
    refused = client.get(PLOTLY, headers={"Accept-Encoding": "gzip;q=0, identity"})
    assert "content-encoding" not in refused.headers
    assert refused.content == expected


def test_an_unchanged_asset_is_a_304(client: TestClient) -> None:
    first = client.get("/billing/assets/app.js")
    etag = first.headers["etag"]
    again = client.get("/billing/assets/app.js", headers={"If-None-Match": etag})
    assert again.status_code == 304
    assert again.content == b""
    assert again.headers["etag"] == etag
    changed = client.get("/billing/assets/app.js", headers={"If-None-Match": '"other"'})
    assert changed.status_code == 200
    assert changed.content == asset("app.js")


def test_a_missing_plotly_package_is_a_clear_404(
    client: TestClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    dashboard._plotly.cache_clear()
    monkeypatch.setattr(dashboard, "plotly_js_path", lambda: None)
    try:
        response = client.get(PLOTLY)
    finally:
        dashboard._plotly.cache_clear()
    assert response.status_code == 404
    assert "plotly" in response.json()["message"]


def test_the_routes_are_outside_the_api_schema() -> None:
    app = _app()
    paths = set(app.openapi()["paths"])
    assert not {p for p in paths if p.startswith("/billing")}
    routes = [r for r in dashboard.router.routes if isinstance(r, APIRoute)]
    assert {r.path for r in routes} == {
        "/billing",
        "/billing/assets/app.js",
        "/billing/assets/app.css",
        PLOTLY,
    }
    assert all(not r.include_in_schema for r in routes)
    assert all(r.response_model is None for r in routes)


class _Page(HTMLParser):
    """What the page's markup holds: its tags with their attributes, and any script or style
    text."""

    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.inline: list[str] = []
        self._open: str | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))
        self._open = tag if tag in ("script", "style") else None

    def handle_endtag(self, tag: str) -> None:
        self._open = None

    def handle_data(self, data: str) -> None:
        if self._open and data.strip():
            self.inline.append(f"<{self._open}>{data.strip()[:80]}")


def _page() -> _Page:
    page = _Page()
    page.feed(asset("index.html").decode("utf-8"))
    page.close()
    return page


def test_the_page_has_no_inline_script_handler_or_style() -> None:
    page = _page()
    assert page.inline == []
    assert not [t for t, _ in page.tags if t == "style"]
    handlers = [(t, a) for t, attrs in page.tags for a in attrs if a.lower().startswith("on")]
    assert handlers == []
    assert not [(t, attrs) for t, attrs in page.tags if "style" in attrs]
    scripts = [attrs for tag, attrs in page.tags if tag == "script"]
    assert scripts and all(attrs.get("src") for attrs in scripts)
    assert not re.search(r"javascript:", asset("index.html").decode(), re.IGNORECASE)


def test_everything_the_page_loads_is_served_here(client: TestClient) -> None:
    page = _page()
    sources = [attrs["src"] for tag, attrs in page.tags if tag == "script"]
    sheets = [
        attrs["href"]
        for tag, attrs in page.tags
        if tag == "link" and attrs.get("rel") == "stylesheet"
    ]
    assert sources == ["/billing/assets/app.js"] and sheets == ["/billing/assets/app.css"]
    for path in [*sources, *sheets, PLOTLY]:
        assert path is not None and path.startswith("/billing/assets/")  # same origin, no CDN
        assert client.get(path).status_code == 200
    # app.js loads plotly.js itself, from this server only.
    script = asset("app.js").decode()
    assert f"'{PLOTLY}'" in script
    assert not re.search(r"https?://", script)


def test_the_script_never_writes_html_or_evaluates_text() -> None:
    script = asset("app.js").decode()
    for forbidden in ("innerHTML", "outerHTML", "insertAdjacentHTML", "document.write"):
        assert forbidden not in script, forbidden
    assert not re.search(r"\beval\s*\(|new\s+Function\s*\(", script)
    assert not re.search(r"setTimeout\(\s*['\"`]", script)  # a string timer is an eval
    assert "localStorage" not in script  # the token lives in sessionStorage only
