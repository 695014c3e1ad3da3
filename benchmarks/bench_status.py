"""How long `lfads pbt status` takes on a large population: 20 members x 20 generations.

The store is built synthetically in a fresh MLflow sqlite database, the way the controller
writes it (pbt/experiment.py create_parent, pbt/controller.py create_member_run): one parent run
with the config, pbt.yaml and launcher.yaml artifacts and the pbt.* params; one child run per
member and generation with the flattened config as params, the lfads.* member tags (member,
generation, attempt, state, lineage, hparams, job, heartbeat), a few metrics per epoch and
pbt/fitness. Then the real command is timed as a new process (interpreter start and imports
included, as a user sees it), with and without --all, and with an unknown run id.

Usage: python benchmarks/bench_status.py [--members 20] [--generations 20] [--repeats 3]
Writes benchmarks/results/status.json.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def build_store(workdir: Path, members: int, generations: int) -> tuple[str, str]:
    from mlflow.entities import Metric, Param, RunTag

    from lfads_lightning.config import flatten, load_config, to_dict
    from lfads_lightning.pbt.config import load_pbt_config
    from lfads_lightning.pbt.experiment import config_hash, create_parent
    from lfads_lightning.runs import tracking

    uri = f"sqlite:///{workdir / 'mlflow.db'}"
    tracking.check_store(uri)
    overrides = [f"pbt.population={members}", f"pbt.max_generations={generations}"]
    base, pbt = load_pbt_config(str(ROOT / "configs" / "pbt_lorenz.yaml"), overrides)
    base = dataclasses.replace(base, output=dataclasses.replace(base.output, dir=str(workdir)))
    parent = create_parent(base, pbt, uri, "local", config_hash(base, pbt))
    client = tracking.client(uri)
    exp_id = client.get_run(parent).info.experiment_id
    params = flatten(to_dict(load_config(None, [])))
    rng = random.Random(0)
    prev: dict[int, str] = {}
    now = time.time()
    for g in range(generations):
        current: dict[int, str] = {}
        for m in range(members):
            source = m if g == 0 or rng.random() < 0.75 else rng.randrange(members)
            hparams = {hp.key: rng.uniform(hp.min, hp.max) for hp in pbt.space}
            fitness = 0.5 - 0.01 * g + 0.02 * rng.random()
            tags = {
                "mlflow.parentRunId": parent,
                "mlflow.runName": f"m{m:02d}-g{g:03d}",
                "lfads.kind": "pbt_member",
                "lfads.member": str(m),
                "lfads.generation": str(g),
                "lfads.attempt": "0",
                "lfads.state": "exploited" if source != m else "finished",
                "lfads.copied_from": prev.get(source, "") if g else "",
                "lfads.copied_from_member": str(source) if g else "",
                "lfads.hparams": json.dumps(hparams, sort_keys=True),
                "lfads.target_epoch": str(pbt.burn_in + (g + 1) * pbt.epochs_per_generation),
                "lfads.launcher": "local",
                "lfads.job": json.dumps({"launcher": "local", "job_id": str(10000 + m)}),
                "lfads.heartbeat": f"{now:.1f}",
            }
            run = client.create_run(exp_id, tags=tags)
            run_id = run.info.run_id
            ms = int(now * 1000)
            metrics = [Metric("pbt/fitness", fitness, ms, 0)]
            metrics += [
                Metric(name, fitness + 0.01 * e, ms, e)
                for e in range(pbt.epochs_per_generation)
                for name in ("valid/recon_smth", "train/loss", "epoch_seconds")
            ]
            items = [Param(k, "None" if v is None else str(v)[:6000]) for k, v in params.items()]
            for i in range(0, len(items), 100):
                client.log_batch(run_id, params=items[i : i + 100])
            client.log_batch(run_id, metrics=metrics, tags=[RunTag("lfads.bench", "1")])
            client.set_terminated(run_id, "FINISHED")
            current[m] = run_id
        prev = current
    return uri, parent


def time_command(args: list[str], cwd: Path, env: dict[str, str]) -> tuple[float, int, str]:
    start = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-m", "lfads_lightning", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
    )
    return time.perf_counter() - start, proc.returncode, proc.stdout + proc.stderr


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--members", type=int, default=20)
    parser.add_argument("--generations", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "status.json"))
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        start = time.perf_counter()
        uri, parent = build_store(workdir, args.members, args.generations)
        build_s = time.perf_counter() - start
        env = {**os.environ, "PYTHONPATH": str(ROOT), "MLFLOW_TRACKING_URI": uri}
        cases = {
            "status": ["pbt", "status", parent],
            "status_all": ["pbt", "status", parent, "--all"],
            "status_unknown_id": ["pbt", "status", "0123456789abcdef0123456789abcdef"],
            "sample_unknown_id": ["sample", "--run", "0123456789abcdef0123456789abcdef"],
            "evaluate_unknown_id": ["evaluate", "0123456789abcdef0123456789abcdef"],
            "help": ["--help"],
        }
        timings: dict[str, dict] = {}
        for name, cmd in cases.items():
            seconds, rcs, last = [], set(), ""
            for _ in range(args.repeats):
                s, rc, out = time_command(cmd, workdir, env)
                seconds.append(round(s, 3))
                rcs.add(rc)
                last = out
            timings[name] = {
                "median_s": statistics.median(seconds),
                "all_s": seconds,
                "exit_codes": sorted(rcs),
                "output_lines": len(last.splitlines()),
            }
            print(name, timings[name], flush=True)
            if name == "status":
                print("\n".join(last.splitlines()[:6]))
    result = {
        "benchmark": "pbt_status_large_population",
        "members": args.members,
        "generations": args.generations,
        "member_runs": args.members * args.generations,
        "store_build_s": round(build_s, 1),
        "timings": timings,
        "target_s": 3.0,
        "load_average_1min": round(os.getloadavg()[0], 2),
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform()},
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    print(json.dumps({k: v for k, v in result.items() if k != "timings"}, indent=2))


if __name__ == "__main__":
    main()
