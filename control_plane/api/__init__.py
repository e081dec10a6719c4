"""HTTP routers of the management API, one per resource: `endpoints` and
`endpoint_details` (serving endpoints), `permissions`, tenancy (`workspaces`, `tokens`), the
model registry (`models`), `discovery` and `prometheus`; `deps` holds their request
dependencies. The query routes live in `control_plane.query`, the billing routes in
`control_plane.billing_api`; `control_plane.app` mounts them all."""
