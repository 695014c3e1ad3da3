"""The results table every command ends with (`lfads fit`, `pbt`, `search`, `evaluate`, and
the worker's log): one row per data split, the columns a neuroscientist reads, then where the
outputs and the MLflow UI are. Metric names are those of `evaluation.posterior` and
`evaluate.evaluate_output` (`<split>_<metric>`, `valid_vel_r2`, `valid_psth_r2`), with or
without a `posterior/` or `eval/` prefix and an `s<i>_` session prefix. Stdlib only."""

from __future__ import annotations

import math
import re
from collections.abc import Mapping

# (metric suffix, column header): NLB's headline metrics first.
COLUMNS = (
    ("co_bps", "co-bps"),
    ("fp_bps", "fp-bps"),
    ("vel_r2", "vel R2"),
    ("psth_r2", "psth R2"),
    ("rate_r2", "rate R2"),
    ("bps", "bits/spike"),
)
SPLIT_ORDER = ("train", "valid", "test")
_KEY = re.compile(
    r"^(?:(?P<session>s\d+)_)?(?P<split>train|valid|test)_(?P<metric>"
    + "|".join(re.escape(c) for c, _ in COLUMNS)
    + r")$"
)


def split_metrics(
    metrics: Mapping[str, float], prefixes: tuple[str, ...] = ("posterior/", "eval/")
) -> dict[tuple[str, str], dict[str, float]]:
    """{(session, split): {metric: value}} of the metrics a table shows; others are ignored.
    With several prefixes present, the first one in `prefixes` wins."""
    rows: dict[tuple[str, str], dict[str, float]] = {}
    for prefix in reversed(prefixes):
        for key, value in metrics.items():
            if not key.startswith(prefix):
                continue
            match = _KEY.match(key[len(prefix) :])
            if match is None or value is None:
                continue
            row = rows.setdefault((match["session"] or "", match["split"]), {})
            row[match["metric"]] = float(value)
    for key, value in metrics.items():  # bare names, as `lfads evaluate` on a file gives
        match = _KEY.match(key)
        if match is not None and value is not None:
            rows.setdefault((match["session"] or "", match["split"]), {}).setdefault(
                match["metric"], float(value)
            )
    return rows


def metrics_table(metrics: Mapping[str, float]) -> str:
    """Aligned table: rows are (session,) split, columns the metrics present; '-' is missing."""
    rows = split_metrics(metrics)
    if not rows:
        return "(no posterior metrics)"
    shown = [(k, h) for k, h in COLUMNS if any(k in r for r in rows.values())]
    sessions = {s for s, _ in rows}

    def order(key: tuple[str, str]) -> tuple[int, int]:
        session, split = key
        return (int(session[1:]) if session else -1, SPLIT_ORDER.index(split))

    header = ["split", *(h for _, h in shown)]
    lines = []
    for key in sorted(rows, key=order):
        session, split = key
        label = f"{session} {split}" if len(sessions) > 1 or session else split
        cells = [label]
        for metric, _ in shown:
            v = rows[key].get(metric)
            cells.append("-" if v is None or not math.isfinite(v) else f"{v:.4f}")
        lines.append(cells)
    widths = [max(len(r[i]) for r in [header, *lines]) for i in range(len(header))]

    def fmt(cells: list[str]) -> str:
        first = cells[0].ljust(widths[0])
        return "  ".join(
            [first, *(c.rjust(w) for c, w in zip(cells[1:], widths[1:], strict=True))]
        ).rstrip()

    return "\n".join([fmt(header), "  ".join("-" * w for w in widths), *map(fmt, lines)])


def results_report(
    title: str,
    metrics: Mapping[str, float],
    outputs: str | None = None,
    tracking_uri: str | None = None,
    run_id: str | None = None,
    extra: Mapping[str, str] | None = None,
) -> str:
    """`title`, the metrics table, then aligned "where" lines: outputs, run, MLflow UI."""
    where: dict[str, str] = {}
    if outputs:
        where["outputs"] = str(outputs)
    if run_id:
        where["MLflow run"] = run_id
    if tracking_uri:
        where["MLflow UI"] = f"lfads ui --tracking-uri {tracking_uri}"
    where.update(extra or {})
    width = max((len(k) for k in where), default=0)
    lines = [
        title,
        metrics_table(metrics),
        *(f"{k + ':':<{width + 1}}  {v}" for k, v in where.items()),
    ]
    return "\n".join(lines)


def metrics_json(metrics: Mapping[str, float]) -> dict[str, dict[str, float]]:
    """{split: {metric: value}} (split as "s0_valid" with several sessions) for --json."""
    rows = split_metrics(metrics)
    return {
        (f"{s}_{sp}" if s else sp): dict(sorted(v.items())) for (s, sp), v in sorted(rows.items())
    }
