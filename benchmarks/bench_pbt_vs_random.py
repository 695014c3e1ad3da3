"""PBT vs random search on synthetic Lorenz data, with the same total epoch budget.

Both use configs/pbt_lorenz.yaml's search space (AutoLFADS without the controller's terms), the local launcher and 8 members/trials; every PBT member
trains burn_in + generations x epochs_per_generation epochs, and so does every random trial.
Reported for each: best validation fitness (valid/recon_smth of the chosen member/trial) and rate
R2 of its posterior-sampled rates against the true rates (validation trials), plus wall time.

Usage: python benchmarks/bench_pbt_vs_random.py [--population 8] [--generations 4] [--epochs-per-generation 20]
Writes benchmarks/results/pbt_vs_random.json.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from lfads_lightning.data.synth import make_dataset
from lfads_lightning.pbt.config import load_pbt_config
from lfads_lightning.pbt.experiment import run_pbt
from lfads_lightning.runs import tracking

ROOT = Path(__file__).resolve().parent.parent


def summarize(uri: str, parent: str, wall: float) -> dict:
    client = tracking.client(uri)
    run = client.get_run(parent)
    best = client.get_run(run.data.tags["lfads.best_run"])
    return {
        "parent_run": parent,
        "best_fitness": best.data.metrics["pbt/fitness"],
        "best_valid_rate_r2": run.data.metrics.get("posterior/valid_rate_r2"),
        "best_train_rate_r2": run.data.metrics.get("posterior/train_rate_r2"),
        "best_hparams": json.loads(best.data.tags["lfads.hparams"]),
        "wall_seconds": wall,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--population", type=int, default=8)
    parser.add_argument("--generations", type=int, default=4)
    parser.add_argument("--epochs-per-generation", type=int, default=20)
    parser.add_argument("--burn-in", type=int, default=40)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--out", default=str(ROOT / "benchmarks" / "results" / "pbt_vs_random.json")
    )
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-pbt-random-"))
    data = work / "lorenz.h5"
    make_dataset("lorenz", data, seed=0)
    base, pbt = load_pbt_config(
        ROOT / "configs" / "pbt_lorenz.yaml",
        [
            f"data.paths=[{data}]",
            f"output.dir={work / 'out'}",
            f"loss.kl_increase_epoch={args.burn_in}",
            f"loss.l2_increase_epoch={args.burn_in}",
            f"pbt.population={args.population}",
            f"pbt.epochs_per_generation={args.epochs_per_generation}",
            f"pbt.burn_in={args.burn_in}",
            f"pbt.max_generations={args.generations}",
            "pbt.patience=100",
            f"pbt.seed={args.seed}",
        ],
    )
    uri = f"sqlite:///{work / 'mlflow.db'}"
    tracking.check_store(uri)
    results = {}
    for name, search in (("pbt", None), ("random_search", "random")):
        start = time.perf_counter()
        parent = run_pbt(base, pbt, uri, "local", search=search, n_trials=args.population)
        results[name] = summarize(uri, parent, time.perf_counter() - start)
    result = {
        "benchmark": "pbt_vs_random_search_lorenz",
        "members": args.population,
        "epochs_per_member": args.burn_in + args.generations * args.epochs_per_generation,
        "generations": args.generations,
        "epochs_per_generation": args.epochs_per_generation,
        **results,
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
