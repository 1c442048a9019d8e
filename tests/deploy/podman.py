"""Podman for the container tests: how to call it on these machines, the stand-in images
that replace what no registry can give here, and the bridge image built from a clean
checkout.

No image registry is reachable here (only Debian's packages and PyPI), so the images
that deploy/docker names are made from Debian's packages and tagged with those names:

- `python:3.11-slim-bookworm` (the Dockerfile's base): a debootstrap of Debian 12 with
  python3 (3.11), imported into podman's store;
- `matrixdotorg/synapse:<compose's tag>`: that base + `pip install matrix-synapse`
  (tests/deploy/standins/synapse);
- `postgres:<compose's tag>`: that base + Debian's PostgreSQL (tests/deploy/standins/postgres).

Each is made once per machine and then found in podman's store (a stand-in is rebuilt
when its files change). `python -m tests.deploy.podman standins` makes them all (CI does,
in .ci/run); the tests make what is missing themselves, or skip saying why.
`python -m tests.deploy.podman prune` drops build layers older than a day that no tag uses.

Podman's defaults fail on these machines (no rlimit changes, no cgroup v2, no systemd),
so every call goes through `podman()`, with a containers.conf for runc and cgroupfs.
Without systemd podman runs no health checks by itself: `podman healthcheck run` does.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[2]
STANDINS = Path(__file__).resolve().parent / "standins"
DOCKER = REPO / "deploy" / "docker"
DOCKERFILE = DOCKER / "Dockerfile"
COMPOSE = DOCKER / "compose.yaml"

BASE_IMAGE = "docker.io/library/python:3.11-slim-bookworm"
DEBIAN_MIRROR = "http://deb.debian.org/debian"
BASE_PACKAGES = "python3,python3-venv,python-is-python3,ca-certificates"
LABEL = "qqbridge.standin"  # the hash of the files a stand-in was built from

CONTAINERS_CONF = """\
# Written by tests/deploy/podman.py: podman's defaults fail on these machines.
[containers]
default_ulimits = []

[engine]
runtime = "runc"
cgroup_manager = "cgroupfs"
"""

# pip and TLS inside a build need this machine's CA bundle and pip config, where it has them.
HOST_FILES = ("/etc/ssl/certs/ca-certificates.crt", "/etc/pip.conf", "/etc/xdg/pip")

REQUIRE_ENV = "QQBRIDGE_TEST_REQUIRE_CONTAINERS"


class Unavailable(RuntimeError):
    """Podman (or what a stand-in needs) is missing here: the reason a test skips."""


def env() -> dict[str, str]:
    """The environment for podman and podman-compose: CONTAINERS_CONF set."""
    conf = os.environ.get("CONTAINERS_CONF")
    if not conf:
        path = Path(tempfile.gettempdir()) / "qqbridge-containers.conf"
        if not path.exists() or path.read_text() != CONTAINERS_CONF:
            tmp = path.with_suffix(f".{os.getpid()}")
            tmp.write_text(CONTAINERS_CONF)
            tmp.replace(path)
        conf = str(path)
    return {**os.environ, "CONTAINERS_CONF": conf}


def podman(*args: str, check: bool = True, timeout: float = 300, capture: bool = True,
           **kwargs) -> subprocess.CompletedProcess[str]:  # fmt: skip
    """Run `podman ARGS`; a failure with `check` raises with podman's own output."""
    done = subprocess.run(
        ["podman", *args], env=env(), text=True, timeout=timeout,
        stdout=subprocess.PIPE if capture else None, stderr=subprocess.PIPE if capture else None, **kwargs,
    )  # fmt: skip
    if check and done.returncode != 0:
        raise RuntimeError(f"podman {' '.join(args)}: exit {done.returncode}\n{done.stdout}\n{done.stderr}")
    return done


def why_unavailable() -> str | None:
    """None if podman runs containers here, else why not (a skip reason)."""
    if not shutil.which("podman"):
        return "podman is not installed (`apt-get install podman runc`; .ci/run does)"
    if os.geteuid() != 0:
        return "the container tests need rootful podman (run them as root, as CI does)"
    try:
        done = podman("info", "--format", "{{.Host.OCIRuntime.Name}}", check=False, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"podman info failed: {exc}"
    if done.returncode != 0:
        return f"podman does not work here: {(done.stderr or done.stdout).strip()[-300:]}"
    return None


def image_exists(name: str) -> bool:
    return podman("image", "exists", name, check=False).returncode == 0


def image_label(name: str, label: str) -> str | None:
    done = podman("image", "inspect", "--format", f'{{{{index .Config.Labels "{label}"}}}}', name, check=False)
    value = done.stdout.strip() if done.returncode == 0 else ""
    return value if value and value != "<no value>" else None


@contextmanager
def locked(name: str) -> Iterator[None]:
    """One builder at a time per machine (test runs in parallel share podman's store)."""
    path = Path(tempfile.gettempdir()) / f"qqbridge-podman-{name}.lock"
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def say(message: str) -> None:
    print(f"[podman] {message}", file=sys.stderr, flush=True)


# ---- the stand-in images ------------------------------------------------------------------


def compose_images() -> dict[str, str]:
    """service → image, as compose.yaml names them."""
    services = yaml.safe_load(COMPOSE.read_text(encoding="utf-8"))["services"]
    return {name: service["image"] for name, service in services.items() if "image" in service}


def qualified(image: str) -> str:
    """Docker's reading of a short name: `postgres:16` is docker.io/library/postgres:16."""
    first = image.split("/", 1)[0]
    if "/" in image and ("." in first or ":" in first or first == "localhost"):
        return image
    return f"docker.io/{image}" if "/" in image else f"docker.io/library/{image}"


def ensure_base() -> str:
    """The stand-in for the Dockerfile's base image; debootstrap (about 40 s) if missing."""
    with locked("base"):
        if image_exists(BASE_IMAGE):
            return BASE_IMAGE
        if not shutil.which("debootstrap"):
            raise Unavailable(f"{BASE_IMAGE} is not in podman's store and debootstrap is not installed")
        started = time.monotonic()
        with tempfile.TemporaryDirectory(prefix="qqbridge-rootfs-") as rootfs:
            subprocess.run(
                ["debootstrap", "--variant=minbase", f"--include={BASE_PACKAGES}", "bookworm", rootfs, DEBIAN_MIRROR],
                check=True, stdout=subprocess.DEVNULL,
            )  # fmt: skip
            with subprocess.Popen(["tar", "-C", rootfs, "-c", "."], stdout=subprocess.PIPE) as tar:  # closes the pipe
                podman("import", "--change", 'CMD ["python3"]', "-", BASE_IMAGE, stdin=tar.stdout, timeout=600)
            assert tar.returncode == 0
        say(f"stand-in {BASE_IMAGE}: debootstrap and import in {time.monotonic() - started:.0f} s")
        return BASE_IMAGE


def host_mounts() -> list[str]:
    return [arg for path in HOST_FILES if os.path.exists(path) for arg in ("-v", f"{path}:{path}:ro")]


def tree_hash(*paths: Path, extra: str = "") -> str:
    digest = hashlib.sha256(extra.encode())
    for root in paths:
        for path in sorted(p for p in root.rglob("*") if p.is_file() and "__pycache__" not in p.parts):
            digest.update(path.relative_to(root).as_posix().encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()[:16]


def ensure_standin(kind: str) -> str:
    """The stand-in for compose's `postgres` or `synapse` image, tagged with its name."""
    image = qualified(compose_images()[kind])
    tag = image.rsplit(":", 1)[1]
    build_args = ["--build-arg", f"SYNAPSE_VERSION={tag.removeprefix('v')}"] if kind == "synapse" else []
    wanted = tree_hash(STANDINS / kind, extra=" ".join(["--format=docker", *build_args]))
    ensure_base()
    with locked(kind):
        if image_label(image, LABEL) == wanted:
            return image
        started = time.monotonic()
        podman(
            "build", "--format", "docker", "--network", "host", *host_mounts(), *build_args,
            "--label", f"{LABEL}={wanted}",
            "-f", str(STANDINS / kind / "Containerfile"), "-t", image, str(STANDINS / kind), timeout=900,
        )  # fmt: skip
        say(f"stand-in {image}: built in {time.monotonic() - started:.0f} s")
        return image


def ensure_standins() -> list[str]:
    return [ensure_base(), ensure_standin("postgres"), ensure_standin("synapse")]


# ---- the bridge's image ---------------------------------------------------------------------


def clean_checkout(into: Path) -> Path:
    """The repository's files as a fresh clone would hold them once the work tree is
    committed: tracked files and new ones git does not ignore, as they are in the work
    tree; no .venv, caches or build output. (On CI's fresh clone: exactly the clone.)"""
    command = ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"]
    listed = subprocess.run(command, cwd=REPO, check=True, capture_output=True).stdout.decode().split("\0")
    for name in filter(None, listed):
        source = REPO / name
        if not source.is_file():
            continue  # deleted in the work tree
        target = into / name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(source, target)
    return into


def build_bridge_image(tag: str, workdir: Path) -> tuple[str, float]:
    """Build deploy/docker/Dockerfile from a clean checkout, as the README says
    (`build -f deploy/docker/Dockerfile .` from the repository root: podman, like BuildKit,
    filters the context by Dockerfile.dockerignore next to it); return the image ID and
    the build's seconds. `--format docker`: podman's default, OCI, has no HEALTHCHECK."""
    ensure_base()
    context = clean_checkout(workdir / "checkout")
    iidfile = workdir / "iid"
    started = time.monotonic()
    podman(
        "build", "--format", "docker", "--network", "host", *host_mounts(),
        "-f", DOCKERFILE.relative_to(REPO).as_posix(), "--iidfile", str(iidfile), "-t", tag, ".",
        cwd=context, timeout=900,
    )  # fmt: skip
    return iidfile.read_text().strip(), time.monotonic() - started


TEST_CONTAINERS = re.compile(r"qqbridge-test-[0-9a-f]{8}|qqbt[0-9a-f]{6}_.*")
TEST_VOLUMES = re.compile(r"qqbridge-test-data-[0-9a-f]{8}|qqbt[0-9a-f]{6}_.*|[0-9a-f]{64}")


def prune(hours: float = 2) -> None:
    """Forget what test runs that were killed left behind, hours old (their containers,
    volumes and anonymous volumes), and build layers no tag uses, a day old (newer ones
    stay as cache)."""
    before = time.time() - hours * 3600
    for container in json.loads(podman("ps", "-a", "--format", "json").stdout or "[]"):
        names = container.get("Names") or []
        if any(TEST_CONTAINERS.fullmatch(n) for n in names) and container.get("Created", 0) < before:
            podman("rm", "-f", "-v", "-t", "0", names[0], check=False)
    for volume in json.loads(podman("volume", "ls", "--format", "json").stdout or "[]"):
        created = datetime.fromisoformat(re.sub(r"\.\d+", "", volume["CreatedAt"]).replace("Z", "+00:00")).timestamp()
        if TEST_VOLUMES.fullmatch(volume["Name"]) and created < before:
            podman("volume", "rm", volume["Name"], check=False)  # not one in use
    with locked("base"), locked("postgres"), locked("synapse"):
        podman("image", "prune", "-f", "--filter", "until=24h", timeout=600)


def main(argv: list[str]) -> int:
    if argv not in (["standins"], ["prune"]):
        print("usage: python -m tests.deploy.podman standins|prune", file=sys.stderr)
        return 2
    reason = why_unavailable()
    if reason:
        print(f"cannot use podman: {reason}", file=sys.stderr)
        return 1
    if argv == ["prune"]:
        prune()
        return 0
    started = time.monotonic()
    for image in ensure_standins():
        say(f"ready: {image}")
    say(f"stand-in images ready in {time.monotonic() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
