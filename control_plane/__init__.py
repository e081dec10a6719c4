"""The control plane: a FastAPI app with the Databricks-compatible management API, the
OpenAI-compatible query gateway, tenancy and auth, and the reconciler that drives endpoints
from desired to actual state. It is built by later issues; this package is its home.
"""
