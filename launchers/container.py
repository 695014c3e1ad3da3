"""Container mode of the local launcher: each job's `lfads ...` runs in the project's image
(podman or docker) instead of this interpreter.

The job sees only what it needs: the tracking store's directory (a sqlite file and the
`mlartifacts` beside it, or a file store), the paths the caller listed in the spec (data
read-only, outputs read-write) and any `local.mounts`, each at the same path as on the host so
the URIs and paths stored in MLflow stay valid. It runs non-root with a read-only root
filesystem, no capabilities, no privilege escalation, a memory and pids limit and `--cpus` equal
to its threads; /tmp is a tmpfs (HOME, matplotlib's and torch's caches go there).
"""

from __future__ import annotations

import dataclasses
import os
import re
import shutil
import stat
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

from launchers.errors import LauncherError
from launchers.spec import THREAD_VARS, JobSpec
from launchers.typed_options import launcher_section

BUILD_HINT = "build it with tools/image.sh build"
# Environment forwarded into the container by name (`-e NAME`: values never appear in argv).
_FORWARD = re.compile(r"^(LFADS_|MLFLOW_)")
_NAME_CHARS = re.compile(r"[^a-zA-Z0-9_.-]")


@dataclass
class ContainerOptions:
    """The container keys of the `local:` section (`local.container` turns the mode on)."""

    container: str  # the image, e.g. localhost/lfads-lightning:cpu
    runtime: str = "podman"  # or docker
    memory: str = "4g"  # --memory of each job (the spec's resources.memory wins)
    pids_limit: int = 512
    user: str | None = None  # default: 1000:1000 as root, else your own uid (rootless)
    network: str | None = None  # default: none for a sqlite/file store, else host
    mounts: list[str] = field(default_factory=list)  # extra host paths (read-write)
    # podman's `:U` on read-write mounts: chowned to the job's user at each start, so a uid-1000
    # job can write what a root controller created there. Default: on for rootful podman.
    chown: bool | None = None
    run_args: list[str] = field(default_factory=list)  # extra `run` arguments, e.g. --device


def parse_options(data: dict[str, Any]) -> ContainerOptions:
    names = [f.name for f in dataclasses.fields(ContainerOptions)]
    unknown = sorted(set(data) - set(names))
    if unknown:
        raise LauncherError(
            f"unknown option 'local.{unknown[0]}' for launcher 'local'; valid options: "
            + ", ".join(["python", "warm", *names])
        )
    if "container" not in data:
        raise LauncherError(
            f"local.{sorted(data)[0]} is a container option; set local.container=IMAGE too "
            f"(e.g. localhost/lfads-lightning:cpu; {BUILD_HINT})"
        )
    opts = launcher_section(ContainerOptions, data, "local.")
    if opts.runtime not in ("podman", "docker"):
        raise LauncherError(f"local.runtime must be podman or docker, got {opts.runtime!r}")
    return opts


def store_dir(tracking_uri: str) -> str | None:
    """The host directory holding a local tracking store (None for a server URI)."""
    parsed = urlparse(tracking_uri)
    if parsed.scheme == "sqlite":
        path = unquote(tracking_uri[len("sqlite:///") :])
        return str(Path(path).resolve().parent) if path and path != ":memory:" else None
    if parsed.scheme in ("", "file"):
        return str(Path(unquote(parsed.path or tracking_uri)).resolve())
    return None


def job_mounts(spec: JobSpec, extra: list[str]) -> list[tuple[str, str]]:
    """(host path, ro|rw) for the job, nested paths folded into the read-write mount above them."""
    wanted: dict[str, str] = {}
    store = store_dir(spec.tracking_uri)
    for given, mode in [*([(store, "rw")] if store else []), *spec.paths.items()]:
        path = str(Path(given).resolve())
        wanted[path] = "rw" if "rw" in (mode, wanted.get(path)) else "ro"
    for path in extra:
        wanted[str(Path(path).resolve())] = "rw"
    rw = [p for p, m in wanted.items() if m == "rw"]
    mounts = []
    for path, mode in sorted(wanted.items()):
        if any(path != r and Path(path).is_relative_to(r) for r in rw):
            continue
        if mode == "rw":
            Path(path).mkdir(parents=True, exist_ok=True)  # an output dir the job would create
        if Path(path).exists():  # a missing input is the job's to report
            mounts.append((path, mode))
    return mounts


def container_name(run_id: str, suffix: str = "") -> str:
    return _NAME_CHARS.sub("-", f"lfads-{run_id}{suffix}")[:120]


class Container:
    """Builds `RUNTIME run ...` command lines and checks/stops containers."""

    def __init__(self, opts: ContainerOptions) -> None:
        self.opts = opts
        self.rootless = os.getuid() != 0
        own = f"{os.getuid()}:{os.getgid()}"
        self.user = opts.user or (own if self.rootless else "1000:1000")
        self.chown = opts.chown if opts.chown is not None else not self.rootless
        if self.chown and opts.runtime != "podman":
            raise LauncherError("local.chown needs podman (docker has no :U mounts); set it false")

    def check(self, tracking_uri: str | None) -> None:
        """The runtime is installed, the image is there, the store is writable by the user."""
        runtime, image = self.opts.runtime, self.opts.container
        if shutil.which(runtime) is None:
            raise LauncherError(
                f"local.container needs the container runtime '{runtime}', which is not "
                f"installed; install it (apt-get install {runtime}) and {BUILD_HINT}"
            )
        found = subprocess.run(
            [runtime, "image", "inspect", image], capture_output=True, text=True, check=False
        )
        if found.returncode != 0:
            why = (found.stderr.strip().splitlines() or ["not found"])[-1]
            raise LauncherError(f"image {image!r} not usable with {runtime} ({why}); {BUILD_HINT}")
        store = store_dir(tracking_uri) if tracking_uri else None
        if store and (Path(store, ".git").exists() or Path(store) in (Path.home(), Path("/"))):
            raise LauncherError(
                f"the tracking store's directory {store} would be mounted read-write into the "
                f"container; put the store in a directory of its own, e.g. "
                f"--tracking-uri sqlite:///{Path(store, 'runs', 'mlflow.db')}"
            )
        if (
            store
            and Path(store).exists()
            and not self.chown
            and not _writable_by(Path(store), self.user)
        ):
            raise LauncherError(
                f"the container runs as {self.user} and cannot write the tracking store's "
                f"directory {store}; chown it to that user, set local.user, or (podman) "
                f"local.chown=true"
            )

    def run_command(self, spec: JobSpec, name: str, interactive: bool = False) -> list[str]:
        o = self.opts
        network = o.network or ("none" if store_dir(spec.tracking_uri) else "host")
        cmd = [o.runtime, "run", "--rm", "--name", name, "--init", "--user", self.user]
        if self.rootless and o.runtime == "podman" and o.user is None:
            cmd.append("--userns=keep-id")  # the job writes files as you, not a subordinate uid
        cmd += ["--read-only", "--cap-drop=ALL", "--security-opt", "no-new-privileges"]
        cmd += ["--network", network, "--pids-limit", str(o.pids_limit)]
        cmd += ["--memory", spec.resources.memory or o.memory, "--tmpfs", "/tmp:rw,size=1g"]
        cmd += ["-e", "HOME=/tmp", "-e", "MPLCONFIGDIR=/tmp/mpl"]
        threads = spec.threads or spec.resources.cpus
        if threads:
            cmd += ["--cpus", str(threads)]
            cmd += [arg for var in THREAD_VARS for arg in ("-e", f"{var}={threads}")]
        cmd += [arg for var in sorted(os.environ) if _FORWARD.match(var) for arg in ("-e", var)]
        for path, mode in job_mounts(spec, o.mounts):
            flags = f"{mode},U" if mode == "rw" and self.chown else mode
            cmd += ["-v", f"{path}:{path}:{flags}"]
        if interactive:
            cmd.append("-i")
        return [*cmd, *o.run_args, o.container]

    def stop(self, name: str, grace: float) -> None:
        """SIGTERM to the job (the worker closes its run KILLED), SIGKILL after `grace` s."""
        subprocess.run(
            [self.opts.runtime, "stop", "-t", str(max(1, round(grace))), name],
            capture_output=True,
            check=False,
        )

    def exists(self, name: str) -> bool:
        found = subprocess.run(
            [self.opts.runtime, "container", "inspect", name], capture_output=True, check=False
        )
        return found.returncode == 0


def _writable_by(path: Path, user: str) -> bool:
    uid_s, _, gid_s = user.partition(":")
    if not uid_s.isdigit():
        return True  # a user name: only the image knows its uid; the job reports it if not
    uid, gid = int(uid_s), int(gid_s) if gid_s.isdigit() else -1
    st = path.stat()
    if uid == 0:
        return True
    if st.st_uid == uid:
        return bool(st.st_mode & stat.S_IWUSR)
    if st.st_gid == gid:
        return bool(st.st_mode & stat.S_IWGRP)
    return bool(st.st_mode & stat.S_IWOTH)
