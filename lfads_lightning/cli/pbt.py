"""`lfads pbt` (AutoLFADS), `lfads pbt status` and `lfads search` (the Optuna baseline)."""

from __future__ import annotations

import argparse

from launchers.registry import LAUNCHER_NAMES
from lfads_lightning.cli.common import (
    add_tracking_uri,
    prepare_data,
    prepare_run,
    resolve_paths,
    split_config_and_overrides,
)
from lfads_lightning.errors import ConfigError


def cmd_pbt(args: argparse.Namespace) -> int:
    """AutoLFADS: population-based training; `lfads pbt status RUN` prints the population."""
    if args.items and args.items[0] == "status":
        return _status(args)
    if args.resume:
        return _resume(args)
    return _start(args)


def _status(args: argparse.Namespace) -> int:
    from lfads_lightning.pbt.experiment import status
    from lfads_lightning.runs import tracking

    if len(args.items) != 2:
        raise ConfigError("usage: lfads pbt status PARENT_RUN_ID")
    uri = tracking.resolve_uri(args.tracking_uri)
    tracking.check_store(uri, create=False)
    print(status(tracking.client(uri), args.items[1], "all" if args.all else "latest"))
    return 0


def _resume(args: argparse.Namespace) -> int:
    from launchers import get_launcher
    from lfads_lightning.pbt.experiment import load_parent, run_pbt
    from lfads_lightning.runs import tracking

    if args.items:
        raise ConfigError("--resume takes no config or overrides: the run's own config is used")
    uri = tracking.resolve_uri(args.tracking_uri)
    tracking.check_store(uri, create=False)
    client = tracking.client(uri)
    base, pbt, launcher_name, search, sections = load_parent(client, args.resume)
    name = args.launcher or launcher_name
    get_launcher(name, **sections.get(name, {})).close()
    prepare_data(base)
    n_trials = int(client.get_run(args.resume).data.params.get("search.n_trials", 0)) or None
    run_pbt(
        base,
        pbt,
        uri,
        name,
        parent=args.resume,
        search=search,
        n_trials=n_trials,
        launcher_options=sections,
    )
    return 0


def _start(args: argparse.Namespace) -> int:
    from lfads_lightning.config import load_launcher_sections
    from lfads_lightning.pbt.config import load_pbt_config
    from lfads_lightning.pbt.experiment import run_pbt

    config_path, overrides = split_config_and_overrides(args.items)
    base, pbt = load_pbt_config(config_path, overrides)
    sections = load_launcher_sections(config_path, overrides)
    launcher_name = args.launcher or "local"
    if getattr(args, "dry_run", False):  # generation 0's Jobs, printed; nothing is created
        from launchers.k8s_manifest import dry_run_yaml

        print(dry_run_yaml(launcher_name, sections, resolve_paths(base), pbt, args.tracking_uri))
        return 0
    base, uri = prepare_run(base, args.tracking_uri, launcher_name, sections.get(launcher_name))
    run_pbt(
        base,
        pbt,
        uri,
        launcher_name,
        search=getattr(args, "sampler", None),
        n_trials=getattr(args, "trials", None),
        launcher_options=sections,
    )
    return 0


def add_parsers(sub: argparse._SubParsersAction) -> None:
    pbt = sub.add_parser(
        "pbt",
        help="AutoLFADS: population-based training (also: lfads pbt status RUN)",
        description="Population-based training of LFADS. Re-running the same command resumes an unfinished run.",
    )
    pbt.add_argument(
        "--launcher",
        choices=LAUNCHER_NAMES,
        default=None,
        help="where member jobs run (default local)",
    )
    pbt.add_argument(
        "--resume", metavar="PARENT_RUN_ID", help="continue a PBT run from its state in MLflow"
    )
    add_tracking_uri(pbt)
    pbt.add_argument(
        "--all", action="store_true", help="with status: every generation, not only the latest"
    )
    pbt.add_argument(
        "--dry-run",
        action="store_true",
        help="with --launcher kubernetes: print generation 0's Job manifests, create nothing",
    )
    pbt.add_argument(
        "items",
        nargs="*",
        metavar="CONFIG.yaml | key=value | status RUN",
        help="config file, then overrides like pbt.population=8",
    )
    pbt.set_defaults(func=cmd_pbt)

    search = sub.add_parser(
        "search",
        help="Optuna search (random or TPE) over the PBT search space: the baseline to PBT",
        description="Each trial trains for PBT's whole epoch budget; same launchers and MLflow layout as lfads pbt.",
    )
    search.add_argument("--sampler", choices=("random", "tpe"), default="random")
    search.add_argument("--trials", type=int, help="number of trials (default: pbt.population)")
    search.add_argument("--launcher", choices=LAUNCHER_NAMES, default=None)
    search.add_argument(
        "--resume", metavar="PARENT_RUN_ID", help="continue a search from its state in MLflow"
    )
    add_tracking_uri(search)
    search.add_argument("--all", action="store_true", help=argparse.SUPPRESS)
    search.add_argument("items", nargs="*", metavar="CONFIG.yaml | key=value")
    search.set_defaults(func=cmd_pbt)
