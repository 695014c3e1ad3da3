"""What several subcommands share: config-and-overrides arguments, path resolution, and the
checks that run before any MLflow run exists."""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path
from typing import Any

# The one precedence, worded the same everywhere; commands without a config drop that part.
TRACKING_URI_HELP = (
    "MLflow tracking URI. Used: --tracking-uri, else the config's tracking.uri, else "
    "$MLFLOW_TRACKING_URI, else sqlite:///./mlflow.db"
)
TRACKING_URI_HELP_NO_CONFIG = (
    "MLflow tracking URI. Used: --tracking-uri, else $MLFLOW_TRACKING_URI, "
    "else sqlite:///./mlflow.db"
)


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Descriptions and examples keep their line breaks; an option's help ends with its default
    when it has a meaningful one (not None/False) and the text does not already say it."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        default = action.default
        if (
            "default" not in text
            and action.option_strings
            and default is not None
            and default is not False  # a store_true flag; 0 is a real default
            and default != argparse.SUPPRESS
            and not isinstance(default, list)
        ):
            text += " (default: %(default)s)"
        return text


def add_command(
    sub: argparse._SubParsersAction,
    name: str,
    summary: str | None,
    description: str,
    examples: list[str],
    doc: str | None = None,
    **kwargs: Any,
) -> argparse.ArgumentParser:
    """A subcommand with a description, 1-3 examples and a docs pointer in its --help."""
    epilog = "examples:\n" + "\n".join(f"  {e}" for e in examples)
    if doc:
        epilog += f"\n\nsee {doc}"
    if summary is not None:
        kwargs["help"] = summary
    return sub.add_parser(
        name, description=description, epilog=epilog, formatter_class=HelpFormatter, **kwargs
    )


# Set by `lfads fit` for its worker: the command prints the results table, the worker one line.
RESULTS_BY_CLI = "LFADS_RESULTS_BY_CLI"


def print_results(
    title: str,
    metrics: dict[str, float],
    as_json: bool,
    outputs: str | None = None,
    uri: str | None = None,
    run_id: str | None = None,
    extra: dict[str, Any] | None = None,
) -> None:
    """The end of fit, pbt and search: the metrics table and where things are (stdout), or with
    --json one JSON object on stdout (the logs stay on stderr)."""
    import json

    from lfads_lightning.evaluation.tables import metrics_json, results_report

    if as_json:
        payload = {
            "run_id": run_id,
            "metrics": metrics_json(metrics),
            "all_metrics": dict(sorted(metrics.items())),
            "outputs": outputs,
            "tracking_uri": uri,
            **(extra or {}),
        }
        print(json.dumps(payload, indent=2))
    else:
        shown = {k: str(v) for k, v in (extra or {}).items()}
        print(results_report(title, metrics, outputs, uri, run_id, shown))


def add_json(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--json",
        action="store_true",
        help="print the final metrics as one JSON object on stdout instead of the table",
    )


def add_tracking_uri(parser: argparse.ArgumentParser, help_text: str = TRACKING_URI_HELP) -> None:
    parser.add_argument("--tracking-uri", metavar="URI", help=help_text)


def split_config_and_overrides(items: list[str]) -> tuple[str | None, list[str]]:
    """The first item without '=' is the config file; the rest are key=value overrides."""
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
    from lfads_lightning.data.format import load_session

    for path in cfg.data.paths:
        if not Path(path).exists() and cfg.data.synth:
            from lfads_lightning.data.synth import make_dataset

            print(
                f"lfads: {path} not found; generating synthetic '{cfg.data.synth}' data (seed {cfg.data.synth_seed})",
                file=sys.stderr,
            )
            make_dataset(cfg.data.synth, path, seed=cfg.data.synth_seed)
    return [load_session(path, cfg.model.recon) for path in cfg.data.paths]


def check_writable(directory: Path, what: str) -> None:
    """Fail now, not after the first epoch, if files cannot be created under `directory`: a
    file is created and removed in its nearest existing ancestor (nothing is left behind)."""
    import tempfile

    from lfads_lightning.errors import ConfigError

    base = directory
    while not base.exists() and base != base.parent:
        base = base.parent
    if not base.is_dir():
        raise ConfigError(f"{what}: {base} is not a directory; set output.dir to a directory")
    try:
        with tempfile.TemporaryFile(dir=base):
            pass
    except OSError as err:
        raise ConfigError(
            f"{what}: cannot write in {base} ({err.strerror or err}); set output.dir to a "
            f"writable directory"
        ) from None


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
    from lfads_lightning.runs import tracking

    cfg = resolve_paths(cfg)
    if tracking_uri:
        cfg = dataclasses.replace(cfg, tracking=dataclasses.replace(cfg.tracking, uri=tracking_uri))
    uri = tracking.resolve_uri(cfg.tracking.uri)
    launcher = get_launcher(launcher_name, **(launcher_options or {}))
    launcher.check(uri)
    launcher.close()
    prepare_data(cfg)
    check_writable(Path(cfg.output.dir), "output.dir (outputs and checkpoints)")
    tracking.check_store(uri)
    return cfg, uri
