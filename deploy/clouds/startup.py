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

AUTH_DIR = "/etc/moeserve"
AUTH_ENV_FILE = f"{AUTH_DIR}/ray-auth.env"


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
    and every GPU, runs detached (cloud-init must finish) and restarts with the instance.
    With a Ray auth token, it goes into a root-only env file the container reads, never on
    a command line (where any local user could see it)."""
    image = shlex.quote(spec.worker_image)
    command = shlex.join(spec_ray_start_argv(spec))
    container = shlex.quote(f"moeserve-ray-{spec.ray_resource}")
    lines = [
        "#!/bin/bash",
        f"# moeserve node group {spec.name}: join the Ray cluster at {spec.head_address}",
        "set -euo pipefail",
    ]
    env_file = ""
    if spec.ray_auth_token is not None:
        token = shlex.quote(spec.ray_auth_token.get_secret_value())
        lines += [
            f"install -d -m 700 {AUTH_DIR}",
            f"(umask 077; printf 'RAY_AUTH_MODE=token\\nRAY_AUTH_TOKEN=%s\\n' {token}"
            f" > {AUTH_ENV_FILE})",
        ]
        env_file = f"--env-file {AUTH_ENV_FILE} "
    lines += [
        f"docker pull {image}",
        f"docker run --detach --name {container} --restart unless-stopped --gpus all "
        f"--network host --shm-size 16g {env_file}{image} {command}",
    ]
    return "\n".join(lines) + "\n"
