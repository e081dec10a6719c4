"""Authentication and authorisation: bearer tokens (`tokens`), the resolved `Caller`
(`caller`), and endpoint permission levels (`permissions`)."""

from control_plane.auth.caller import Caller, authenticate
from control_plane.auth.permissions import Level, level_of, require, visible
from control_plane.auth.tokens import digest, generate_token, issue_token

__all__ = [
    "Caller",
    "Level",
    "authenticate",
    "digest",
    "generate_token",
    "issue_token",
    "level_of",
    "require",
    "visible",
]
