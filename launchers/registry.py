"""The one list of launcher names (argparse choices, config validation and docs read it) and
the lazy import of a backend: heavy clients (submitit, kubernetes) load only when used."""

from __future__ import annotations

import importlib
import inspect
from typing import Any

from launchers.base import Launcher
from launchers.errors import LauncherError

BACKENDS = {
    "local": "launchers.local:LocalLauncher",
    "slurm": "launchers.slurm:SlurmLauncher",
    "kubernetes": "launchers.kubernetes:KubernetesLauncher",
    "ray": "launchers.ray:RayLauncher",
}

LAUNCHER_NAMES: tuple[str, ...] = tuple(BACKENDS)


def get_launcher(name: str, **options: Any) -> Launcher:
    if name not in BACKENDS:
        raise LauncherError(f"unknown launcher {name!r}; valid launchers: {', '.join(BACKENDS)}")
    module_name, cls_name = BACKENDS[name].split(":")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as err:
        if err.name == module_name:
            raise LauncherError(
                f"launcher {name!r} is not implemented in this version; use --launcher local"
            ) from None
        raise LauncherError(
            f"launcher {name!r} needs the package {err.name!r}; install it or use --launcher local"
        ) from None
    cls = getattr(module, cls_name)
    try:
        return cls(**options)
    except TypeError as err:  # an option the backend's constructor does not take
        if "unexpected keyword argument" not in str(err):
            raise
        bad = str(err).rsplit(" ", 1)[-1].strip("'")
        valid = [p for p in inspect.signature(cls).parameters if p not in ("self", "log_dir")]
        raise LauncherError(
            f"unknown option '{name}.{bad}' for launcher {name!r}; valid options: {', '.join(valid)}"
        ) from None
