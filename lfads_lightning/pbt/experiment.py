"""Starting, resuming and finishing a PBT experiment (what `lfads pbt` does)."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

import yaml

from lfads_lightning.config import LfadsConfig, config_from_dict, dump_yaml, flatten, from_dict
from lfads_lightning.errors import LfadsError
from lfads_lightning.pbt.config import PbtConfig, validate_pbt
from lfads_lightning.pbt.controller import PBT_ARTIFACT, Controller, write_pbt_artifacts
from lfads_lightning.runs import tracking
from lfads_lightning.runs.schema import load_members

LAUNCHER_ARTIFACT = "launcher.yaml"  # the config's launcher sections ({name: options})


def config_hash(base: LfadsConfig, pbt: PbtConfig) -> str:
    text = dump_yaml(base) + yaml.safe_dump(dataclasses.asdict(pbt), sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def find_unfinished(client: Any, base: LfadsConfig, digest: str, kind: str = "pbt") -> str | None:
    """A running PBT parent of this exact config: re-running the command resumes it."""
    exp = client.get_experiment_by_name(base.tracking.experiment)
    if exp is None:
        return None
    runs = client.search_runs(
        [exp.experiment_id],
        filter_string=(
            f"tags.`lfads.kind` = '{kind}' and tags.`lfads.config_hash` = '{digest}' "
            "and attributes.status = 'RUNNING'"
        ),
        order_by=["attributes.start_time DESC"],
        max_results=1,
    )
    return runs[0].info.run_id if runs else None


def create_parent(
    base: LfadsConfig,
    pbt: PbtConfig,
    uri: str,
    launcher: str,
    digest: str,
    search: str | None = None,
    n_trials: int | None = None,
    launcher_options: dict[str, dict[str, Any]] | None = None,
) -> str:
    params = {f"pbt.{k}": v for k, v in flatten(dataclasses.asdict(pbt)).items() if k != "space"}
    params["pbt.space"] = json.dumps([dataclasses.asdict(hp) for hp in pbt.space])
    if search:
        params.update({"search.sampler": search, "search.n_trials": n_trials or pbt.population})
    run_id = tracking.create_config_run(
        base,
        uri,
        {
            "kind": "search" if search else "pbt",
            "launcher": launcher,
            "state": "running",
            "config_hash": digest,
            **({"search": search} if search else {}),
        },
        extra_params=params,
    )
    client = tracking.client(uri)
    write_pbt_artifacts(client, run_id, base, pbt)
    # A resumed run must reach the same cluster with the same job settings.
    client.log_text(run_id, yaml.safe_dump(launcher_options or {}), LAUNCHER_ARTIFACT)
    return run_id


def load_parent(
    client: Any, parent: str
) -> tuple[LfadsConfig, PbtConfig, str, str | None, dict[str, dict[str, Any]]]:
    """(base config, pbt config, launcher name, search sampler or None, launcher sections) of a
    parent run."""
    try:
        run = client.get_run(parent)
    except Exception:  # noqa: BLE001
        raise LfadsError(
            f"PBT run {parent} not found in this tracking store; check the id and MLFLOW_TRACKING_URI"
        ) from None
    if run.data.tags.get("lfads.kind") not in ("pbt", "search"):
        raise LfadsError(
            f"run {parent} is not a PBT parent run (lfads.kind={run.data.tags.get('lfads.kind')})"
        )
    with tempfile.TemporaryDirectory() as tmp:
        base_raw = yaml.safe_load(
            Path(client.download_artifacts(parent, tracking.CONFIG_ARTIFACT, tmp)).read_text()
        )
        pbt_raw = yaml.safe_load(
            Path(client.download_artifacts(parent, PBT_ARTIFACT, tmp)).read_text()
        )
        try:
            launcher_raw = yaml.safe_load(
                Path(client.download_artifacts(parent, LAUNCHER_ARTIFACT, tmp)).read_text()
            )
        except Exception:  # noqa: BLE001  (runs made before launcher sections existed)
            launcher_raw = None
    base = config_from_dict(base_raw)
    return (
        base,
        validate_pbt(from_dict(PbtConfig, pbt_raw, "pbt."), base),
        run.data.tags.get("lfads.launcher", "local"),
        run.data.tags.get("lfads.search"),
        launcher_raw or {},
    )


def run_pbt(
    base: LfadsConfig,
    pbt: PbtConfig,
    uri: str,
    launcher_name: str,
    parent: str | None = None,
    poll_interval: float = 1.0,
    search: str | None = None,
    n_trials: int | None = None,
    launcher_options: dict[str, dict[str, Any]] | None = None,
) -> str:
    """Run (or resume) PBT, or with `search` an Optuna search, to the end; returns the parent id."""
    from launchers import get_launcher

    client = tracking.client(uri)
    if parent is None:
        digest = config_hash(base, pbt) + (f"-{search}-{n_trials}" if search else "")
        parent = find_unfinished(client, base, digest, "search" if search else "pbt")
        if parent:
            print(f"lfads pbt: resuming unfinished PBT run {parent} (same config)", file=sys.stderr)
        else:
            parent = create_parent(
                base, pbt, uri, launcher_name, digest, search, n_trials, launcher_options
            )
            print(
                f"lfads pbt: new PBT run {parent} (experiment '{base.tracking.experiment}', tracking {uri})",
                file=sys.stderr,
            )
    log_dir = Path(base.output.dir) / parent / "logs"
    options = dict((launcher_options or {}).get(launcher_name) or {})
    if launcher_name == "local":
        # Warm workers: a member job would otherwise pay interpreter start + imports each time.
        options.setdefault("warm", os.environ.get("LFADS_LOCAL_WARM", "1") != "0")
    options.setdefault("log_dir", log_dir)
    launcher = get_launcher(launcher_name, **options)
    concurrency = pbt.concurrency or launcher.default_concurrency(pbt.population)
    threads = base.train.threads or launcher.default_threads(concurrency)
    args = (uri, parent, base, pbt, launcher, poll_interval, threads, concurrency)
    if search:
        from lfads_lightning.pbt.search import SearchController

        controller = SearchController(*args, sampler=search, n_trials=n_trials or pbt.population)
    else:
        controller = Controller(*args)
    try:
        try:
            best_run = controller.run()
        finally:
            launcher.close()
        finish(client, uri, parent, best_run, pbt)
    except LfadsError as err:
        client.set_tag(parent, "lfads.state", "failed")
        client.set_tag(parent, "lfads.error", str(err))
        client.set_terminated(parent, status="FAILED")
        raise
    except KeyboardInterrupt:
        print(
            f"lfads pbt: interrupted; running member jobs continue. Resume with: lfads pbt --resume {parent}",
            file=sys.stderr,
        )
        raise
    return parent


def finish(client: Any, uri: str, parent: str, best_run: str, pbt: PbtConfig) -> None:
    """Posterior-sample the best member onto the parent run and write the report."""
    from lfads_lightning.pbt import report
    from lfads_lightning.worker.checkpoint import load_module
    from lfads_lightning.worker.fit import sample_and_log
    from lfads_lightning.worker.member import CHECKPOINT_ARTIFACT
    from lfads_lightning.worker.setup import datamodule_for, load_run_config, set_threads

    members = load_members(client, parent)
    best = next(m for m in members if m.run_id == best_run)
    cfg = load_run_config(client, best_run)
    set_threads(0)
    run_dir = Path(cfg.output.dir) / parent
    with tempfile.TemporaryDirectory() as tmp:
        ckpt = client.download_artifacts(best_run, CHECKPOINT_ARTIFACT, tmp)
        module = load_module(ckpt, map_location="cpu")
    dm = datamodule_for(cfg)
    print(
        f"lfads pbt: posterior-sampling the best member {best.member} (run {best_run})",
        file=sys.stderr,
    )
    metrics = sample_and_log(cfg, module, dm, client, parent, run_dir)
    metrics["pbt/best_fitness_final"] = float(best.fitness)
    metrics["pbt/generations"] = float(max(m.generation for m in members) + 1)
    tracking.log_metrics(client, parent, metrics)
    report_dir = run_dir / "report"
    report_dir.mkdir(parents=True, exist_ok=True)
    from lfads_lightning.evaluation.figures import save_figure

    paths = [
        save_figure(report.fitness_figure(members), report_dir / "fitness_per_generation.png"),
        save_figure(
            report.hparam_evolution_figure(members, pbt.space),
            report_dir / "hyperparameter_evolution.png",
        ),
        report.write_summary_csv(members, report_dir / "summary.csv"),
    ]
    for path in paths:
        client.log_artifact(parent, str(path), "report")
    client.set_tag(parent, "lfads.best_run", best_run)
    client.set_tag(parent, "lfads.best_member", str(best.member))
    client.set_tag(parent, "lfads.state", "finished")
    client.set_terminated(parent, status="FINISHED")
    shown = {k: round(v, 4) for k, v in metrics.items() if k.startswith("posterior/")}
    print(
        f"lfads pbt: finished {parent}: best member {best.member}, fitness {best.fitness:.6g}, {shown}",
        file=sys.stderr,
    )


def status(client: Any, parent: str, generations: str = "latest") -> str:
    from lfads_lightning.pbt import report

    base, pbt, *_ = load_parent(client, parent)
    run = client.get_run(parent)
    members = load_members(client, parent)
    head = (
        f"PBT run {parent}: state {run.data.tags.get('lfads.state', '?')} ({run.info.status}), "
        f"{pbt.population} members, {len({m.generation for m in members})} generation(s) started"
    )
    return (
        head
        + "\n"
        + report.status_table(members, [hp.key for hp in pbt.space], generations=generations)
    )
