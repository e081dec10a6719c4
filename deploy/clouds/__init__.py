"""Cloud node groups: the GPU capacity of one served entity on a cloud. `base` holds the
cloud-neutral interface (`NodeGroupSpec` with its deterministic name, tags and Ray resource,
the `NodeGroup` state, the `NodeGroups` protocol and its typed errors), `startup` the
start-up script every node boots with (the exact `ray start` that joins the installation's
cluster), `aws` the AWS implementation (launch templates and Auto Scaling groups), `gcp`
the GCP one (regional instance templates and managed instance groups) and `azure` the Azure
one (virtual machine scale sets), each with its `*_settings` and `*_failures` (which answers
mean capacity or quota). Cloud SDKs are imported only when a cloud's class is built.
"""

from deploy.clouds.base import (
    CapacityError,
    CloudCredentialsError,
    NodeGroup,
    NodeGroupError,
    NodeGroupNotFound,
    NodeGroups,
    NodeGroupSpec,
    ShapeFailure,
    ShapeNotOffered,
)
from deploy.clouds.startup import ray_start_argv, startup_script

__all__ = [
    "CapacityError",
    "CloudCredentialsError",
    "NodeGroup",
    "NodeGroupError",
    "NodeGroupNotFound",
    "NodeGroupSpec",
    "NodeGroups",
    "ShapeFailure",
    "ShapeNotOffered",
    "ray_start_argv",
    "startup_script",
]
