"""`GET /.well-known/databricks-config`: the host-metadata probe `databricks-sdk` sends when
a client is built. moeserve authenticates with tokens only, so there is no OIDC endpoint to
announce; answering (rather than 404) keeps the SDK from warning on every client."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

router = APIRouter(tags=["discovery"])


@router.get("/.well-known/databricks-config", response_model=dict[str, Any])
def databricks_config() -> dict[str, Any]:
    # No workspace or account id: one unauthenticated answer cannot match every token.
    return {"oidc_endpoint": ""}
