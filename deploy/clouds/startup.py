"""What a group's instance runs at boot: the worker image, and in it one `ray start` that
joins the installation's Ray cluster advertising the group's own resource.

`ray_start_argv` is the command itself; the tests run exactly that argv against a local Ray
head, and `startup_script` wraps it for cloud-init (a bash user-data script). The script
installs nothing: the machine image (an NVIDIA-ready AMI / image with Docker and the NVIDIA
container toolkit) already has what it needs, and the only download is the worker image.
"""

from __future__ import annotations

import json
import shlex

from deploy.clouds.base import NodeGroupSpec


def ray_start_argv(head_address: str, ray_resource: str) -> list[str]:
    """`ray start` for one node of a group: join `head_address`, advertise `ray_resource`
    (1 per node, so one replica per node is placed with `resources={ray_resource: 1}`),
    and stay in the foreground so the container lives as long as the node."""
    resources = json.dumps({ray_resource: 1}, separators=(",", ":"))
    return ["ray", "start", f"--address={head_address}", f"--resources={resources}", "--block"]


def spec_ray_start_argv(spec: NodeGroupSpec) -> list[str]:
    return ray_start_argv(spec.head_address, spec.ray_resource)


def startup_script(spec: NodeGroupSpec) -> str:
    """The bash user-data of every instance of the group. `docker run` pulls the image if
    the machine image does not hold it; the container shares the host network (Ray's ports)
    and every GPU, runs detached (cloud-init must finish) and restarts with the instance."""
    image = shlex.quote(spec.worker_image)
    command = shlex.join(spec_ray_start_argv(spec))
    container = shlex.quote(f"moeserve-ray-{spec.ray_resource}")
    return (
        "#!/bin/bash\n"
        f"# moeserve node group {spec.name}: join the Ray cluster at {spec.head_address}\n"
        "set -euo pipefail\n"
        f"docker pull {image}\n"
        f"docker run --detach --name {container} --restart unless-stopped --gpus all "
        f"--network host --shm-size 16g {image} {command}\n"
    )
