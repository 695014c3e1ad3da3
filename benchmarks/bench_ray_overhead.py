"""PBT overhead on Ray vs the local launcher, same config, in one run with interleaved repeats.

Overhead share = (wall - training on the critical path) / wall, where training is what the
members measured per epoch (`epoch_seconds`): what the controller, the launcher, job start-up,
data loading and checkpoint transfer cost. Local runs warm workers (its default for PBT); Ray
runs each member as a Ray job on the head at --address (default: the one tools/ray_cluster.sh
started). The two are run alternately (local, ray, local, ray, ...) so load on this shared
machine hits both alike; minimum and median of each are reported.

Usage: python benchmarks/bench_ray_overhead.py [--repeats 2] [--generations 2] [--address URL]
Writes benchmarks/results/ray_overhead.json.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_pbt_overhead import ROOT, SHARED, bench_pbt_config, run_population  # noqa: E402

from lfads_lightning.config import load_config  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--address", help="Ray dashboard URL (default: the test head's)")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--population", type=int, default=2)
    parser.add_argument("--generations", type=int, default=2)
    parser.add_argument("--epochs-per-generation", type=int, default=10)
    args = parser.parse_args()
    address = args.address or (Path.home() / ".cache/lfads-ray/run/address").read_text().strip()
    work = Path(tempfile.mkdtemp(prefix="bench-ray-"))
    data = work / "mc_maze_small.h5"
    from lfads_lightning.data.nlb import convert_nlb_tensors

    convert_nlb_tensors(SHARED, data)
    cfg = load_config(
        ROOT / "configs" / "mc_maze_small.yaml",
        [f"data.paths=[{data}]", f"output.dir={work / 'out'}", "train.progress_bar=false"],
    )
    pbt = bench_pbt_config(args)
    ray_options = {"address": address, "num_cpus": 1}
    shares: dict[str, list[float]] = {"local": [], "ray": []}
    walls: dict[str, list[float]] = {"local": [], "ray": []}
    for i in range(args.repeats):
        for name, options in (("local", {"warm": True}), ("ray", ray_options)):
            wall, training, _, _ = run_population(work / f"{name}-{i}", cfg, pbt, name, options)
            shares[name].append((wall - training) / wall)
            walls[name].append(wall)
            print(f"{name} #{i}: wall {wall:.1f} s, overhead share {shares[name][-1]:.3f}")
    summary = {
        name: {
            "overhead_share_min": min(v),
            "overhead_share_median": statistics.median(v),
            "wall_seconds_median": statistics.median(walls[name]),
        }
        for name, v in shares.items()
    }
    result = {
        "benchmark": "pbt_overhead_ray_vs_local",
        "data": "MC_Maze_Small (107 -> 142 neurons, 140 + 40 bins)",
        "population": args.population,
        "generations": args.generations,
        "epochs_per_generation": args.epochs_per_generation,
        "repeats": args.repeats,
        "ray_address": address,
        **summary,
        "overhead_share_ratio_ray_over_local": summary["ray"]["overhead_share_median"]
        / summary["local"]["overhead_share_median"],
    }
    out = ROOT / "benchmarks" / "results" / "ray_overhead.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
