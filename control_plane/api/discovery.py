"""`GET /.well-known/databricks-config`: the host-metadata probe `databricks-sdk` sends when
a client is built. moeserve authenticates with tokens only, so there is no OIDC endpoint to
announce; answering (rather than 404) keeps the SDK from warning on every client."""

from __future__ import annotations

from fastapi import APIRouter
from pydantic import BaseModel

router = APIRouter(tags=["discovery"])


class HostMetadata(BaseModel):
    oidc_endpoint: str = ""


@router.get("/.well-known/databricks-config", response_model=HostMetadata)
def databricks_config() -> HostMetadata:
    # No workspace or account id: one unauthenticated answer cannot match every token.
    return HostMetadata()
