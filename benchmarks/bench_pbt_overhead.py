"""Share of PBT wall time spent outside member training (controller, launcher, process start,
data loading, checkpoint transfer), at MC_Maze_Small sizes and 25 epochs per generation.

The population runs through the real controller and local launcher (warm workers by default,
`--cold` for a new process per job). Training time is what the members themselves measured per
epoch (train + validation, the `epoch_seconds` metric); members of a generation run side by side,
so a generation's training time is its slowest member's. Overhead = wall - sum of those.

Usage: python benchmarks/bench_pbt_overhead.py [--data PATH] [--generations 3] [--cold]
Writes benchmarks/results/pbt_overhead[_cold].json.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

from lfads_lightning.config import load_config
from lfads_lightning.pbt.config import PbtConfig
from lfads_lightning.pbt.controller import Controller
from lfads_lightning.pbt.experiment import create_parent
from lfads_lightning.runs import tracking
from lfads_lightning.runs.schema import latest_attempts, load_members

ROOT = Path(__file__).resolve().parent.parent
SHARED = ROOT.parent / "shared" / "data" / "mc_maze_small"


def bench_pbt_config(args: argparse.Namespace) -> PbtConfig:
    """The population the overhead benchmarks run: no burn-in, no early stop, all at once."""
    return PbtConfig(
        population=args.population,
        epochs_per_generation=args.epochs_per_generation,
        burn_in=0,
        max_generations=args.generations,
        patience=100,
        concurrency=args.population,
    )


def run_population(
    work: Path, cfg, pbt: PbtConfig, launcher_name: str, options: dict
) -> tuple[float, float, list[float], int]:
    """One PBT through the real controller on a launcher: (wall s, training s on the critical
    path, training s per generation, threads per member)."""
    from launchers import get_launcher

    work.mkdir(parents=True, exist_ok=True)
    uri = f"sqlite:///{work / 'mlflow.db'}"
    tracking.check_store(uri)
    parent = create_parent(cfg, pbt, uri, launcher_name, "bench")
    launcher = get_launcher(launcher_name, **options)
    threads = max(1, (os.cpu_count() or 1) // pbt.population)
    controller = Controller(
        uri, parent, cfg, pbt, launcher, 0.5, threads, pbt.population,
        log=lambda m: None, log_dir=str(work / "logs"),
    )  # fmt: skip
    start = time.perf_counter()
    controller.run()
    wall = time.perf_counter() - start
    launcher.close()
    client = tracking.client(uri)
    members = load_members(client, parent)
    per_generation = []
    for g in range(pbt.max_generations):
        times = []
        for m in latest_attempts(members, g).values():
            history = client.get_metric_history(m.run_id, "epoch_seconds")
            times.append(sum(h.value for h in history))
        per_generation.append(max(times))
    return wall, sum(per_generation), per_generation, threads


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--data", help="project-format MC_Maze_Small file (converted from ../shared if absent)"
    )
    parser.add_argument("--population", type=int, default=2)
    parser.add_argument("--generations", type=int, default=3)
    parser.add_argument("--epochs-per-generation", type=int, default=25)
    parser.add_argument("--cold", action="store_true", help="a new worker process per job")
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-pbt-"))
    data = Path(args.data) if args.data else work / "mc_maze_small.h5"
    if not data.exists():
        from lfads_lightning.data.nlb import convert_nlb_tensors

        convert_nlb_tensors(SHARED, data)
    cfg = load_config(
        ROOT / "configs" / "mc_maze_small.yaml",
        [f"data.paths=[{data}]", f"output.dir={work / 'out'}"],
    )
    pbt = bench_pbt_config(args)
    name = "local"
    options = {"warm": not args.cold}
    wall, training, per_generation, threads = run_population(work, cfg, pbt, name, options)
    result = {
        "benchmark": "pbt_overhead_share",
        "data": "MC_Maze_Small sizes (60 train / 15 valid trials, 107 -> 142 neurons, 140 + 40 bins)",
        "launcher": "local-cold" if args.cold else "local-warm",
        "population": args.population,
        "generations": args.generations,
        "epochs_per_generation": args.epochs_per_generation,
        "threads_per_member": threads,
        "wall_seconds": wall,
        "training_seconds_critical_path": training,
        "training_seconds_per_generation": per_generation,
        "overhead_seconds": wall - training,
        "overhead_share": (wall - training) / wall,
        "target_share": 0.05,
    }
    out = Path(
        args.out
        or ROOT / "benchmarks" / "results" / f"pbt_overhead{'_cold' if args.cold else ''}.json"
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
