"""`lfads pbt` (AutoLFADS), `lfads pbt status` and `lfads search` (the Optuna baseline)."""

from __future__ import annotations

import argparse
from typing import Any

from launchers.registry import LAUNCHER_NAMES
from lfads_lightning.cli.common import (
    TRACKING_URI_HELP_NO_CONFIG,
    add_command,
    add_json,
    add_tracking_uri,
    prepare_data,
    prepare_run,
    print_results,
    resolve_paths,
    split_config_and_overrides,
)
from lfads_lightning.errors import ConfigError

STATUS_COMMAND = "pbt-status"  # the parser `lfads pbt status` is routed to
STOP_COMMANDS = {"pbt": "pbt-stop", "search": "search-stop"}  # `lfads pbt stop`, `search stop`


def cmd_pbt(args: argparse.Namespace) -> int:
    """AutoLFADS: population-based training; `lfads pbt status RUN` prints the population."""
    if args.items and args.items[0] == "status":
        return _status(args)
    if args.resume:
        return _resume(args)
    return _start(args)


def _status(args: argparse.Namespace) -> int:
    from lfads_lightning.pbt.experiment import status_at
    from lfads_lightning.runs import tracking

    if len(args.items) != 2:
        raise ConfigError("usage: lfads pbt status PARENT_RUN_ID")
    uri = tracking.resolve_uri(args.tracking_uri)
    print(status_at(uri, args.items[1], "all" if args.all else "latest"))
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
    parent = run_pbt(
        base,
        pbt,
        uri,
        name,
        parent=args.resume,
        search=search,
        n_trials=n_trials,
        launcher_options=sections,
    )
    return _print_final(args, uri, parent, base)


def _print_final(args: argparse.Namespace, uri: str, parent: str, base) -> int:
    from pathlib import Path

    from lfads_lightning.pbt.experiment import final_results
    from lfads_lightning.runs import tracking

    metrics, extra = final_results(tracking.client(uri), parent)
    kind = "search" if getattr(args, "sampler", None) else "pbt"
    title = f"lfads {kind}: run {parent} finished (best member's posterior metrics)"
    outputs = str(Path(base.output.dir) / parent)
    print_results(title, metrics, args.json, outputs, uri, parent, extra)
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
        print(dry_run_yaml(launcher_name, sections, resolve_paths(base), pbt, args.tracking_uri))
        return 0
    base, uri = prepare_run(base, args.tracking_uri, launcher_name, sections.get(launcher_name))
    parent = run_pbt(
        base,
        pbt,
        uri,
        launcher_name,
        search=getattr(args, "sampler", None),
        n_trials=getattr(args, "trials", None),
        launcher_options=sections,
    )
    return _print_final(args, uri, parent, base)


def cmd_status(args: argparse.Namespace) -> int:
    """`lfads pbt status RUN` (parsed by its own parser: `lfads pbt status --help`)."""
    args.items = ["status", args.run_id]
    return _status(args)


def cmd_stop(args: argparse.Namespace) -> int:
    """`lfads pbt stop RUN` / `lfads search stop RUN` (their own parsers)."""
    from lfads_lightning.pbt.stop import stop_run
    from lfads_lightning.runs import tracking

    uri = tracking.resolve_uri(args.tracking_uri)
    state = stop_run(uri, args.run_id, args.wait)
    print(f"lfads: run {args.run_id} is {state}; `lfads pbt status {args.run_id}` shows it")
    return 0


def dry_run_yaml(
    launcher: str, sections: dict[str, Any], base: Any, pbt: Any, tracking_uri: str | None
) -> str:
    """`lfads pbt --dry-run`: generation 0's Jobs as YAML, with placeholder run ids. Secrets
    appear only as references (secretKeyRef), as in the real manifests."""
    import yaml

    from launchers import JobSpec
    from launchers.k8s_manifest import job_manifest, parse_options
    from lfads_lightning.runs import tracking

    if launcher != "kubernetes":
        raise ConfigError("--dry-run prints Kubernetes Jobs; use it with --launcher kubernetes")
    options = parse_options(sections.get("kubernetes"))
    uri = tracking.resolve_uri(tracking_uri or base.tracking.uri)
    docs = []
    for m in range(pbt.population):
        labels = {"kind": "pbt_member", "pbt-run": "dry-run-parent", "member": str(m)}
        labels.update(generation="0", attempt="0")
        spec = JobSpec(f"dry-run-m{m:02d}", uri, threads=base.train.threads or None, labels=labels)
        docs.append(job_manifest(options, spec))
    return yaml.safe_dump_all(docs, sort_keys=False).rstrip()


def _add_run_options(parser: argparse.ArgumentParser, jobs: str, what: str) -> None:
    """The options `lfads pbt` and `lfads search` share: launcher, resume, tracking, JSON."""
    parser.add_argument(
        "--launcher",
        choices=LAUNCHER_NAMES,
        default=None,
        help=f"where {jobs} jobs run (default: local; with --resume: the run's own launcher)",
    )
    parser.add_argument(
        "--resume", metavar="PARENT_RUN_ID", help=f"continue {what} from its state in MLflow"
    )
    add_tracking_uri(parser)
    add_json(parser)


def _add_pbt(sub: argparse._SubParsersAction) -> None:
    pbt = add_command(
        sub,
        "pbt",
        "AutoLFADS: population-based training (also: lfads pbt status|stop RUN)",
        "Population-based training of LFADS (AutoLFADS): a population of models trains in\n"
        "generations; after each one the worst members copy the best ones' checkpoints and\n"
        "perturbed hyperparameters. The population's state lives in MLflow, so re-running\n"
        "the same command (or --resume RUN) continues an unfinished run. Prints one line per\n"
        "event and one summary line per generation; ends with the best member's metrics table.\n"
        "`lfads pbt status RUN` prints the population (see `lfads pbt status --help`);\n"
        "`lfads pbt stop RUN` ends it now with its best member so far. Ctrl-C stops the\n"
        "member jobs and leaves the run 'interrupted' for --resume.",
        [
            "lfads pbt configs/pbt_lorenz.yaml pbt.population=8",
            "lfads pbt stop RUN",
            "lfads pbt --resume RUN",
        ],
        "docs/pbt.md",
    )
    _add_run_options(pbt, "member", "a PBT run")
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


def _add_status(sub: argparse._SubParsersAction) -> None:
    # `lfads pbt status ...` is rewritten to this parser by cli.main (hidden from the list).
    status = add_command(
        sub,
        STATUS_COMMAND,
        None,
        "The population of a PBT (or search) run now: one line per member of the latest\n"
        "generation (--all: of every generation) with its state, fitness, attempts, lineage\n"
        "('continued' from its own checkpoint, or 'copied from N') and hyperparameters.\n"
        "Reads the tracking store directly for sqlite and http(s) URIs: about a second.",
        ["lfads pbt status RUN", "lfads pbt status RUN --all --tracking-uri http://mlflow:5000"],
        "docs/pbt.md",
        prog="lfads pbt status",
    )
    status.add_argument(
        "run_id", metavar="PARENT_RUN_ID", help="the PBT run id `lfads pbt` printed"
    )
    status.add_argument("--all", action="store_true", help="every generation, not only the latest")
    add_tracking_uri(status, TRACKING_URI_HELP_NO_CONFIG)
    status.set_defaults(func=cmd_status)


def _add_search(sub: argparse._SubParsersAction) -> None:
    search = add_command(
        sub,
        "search",
        "Optuna search (random or TPE) over the PBT search space: the baseline to PBT",
        "Each trial trains one model for PBT's whole epoch budget with hyperparameters drawn\n"
        "from the pbt: section's search space; same launchers and MLflow layout as lfads pbt\n"
        "(its population shows with `lfads pbt status RUN`). Ends with the best trial's table.",
        [
            "lfads search --sampler random --trials 8 configs/pbt_lorenz.yaml",
            "lfads search --sampler tpe --json configs/pbt_lorenz.yaml",
            "lfads search --resume RUN",
        ],
        "docs/pbt.md",
    )
    search.add_argument(
        "--sampler",
        choices=("random", "tpe"),
        default="random",
        help="how trials' hyperparameters are drawn: uniformly at random, or Optuna's TPE",
    )
    search.add_argument("--trials", type=int, help="number of trials (default: pbt.population)")
    _add_run_options(search, "trial", "a search")
    search.add_argument("--all", action="store_true", help=argparse.SUPPRESS)
    search.add_argument(
        "items",
        nargs="*",
        metavar="CONFIG.yaml | key=value",
        help="a PBT config (its pbt: section is the search space), then overrides",
    )
    search.set_defaults(func=cmd_pbt)


def _add_stop(sub: argparse._SubParsersAction, kind: str) -> None:
    # `lfads pbt stop ...` / `lfads search stop ...` are rewritten to these (hidden).
    what = "PBT" if kind == "pbt" else "search"
    stop = add_command(
        sub,
        STOP_COMMANDS[kind],
        None,
        f"Stop a {what} run now: its running member jobs are cancelled through the launcher\n"
        "and marked stopped, and the run is finished with its best member so far (posterior\n"
        "sampling, report), state 'stopped' (final: --resume refuses it). A live controller\n"
        "sees the request at its next poll and does this itself (this command waits for it);\n"
        "without one, this command does it. Ctrl-C of the controller instead leaves the run\n"
        "'interrupted', which --resume continues.",
        [f"lfads {kind} stop RUN", f"lfads {kind} stop RUN --tracking-uri http://mlflow:5000"],
        "docs/pbt.md",
        prog=f"lfads {kind} stop",
    )
    stop.add_argument("run_id", metavar="PARENT_RUN_ID", help=f"the {what} run id to stop")
    stop.add_argument(
        "--wait",
        type=float,
        default=600.0,
        metavar="S",
        help="seconds to wait for a live controller to wind down (default 600)",
    )
    add_tracking_uri(stop, TRACKING_URI_HELP_NO_CONFIG)
    stop.set_defaults(func=cmd_stop)


def add_parsers(sub: argparse._SubParsersAction) -> None:
    _add_pbt(sub)
    _add_status(sub)
    _add_search(sub)
    _add_stop(sub, "pbt")
    _add_stop(sub, "search")
