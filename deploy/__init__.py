"""Deployment: turning an endpoint's capacity into running compute. `deploy.providers.base`
holds the `Provider` interface (named Ray Serve applications: deploy, status, list, delete,
handle, logs) and its status and error types; `deploy.providers.local.LocalRayProvider`
hosts them on a local Ray instance or an existing Ray cluster. `workload_types` (pure data)
names the serving workload types and the devices each replica spans. Cloud providers and the
GPU instance catalog come later. Never imports `control_plane`; nothing is re-exported here,
so the pure modules import without Ray.
"""
