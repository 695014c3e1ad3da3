"""`lfads` command line. Heavy imports (torch, lightning, mlflow) happen inside the commands so
that `lfads --help` stays fast."""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path
from typing import Any

from .cli_outputs import cmd_data_nlb, cmd_data_synth, cmd_evaluate, cmd_sample
from .errors import ConfigError, LfadsError

LAUNCHERS = ("local", "slurm", "kubernetes")


def _split_config_and_overrides(items: list[str]) -> tuple[str | None, list[str]]:
    config, overrides = None, []
    for item in items:
        if "=" in item or config is not None:
            overrides.append(item)
        else:
            config = item
    return config, overrides


def resolve_paths(cfg: Any) -> Any:
    """Absolute data and output paths, so a worker started elsewhere finds the same files."""
    data = dataclasses.replace(
        cfg.data, paths=[str(Path(p).expanduser().resolve()) for p in cfg.data.paths]
    )
    output = dataclasses.replace(cfg.output, dir=str(Path(cfg.output.dir).expanduser().resolve()))
    return dataclasses.replace(cfg, data=data, output=output)


def prepare_data(cfg: Any) -> list[Any]:
    """Generate missing synthetic files if configured, then validate every file."""
    from .h5data import load_session

    for path in cfg.data.paths:
        if not Path(path).exists() and cfg.data.synth:
            from .synth import make_dataset

            print(
                f"lfads: {path} not found; generating synthetic '{cfg.data.synth}' data (seed {cfg.data.synth_seed})",
                file=sys.stderr,
            )
            make_dataset(cfg.data.synth, path, seed=cfg.data.synth_seed)
    return [load_session(path, cfg.model.recon) for path in cfg.data.paths]


def prepare_run(
    cfg: Any,
    tracking_uri: str | None,
    launcher_name: str,
    launcher_options: dict[str, Any] | None = None,
) -> tuple[Any, str]:
    """Everything that can fail on bad input, checked before any MLflow run exists: paths,
    launcher and its options, data files, tracking store. Returns the resolved config and
    tracking URI."""
    from launchers import get_launcher

    from . import tracking

    cfg = resolve_paths(cfg)
    if tracking_uri:
        cfg = dataclasses.replace(cfg, tracking=dataclasses.replace(cfg.tracking, uri=tracking_uri))
    launcher = get_launcher(launcher_name, **(launcher_options or {}))
    launcher.check()
    launcher.close()
    prepare_data(cfg)
    uri = tracking.resolve_uri(cfg.tracking.uri)
    tracking.check_store(uri)
    return cfg, uri


def cmd_fit(args: argparse.Namespace) -> int:
    from launchers import JobState, get_launcher

    from . import tracking
    from .config import load_config, load_launcher_sections

    config_path, overrides = _split_config_and_overrides(args.items)
    options = load_launcher_sections(config_path, overrides).get(args.launcher, {})
    cfg = load_config(config_path, overrides)
    cfg, uri = prepare_run(cfg, args.tracking_uri, args.launcher, options)
    launcher = get_launcher(args.launcher, **options)
    run_id = tracking.create_config_run(cfg, uri, {"kind": "fit", "launcher": args.launcher})
    print(
        f"lfads: run {run_id} (experiment '{cfg.tracking.experiment}', tracking {uri}) on launcher '{args.launcher}'",
        file=sys.stderr,
    )
    try:
        handle = launcher.submit(run_id, uri, threads=cfg.train.threads or None)
    except Exception as err:  # never leave the run RUNNING for a job that does not exist
        tracking.mark_failed(uri, run_id, f"job submission failed: {err}")
        raise
    try:
        state = launcher.wait(handle)
    except KeyboardInterrupt:
        launcher.cancel(handle)
        tracking.mark_failed(uri, run_id, "interrupted by the user", status="KILLED")
        print("lfads: interrupted; the run is marked KILLED", file=sys.stderr)
        return 130
    if state != JobState.SUCCEEDED:
        tracking.mark_failed(uri, run_id, f"worker job ended in state {state}")
        print(
            f"lfads: run {run_id} failed (job {state}); the run is marked FAILED", file=sys.stderr
        )
        return 1
    out_dir = Path(cfg.output.dir) / run_id
    print(
        f"lfads: done. outputs in {out_dir}; score with: lfads evaluate {run_id}; browse with: lfads ui --tracking-uri {uri}",
        file=sys.stderr,
    )
    return 0


def cmd_pbt(args: argparse.Namespace) -> int:
    """AutoLFADS: population-based training; `lfads pbt status RUN` prints the population."""
    from . import tracking

    if args.items and args.items[0] == "status":
        if len(args.items) != 2:
            raise ConfigError("usage: lfads pbt status PARENT_RUN_ID")
        from .pbt.run import status

        uri = tracking.resolve_uri(args.tracking_uri)
        tracking.check_store(uri)
        print(status(tracking.client(uri), args.items[1], "all" if args.all else "latest"))
        return 0
    from launchers import get_launcher

    from .config import load_launcher_sections
    from .pbt.config import load_pbt_config
    from .pbt.run import load_parent, run_pbt

    if args.resume:
        if args.items:
            raise ConfigError("--resume takes no config or overrides: the run's own config is used")
        uri = tracking.resolve_uri(args.tracking_uri)
        tracking.check_store(uri)
        base, pbt, launcher_name, search, sections = load_parent(tracking.client(uri), args.resume)
        get_launcher(
            args.launcher or launcher_name, **sections.get(args.launcher or launcher_name, {})
        ).close()
        prepare_data(base)
        n_trials = (
            int(tracking.client(uri).get_run(args.resume).data.params.get("search.n_trials", 0))
            or None
        )
        run_pbt(
            base,
            pbt,
            uri,
            args.launcher or launcher_name,
            parent=args.resume,
            search=search,
            n_trials=n_trials,
            launcher_options=sections,
        )
        return 0
    config_path, overrides = _split_config_and_overrides(args.items)
    base, pbt = load_pbt_config(config_path, overrides)
    sections = load_launcher_sections(config_path, overrides)
    launcher_name = args.launcher or "local"
    if getattr(
        args, "dry_run", False
    ):  # the Jobs of generation 0, printed; no MLflow run, no Job is created
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


def cmd_serve(args: argparse.Namespace) -> int:
    from .serve import serve

    return serve()


def cmd_worker(args: argparse.Namespace) -> int:
    from .training import run_worker

    return run_worker(args.run_id, args.tracking_uri)


def cmd_ui(args: argparse.Namespace) -> int:
    from .ui import run_ui

    return run_ui(args.tracking_uri, args.host, args.port)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lfads", description="Fit LFADS models of neural population dynamics."
    )
    sub = parser.add_subparsers(dest="command", required=True)

    fit = sub.add_parser(
        "fit", help="train one LFADS model, log it to MLflow, write posterior-sampled outputs"
    )
    fit.add_argument(
        "--launcher", choices=LAUNCHERS, default="local", help="where the training job runs"
    )
    fit.add_argument(
        "--tracking-uri",
        help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI, else sqlite:///./mlflow.db)",
    )
    fit.add_argument(
        "items",
        nargs="*",
        metavar="CONFIG.yaml | key=value",
        help="config file, then overrides like model.gen_dim=64",
    )
    fit.set_defaults(func=cmd_fit)

    pbt = sub.add_parser(
        "pbt",
        help="AutoLFADS: population-based training (also: lfads pbt status RUN)",
        description="Population-based training of LFADS. Re-running the same command resumes an unfinished run.",
    )
    pbt.add_argument(
        "--launcher", choices=LAUNCHERS, default=None, help="where member jobs run (default local)"
    )
    pbt.add_argument(
        "--resume", metavar="PARENT_RUN_ID", help="continue a PBT run from its state in MLflow"
    )
    pbt.add_argument(
        "--tracking-uri",
        help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI, else sqlite:///./mlflow.db)",
    )
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
    search.add_argument("--launcher", choices=LAUNCHERS, default=None)
    search.add_argument(
        "--resume", metavar="PARENT_RUN_ID", help="continue a search from its state in MLflow"
    )
    search.add_argument("--tracking-uri")
    search.add_argument("--all", action="store_true", help=argparse.SUPPRESS)
    search.add_argument("items", nargs="*", metavar="CONFIG.yaml | key=value")
    search.set_defaults(func=cmd_pbt)

    sample = sub.add_parser("sample", help="posterior-sample a trained model again into HDF5")
    src = sample.add_mutually_exclusive_group(required=True)
    src.add_argument("--run", help="MLflow run id of a finished fit")
    src.add_argument("--checkpoint", help="a .ckpt file (needs --config for the data)")
    sample.add_argument("--config", help="config whose data section names the files to sample")
    sample.add_argument(
        "--n-samples", type=int, help="posterior samples per trial (default: output.n_samples)"
    )
    sample.add_argument("--out", help="output directory")
    sample.add_argument("--tracking-uri")
    sample.set_defaults(func=cmd_sample)

    data = sub.add_parser("data", help="make or convert data files")
    data_sub = data.add_subparsers(dest="data_command", required=True)
    synth = data_sub.add_parser("synth", help="generate synthetic data with ground-truth rates")
    synth.add_argument("kind", choices=("lorenz", "chaotic-rnn"))
    synth.add_argument("out", help="output HDF5 path")
    synth.add_argument("--seed", type=int, default=0)
    synth.add_argument("--overwrite", action="store_true")
    synth.add_argument(
        "params", nargs="*", metavar="key=value", help="generator parameters, e.g. n_neurons=40"
    )
    synth.set_defaults(func=cmd_data_synth)
    nlb = data_sub.add_parser(
        "nlb", help="convert NLB tensors (held-in/held-out/forward) to the project format"
    )
    nlb.add_argument(
        "src", help="directory with <name>_train.h5 and <name>_val.h5, or an NLB .nwb file"
    )
    nlb.add_argument("out", help="output HDF5 path")
    nlb.add_argument(
        "--valid-every",
        type=int,
        default=5,
        help="every Nth train trial becomes a validation trial",
    )
    nlb.add_argument("--overwrite", action="store_true")
    nlb.add_argument(
        "--align", default="move_onset_time", help="NWB: trials column of the alignment event"
    )
    nlb.set_defaults(func=cmd_data_nlb)

    ev = sub.add_parser(
        "evaluate",
        help="NLB metrics (co-bps, fp-bps, vel R2, psth R2, rate R2) of a run or an output file",
        description="Given a run id, evaluates its outputs/*.h5 and logs eval/... metrics and "
        "eval_figures/ to it (a PBT parent: its best member's outputs). Given an output file, "
        "prints the metrics and logs them to the run recorded in the file if it is in the store.",
    )
    ev.add_argument("target", metavar="RUN_ID|OUTPUT.h5")
    ev.add_argument("--tracking-uri")
    ev.add_argument("--json", action="store_true", help="print the metrics as JSON")
    ev.add_argument("--no-log", action="store_true", help="do not log to MLflow")
    ev.add_argument("--no-figures", action="store_true", help="make no figures")
    ev.add_argument("--figures-dir", help="where to write the PNG figures")
    ev.add_argument(
        "--psth-sd-ms", type=float, default=50.0, help="Gaussian sd for true PSTHs (NLB: 50)"
    )
    ev.set_defaults(func=cmd_evaluate)

    ui = sub.add_parser("ui", help="start the MLflow UI on the project's tracking store")
    ui.add_argument("--tracking-uri", help="default: $MLFLOW_TRACKING_URI, else ./mlflow.db")
    ui.add_argument("--host", default="127.0.0.1", help="bind address (default loopback)")
    ui.add_argument("--port", type=int, default=5000)
    ui.set_defaults(func=cmd_ui)

    worker = sub.add_parser("worker", help="(internal) run the job of one MLflow run")
    worker.add_argument("--run-id", required=True)
    worker.add_argument("--tracking-uri", required=True)
    worker.set_defaults(func=cmd_worker)

    serve = sub.add_parser("serve", help="(internal) a warm worker: runs jobs read from stdin")
    serve.set_defaults(func=cmd_serve)
    return parser


def main(argv: list[str] | None = None) -> int:
    import os

    # MLflow draws a progress bar per artifact download; PBT downloads many small files.
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    parser = build_parser()
    # Overrides may follow options (`--seed 3 n_neurons=40`), which plain parse_args rejects.
    args, extra = parser.parse_known_args(argv)
    if extra:
        target = (
            "items" if hasattr(args, "items") else "params" if hasattr(args, "params") else None
        )
        bad = [e for e in extra if "=" not in e or e.startswith("-")]
        if target is None or bad:
            parser.error(f"unrecognized arguments: {' '.join(bad or extra)}")
        setattr(args, target, [*getattr(args, target), *extra])
    try:
        return int(args.func(args) or 0)
    except LfadsError as err:
        print(f"error: {err}", file=sys.stderr)
        return err.exit_code
    except KeyboardInterrupt:
        print("lfads: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
