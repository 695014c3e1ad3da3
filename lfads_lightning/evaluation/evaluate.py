"""`lfads evaluate`: score posterior-sampled outputs the way the Neural Latents Benchmark does.

An output file (`lfads_output_<data>.h5`, written by `lfads fit`, `lfads pbt` and
`lfads sample`) holds a copy of the input data next to `<split>_rates`, so it is evaluated on its
own. Given a run id, the run's `outputs/*.h5` artifacts are evaluated (a PBT parent run holds its
best member's outputs) and the metrics are logged to that run under `eval/`; logging again
replaces the shown value, so re-evaluating is idempotent.
"""

from __future__ import annotations

import math
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from lfads_lightning.data.format import SPLITS, SessionData, load_session
from lfads_lightning.errors import DataError, LfadsError
from lfads_lightning.evaluation import metrics
from lfads_lightning.evaluation.posterior import posterior_metrics

EVAL_PREFIX = "eval/"
FIGURE_DIR = "eval_figures"
# NLB smooths spikes for true PSTHs with a 50 ms Gaussian on MC_Maze_Small/Medium/Large.
DEFAULT_PSTH_SD_MS = 50.0


@dataclass
class Evaluation:
    """Metrics of one output file, the run it records (if any), and the figures made."""

    path: Path
    metrics: dict[str, float]
    run_id: str | None = None
    figures: list[Path] = field(default_factory=list)
    # Where the metrics go on the run: eval/, or eval/<data>-<sha8>/ for new trials (the
    # `lfads_data_tag` attr `lfads sample --data` writes), so each data file keeps its own.
    prefix: str = EVAL_PREFIX


def read_output(path: str | Path) -> tuple[SessionData, dict[str, dict[str, np.ndarray]], dict]:
    """The session data inside an output file, its `<split>_<output>` arrays, and its attrs."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"output file not found: {path}; pass an lfads_output_*.h5 or a run id")
    session = load_session(path, required=())
    outputs: dict[str, dict[str, np.ndarray]] = {}
    with h5py.File(path, "r") as f:
        attrs = dict(f.attrs)
        for split in SPLITS:
            if f"{split}_rates" in f and split in session.splits:
                outputs[split] = {"rates": np.asarray(f[f"{split}_rates"][()])}
                if f"{split}_factors" in f:
                    outputs[split]["factors"] = np.asarray(f[f"{split}_factors"][()])
    if not outputs:
        raise DataError(
            f"{path}: no <split>_rates dataset; it is an input file, not a posterior-sampled "
            f"output (make one with `lfads sample`)"
        )
    for split, out in outputs.items():
        data = session.splits[split]
        want = (data.n_trials, session.recon_seq_len, session.recon_dim)
        if out["rates"].shape != want:
            raise DataError(
                f"{path}: {split}_rates has shape {out['rates'].shape}, expected {want} "
                f"(trials, recon bins, recon neurons); re-sample the run"
            )
        if not np.isfinite(out["rates"]).all() or (out["rates"] < 0).any():
            raise DataError(f"{path}: {split}_rates holds NaN, inf or negative rates; re-sample")
    return session, outputs, attrs


def psth_metric(
    session: SessionData, outputs: dict[str, dict[str, np.ndarray]], sd_ms: float
) -> float | None:
    """psth R2 on the valid trials; true PSTHs from train + valid spikes (None without
    condition ids)."""
    train, valid = session.splits.get("train"), session.splits.get("valid")
    if "valid" not in outputs or train is None or valid is None:
        return None
    if train.cond_idx is None or valid.cond_idx is None or valid.recon_data is None:
        return None
    t = session.encod_seq_len
    spikes = np.concatenate([train.recon_data[:, :t], valid.recon_data[:, :t]])
    conds = np.concatenate([train.cond_idx, valid.cond_idx])
    conditions, psth = metrics.true_psths(spikes, conds, sd_ms / session.bin_size_ms)
    return metrics.psth_r2(outputs["valid"]["rates"][:, :t], valid.cond_idx, psth, conditions)


def evaluate_output(path: str | Path, psth_sd_ms: float = DEFAULT_PSTH_SD_MS) -> Evaluation:
    """All metrics of one output file: per split bps (held-in), co-bps, fp-bps, rate R2;
    valid vel R2 (lagged ridge, CV alpha) and valid psth R2 when the data allow."""
    session, outputs, attrs = read_output(path)
    values = posterior_metrics(session, outputs)
    psth = psth_metric(session, outputs, psth_sd_ms)
    if psth is not None and math.isfinite(psth):
        values["valid_psth_r2"] = psth
    run_id = attrs.get("mlflow_run_id")
    tag = attrs.get("lfads_data_tag")
    return Evaluation(
        Path(path),
        dict(sorted(values.items())),
        str(run_id) if run_id else None,
        prefix=f"{EVAL_PREFIX}{tag}/" if tag else EVAL_PREFIX,
    )


def make_figures(path: str | Path, fig_dir: Path, tag: str) -> list[Path]:
    """The inferred-rates figure (smoothed spikes, PSTHs, single-trial rates, aligned to the
    event) and, for synthetic data, inferred vs true rates; written as PNG."""
    from lfads_lightning.evaluation import figures

    session, outputs, attrs = read_output(path)
    split = "valid" if "valid" in outputs else next(iter(outputs))
    data, rates = session.splits[split], outputs[split]["rates"]
    spikes = data.recon_data if data.recon_data is not None else data.encod_data
    t = session.encod_seq_len
    made = {
        "inferred_rates": figures.rates_by_condition(
            spikes[:, :t],
            rates[:, :t],
            data.cond_idx,
            bin_size_ms=session.bin_size_ms,
            event_bin=int(attrs.get("event_bin", 0)),
            event_name=str(attrs.get("event_name", "trial start")),
        )
    }
    if data.truth is not None:
        made["rates_vs_truth"] = figures.rates_vs_truth(
            rates, data.truth, bin_size_ms=session.bin_size_ms
        )
    return [
        figures.save_figure(fig, fig_dir / f"{tag}_{split}_{name}.png")
        for name, fig in made.items()
    ]


def _run_outputs(client: Any, run: Any, tmp: str) -> list[Path]:
    """Download the run's outputs/*.h5 artifacts."""
    run_id = run.info.run_id
    try:
        listed = client.list_artifacts(run_id, "outputs")
    except Exception:  # noqa: BLE001
        listed = []
    names = [a.path for a in listed if a.path.endswith(".h5")]
    if not names:
        raise LfadsError(_no_outputs(run))
    return [Path(client.download_artifacts(run_id, name, tmp)) for name in names]


def _no_outputs(run: Any) -> str:
    """Why a run has no outputs yet, and the command that gets some."""
    run_id, tags = run.info.run_id, run.data.tags
    kind, state = tags.get("lfads.kind", "fit"), tags.get("lfads.state", run.info.status.lower())
    sample = f"`lfads sample {run_id}` samples its model; then `lfads evaluate FILE`"
    if kind in ("pbt", "search"):
        return (
            f"PBT run {run_id} has no outputs yet (state {state}): `lfads pbt status {run_id}` "
            f"shows it, `lfads pbt stop {run_id}` ends it with its best member so far, or "
            f"{sample.replace('its model', 'its best member so far')}"
        )
    if kind == "pbt_member":
        return f"run {run_id} is a PBT member: members keep no outputs; {sample}"
    return f"run {run_id} has no outputs/*.h5 artifact (state {state}, unfinished?); {sample}"


def _prefix(n_files: int, index: int) -> str:
    return EVAL_PREFIX if n_files == 1 else f"{EVAL_PREFIX}s{index}_"


def evaluate_run(
    client: Any,
    run_id: str,
    fig_dir: Path,
    psth_sd_ms: float = DEFAULT_PSTH_SD_MS,
    log: bool = True,
    figures: bool = True,
) -> list[Evaluation]:
    """Evaluate every output file of a run and log metrics and figures to that run."""
    from lfads_lightning.runs import tracking

    try:
        run = client.get_run(run_id)
    except Exception:  # noqa: BLE001
        raise LfadsError(
            f"MLflow run {run_id} not found in {client.tracking_uri}; check the run id and "
            f"MLFLOW_TRACKING_URI / --tracking-uri"
        ) from None
    from lfads_lightning.progress import Progress

    results = []
    with tempfile.TemporaryDirectory(prefix="lfads-eval-") as tmp:
        paths = _run_outputs(client, run, tmp)
        # Steps per output file: metrics, figures, logging to MLflow.
        progress = Progress(f"evaluating run {run_id}", 3 * len(paths), "steps", interval=0)
        for i, path in enumerate(paths):
            result = evaluate_output(path, psth_sd_ms)
            progress.update()
            result.path = Path(f"runs:/{run_id}/outputs/{path.name}")
            result.run_id = run_id
            if figures:
                result.figures = make_figures(path, fig_dir, path.stem)
            progress.update()
            if log:
                prefix = _prefix(len(paths), i)
                tracking.log_metrics(
                    client, run_id, {prefix + k: v for k, v in result.metrics.items()}
                )
                for fig in result.figures:
                    client.log_artifact(run_id, str(fig), FIGURE_DIR)
            progress.update()
            results.append(result)
        progress.close()
    if log:
        client.set_tag(run_id, tracking.TAG_PREFIX + "evaluated", "true")
    return results


def log_file_evaluation(client: Any, result: Evaluation) -> bool:
    """Log a file's metrics to the run it records, if that run is in this store."""
    from lfads_lightning.runs import tracking

    if not result.run_id:
        return False
    try:
        client.get_run(result.run_id)
    except Exception:  # noqa: BLE001 - the file came from another store: print only
        return False
    tracking.log_metrics(
        client, result.run_id, {result.prefix + k: v for k, v in result.metrics.items()}
    )
    figure_dir = FIGURE_DIR + "/" + result.prefix.removeprefix(EVAL_PREFIX).rstrip("/")
    for fig in result.figures:
        client.log_artifact(result.run_id, str(fig), figure_dir.rstrip("/"))
    return True


def format_table(results: list[Evaluation]) -> str:
    """One block per evaluated file: metric names and values, aligned."""
    lines = []
    for r in results:
        lines.append(f"{r.path}" + (f"  (run {r.run_id})" if r.run_id else ""))
        width = max((len(k) for k in r.metrics), default=0)
        lines += [f"  {k:<{width}}  {v: .4f}" for k, v in r.metrics.items()]
        lines += [f"  figure: {p}" for p in r.figures]
    return "\n".join(lines)
