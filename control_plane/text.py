"""Text the databases can store: NUL and lone surrogates are refused by PostgreSQL (and
turn into errors far from where they came in), so every caller-given string that is stored
or compared against stored text is checked here, at the edge. One owner for the rule."""

from __future__ import annotations

import re
from typing import Annotated

from pydantic import AfterValidator

UNSTORABLE = re.compile("[\x00\ud800-\udfff]")  # NUL, lone surrogates


def storable(text: str) -> str:
    """`text` unchanged, or ValueError saying what it holds that no database stores."""
    if UNSTORABLE.search(text):
        raise ValueError("must not hold NUL (\\u0000) or a lone surrogate")
    return text


def scrubbed(text: str) -> str:
    """`text` with each NUL or lone surrogate replaced by U+FFFD (for what is recorded
    rather than refused, e.g. the audit log's targets)."""
    return UNSTORABLE.sub("\ufffd", text)


StorableText = Annotated[str, AfterValidator(storable)]
