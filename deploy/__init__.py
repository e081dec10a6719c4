"""Deployment: turning an endpoint's capacity into running compute. `deploy.providers.base`
holds the `Provider` interface (named Ray Serve applications: deploy, status, list, delete,
handle, logs) and its status and error types; `deploy.providers.local.LocalRayProvider`
hosts them on a local Ray instance or an existing Ray cluster; `providers.ray_capacity`
(pure) decides whether a workload fits a cluster. `workload_types` (pure data) names the
serving workload types and the devices each replica spans; `catalog` is each cloud's GPU
instance types as data, with the picker that chooses the cheapest shape that fits;
`clouds` holds GPU node groups that join the Ray cluster (AWS so far; not yet driven by the
reconciler). Never imports `control_plane`; nothing is re-exported here, so the pure
modules import without Ray.
"""
