"""The environment variables a served entity may set in its replicas' processes.

A served entity's `environment_vars` reach the replica's process environment (Ray's
`runtime_env`). Variables steer interpreters, the dynamic loader, libraries, Ray, CUDA, NCCL
and OpenMP (`PYTHONWARNINGS`, `LD_PRELOAD`, `BROWSER`, `RAY_*`, ...), so a caller who could
set any of them could run code as the serving host's user. Hence an allow-list: a name must
match `^[A-Z_][A-Z0-9_]*$` and one of the operator's patterns (`environment.allowed`,
default `APP_*`: names no library reads); anything else is refused with a 400 naming it.

A value is either plain text or a secret reference, `{{secrets/<scope>/<key>}}`, resolved
when the replica is deployed from the operator's secrets directory
(`environment.secrets_dir`): the file `<secrets_dir>/<workspace id>/<scope>/<key>`, so a
workspace reaches only its own secrets. Without a secrets directory, references are
refused. Reads never show plain values: the API shows secret references as they were given
and every other value as `REDACTED`.
"""

from __future__ import annotations

import fnmatch
import re
from dataclasses import dataclass
from pathlib import Path

from control_plane.errors import InvalidParameter
from control_plane.settings import EnvironmentSettings

NAME = re.compile(r"[A-Z_][A-Z0-9_]*")
SECRET_REFERENCE = re.compile(r"\{\{secrets/([A-Za-z0-9_.-]{1,128})/([A-Za-z0-9_.-]{1,128})\}\}")
REDACTED = "REDACTED"
MAX_VARIABLES = 64
MAX_NAME_CHARS = 128
MAX_VALUE_CHARS = 16_384


class SecretNotFound(LookupError):
    """A secret reference names no secret of the workspace (any more)."""


@dataclass(frozen=True)
class EnvironmentPolicy:
    settings: EnvironmentSettings

    def check(self, variables: dict[str, str] | None, workspace_id: str | None) -> None:
        """Refuse (400) what a served entity may not set; the message names the variable,
        never echoes a value."""
        if not variables:
            return
        if len(variables) > MAX_VARIABLES:
            raise InvalidParameter(
                f"environment_vars: at most {MAX_VARIABLES} variables; got {len(variables)}"
            )
        for name, value in variables.items():
            self._check_name(name)
            _check_value(name, value)
            reference = SECRET_REFERENCE.fullmatch(value)
            if reference is None:
                continue
            if self.settings.secrets_dir is None:
                raise InvalidParameter(
                    f"environment_vars.{name}: secret references need a secrets store, and "
                    "this server has none (the operator sets environment.secrets_dir); "
                    "give a plain value or ask the operator"
                )
            try:
                self._read(workspace_id, reference)
            except SecretNotFound:
                raise InvalidParameter(
                    f"environment_vars.{name}: no secret {reference.group(1)}/"
                    f"{reference.group(2)} in this workspace's secrets store"
                ) from None

    def resolved(
        self, variables: dict[str, str] | None, workspace_id: str | None
    ) -> dict[str, str]:
        """The values a replica gets: secret references replaced by the secrets' contents.
        Raises `SecretNotFound` if a referenced secret has gone since the config was
        accepted."""
        resolved = {}
        for name, value in (variables or {}).items():
            reference = SECRET_REFERENCE.fullmatch(value)
            resolved[name] = value if reference is None else self._read(workspace_id, reference)
        return resolved

    def _check_name(self, name: str) -> None:
        if len(name) > MAX_NAME_CHARS or not NAME.fullmatch(name):
            raise InvalidParameter(
                "environment_vars: names must match ^[A-Z_][A-Z0-9_]*$ "
                f"(at most {MAX_NAME_CHARS} characters); got {_shown(name)}"
            )
        allowed = self.settings.allowed
        if not any(fnmatch.fnmatchcase(name, pattern) for pattern in allowed):
            patterns = ", ".join(allowed) or "(none: this server allows no variables)"
            raise InvalidParameter(
                f"environment_vars: {name} may not be set on a served entity; names must "
                f"match {patterns} (variables that steer the interpreter, the loader, "
                "libraries, Ray or GPUs are refused; the operator widens the list with "
                "environment.allowed)"
            )

    def _read(self, workspace_id: str | None, reference: re.Match[str]) -> str:
        root = self.settings.secrets_dir
        if root is None or workspace_id is None:
            raise SecretNotFound(reference.group(0))
        scope, key = reference.group(1), reference.group(2)
        if scope in {".", ".."} or key in {".", ".."}:
            raise SecretNotFound(reference.group(0))
        path = Path(root, workspace_id, scope, key)
        try:
            resolved = path.resolve(strict=True)
            if not resolved.is_relative_to(Path(root, workspace_id).resolve(strict=True)):
                raise SecretNotFound(reference.group(0))
            return resolved.read_text(encoding="utf-8").rstrip("\n")
        except (OSError, UnicodeDecodeError):
            raise SecretNotFound(reference.group(0)) from None


def redacted(variables: dict[str, str] | None) -> dict[str, str] | None:
    """What a read shows: secret references as given, every other value `REDACTED`."""
    if variables is None:
        return None
    return {
        name: value if SECRET_REFERENCE.fullmatch(value) else REDACTED
        for name, value in variables.items()
    }


def _check_value(name: str, value: str) -> None:
    if len(value) > MAX_VALUE_CHARS:
        raise InvalidParameter(
            f"environment_vars.{name}: values are at most {MAX_VALUE_CHARS} characters"
        )
    if "\x00" in value:
        raise InvalidParameter(f"environment_vars.{name}: values may not contain NUL")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise InvalidParameter(
            f"environment_vars.{name}: values must be valid Unicode (no lone surrogates)"
        ) from None


def _shown(name: str) -> str:
    """A refused name, safe to put in a message: printable ASCII, truncated."""
    printable = "".join(c if c.isascii() and c.isprintable() else "?" for c in name[:64])
    return repr(printable) + ("..." if len(name) > 64 else "")
