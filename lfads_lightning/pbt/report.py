"""Reports on a PBT population: summary table and CSV, `lfads pbt status` text, and figures.

Everything here works on `MemberRun` lists as loaded from MLflow (`runs.schema.load_members`), so a
report can be drawn at any time, from a finished, running or crashed experiment. Only the final
attempt of each (member, generation) is reported: earlier attempts were retried and replaced.
Figures are bare Agg figures (see `lfads_lightning.evaluation.figures`); save them with `save_figure`.
"""

from __future__ import annotations

import csv
import math
import statistics
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from lfads_lightning.runs.schema import FAILED, MemberRun, is_finite

__all__ = [
    "FITNESS_LABEL",
    "SUMMARY_COLUMNS",
    "final_attempts",
    "generation_summary",
    "lineage",
    "status_table",
    "summary_rows",
    "write_summary_csv",
]

FITNESS_LABEL = "valid/recon_smth (lower is better)"
SUMMARY_COLUMNS = (
    "generation",
    "member",
    "state",
    "fitness",
    "copied_from_member",
    "attempt",
    "run_id",
)


def _failed(m: MemberRun) -> bool:
    """Failed, or finished without a usable fitness (NaN/inf): it lost its generation."""
    return m.state == FAILED or (m.done and not is_finite(m.fitness))


def _scored(m: MemberRun) -> bool:
    """Has a fitness to plot (a running member's is None; a failed one's does not count)."""
    return is_finite(m.fitness) and not _failed(m)


def final_attempts(members: Sequence[MemberRun]) -> list[MemberRun]:
    """The latest attempt per (member, generation), sorted by (generation, member)."""
    latest: dict[tuple[int, int], MemberRun] = {}
    for m in members:
        key = (m.generation, m.member)
        if key not in latest or m.attempt > latest[key].attempt:
            latest[key] = m
    return [latest[k] for k in sorted(latest)]


def _hparam_keys(finals: Sequence[MemberRun]) -> list[str]:
    """Every hyperparameter key seen, in first-seen order (the search space's order)."""
    keys: dict[str, None] = {}
    for m in finals:
        keys.update(dict.fromkeys(m.hparams))
    return list(keys)


def summary_rows(members: Sequence[MemberRun]) -> list[dict[str, Any]]:
    """One row per final attempt: the fixed columns, then one column per hyperparameter."""
    finals = final_attempts(members)
    keys = _hparam_keys(finals)
    rows = []
    for m in finals:
        row: dict[str, Any] = {
            "generation": m.generation,
            "member": m.member,
            "state": m.state,
            "fitness": m.fitness,
            "copied_from_member": m.copied_from_member,
            "attempt": m.attempt,
            "run_id": m.run_id,
        }
        row.update({k: m.hparams.get(k) for k in keys})
        rows.append(row)
    return rows


def write_summary_csv(members: Sequence[MemberRun], path: str | Path) -> Path:
    """`summary_rows` as CSV; missing values (no fitness, no lineage) are empty cells."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    rows = summary_rows(members)
    columns = list(SUMMARY_COLUMNS) + _hparam_keys(final_attempts(members))
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        for row in rows:
            writer.writerow({k: "" if v is None else v for k, v in row.items()})
    return path


def _short_names(keys: Sequence[str]) -> dict[str, str]:
    """`train.lr` -> `lr`; keys whose short names would collide keep their full name."""
    short = {k: k.rsplit(".", 1)[-1] for k in keys}
    counts: dict[str, int] = {}
    for name in short.values():
        counts[name] = counts.get(name, 0) + 1
    return {k: (s if counts[s] == 1 else k) for k, s in short.items()}


def _fmt_fitness(value: float | None) -> str:
    return "-" if value is None or math.isnan(value) else f"{value:.6g}"


def lineage(m: MemberRun) -> str:
    """How a member started its generation: "-" (generation 0, fresh), "continued" (from its
    own previous checkpoint) or "copied from N" (it took member N's checkpoint and
    hyperparameters, perturbed)."""
    if m.generation == 0 or m.copied_from_member is None:
        return "-"
    if m.copied_from_member == m.member:
        return "continued"
    return f"copied from {m.copied_from_member}"


def _fmt_duration(seconds: float) -> str:
    seconds = max(0.0, seconds)
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


def generation_summary(
    latest: Sequence[MemberRun],
    generation: int,
    max_generations: int | None = None,
    now: float | None = None,
) -> str:
    """One line per finished generation for the controller's log: best and median fitness,
    members alive, who copied whom into this generation, how long it took and, with
    `max_generations`, an upper bound on the time left (PBT may stop earlier).

    `latest` is the generation's latest attempts; its duration runs from the earliest member
    run's creation to `now` (default: the current time).
    """
    import time

    now = time.time() if now is None else now
    finals = [m for m in final_attempts(latest) if m.generation == generation]
    scored = sorted((m for m in finals if m.usable), key=lambda m: m.fitness)  # type: ignore[arg-type, return-value]
    parts = [f"generation {generation} done"]
    if scored:
        median = float(statistics.median([m.fitness for m in scored]))
        parts.append(
            f"best {scored[0].fitness:.5g} (member {scored[0].member}), median {median:.5g}"
        )
    parts.append(f"{len(scored)}/{len(finals)} alive")
    copies = [
        f"{m.member}<-{m.copied_from_member}" for m in finals if lineage(m).startswith("copied")
    ]
    if generation > 0:
        parts.append("copied into it: " + (", ".join(copies) if copies else "none"))
    starts = [m.start_time for m in finals if m.start_time]
    if starts:
        took = now - min(starts)
        parts.append(f"took {_fmt_duration(took)}")
        if max_generations is not None:
            left = max(0, max_generations - generation - 1)
            parts.append(f"ETA <= {_fmt_duration(took * left)} ({left} generation(s) left at most)")
    return "; ".join(parts)


def status_table(
    members: Sequence[MemberRun],
    space_keys: Sequence[str] | None = None,
    generations: str = "latest",
) -> str:
    """Fixed-width table for `lfads pbt status`: one line per final attempt.

    `generations="latest"` shows only the newest generation (what is running now); "all" shows
    the whole history. `space_keys` picks and orders the hyperparameter columns (default: every
    key seen); they are headed by their short names (`train.lr` -> `lr`).
    """
    if generations not in ("latest", "all"):
        raise ValueError(f"generations must be 'latest' or 'all', got {generations!r}")
    finals = final_attempts(members)
    if generations == "latest" and finals:
        newest = max(m.generation for m in finals)
        finals = [m for m in finals if m.generation == newest]
    keys = list(space_keys) if space_keys is not None else _hparam_keys(finals)
    short = _short_names(keys)
    header = ["member", "gen", "state", "fitness", "attempts", "lineage"]
    header += [short[k] for k in keys]
    right = [True, True, False, True, True, False] + [True] * len(keys)
    lines = []
    for m in finals:
        cells = [
            str(m.member),
            str(m.generation),
            m.state,
            _fmt_fitness(m.fitness),
            str(m.attempt + 1),
            lineage(m),
        ]
        for k in keys:
            v = m.hparams.get(k)
            cells.append("-" if v is None else f"{v:.3g}")
        lines.append(cells)
    widths = [max(len(r[i]) for r in [header, *lines]) for i in range(len(header))]

    def fmt(cells: list[str]) -> str:
        parts = [
            c.rjust(w) if r else c.ljust(w) for c, w, r in zip(cells, widths, right, strict=True)
        ]
        return "  ".join(parts).rstrip()

    out = [fmt(header), "  ".join("-" * w for w in widths)]
    out += [fmt(cells) for cells in lines] if lines else ["(no members yet)"]
    return "\n".join(out)
