"""Cursor pagination as Databricks list APIs do it (`page_token` in, `next_page_token`
out), for listings ordered by (a time, an id): the token is the last item's place in that
order, so items written while a caller pages never shift a page, and none is skipped or
repeated. The token is opaque to callers (URL-safe base64 of a small JSON object) and
checked on the way back in: anything this server did not hand out is a 400 that never
echoes it."""

from __future__ import annotations

import base64
import binascii
from datetime import UTC, datetime
from typing import Self

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from control_plane.billing_api.listing import UNSTORABLE
from control_plane.errors import InvalidParameter

BAD_TOKEN = (
    "page_token is not a token this listing returned: pass the previous page's "
    "next_page_token unchanged, or leave page_token out for the first page"
)


class PageCursor(BaseModel):
    """Where a page ended. A listing subclasses it to constrain `id` to its own ids."""

    model_config = ConfigDict(strict=True, extra="forbid", frozen=True)

    t: datetime  # the order's time, ISO 8601 with its zone
    id: str = Field(min_length=1, max_length=128)  # the order's tie-breaker

    def token(self) -> str:
        return base64.urlsafe_b64encode(self.model_dump_json().encode()).decode().rstrip("=")

    @classmethod
    def of(cls, token: str) -> Self:
        """The cursor `token` holds, its time in UTC as stored; or a 400."""
        try:
            raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
            cursor = cls.model_validate_json(raw)
        except (ValueError, binascii.Error, ValidationError):
            raise InvalidParameter(BAD_TOKEN) from None
        if cursor.t.tzinfo is None or UNSTORABLE.search(cursor.id):
            raise InvalidParameter(BAD_TOKEN)
        try:  # an offset could carry the time past year 1 or 9999
            return cls(t=cursor.t.astimezone(UTC), id=cursor.id)
        except (OverflowError, ValueError):
            raise InvalidParameter(BAD_TOKEN) from None
