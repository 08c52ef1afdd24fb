"""Build a container image of the bento: ``python -m deploy.container [--variant cpu|full] [--bento TAG]``.

The engine, the base image and the air-gapped path: docs/deployment.md ("Building an image").
The last line printed is the image reference.
"""

from __future__ import annotations

import argparse
import logging
import resource
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import bentoml
from bentoml._internal.container import construct_containerfile  # the Containerfile `bentoml containerize` builds
from bentoml._internal.container.frontend.dockerfile import CONTAINER_METADATA

from deploy.build_bento import build

logger = logging.getLogger("deploy.container")

HERE = Path(__file__).resolve().parent
BASE_IMAGE = "localhost/clip-service-base:bookworm"  # docker.base_image in bentofile.yaml and bentofile.full.yaml
DEBIAN_IMAGE = "docker.io/library/debian:bookworm-slim"
ROOTFS_IMAGE = "localhost/clip-service-rootfs:bookworm"
IMAGES = {"cpu": "clip-service", "full": "clip-service-full"}
HOST_CA_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")
CONTAINER_LIMIT = 4096  # open files and processes of a Podman container
# Appended to BentoML's Containerfile. The folders BentoML makes in its home at every start exist
# already, so the root file system can be read-only (its Prometheus folder falls back to /tmp), and
# OpenVINO's telemetry is declined (else it asks for a writable home at every start).
# Docker reads the image's HEALTHCHECK; Kubernetes uses the manifests' probes instead.
ADDED = ('RUN mkdir -p "$BENTOML_HOME/bentos" "$BENTOML_HOME/models" "$BENTOML_HOME/envs" "$BENTOML_HOME/tmp" '
         '&& opt_in_out --opt_out\n'
         'HEALTHCHECK --interval=10s --timeout=5s --start-period=60s --retries=3 CMD ["python", "-c", '
         '"import os, urllib.request; urllib.request.urlopen(\'http://127.0.0.1:\' + '
         'os.environ.get(\'BENTOML_PORT\', \'3000\') + \'/readyz\', timeout=4)"]\n')


class ContainerError(RuntimeError):
    """The image could not be built; the message says what to do."""


def find_engine() -> str:
    """``docker`` when its daemon answers, else ``podman``; :class:`ContainerError` when neither."""
    if shutil.which("docker") and _quiet(["docker", "info"]):
        return "docker"
    if shutil.which("podman"):
        return "podman"
    raise ContainerError("no container engine: install Docker or Podman (`apt-get install podman runc`)")


def engine_options(engine: str, command: str) -> list[str]:
    """Flags every ``build`` / ``run`` needs on this host: Podman gets the host's network and modest limits on
    open files and processes (its defaults are higher than a confined host lets a container raise them to)."""
    if engine != "podman":
        return []
    nofile, nproc = (min(CONTAINER_LIMIT, resource.getrlimit(r)[0]) for r in (resource.RLIMIT_NOFILE,
                                                                              resource.RLIMIT_NPROC))
    flags = ["--network", "host", "--ulimit", f"nofile={nofile}:{nofile}", "--ulimit", f"nproc={nproc}:{nproc}"]
    return flags + (["--format", "docker"] if command == "build" else [])  # OCI images drop HEALTHCHECK


def image_exists(engine: str, image: str) -> bool:
    """Whether ``image`` is in the engine's local storage."""
    return _quiet([engine, "image", "inspect", image])


def ensure_base(engine: str) -> str:
    """The base image, built once (from debian:bookworm-slim, else from Debian packages)."""
    if image_exists(engine, BASE_IMAGE):
        return BASE_IMAGE
    root = DEBIAN_IMAGE if image_exists(engine, DEBIAN_IMAGE) or _pull(engine, DEBIAN_IMAGE) else rootfs_image(engine)
    uv = shutil.which("uv", path=str(Path(sys.executable).parent)) or shutil.which("uv")
    if uv is None:
        raise ContainerError("uv is not installed: `pip install uv` (the image installs its packages with it)")
    with tempfile.TemporaryDirectory(prefix="clip-base-") as context:
        shutil.copy(uv, Path(context, "uv"))
        shutil.copy(HERE / "Containerfile.base", Path(context, "Containerfile"))
        logger.info("building %s from %s", BASE_IMAGE, root)
        _run([engine, "build", *engine_options(engine, "build"), "--build-arg", f"ROOT={root}",
              "-t", BASE_IMAGE, context])
    return BASE_IMAGE


def rootfs_image(engine: str) -> str:
    """Debian bookworm's minimal root file system as an image, made with debootstrap (needs root)."""
    if image_exists(engine, ROOTFS_IMAGE):
        return ROOTFS_IMAGE
    if shutil.which("debootstrap") is None:
        raise ContainerError(f"{DEBIAN_IMAGE} cannot be pulled and debootstrap is missing: "
                             "`apt-get install debootstrap` builds the base from Debian packages")
    with tempfile.TemporaryDirectory(prefix="clip-rootfs-") as root:
        logger.info("no registry: building Debian bookworm with debootstrap (a few minutes)")
        _run(["debootstrap", "--variant=minbase", "bookworm", root, "http://deb.debian.org/debian"])
        _slim_rootfs(Path(root))
        tar = subprocess.Popen(["tar", "-C", root, "-c", "."], stdout=subprocess.PIPE)
        _run([engine, "import", "-", ROOTFS_IMAGE], stdin=tar.stdout)
        if tar.wait() != 0:
            raise ContainerError(f"packing {root} for `{engine} import` failed")
    return ROOTFS_IMAGE


def _slim_rootfs(root: Path) -> None:
    """What debian:bookworm-slim leaves out: the downloaded packages, and (for later installs too)
    documentation but its copyright files."""
    for pattern in ("var/cache/apt/archives/*.deb", "var/lib/apt/lists/*", "usr/share/man/*", "usr/share/info/*"):
        for path in root.glob(pattern):
            shutil.rmtree(path) if path.is_dir() else path.unlink()
    (root / "etc/dpkg/dpkg.cfg.d/slim").write_text(
        "path-exclude /usr/share/doc/*\npath-include /usr/share/doc/*/copyright\npath-exclude /usr/share/man/*\n"
        "path-exclude /usr/share/info/*\npath-exclude /usr/share/lintian/*\n")


def build_image(engine: str, bento_tag: str, variant: str) -> str:
    """Build the image of ``bento_tag``; returns its reference (name:bento version, also tagged latest)."""
    bento = bentoml.get(bento_tag)
    image = f"{IMAGES[variant]}:{bento.tag.version}"
    ensure_base(engine)
    with construct_containerfile(bento, enable_buildkit=False) as (context, containerfile):
        path = Path(context, containerfile)
        path.write_text(_without_build_tools(path.read_text()) + ADDED)
        # A host that reaches PyPI through an intercepting proxy trusts it in this bundle; lend it to the build.
        ca = ["--volume", f"{HOST_CA_BUNDLE}:{HOST_CA_BUNDLE}:ro"] if engine == "podman" and \
            HOST_CA_BUNDLE.is_file() else []
        logger.info("building %s from bento %s with %s", image, bento.tag, engine)
        _run([engine, "build", *engine_options(engine, "build"), *ca, "-f", str(path),
              "-t", image, "-t", f"{IMAGES[variant]}:latest", context])
    return image


def _without_build_tools(containerfile: str) -> str:
    """BentoML's Debian recipe first installs a compiler, git and gnupg (0.6 GB with apt's cache), for
    packages built from source; every package of these bentos is a wheel, and the base has bash
    and the CA certificates, so the line is dropped."""
    line = f"RUN {CONTAINER_METADATA['debian']['default_install_command']}\n"
    if line not in containerfile:
        raise ContainerError("BentoML's Containerfile changed: review deploy/container.py against it")
    return containerfile.replace(line, "", 1)


def _quiet(command: list[str], timeout: float = 60) -> bool:
    try:
        return subprocess.run(command, capture_output=True, timeout=timeout, check=False).returncode == 0
    except subprocess.TimeoutExpired:
        return False


def _pull(engine: str, image: str) -> bool:
    logger.info("pulling %s", image)
    return _quiet([engine, "pull", image], timeout=120)


def _run(command: list[str], **kwargs: object) -> None:
    """Run ``command`` with its output on stderr (stdout stays the image reference's)."""
    done = subprocess.run(command, stdout=sys.stderr, check=False, **kwargs)  # type: ignore[call-overload]
    if done.returncode != 0:
        raise ContainerError(f"`{' '.join(command[:2])} …` failed (exit {done.returncode}; its output is above)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--variant", choices=IMAGES, default="cpu", help="cpu (slim, the default) or full (torch)")
    parser.add_argument("--bento", help="an existing bento's tag (default: build one, as `make build` does)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        engine = find_engine()
        print(build_image(engine, args.bento or build(args.variant), args.variant))
    except ContainerError as exc:
        raise SystemExit(f"clip-service: {exc}") from None


if __name__ == "__main__":
    main()
