"""The final job of a PBT or search run: posterior-sample its best member onto the parent run.

The controller picks the best member (tag `lfads.best_run` on the parent) and submits this job
through the same launcher as the members, so the sampling runs where the members ran (the data
and the compute are there), not in the controller's process. The job leaves the parent run
open: the controller writes the report and closes it.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path
from typing import Any

from lfads_lightning.errors import LfadsError
from lfads_lightning.runs import schema, tracking

BEST_RUN_TAG = schema.BEST_RUN
SAMPLED_TAG = schema.FINAL_SAMPLED


def sample_best_member(client: Any, parent: str) -> dict[str, float]:
    """Sample the best member's checkpoint on every split; log outputs and metrics to `parent`."""
    from lfads_lightning.worker.checkpoint import load_module
    from lfads_lightning.worker.fit import sample_and_log
    from lfads_lightning.worker.member import CHECKPOINT_ARTIFACT
    from lfads_lightning.worker.setup import datamodule_for, load_run_config, set_threads

    best_run = client.get_run(parent).data.tags.get(BEST_RUN_TAG)
    if not best_run:
        raise LfadsError(f"run {parent} names no best member ({BEST_RUN_TAG}); nothing to sample")
    cfg = load_run_config(client, best_run)
    set_threads(0)  # the threads the launcher gave this job
    with tempfile.TemporaryDirectory() as tmp:
        ckpt = client.download_artifacts(best_run, CHECKPOINT_ARTIFACT, tmp)
        module = load_module(ckpt, map_location="cpu")
    dm = datamodule_for(cfg)
    print(f"lfads: posterior-sampling member run {best_run} onto {parent}", file=sys.stderr)
    metrics = sample_and_log(cfg, module, dm, client, parent, Path(cfg.output.dir) / parent)
    tracking.log_metrics(client, parent, metrics)
    client.set_tag(parent, SAMPLED_TAG, "1")
    return metrics
