"""The reconciler: a background loop that drives every endpoint from its desired config to
running Serve apps through a provider (`loop`), with the decisions kept pure (`plan`)."""

from control_plane.reconciler.loop import Reconciler
from control_plane.reconciler.plan import EndpointSnapshot, Plan, plan_endpoint

__all__ = ["EndpointSnapshot", "Plan", "Reconciler", "plan_endpoint"]
