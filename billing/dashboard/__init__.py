"""The billing dashboard's static files: one hand-written page (`static/index.html`), its
script (`static/app.js`, plain ES2020, no build step) and its stylesheet (`static/app.css`).

The page holds no data: it asks for a token, keeps it in `sessionStorage` and reads
everything from the billing JSON APIs. The control plane serves these files
(`control_plane.api.dashboard`), with plotly.js from the installed `plotly` package.
Nothing is read at import time: `asset` reads a file when asked.
"""

from __future__ import annotations

from importlib import resources

ASSETS = frozenset({"index.html", "app.js", "app.css"})


def asset(name: str) -> bytes:
    """The bytes of one of `ASSETS`, read from the package's `static/` folder."""
    if name not in ASSETS:
        raise FileNotFoundError(f"the billing dashboard has no asset {name!r}")
    return (resources.files(__name__) / "static" / name).read_bytes()
