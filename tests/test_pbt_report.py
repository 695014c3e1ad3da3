"""PBT reports: final attempts, summary rows/CSV, the status table and the two figures."""

from __future__ import annotations

import csv
import math
import re
from pathlib import Path

import numpy as np
import pytest

from lfads_lightning.pbt import report, report_figures, rules
from lfads_lightning.pbt.space import HyperParameter
from lfads_lightning.runs.schema import EXPLOITED, FAILED, FINISHED, RUNNING, MemberRun

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
SPACE = [
    HyperParameter("train.lr", 1e-5, 5e-3, init=4e-3, sampling="log_uniform"),
    HyperParameter("model.dropout_rate", 0.0, 0.6),
]


def _run(
    member: int,
    gen: int,
    fitness: float | None,
    lr: float,
    dropout: float,
    state: str = FINISHED,
    attempt: int = 0,
    copied_from_member: int | None = None,
) -> MemberRun:
    return MemberRun(
        run_id=f"r{gen}-{member}-{attempt}",
        member=member,
        generation=gen,
        attempt=attempt,
        state=state,
        mlflow_status="FINISHED" if state != FAILED else "FAILED",
        fitness=fitness,
        copied_from=None if copied_from_member is None else f"r{gen - 1}-{copied_from_member}-0",
        copied_from_member=copied_from_member,
        hparams={"train.lr": lr, "model.dropout_rate": dropout},
    )


@pytest.fixture
def population() -> list[MemberRun]:
    """4 members x 3 generations. Gen 0: member 3 fails; member 1's first attempt failed and was
    retried. Gen 1: members 2 and 3 copy 0 and 1. Gen 2: member 1 still running."""
    runs = [
        _run(0, 0, 0.50, 1e-3, 0.1, state=EXPLOITED),
        _run(1, 0, None, 2e-3, 0.2, state=FAILED),
        _run(1, 0, 0.40, 2e-3, 0.2, attempt=1),
        _run(2, 0, 0.60, 3e-3, 0.3, state=EXPLOITED),
        _run(3, 0, math.nan, 4e-3, 0.4, state=FAILED),
        _run(0, 1, 0.35, 1e-3, 0.1, copied_from_member=0),
        _run(1, 1, 0.30, 2e-3, 0.2, copied_from_member=1),
        _run(2, 1, 0.33, 1.2e-3, 0.12, copied_from_member=0),
        _run(3, 1, 0.31, 2.4e-3, 0.16, copied_from_member=1),
        _run(0, 2, 0.25, 1e-3, 0.1, copied_from_member=0),
        _run(1, 2, None, 2e-3, 0.2, state=RUNNING, copied_from_member=1),
        _run(2, 2, 0.27, 1.2e-3, 0.12, copied_from_member=2),
        _run(3, 2, 0.26, 2.4e-3, 0.16, copied_from_member=3),
    ]
    # Retry for member 1 of generation 0 was recorded out of order; the report must not care.
    return runs[::-1]


def test_final_attempts_picks_latest_and_sorts(population: list[MemberRun]) -> None:
    finals = report.final_attempts(population)
    assert [(m.generation, m.member) for m in finals] == [
        (g, i) for g in range(3) for i in range(4)
    ]
    retried = finals[1]
    assert (retried.member, retried.attempt, retried.fitness) == (1, 1, 0.40)


def test_summary_rows(population: list[MemberRun]) -> None:
    rows = report.summary_rows(population)
    assert len(rows) == 12
    assert list(rows[0]) == [*report.SUMMARY_COLUMNS, "train.lr", "model.dropout_rate"]
    assert rows[1] == {
        "generation": 0,
        "member": 1,
        "state": FINISHED,
        "fitness": 0.40,
        "copied_from_member": None,
        "attempt": 1,
        "run_id": "r0-1-1",
        "train.lr": 2e-3,
        "model.dropout_rate": 0.2,
    }
    row = rows[4 + 3]  # generation 1, member 3 copied member 1
    assert (row["copied_from_member"], row["fitness"], row["train.lr"]) == (1, 0.31, 2.4e-3)
    assert math.isnan(rows[3]["fitness"]) and rows[3]["state"] == FAILED


def test_write_summary_csv(population: list[MemberRun], tmp_path: Path) -> None:
    path = report.write_summary_csv(population, tmp_path / "sub" / "summary.csv")
    with path.open(newline="") as f:
        reader = csv.DictReader(f)
        rows = list(reader)
    assert reader.fieldnames == [*report.SUMMARY_COLUMNS, "train.lr", "model.dropout_rate"]
    assert len(rows) == 12
    assert rows[0]["copied_from_member"] == ""  # generation 0 has no lineage
    assert float(rows[1]["fitness"]) == 0.40 and rows[1]["attempt"] == "1"
    running = rows[4 * 2 + 1]
    assert running["state"] == RUNNING and running["fitness"] == ""
    assert float(rows[11]["train.lr"]) == pytest.approx(2.4e-3)


def _table_rows(table: str) -> list[list[str]]:
    """Cells are separated by two or more spaces (a lineage cell holds single spaces)."""
    return [re.split(r"\s{2,}", line.strip()) for line in table.splitlines()[2:]]


def test_status_table_latest(population: list[MemberRun]) -> None:
    table = report.status_table(population)
    lines = table.splitlines()
    assert lines[0].split()[:6] == ["member", "gen", "state", "fitness", "attempts", "lineage"]
    assert lines[0].split()[-2:] == ["lr", "dropout_rate"]
    rows = _table_rows(table)
    assert [r[0] for r in rows] == ["0", "1", "2", "3"]
    assert all(r[1] == "2" for r in rows)
    assert rows[0][3] == "0.25" and rows[1][2:4] == [RUNNING, "-"]
    assert rows[2][-2:] == ["0.0012", "0.12"]
    # Columns are aligned: every line has the same width as the separator (or less, rstripped).
    assert all(len(line) <= len(lines[1]) for line in lines)


def test_status_table_all(population: list[MemberRun]) -> None:
    table = report.status_table(population, space_keys=["model.dropout_rate"], generations="all")
    rows = _table_rows(table)
    assert len(rows) == 12
    assert table.splitlines()[0].split()[-1] == "dropout_rate"
    assert "lr" not in table.splitlines()[0].split()
    gen0 = {r[0]: r for r in rows[:4]}
    assert gen0["1"][3:5] == ["0.4", "2"]  # fitness, attempts (retried once)
    assert gen0["3"][2:4] == [FAILED, "-"]  # NaN fitness shows as '-'
    assert gen0["0"][5] == "-"  # no lineage in generation 0
    # Lineage: members 0 and 1 continued from their own checkpoints, 2 and 3 copied.
    assert [r[5] for r in rows[4:8]] == ["continued", "continued", "copied from 0", "copied from 1"]


def test_generation_summary(population: list[MemberRun]) -> None:
    gen1 = [m for m in population if m.generation == 1]
    for m in gen1:
        m.start_time = 1000.0
    line = report.generation_summary(gen1, 1, max_generations=5, now=1060.0)
    assert line.startswith("generation 1 done; best 0.3 (member 1), median 0.32")
    assert "4/4 alive" in line and "copied into it: 2<-0, 3<-1" in line
    assert "took 60 s" in line and "ETA <= 3.0 min (3 generation(s) left at most)" in line
    gen0 = [m for m in population if m.generation == 0]
    assert "copied into it" not in report.generation_summary(gen0, 0)


def test_status_table_six_significant_digits_and_empty() -> None:
    m = _run(0, 0, 1234.56789, 1e-3, 0.1)
    assert _table_rows(report.status_table([m]))[0][3] == "1234.57"
    assert "no members" in report.status_table([])
    with pytest.raises(ValueError):
        report.status_table([m], generations="first")


def _check_png(fig, path: Path) -> None:
    assert report_figures.save_figure(fig, path) == path
    content = path.read_bytes()
    assert len(content) > 1000 and content.startswith(PNG_MAGIC)


def test_figures(population: list[MemberRun], tmp_path: Path) -> None:
    fig = report_figures.fitness_figure(population)
    assert len(fig.axes) == 1
    assert fig.axes[0].get_ylabel() == report.FITNESS_LABEL
    _check_png(fig, tmp_path / "fitness.png")

    fig = report_figures.hparam_evolution_figure(population, SPACE)
    assert len(fig.axes) == len(SPACE) + 1  # one panel per hyperparameter + the colorbar
    assert fig.axes[0].get_yscale() == "log" and fig.axes[1].get_yscale() == "linear"
    _check_png(fig, tmp_path / "hparams.png")


def test_figures_without_members(tmp_path: Path) -> None:
    _check_png(report_figures.fitness_figure([]), tmp_path / "f.png")
    _check_png(report_figures.hparam_evolution_figure([], SPACE), tmp_path / "h.png")


def test_figures_when_every_member_failed(tmp_path: Path) -> None:
    runs = [_run(0, 0, None, 1e-3, 0.1, state=FAILED), _run(1, 0, math.nan, 2e-3, 0.2, FAILED)]
    fig = report_figures.fitness_figure(runs)
    assert len(fig.axes) == 1
    _check_png(fig, tmp_path / "f.png")
    fig = report_figures.hparam_evolution_figure(runs, SPACE)
    assert len(fig.axes) == len(SPACE)  # no colorbar without any fitness to scale it
    _check_png(fig, tmp_path / "h.png")


def simulate_population(
    space: list[HyperParameter], size: int = 8, generations: int = 6, seed: int = 0
) -> list[MemberRun]:
    """A PBT run with the real selection/exploration rules and a made-up fitness landscape:
    fitness falls with training and with each hyperparameter's (log) distance to an optimum.
    One member fails in generation 2 (retried once, fails again); one run is retried and passes.
    """
    rng = np.random.default_rng(seed)
    hparams = []
    for _ in range(size):
        values = {}
        for hp in space:
            if hp.init is not None:
                values[hp.key] = hp.init
            elif hp.sampling == "log_uniform":
                values[hp.key] = float(np.exp(rng.uniform(np.log(hp.min), np.log(hp.max))))
            else:
                values[hp.key] = float(rng.uniform(hp.min, hp.max))
        hparams.append(values)

    def landscape(values: dict[str, float], gen: int) -> float:
        penalty = 0.0
        for hp in space:
            lo, hi, v = hp.min, hp.max, values[hp.key]
            if hp.sampling == "log_uniform":
                lo, hi, v = np.log(lo), np.log(hi), np.log(max(v, 1e-12))
            penalty += 0.02 * ((v - (lo + 0.4 * (hi - lo))) / (hi - lo)) ** 2
        return 0.30 + 0.12 * np.exp(-gen / 2) + penalty + float(rng.normal(0, 0.003))

    runs: list[MemberRun] = []
    sources: list[tuple[str | None, int | None]] = [(None, None)] * size
    for gen in range(generations):
        scores: list[float | None] = []
        latest: list[MemberRun] = []
        for i in range(size):
            run_id, attempt = f"g{gen}m{i}", 0
            if (gen, i) == (1, 5):  # a transient failure, retried successfully
                runs.append(
                    _sim_run(f"{run_id}a0", i, gen, 0, FAILED, None, sources[i], hparams[i])
                )
                attempt = 1
            fail = (gen, i) == (2, 3)
            if fail:
                runs.append(
                    _sim_run(f"{run_id}a0", i, gen, 0, FAILED, None, sources[i], hparams[i])
                )
                attempt = 1
            fitness = None if fail else landscape(hparams[i], gen)
            state = FAILED if fail else FINISHED
            m = _sim_run(
                f"{run_id}a{attempt}", i, gen, attempt, state, fitness, sources[i], hparams[i]
            )
            runs.append(m)
            latest.append(m)
            scores.append(fitness)
        if gen == generations - 1:
            break
        pairs = rules.select(scores, rng)
        new_hparams = [dict(h) for h in hparams]
        sources = [(latest[i].run_id, i) for i in range(size)]
        for loser, winner in pairs:
            if latest[loser].state == FINISHED:
                latest[loser].state = EXPLOITED
            new_hparams[loser], _ = rules.explore(hparams[winner], space, rng)
            sources[loser] = (latest[winner].run_id, winner)
        hparams = new_hparams
    return runs


def _sim_run(
    run_id: str,
    member: int,
    gen: int,
    attempt: int,
    state: str,
    fitness: float | None,
    source: tuple[str | None, int | None],
    hparams: dict[str, float],
) -> MemberRun:
    return MemberRun(
        run_id=run_id,
        member=member,
        generation=gen,
        attempt=attempt,
        state=state,
        mlflow_status="FINISHED",
        fitness=fitness,
        copied_from=source[0],
        copied_from_member=source[1],
        hparams=dict(hparams),
    )


def _autolfads_space() -> list[HyperParameter]:
    try:
        from lfads_lightning.pbt.config import autolfads_space

        return autolfads_space()
    except ImportError:  # the config module is mid-edit elsewhere: the same space by hand
        return [
            HyperParameter("train.lr", 1e-5, 5e-3, init=4e-3, sampling="log_uniform"),
            HyperParameter("model.dropout_rate", 0.0, 0.6),
            HyperParameter("model.cd_rate", 0.01, 0.7, init=0.5),
            HyperParameter(
                "loss.l2_gen_scale", 1e-4, 1.0, sampling="log_uniform", explore_weight=0.8
            ),
            HyperParameter(
                "loss.l2_con_scale", 1e-4, 1.0, sampling="log_uniform", explore_weight=0.8
            ),
            HyperParameter(
                "loss.kl_co_scale", 1e-6, 1e-4, sampling="log_uniform", explore_weight=0.8
            ),
            HyperParameter(
                "loss.kl_ic_scale", 1e-6, 1e-3, sampling="log_uniform", explore_weight=0.8
            ),
        ]


def test_realistic_population_figures(tmp_path: Path) -> None:
    space = _autolfads_space()
    runs = simulate_population(space)
    finals = report.final_attempts(runs)
    assert len(finals) == 8 * 6 and len(runs) == 8 * 6 + 2
    # Tournament replaces N/2 per generation; the failed member lost too but is not "exploited".
    lost = sum(m.state == EXPLOITED or (m.state == FAILED and m.generation < 5) for m in finals)
    assert lost == 4 * 5
    fig = report_figures.fitness_figure(runs)
    assert len(fig.axes) == 1
    _check_png(fig, tmp_path / "fitness.png")
    fig = report_figures.hparam_evolution_figure(runs, space)
    assert len(fig.axes) == len(space) + 1
    _check_png(fig, tmp_path / "hparams.png")
    table = report.status_table(runs, [hp.key for hp in space], generations="all")
    assert len(table.splitlines()) == 2 + 8 * 6
