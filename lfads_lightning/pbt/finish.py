"""Finishing a PBT or search run: the best member's posterior sampling as a worker job through
the same launcher, then the report, then the parent run closed."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from launchers import JobSpec, JobState
from lfads_lightning.errors import LfadsError
from lfads_lightning.pbt.config import PbtConfig
from lfads_lightning.runs import tracking
from lfads_lightning.runs.schema import BEST_RUN as BEST_RUN_TAG
from lfads_lightning.runs.schema import FINAL_SAMPLED as SAMPLED_TAG
from lfads_lightning.runs.schema import load_members, set_parent_state


def finish(
    client: Any,
    uri: str,
    parent: str,
    best_run: str,
    pbt: PbtConfig,
    launcher: Any,
    spec: JobSpec,
    run_dir: Path,
    final_state: str = "finished",
) -> None:
    """Posterior-sample the best member onto the parent (a worker job), report, close (state
    finished, or stopped after `lfads pbt stop`: lifecycle.finish_stopped)."""
    members = load_members(client, parent)
    best = next(m for m in members if m.run_id == best_run)
    client.set_tag(parent, BEST_RUN_TAG, best_run)
    client.set_tag(parent, tracking.TAG_PREFIX + "best_member", str(best.member))
    run = client.get_run(parent)
    if run.data.tags.get(SAMPLED_TAG) != "1":  # a resumed run may have sampled already
        print(
            f"lfads pbt: posterior-sampling the best member {best.member} (run {best_run}) "
            f"on launcher '{launcher.name}'",
            file=sys.stderr,
        )
        _run_final_job(client, parent, launcher, spec)
    summary = {
        "pbt/best_fitness_final": float(best.fitness),
        "pbt/generations": float(max(m.generation for m in members) + 1),
    }
    tracking.log_metrics(client, parent, summary)
    print("lfads pbt: writing the report (figures, summary.csv)", file=sys.stderr, flush=True)
    _write_report(client, parent, members, pbt, run_dir)
    set_parent_state(client, parent, final_state)
    print(
        f"lfads pbt: {final_state} {parent}: best member {best.member} (run {best_run}), "
        f"fitness {best.fitness:.6g}; report in {run_dir / 'report'}",
        file=sys.stderr,
    )


def _run_final_job(client: Any, parent: str, launcher: Any, spec: JobSpec) -> None:
    handle = launcher.submit(spec)
    try:
        state = _wait_final(client, parent, launcher, handle, spec)
    except BaseException:  # Ctrl-C, SIGTERM: the sampling job must not outlive the controller
        launcher.cancel(handle)
        raise
    if state != JobState.SUCCEEDED or client.get_run(parent).data.tags.get(SAMPLED_TAG) != "1":
        where = f" (log: {spec.log_dir}/{parent}.log)" if spec.log_dir else ""
        raise LfadsError(
            f"posterior sampling of the best member failed (job {state.value}){where}; "
            f"resume with: lfads pbt --resume {parent}"
        )


def _wait_final(client: Any, parent: str, launcher: Any, handle: Any, spec: JobSpec) -> JobState:
    import time

    from lfads_lightning.runs.schema import beat_controller

    start = last = time.monotonic()
    while not (state := launcher.poll(handle)).terminal:
        if time.monotonic() - last >= 10.0:  # the job's own progress lines are in its log
            last = time.monotonic()
            beat_controller(client, parent)  # alive: `lfads pbt stop` waits for this process
            where = f"; progress in {spec.log_dir}" if spec.log_dir else ""
            print(
                f"lfads pbt: posterior sampling running ({last - start:.0f} s{where})",
                file=sys.stderr,
                flush=True,
            )
        time.sleep(1.0)
    return state


def _write_report(
    client: Any, parent: str, members: list[Any], pbt: PbtConfig, run_dir: Path
) -> None:
    from lfads_lightning.evaluation.figures import save_figure
    from lfads_lightning.pbt import report, report_figures

    report_dir = run_dir / "report"
    report_dir.mkdir(parents=True, exist_ok=True)
    paths = [
        save_figure(
            report_figures.fitness_figure(members), report_dir / "fitness_per_generation.png"
        ),
        save_figure(
            report_figures.hparam_evolution_figure(members, pbt.space),
            report_dir / "hyperparameter_evolution.png",
        ),
        report.write_summary_csv(members, report_dir / "summary.csv"),
    ]
    for path in paths:
        client.log_artifact(parent, str(path), "report")
