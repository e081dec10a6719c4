"""A request's target, built from identifiers only: the route's path parameters, and the
body or answer fields its catalogue entry names (`actions.Audited`). Nothing else of a body
or an answer is kept.

Every value is shown bounded (`MAX_VALUE_LENGTH` characters) and storable (NUL and lone
surrogates become U+FFFD), and a value holding the token prefix is replaced by `REDACTED`:
a caller who pastes a token where an id belongs (`DELETE .../tokens/dapi...`) leaves no
secret in the log."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from control_plane.audit.actions import Audited
from control_plane.auth.tokens import TOKEN_PREFIX
from control_plane.text import scrubbed

MAX_VALUE_LENGTH = 255
REDACTED = "[REDACTED]"


def target_of(
    entry: Audited, path_params: Mapping[str, Any], body: bytes | None, answer: bytes | None
) -> dict[str, str]:
    """`body` and `answer` are the request's and the response's bytes, or None when they
    were not kept (too long, or not needed)."""
    target = {str(key): shown(value) for key, value in path_params.items()}
    for fields, document in ((entry.body, body), (entry.answer, answer)):
        if not fields or document is None:
            continue
        parsed = _json(document)
        for key, path in fields.items():
            value = _field(parsed, path)
            if value is not None:
                target[key] = shown(value)
    return target


def shown(value: Any) -> str:
    text = str(value)
    if TOKEN_PREFIX in text.lower():
        return REDACTED
    return scrubbed(text[:MAX_VALUE_LENGTH])


def _json(document: bytes) -> Any:
    try:
        return json.loads(document)
    except (ValueError, RecursionError):
        return None


def _field(document: Any, path: str) -> str | int | None:
    """The string or integer at dotted `path`, else None (absent, or not an identifier)."""
    for part in path.split("."):
        if not isinstance(document, dict):
            return None
        document = document.get(part)
    if isinstance(document, bool) or not isinstance(document, str | int):
        return None
    return document
