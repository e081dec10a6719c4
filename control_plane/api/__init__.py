"""HTTP routers, one per resource: management (`endpoints`, `endpoint_details`,
`permissions`), tenancy (`workspaces`, `tokens`), the model registry (`models`), and the
query gateway (`control_plane.gateway`)."""

from __future__ import annotations

from fastapi import APIRouter


def routers() -> list[APIRouter]:
    from control_plane.api import (
        discovery,
        endpoint_details,
        endpoints,
        models,
        permissions,
        prometheus,
        tokens,
        workspaces,
    )
    from control_plane.billing_api import estimate as billing_estimate
    from control_plane.billing_api import invoices as billing_invoices
    from control_plane.billing_api import records as billing_records
    from control_plane.billing_api import usage as billing_usage
    from control_plane.gateway import router as gateway

    # endpoint_details first: its fixed paths must win over `/{name}` patterns.
    return [
        endpoint_details.router,
        endpoints.router,
        permissions.router,
        workspaces.router,
        tokens.router,
        models.router,
        gateway.router,
        billing_usage.router,
        billing_records.router,
        billing_invoices.router,
        billing_estimate.router,
        discovery.router,
        prometheus.router,
    ]
