"""Figures of a PBT population (fitness per generation, hyperparameter evolution), kept apart
from `report` so that reading the population's tables never imports matplotlib."""

from __future__ import annotations

import math
from collections.abc import Sequence
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
from lfads_lightning.pbt.report import (
    FITNESS_LABEL,
    _failed,
    _scored,
    _short_names,
    final_attempts,
)
from lfads_lightning.pbt.space import HyperParameter
from lfads_lightning.runs.schema import EXPLOITED, MemberRun

__all__ = ["fitness_figure", "hparam_evolution_figure", "save_figure"]

# Lower fitness is better: the reversed map makes the best members the brightest.
_CMAP_FITNESS = "viridis_r"
_JITTER = 0.4  # total horizontal spread of one generation's points, in generations
_FAILED_COLOR = "tab:red"
_NO_FITNESS_COLOR = "0.6"
_LINEAGE_COLOR = "0.55"


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
    # Long runs have many points per panel: smaller markers keep the lineage readable.
    size = min(1.0, max(0.35, 10 / len({m.generation for m in finals})))
    lineage = [(p, m) for m in finals if (p := _parent(m, by_run, by_slot)) is not None]

    def x_of(m: MemberRun) -> float:
        return m.generation + offsets.get(m.member, 0.0)

    names = _short_names([h.key for h in space])
    for ax, hp in zip(axes, space, strict=True):
        if hp.sampling == "log_uniform":
            ax.set_yscale("log")
        _draw_lineage(ax, hp.key, lineage, x_of)
        _draw_points(ax, hp.key, finals, x_of, (cmap, norm), size)
        if hp.sampling == "log_uniform":
            _tidy_log_labels(ax, [m.hparams[hp.key] for m in finals if hp.key in m.hparams])
        ax.set_ylabel(names[hp.key], fontsize=9)
        ax.grid(alpha=0.25)
        ax.tick_params(labelsize=8)
    _integer_generations(axes[-1], finals)
    axes[-1].set_xlabel("generation")
    _decorate(fig, axes, any(_scored(m) for m in finals), cmap, norm)
    return fig


def _draw_lineage(ax: Any, key: str, lineage: list[tuple[MemberRun, MemberRun]], x_of: Any) -> None:
    """Lineage as two collections (continuing vs copying another member): one artist each, not
    one per line, so populations of hundreds of runs still draw in well under a second."""
    for copied in (False, True):
        segments = [
            [(x_of(p), p.hparams[key]), (x_of(m), m.hparams[key])]
            for p, m in lineage
            if (p.member != m.member) == copied and key in m.hparams and key in p.hparams
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


def _draw_points(
    ax: Any, key: str, finals: list[MemberRun], x_of: Any, colour: tuple[Any, Any], size: float
) -> None:
    """Exploited members ringed, scored ones coloured by fitness, failed ones as crosses."""
    cmap, norm = colour
    scored = [m for m in finals if _scored(m)]
    unscored = [m for m in finals if not _scored(m)]

    def xy(group: list[MemberRun]) -> tuple[list[float], list[float]]:
        group = [m for m in group if key in m.hparams]
        return [x_of(m) for m in group], [m.hparams[key] for m in group]

    x, y = xy([m for m in finals if m.state == EXPLOITED])
    ax.scatter(
        x, y, s=70 * size, facecolors="none", edgecolors="black",
        linewidths=1.2 * size**0.5, zorder=2,
    )  # fmt: skip
    x, y = xy(scored)
    colors = [m.fitness for m in scored if key in m.hparams]
    ax.scatter(
        x, y, c=colors, cmap=cmap, norm=norm, s=26 * size, edgecolors="0.3",
        linewidths=0.3, zorder=3,
    )  # fmt: skip
    x, y = xy([m for m in unscored if _failed(m)])
    ax.scatter(x, y, marker="x", s=30 * size, color=_NO_FITNESS_COLOR, zorder=3)
    x, y = xy([m for m in unscored if not _failed(m)])
    ax.scatter(x, y, s=26 * size, facecolors="none", edgecolors=_NO_FITNESS_COLOR, zorder=3)


def _decorate(fig: Figure, axes: Any, any_scored: bool, cmap: Any, norm: Any) -> None:
    if any_scored:  # no colour scale at all rather than a made-up one
        sm = ScalarMappable(norm=norm, cmap=cmap)
        fig.colorbar(sm, ax=list(axes), label=f"fitness: {FITNESS_LABEL}", shrink=0.6, aspect=30)
    handles = [
        Line2D([], [], ls="", marker="o", mfc="none", mec="black", ms=8, label="exploited"),
        Line2D([], [], ls="", marker="x", color=_NO_FITNESS_COLOR, label="failed"),
        Line2D([], [], color=_LINEAGE_COLOR, lw=0.8, label="copied from (lineage)"),
    ]
    axes[0].legend(handles=handles, fontsize=7, loc="lower left", bbox_to_anchor=(0, 1.0), ncol=3)
    fig.suptitle("PBT hyperparameter evolution")


def _tidy_log_labels(ax: Any, values: Sequence[float]) -> None:
    """Past a decade of range, label only powers of ten: matplotlib's default minor labels
    (2x, 3x, 4x, 6x) would then crowd each other on a short panel."""
    positive = [v for v in values if v > 0 and math.isfinite(v)]
    if positive and math.log10(max(positive) / min(positive)) > 1.0:
        ax.yaxis.set_minor_formatter(NullFormatter())
