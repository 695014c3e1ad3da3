"""A generation's decisions: who copies whom with which explored hyperparameters.

`decide` is a pure function of the generation's results and the seed; the controller logs its
result as the parent run's artifact `decisions/gen_NNN.json` before acting on it, and a resumed
controller reuses that artifact instead of deciding again.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from lfads_lightning.pbt.config import PbtConfig
from lfads_lightning.pbt.rules import explore, select
from lfads_lightning.runs.schema import MemberRun


def decisions_path(generation: int) -> str:
    return f"decisions/gen_{generation:03d}.json"


def decide(pbt: PbtConfig, generation: int, latest: dict[int, MemberRun]) -> dict[str, Any]:
    """Selection + exploration for the end of `generation`: pure given the results and seed."""
    rng = np.random.default_rng([pbt.seed, generation])
    ids = sorted(latest)
    scores = [latest[i].fitness if latest[i].usable else None for i in ids]
    pairs = select(scores, rng, pbt.selection, pbt.truncation_fraction)
    plan = {
        str(i): {
            "hparams": latest[i].hparams,
            "copied_from": latest[i].run_id,
            "copied_from_member": i,
            "exploited": False,
        }
        for i in ids
    }
    replacements = []
    for loser_idx, winner_idx in pairs:
        loser, winner = latest[ids[loser_idx]], latest[ids[winner_idx]]
        new_hparams, record = explore(winner.hparams, pbt.space, rng)
        plan[str(loser.member)] = {
            "hparams": new_hparams,
            "copied_from": winner.run_id,
            "copied_from_member": winner.member,
            "exploited": True,
        }
        replacements.append(
            {
                "loser": loser.member,
                "winner": winner.member,
                "loser_run": loser.run_id,
                "winner_run": winner.run_id,
                "loser_fitness": loser.fitness,
                "winner_fitness": winner.fitness,
                "loser_state": loser.state,
                "changes": [
                    {k: v for k, v in dataclasses.asdict(p).items() if k != "tries"} for p in record
                ],
            }
        )
    return {
        "generation": generation,
        "selection": pbt.selection,
        "seed": [pbt.seed, generation],
        "scores": {str(i): s for i, s in zip(ids, scores, strict=True)},
        "replacements": replacements,
        "next": plan,
    }
