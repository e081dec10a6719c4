"""Deployment providers: the `base.Provider` interface (deploy, status, list, delete, handle,
logs of named Ray Serve applications) with its status types, and `local.LocalRayProvider`,
which hosts the applications on a local Ray instance or an existing Ray cluster. Nothing is
re-exported here, so `base` imports without Ray."""
