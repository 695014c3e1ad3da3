"""Model quality with the shipped configs: dense and sparse Lorenz (fit, PBT) and MC_Maze_Small PBT.

Each case runs the real CLI (`lfads fit` / `lfads pbt --launcher local`) on a fresh store, then
reads the posterior metrics from the run: rate R2 against the true rates (validation trials) for
Lorenz; for MC_Maze_Small `lfads evaluate` gives co-bps on the 25 NLB val trials (`test_co_bps`),
fp-bps and velocity R2 on the held-back train trials. Every case runs once per seed; the JSON has
each seed's numbers, their mean and spread (sample std), and the wall time.

Cases:
  dense_fit    configs/lorenz.yaml on `lfads data synth lorenz` (the demo)
  sparse_fit   configs/lorenz.yaml on `lfads data synth lorenz-sparse` (1-3 Hz, 10 ms bins)
  sparse_pbt   configs/pbt_lorenz.yaml on the same sparse data
  mc_maze_pbt  configs/pbt_mc_maze_small.yaml on ../shared/data/mc_maze_small

Usage: python benchmarks/bench_quality.py [--cases dense_fit,sparse_fit] [--seeds 0,1,2]
       [--mc-population 8] [--set key=value ...]   (overrides for every case, e.g. for a quick run)
       [--config PATH]   (with one case: a variant of its shipped config)
Writes benchmarks/results/quality.json (merged: cases not run keep their last result).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MC_MAZE = ROOT.parent / "shared" / "data" / "mc_maze_small"
CASES = {
    "dense_fit": ("fit", "lorenz.yaml", "lorenz"),
    "sparse_fit": ("fit", "lorenz.yaml", "lorenz-sparse"),
    "sparse_pbt": ("pbt", "pbt_lorenz.yaml", "lorenz-sparse"),
    "mc_maze_pbt": ("pbt", "pbt_mc_maze_small.yaml", "mc_maze_small"),
}
LORENZ_KEYS = ("posterior/valid_rate_r2", "posterior/train_rate_r2")
MC_MAZE_KEYS = ("eval/test_co_bps", "eval/valid_co_bps", "eval/valid_fp_bps", "eval/valid_vel_r2")


def lfads(*args: str, cwd: Path) -> str:
    """Run the CLI as a user would; its output goes to a log beside the store."""
    cmd = [sys.executable, "-m", "lfads_lightning", *args]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    with open(cwd / "log.txt", "a") as log:
        log.write(f"$ lfads {' '.join(args)}\n")
        log.flush()
        proc = subprocess.run(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=log, text=True)
    if proc.returncode:
        raise SystemExit(f"bench_quality: `lfads {' '.join(args)}` failed; see {cwd}/log.txt")
    return proc.stdout


def make_data(kind: str, work: Path, seed: int) -> Path:
    out = work / f"{kind}.h5"
    if kind == "mc_maze_small":
        lfads("data", "nlb", str(MC_MAZE), str(out), cwd=work)
    else:
        lfads("data", "synth", kind, str(out), "--seed", str(seed), cwd=work)
    return out


def run_case(
    case: str, seed: int, work: Path, extra: list[str], population: int, config: Path
) -> dict:
    command, _, kind = CASES[case]
    data = make_data(kind, work, seed)
    uri = f"sqlite:///{work / 'mlflow.db'}"
    overrides = [
        f"data.paths=[{data}]",
        "data.synth=null",
        f"train.seed={seed}",
        "train.progress_bar=false",
        f"output.dir={work / 'out'}",
        "output.figures=false",
    ]
    if command == "pbt":
        overrides.append(f"pbt.seed={seed}")
        if case == "mc_maze_pbt":
            overrides.append(f"pbt.population={population}")
    args = [command, "--launcher", "local", "--tracking-uri", uri]
    start = time.perf_counter()
    lfads(*args, str(config), *overrides, *extra, cwd=work)
    wall = time.perf_counter() - start
    run_id = newest_parent(uri)
    if case == "mc_maze_pbt":
        lfads("evaluate", run_id, "--tracking-uri", uri, cwd=work)
    metrics = read_metrics(uri, run_id, MC_MAZE_KEYS if case == "mc_maze_pbt" else LORENZ_KEYS)
    return {"seed": seed, "run_id": run_id, "wall_seconds": round(wall, 1), **metrics}


def newest_parent(uri: str) -> str:
    """The store is fresh per case and seed: the newest top-level run is the one just made."""
    from lfads_lightning.runs import tracking

    client = tracking.client(uri)
    runs = client.search_runs(
        [e.experiment_id for e in client.search_experiments()],
        order_by=["attributes.start_time DESC"],
        max_results=500,
    )
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    return parents[0].info.run_id


def read_metrics(uri: str, run_id: str, keys: tuple[str, ...]) -> dict[str, float | None]:
    from lfads_lightning.runs import tracking

    found = tracking.client(uri).get_run(run_id).data.metrics
    return {key.split("/", 1)[1]: found.get(key) for key in keys}


def summarize(rows: list[dict]) -> dict:
    keys = [k for k in rows[0] if k not in ("seed", "run_id")]
    summary = {}
    for key in keys:
        values = [r[key] for r in rows if r[key] is not None]
        if values:
            spread = statistics.stdev(values) if len(values) > 1 else 0.0
            summary[key] = {"mean": statistics.fmean(values), "std": spread, "n": len(values)}
    return {"seeds": rows, "summary": summary}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", default=",".join(CASES), help="comma-separated case names")
    parser.add_argument("--seeds", default="0,1,2", help="comma-separated seeds")
    parser.add_argument(
        "--mc-population", type=int, default=8, help="MC_Maze_Small PBT members (shipped: 8)"
    )
    parser.add_argument("--set", nargs="*", default=[], metavar="key=value")
    parser.add_argument("--config", help="with one case: this config instead of the shipped one")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "quality.json"))
    args = parser.parse_args()
    cases = [c for c in args.cases.split(",") if c]
    unknown = sorted(set(cases) - set(CASES))
    if unknown:
        parser.error(f"unknown case {unknown[0]!r}; valid: {', '.join(CASES)}")
    if args.config and len(cases) != 1:
        parser.error("--config needs exactly one case")
    out = Path(args.out)
    result = json.loads(out.read_text()) if out.exists() else {"benchmark": "quality"}
    for case in cases:
        rows = []
        config = (Path(args.config) if args.config else ROOT / "configs" / CASES[case][1]).resolve()
        for seed in [int(s) for s in args.seeds.split(",")]:
            work = Path(tempfile.mkdtemp(prefix=f"bench-quality-{case}-{seed}-"))
            rows.append(run_case(case, seed, work, args.set, args.mc_population, config))
            print(json.dumps({"case": case, **rows[-1]}), flush=True)
        result[case] = {
            **summarize(rows),
            "overrides": args.set,
            "config": os.path.relpath(config, ROOT),
        }
        if case == "mc_maze_pbt":
            result[case]["population"] = args.mc_population
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
