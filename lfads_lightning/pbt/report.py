"""Reports on a PBT population: summary table and CSV, `lfads pbt status` text, and figures.

Everything here works on `MemberRun` lists as loaded from MLflow (`state.load_members`), so a
report can be drawn at any time, from a finished, running or crashed experiment. Only the final
attempt of each (member, generation) is reported: earlier attempts were retried and replaced.
Figures are bare Agg figures (see `lfads_lightning.evaluation.figures`); save them with `save_figure`.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.cm import ScalarMappable
from matplotlib.collections import LineCollection
from matplotlib.colors import Normalize
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import MaxNLocator, NullFormatter
from matplotlib.transforms import blended_transform_factory

from lfads_lightning.evaluation.figures import _colormap, _message_figure, _new_figure, save_figure
from lfads_lightning.pbt.space import HyperParameter
from lfads_lightning.runs.schema import EXPLOITED, FAILED, MemberRun

__all__ = [
    "FITNESS_LABEL",
    "SUMMARY_COLUMNS",
    "final_attempts",
    "fitness_figure",
    "generation_summary",
    "hparam_evolution_figure",
    "lineage",
    "save_figure",
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
# Lower fitness is better: the reversed map makes the best members the brightest.
_CMAP_FITNESS = "viridis_r"
_JITTER = 0.4  # total horizontal spread of one generation's points, in generations
_FAILED_COLOR = "tab:red"
_NO_FITNESS_COLOR = "0.6"
_LINEAGE_COLOR = "0.55"


def _finite(value: float | None) -> bool:
    return value is not None and math.isfinite(value)


def _failed(m: MemberRun) -> bool:
    """Failed, or finished without a usable fitness (NaN/inf): it lost its generation."""
    return m.state == FAILED or (m.done and not _finite(m.fitness))


def _scored(m: MemberRun) -> bool:
    """Has a fitness to plot (a running member's is None; a failed one's does not count)."""
    return _finite(m.fitness) and not _failed(m)


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
        median = float(np.median([m.fitness for m in scored]))
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


def _offsets(finals: Sequence[MemberRun]) -> dict[int, float]:
    """A fixed small x offset per member so one generation's points do not sit on each other."""
    ids = sorted({m.member for m in finals})
    if len(ids) < 2:
        return dict.fromkeys(ids, 0.0)
    return {i: _JITTER * (k / (len(ids) - 1) - 0.5) for k, i in enumerate(ids)}


def _integer_generations(ax: Any, finals: Sequence[MemberRun]) -> None:
    gens = [m.generation for m in finals]
    ax.xaxis.set_major_locator(MaxNLocator(integer=True, min_n_ticks=1))
    ax.set_xlim(min(gens) - 0.5, max(gens) + 0.5)


def fitness_figure(members: Sequence[MemberRun]) -> Figure:
    """Fitness per generation: every member's final attempt (a point), the best of each
    generation (a line) and failed members (red x along the top of the axis)."""
    finals = final_attempts(members)
    if not finals:
        return _message_figure("no PBT members yet")
    offsets = _offsets(finals)
    fig = _new_figure(7, 4)
    ax = fig.add_subplot()
    ok = [m for m in finals if _scored(m)]
    failed = [m for m in finals if _failed(m)]
    ax.scatter(
        [m.generation + offsets[m.member] for m in ok],
        [m.fitness for m in ok],
        s=22,
        color="tab:blue",
        alpha=0.7,
        label="member (final attempt)",
        zorder=2,
    )
    gens = sorted({m.generation for m in finals})
    best = []
    for g in gens:
        values = [m.fitness for m in ok if m.generation == g]
        best.append(min(values) if values else math.nan)
    ax.plot(gens, best, "-o", color="black", lw=1.5, ms=4, label="best per generation", zorder=3)
    if failed:
        # Failed members have no fitness: mark them along the top edge (x data, y axes coords).
        top = blended_transform_factory(ax.transData, ax.transAxes)
        ax.scatter(
            [m.generation + offsets[m.member] for m in failed],
            [0.96] * len(failed),
            transform=top,
            marker="x",
            s=40,
            color=_FAILED_COLOR,
            label="failed (no fitness)",
            zorder=4,
            clip_on=False,
        )
    if not ok:
        ax.set_yticks([])
        ax.text(0.5, 0.5, "no member has a fitness yet", ha="center", transform=ax.transAxes)
    _integer_generations(ax, finals)
    ax.set_xlabel("generation")
    ax.set_ylabel(FITNESS_LABEL)
    ax.set_title("PBT fitness per generation")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="upper right", framealpha=0.9)
    return fig


def _parent(
    m: MemberRun, by_run: dict[str, MemberRun], by_slot: dict[tuple[int, int], MemberRun]
) -> MemberRun | None:
    """The run `m` started from: its `copied_from` run, else the copied-from (or its own)
    member's final attempt of the previous generation."""
    if m.copied_from and m.copied_from in by_run:
        return by_run[m.copied_from]
    if m.generation == 0:
        return None
    source = m.copied_from_member if m.copied_from_member is not None else m.member
    return by_slot.get((m.generation - 1, source))


def hparam_evolution_figure(
    members: Sequence[MemberRun], space: Sequence[HyperParameter]
) -> Figure:
    """How the hyperparameters evolved, one panel per hyperparameter over generations.

    Each point is a member's final attempt, coloured by its fitness (bright = best; grey = no
    fitness). Grey lines join the value a member started from (the copied-from member's value
    in the previous generation) to its new value, so copies + perturbations show as branches.
    A black ring marks exploited members (replaced by a copy of a winner after that generation).
    Axes: one per hyperparameter, plus the colorbar once any member has a fitness.
    """
    finals = final_attempts(members)
    if not finals or not space:
        return _message_figure("no PBT members yet" if not finals else "empty search space")
    offsets = _offsets(finals)
    by_run = {m.run_id: m for m in members}
    by_slot = {(m.generation, m.member): m for m in finals}
    fitness = np.array([m.fitness for m in finals if _scored(m)], dtype=float)
    cmap = _colormap(_CMAP_FITNESS)
    norm = Normalize(*(fitness.min(), fitness.max()) if fitness.size else (0.0, 1.0))
    if norm.vmin == norm.vmax:
        norm = Normalize(norm.vmin - 0.5, norm.vmax + 0.5)

    fig = _new_figure(8, 1.55 * len(space) + 1.0)
    axes = fig.subplots(len(space), 1, sharex=True, squeeze=False)[:, 0]
    scored = [m for m in finals if _scored(m)]
    unscored = [m for m in finals if not _scored(m)]
    exploited = [m for m in finals if m.state == EXPLOITED]
    # Long runs have many points per panel: smaller markers keep the lineage readable.
    size = min(1.0, max(0.35, 10 / len({m.generation for m in finals})))
    lineage = [(p, m) for m in finals if (p := _parent(m, by_run, by_slot)) is not None]

    def x_of(m: MemberRun) -> float:
        return m.generation + offsets.get(m.member, 0.0)

    for ax, hp in zip(axes, space, strict=True):
        if hp.sampling == "log_uniform":
            ax.set_yscale("log")
        # Lineage as two collections (continuing vs copying another member): one artist each,
        # not one per line, so populations of hundreds of runs still draw in well under a second.
        for copied in (False, True):
            segments = [
                [(x_of(p), p.hparams[hp.key]), (x_of(m), m.hparams[hp.key])]
                for p, m in lineage
                if (p.member != m.member) == copied and hp.key in m.hparams and hp.key in p.hparams
            ]
            ax.add_collection(
                LineCollection(
                    segments,
                    colors=_LINEAGE_COLOR,
                    linewidths=0.8 if copied else 0.5,
                    alpha=0.8 if copied else 0.5,
                    zorder=1,
                )
            )

        def xy(group: list[MemberRun], key: str = hp.key) -> tuple[list[float], list[float]]:
            group = [m for m in group if key in m.hparams]
            return [x_of(m) for m in group], [m.hparams[key] for m in group]

        x, y = xy(exploited)
        ax.scatter(
            x,
            y,
            s=70 * size,
            facecolors="none",
            edgecolors="black",
            linewidths=1.2 * size**0.5,
            zorder=2,
        )
        x, y = xy(scored)
        colors = [m.fitness for m in scored if hp.key in m.hparams]
        ax.scatter(
            x,
            y,
            c=colors,
            cmap=cmap,
            norm=norm,
            s=26 * size,
            edgecolors="0.3",
            linewidths=0.3,
            zorder=3,
        )
        x, y = xy([m for m in unscored if _failed(m)])
        ax.scatter(x, y, marker="x", s=30 * size, color=_NO_FITNESS_COLOR, zorder=3)
        x, y = xy([m for m in unscored if not _failed(m)])
        ax.scatter(x, y, s=26 * size, facecolors="none", edgecolors=_NO_FITNESS_COLOR, zorder=3)
        if hp.sampling == "log_uniform":
            _tidy_log_labels(ax, [m.hparams[hp.key] for m in finals if hp.key in m.hparams])
        ax.set_ylabel(_short_names([h.key for h in space])[hp.key], fontsize=9)
        ax.grid(alpha=0.25)
        ax.tick_params(labelsize=8)
    _integer_generations(axes[-1], finals)
    axes[-1].set_xlabel("generation")
    if scored:  # no colour scale at all rather than a made-up one
        sm = ScalarMappable(norm=norm, cmap=cmap)
        fig.colorbar(sm, ax=list(axes), label=f"fitness: {FITNESS_LABEL}", shrink=0.6, aspect=30)
    handles = [
        Line2D([], [], ls="", marker="o", mfc="none", mec="black", ms=8, label="exploited"),
        Line2D([], [], ls="", marker="x", color=_NO_FITNESS_COLOR, label="failed"),
        Line2D([], [], color=_LINEAGE_COLOR, lw=0.8, label="copied from (lineage)"),
    ]
    axes[0].legend(handles=handles, fontsize=7, loc="lower left", bbox_to_anchor=(0, 1.0), ncol=3)
    fig.suptitle("PBT hyperparameter evolution")
    return fig


def _tidy_log_labels(ax: Any, values: Sequence[float]) -> None:
    """Past a decade of range, label only powers of ten: matplotlib's default minor labels
    (2x, 3x, 4x, 6x) would then crowd each other on a short panel."""
    positive = [v for v in values if v > 0 and math.isfinite(v)]
    if positive and math.log10(max(positive) / min(positive)) > 1.0:
        ax.yaxis.set_minor_formatter(NullFormatter())
