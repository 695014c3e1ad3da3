"""The one worker entry: `python -m lfads_lightning worker --run-id R --tracking-uri U` (and the
same function in-process for warm slots). It reads the run's kind and does that job; whatever
happens, the run is never left RUNNING."""

from __future__ import annotations

import sys
import traceback
from typing import Any

from lfads_lightning.errors import LfadsError
from lfads_lightning.runs import schema, tracking
from lfads_lightning.worker import preemption
from lfads_lightning.worker.setup import load_run_config

PARENT_KINDS = ("pbt", "search")  # a parent run's job is its final posterior sampling


def run_worker(run_id: str, uri: str) -> int:
    """Entry point of `lfads worker`: never leaves the run RUNNING, whatever happens (except on
    preemption, where the run stays open for the requeued job)."""
    preemption.install()
    try:
        client = tracking.client(uri)
        run = client.get_run(run_id)
        kind = run.data.tags.get(tracking.TAG_PREFIX + "kind", "fit")
        if kind in PARENT_KINDS:
            return _final_sampling(client, run_id)
        if run.info.status != "RUNNING":  # requeued after its run closed (USR2 at the very end)
            print(
                f"lfads: run {run_id} is already {run.info.status}; nothing to do", file=sys.stderr
            )
            return 0
        cfg = load_run_config(client, run_id)
        if kind == "pbt_member":
            from lfads_lightning.worker.member import train_member

            fitness = train_member(cfg, run, uri)
            client.set_terminated(run_id, status="FINISHED")
            print(f"lfads: member run {run_id} finished: fitness {fitness:.6g}", file=sys.stderr)
            return 0
        from lfads_lightning.worker.fit import fit_run

        summary = fit_run(cfg, run_id, uri)
        client.set_terminated(run_id, status="FINISHED")
        _print_finished(run_id, uri, summary, cfg.output.dir)
        return 0
    except preemption.Preempted as err:
        preemption.ignore_further()
        print(f"lfads: {err}; state saved for the requeued job", file=sys.stderr)
        return preemption.REQUEUE_EXIT
    except LfadsError as err:
        print(f"error: {err}", file=sys.stderr)
        schema.mark_failed(uri, run_id, str(err))
        return err.exit_code
    except KeyboardInterrupt:
        schema.mark_failed(uri, run_id, "interrupted", status="KILLED")
        print("lfads: interrupted", file=sys.stderr)
        return 130
    except Exception as err:  # noqa: BLE001 - report any crash on the run, then exit non-zero
        traceback.print_exc()
        schema.mark_failed(uri, run_id, f"{type(err).__name__}: {err}")
        return 1


def _final_sampling(client: Any, parent: str) -> int:
    """The parent stays open whatever happens: the controller reports and closes it."""
    from lfads_lightning.worker.final import sample_best_member

    try:
        sample_best_member(client, parent)
    except LfadsError as err:
        print(f"error: {err}", file=sys.stderr)
        return err.exit_code
    except Exception:  # noqa: BLE001 - the controller sees the job fail and says so
        traceback.print_exc()
        return 1
    return 0


def _print_finished(run_id: str, uri: str, summary: dict[str, float], out_dir: str) -> None:
    """The metrics table in the job's log; one line when `lfads fit` prints the table itself."""
    import os
    from pathlib import Path

    from lfads_lightning.evaluation.tables import results_report

    if os.environ.get("LFADS_RESULTS_BY_CLI"):
        print(f"lfads: run {run_id} finished", file=sys.stderr)
        return
    title = f"lfads: run {run_id} finished"
    print(results_report(title, summary, str(Path(out_dir) / run_id), uri), file=sys.stderr)
