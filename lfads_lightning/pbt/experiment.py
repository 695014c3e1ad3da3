"""Starting, resuming and finishing a PBT experiment (what `lfads pbt` does)."""

from __future__ import annotations

import contextlib
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
from lfads_lightning.pbt.lifecycle import parent_not_found
from lfads_lightning.runs import tracking
from lfads_lightning.runs.schema import (
    IllegalTransition,
    ParentState,
    load_members,
    set_parent_state,
)

# The controller (numpy, the PBT rules) is imported where it is used: `lfads pbt status`
# imports this module and must stay fast.
LAUNCHER_ARTIFACT = "launcher.yaml"  # the config's launcher sections ({name: options})
PBT_ARTIFACT = "pbt.yaml"  # = controller.PBT_ARTIFACT


def config_hash(base: LfadsConfig, pbt: PbtConfig) -> str:
    text = dump_yaml(base) + yaml.safe_dump(dataclasses.asdict(pbt), sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def find_unfinished(
    client: Any, base: LfadsConfig, digest: str, kind: str = "pbt", interrupted: bool = False
) -> str | None:
    """A running (or Ctrl-C'd: `interrupted`) PBT parent of this exact config: re-running the
    command resumes it."""
    exp = client.get_experiment_by_name(base.tracking.experiment)
    if exp is None:
        return None
    runs = client.search_runs(
        [exp.experiment_id],
        filter_string=(
            f"tags.`lfads.kind` = '{kind}' and tags.`lfads.config_hash` = '{digest}' "
            + (
                "and tags.`lfads.state` = 'interrupted'"
                if interrupted
                else "and attributes.status = 'RUNNING'"
            )
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


def write_pbt_artifacts(client: Any, parent: str, base: LfadsConfig, pbt: PbtConfig) -> None:
    client.log_text(parent, dump_yaml(base), tracking.CONFIG_ARTIFACT)
    client.log_text(parent, yaml.safe_dump(dataclasses.asdict(pbt), sort_keys=False), PBT_ARTIFACT)


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
    from lfads_lightning.pbt.controller import Controller

    client = tracking.client(uri)
    if parent is None:
        parent = _open_parent(
            client, base, pbt, uri, launcher_name, search, n_trials, launcher_options
        )
    _reopen(client, parent)
    run_dir = Path(base.output.dir) / parent
    log_dir = str(run_dir / "logs")
    launcher = make_launcher(launcher_name, launcher_options)
    concurrency = pbt.concurrency or launcher.default_concurrency(pbt.population)
    threads = base.train.threads or launcher.default_threads(concurrency)
    if launcher_name == "local" and not base.train.threads:
        from lfads_lightning.worker.setup import DEFAULT_THREADS

        threads = DEFAULT_THREADS  # more threads per member collapse on a busy machine
    args = (uri, parent, base, pbt, launcher, poll_interval, threads, concurrency)
    if search:
        from lfads_lightning.pbt.search import SearchController

        controller = SearchController(
            *args, sampler=search, n_trials=n_trials or pbt.population, log_dir=log_dir
        )
    else:
        controller = Controller(*args, log_dir=log_dir)
    try:
        _drive(client, uri, parent, pbt, controller, run_dir)
    except LfadsError as err:
        client.set_tag(parent, "lfads.error", str(err))
        with contextlib.suppress(IllegalTransition):  # already final (stopped): it stays so
            set_parent_state(client, parent, ParentState.FAILED)
        raise
    return parent


def _drive(client: Any, uri: str, parent: str, pbt: PbtConfig, controller: Any, run_dir: Path):
    """Run the controller to the end and finish; on a stop request finish with the best member
    so far; on Ctrl-C/SIGTERM stop the members and mark the parent interrupted (lifecycle)."""
    import signal

    from lfads_lightning.errors import Terminated, raise_on_signals, restore_signals
    from lfads_lightning.pbt import lifecycle
    from lfads_lightning.pbt.finish import finish

    launcher = controller.launcher
    previous = raise_on_signals(signal.SIGTERM, signal.SIGHUP)
    lifecycle.beat_controller(client, parent)
    try:
        try:
            best_run = controller.run()
            finish(client, uri, parent, best_run, pbt, launcher, controller.final_spec(), run_dir)
        except lifecycle.StopRequested:
            controller._log("stop requested: stopping the member jobs")
            lifecycle.stop_members(client, parent, launcher, "stopped by lfads pbt stop")
            spec = controller.final_spec()
            lifecycle.finish_stopped(client, uri, parent, pbt, launcher, spec, run_dir)
    except (KeyboardInterrupt, Terminated) as stop:
        # A second Ctrl-C must not cut the wind-down short: the state must be truthful.
        ignored = {s: signal.signal(s, signal.SIG_IGN) for s in (signal.SIGINT, signal.SIGTERM)}
        why = "Ctrl-C" if isinstance(stop, KeyboardInterrupt) else stop.name
        try:
            lifecycle.stop_members(client, parent, launcher, f"controller interrupted ({why})")
            lifecycle.mark_interrupted(client, parent, why)
        finally:
            restore_signals(ignored)
        print(
            f"lfads pbt: {why}: member jobs stopped, run {parent} is interrupted. Resume with: "
            f"lfads pbt --resume {parent}",
            file=sys.stderr,
        )
        raise
    finally:
        launcher.close()
        restore_signals(previous)


def _reopen(client: Any, parent: str) -> None:
    """A resumed parent runs again, unless it was stopped (final: its outputs are the best
    member at the stop) or a stop is pending."""
    from lfads_lightning.runs.schema import STOP_REQUESTED

    tags = client.get_run(parent).data.tags
    state = tags.get("lfads.state", "running")
    if state == ParentState.STOPPED or STOP_REQUESTED in tags:
        raise LfadsError(
            f"PBT run {parent} was stopped with `lfads pbt stop` and cannot be resumed; its "
            f"outputs are its best member at the stop: start a new run to train further"
        )
    if state == ParentState.INTERRUPTED:
        set_parent_state(client, parent, ParentState.RUNNING)
        client.set_tag(parent, "lfads.resumed_after_interrupt", "1")


def _open_parent(
    client: Any,
    base: LfadsConfig,
    pbt: PbtConfig,
    uri: str,
    launcher_name: str,
    search: str | None,
    n_trials: int | None,
    launcher_options: dict[str, dict[str, Any]] | None,
) -> str:
    """The unfinished parent run of this exact config (re-running resumes it), else a new one."""
    digest = config_hash(base, pbt) + (f"-{search}-{n_trials}" if search else "")
    parent = find_unfinished(client, base, digest, "search" if search else "pbt")
    parent = parent or find_unfinished(client, base, digest, "search" if search else "pbt", True)
    if parent:
        print(f"lfads pbt: resuming unfinished PBT run {parent} (same config)", file=sys.stderr)
        return parent
    parent = create_parent(
        base, pbt, uri, launcher_name, digest, search, n_trials, launcher_options
    )
    print(
        f"lfads pbt: new PBT run {parent} (experiment '{base.tracking.experiment}', tracking {uri})",
        file=sys.stderr,
    )
    return parent


def make_launcher(
    name: str, launcher_options: dict[str, dict[str, Any]] | None, warm: bool = True
) -> Any:
    from launchers import get_launcher

    options = dict((launcher_options or {}).get(name) or {})
    if name == "local":
        # Warm workers: a member job would otherwise pay interpreter start + imports each time.
        warm = warm and os.environ.get("LFADS_LOCAL_WARM", "1") != "0"
        options.setdefault("warm", warm)
    return get_launcher(name, **options)


def _status_text(run: Any, members: list[Any], generations: str) -> str:
    """The status header and table from the parent run's params (pbt.population, pbt.space)
    and its members: no artifact download, no config validation."""
    from lfads_lightning.pbt import report

    params, tags = run.data.params, run.data.tags
    if tags.get("lfads.kind") not in ("pbt", "search"):
        raise LfadsError(
            f"run {run.info.run_id} is not a PBT parent run (lfads.kind={tags.get('lfads.kind')})"
        )
    try:
        space_keys = [hp["key"] for hp in json.loads(params.get("pbt.space", "[]"))]
    except (ValueError, TypeError, KeyError):
        space_keys = None
    population = params.get("pbt.population", "?")
    head = (
        f"PBT run {run.info.run_id}: state {tags.get('lfads.state', '?')} ({run.info.status}), "
        f"{population} members, {len({m.generation for m in members})} generation(s) started"
    )
    return (
        head
        + _controller_line(run)
        + "\n"
        + report.status_table(members, space_keys, generations=generations)
    )


def _controller_line(run: Any) -> str:
    """Whether anything drives the run now, and what to do if nothing does."""
    from lfads_lightning.pbt import lifecycle

    run_id, tags = run.info.run_id, run.data.tags
    state = tags.get("lfads.state", "running")
    if state == ParentState.INTERRUPTED:
        return (
            f"\ninterrupted ({tags.get('lfads.interrupted', '?')}): member jobs were stopped; "
            f"continue with `lfads pbt --resume {run_id}`, or end it with `lfads pbt stop {run_id}`"
        )
    if run.info.status != "RUNNING":
        return ""
    if lifecycle.controller_alive(run):
        info = lifecycle.controller_info(run)
        stopping = ", stopping" if lifecycle.stop_requested(run) else ""
        return f"\ncontroller: pid {info.get('pid')} on {info.get('host')}{stopping}"
    return (
        f"\nno controller is running (killed?); member jobs it left may still run: continue with "
        f"`lfads pbt --resume {run_id}`, or end it with `lfads pbt stop {run_id}`"
    )


def final_results(client: Any, parent: str) -> tuple[dict[str, float], dict[str, str]]:
    """The finished parent's metrics and what the results table lists next to them."""
    run = client.get_run(parent)
    tags = run.data.tags
    extra = {
        "best member": f"{tags.get('lfads.best_member', '?')} (run {tags.get('lfads.best_run', '?')})",
        "status": f"lfads pbt status {parent} --all",
    }
    return run.data.metrics, extra


def status(client: Any, parent: str, generations: str = "latest") -> str:
    """`lfads pbt status` through an MlflowClient (any store): one get_run, one search."""
    try:
        run = client.get_run(parent)
    except Exception:  # noqa: BLE001
        raise parent_not_found(parent, client.tracking_uri) from None
    return _status_text(run, load_members(client, parent), generations)


def status_at(uri: str, parent: str, generations: str = "latest") -> str:
    """`lfads pbt status`: read sqlite and http stores without MLflow (under a second for 400
    member runs, see benchmarks/bench_status.py); other stores through MlflowClient."""
    from lfads_lightning.runs import fastread
    from lfads_lightning.runs.schema import P, member_from_run, space_keys

    tracking.require_existing(uri)
    if fastread.supported(uri):
        try:
            run = fastread.get_run(uri, parent)
            if run is None:
                raise parent_not_found(parent, uri)
            keys = space_keys(run)  # the searched keys, read from each member's params
            children = fastread.child_runs(uri, run, keys)
            members = [member_from_run(r, keys) for r in children if P + "member" in r.data.tags]
            return _status_text(run, members, generations)
        except fastread.FastReadUnavailable:
            pass
    tracking.check_store(uri)
    return status(tracking.client(uri), parent, generations)
