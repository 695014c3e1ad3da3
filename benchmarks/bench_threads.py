"""Torch threads per job: training steps per second of the demo model (configs/lorenz.yaml
sizes) with 1 or 2 threads, as one job (`lfads fit`) or two concurrent jobs (PBT members on a
2-core machine), on a quiet machine and next to a competing 2-thread process (a torch matmul
loop, standing in for another user's job).

Each job is its own process that trains for `--seconds` after a warm-up and reports its steps
per second; a scenario's figure is the mean over its jobs. Shared machines are never idle, so
"idle" means "no competing process started by this benchmark"; the machine's load average at
the start of each scenario is recorded next to it.

Usage: python benchmarks/bench_threads.py [--seconds 12] [--threads 1 2]
Writes benchmarks/results/threads.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

# configs/lorenz.yaml: 30 neurons, 50 bins, batch 100, autonomous model.
DIMS = dict(ic_enc_dim=64, ci_enc_dim=0, con_dim=0, co_dim=0, ic_dim=32, gen_dim=64, fac_dim=10)
N_NEURONS, T_BINS, BATCH = 30, 50, 100


def worker(threads: int, seconds: float) -> None:
    import torch

    from lfads_lightning.config import ModelConfig
    from lfads_lightning.model.network import LFADS

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    model = LFADS(ModelConfig(**DIMS), [N_NEURONS], [N_NEURONS], T_BINS, T_BINS)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    x = torch.poisson(torch.full((BATCH, T_BINS, N_NEURONS), 0.3))

    def step() -> None:
        out = model(x)
        kl_ic, kl_co = model.kl_terms(out)
        loss = model.recon.nll(out.params, x).mean() + 1e-4 * (kl_ic + kl_co)
        opt.zero_grad()
        loss.backward()
        opt.step()

    for _ in range(3):
        step()
    steps, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        step()
        steps += 1
    print(json.dumps({"steps_per_s": steps / (time.perf_counter() - start)}), flush=True)


def competitor() -> None:
    import torch

    torch.set_num_threads(2)
    a = torch.randn(512, 512)
    while True:
        a = torch.tanh(a @ a)


def scenario(jobs: int, threads: int, competing: bool, seconds: float) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    comp = None
    if competing:
        comp = subprocess.Popen(
            [sys.executable, __file__, "--competitor"], env={**os.environ, "OMP_NUM_THREADS": "2"}
        )
        time.sleep(2)
    load = os.getloadavg()[0]
    procs = [
        subprocess.Popen(
            [sys.executable, __file__, "--worker", str(threads), "--seconds", str(seconds)],
            env=env,
            stdout=subprocess.PIPE,
            text=True,
        )
        for _ in range(jobs)
    ]
    rates = [json.loads(p.communicate()[0].strip().splitlines()[-1])["steps_per_s"] for p in procs]
    if comp is not None:
        comp.terminate()
        comp.wait()
    # One step is one batch of 100 trials; the demo's epoch is 8 training batches + validation.
    mean = sum(rates) / len(rates)
    return {
        "jobs": jobs,
        "threads_per_job": threads,
        "competing_2_thread_process": competing,
        "load_average_1min_at_start": round(load, 2),
        "steps_per_s_per_job": round(mean, 3),
        "steps_per_s_all_jobs": round(sum(rates), 3),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=12.0)
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--worker", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--competitor", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "threads.json"))
    args = parser.parse_args()
    if args.competitor:
        return competitor()
    if args.worker:
        return worker(args.worker, args.seconds)
    rows = []
    for competing in (False, True):
        for jobs in (1, 2):
            for threads in args.threads:
                row = scenario(jobs, threads, competing, args.seconds)
                print(json.dumps(row), flush=True)
                rows.append(row)
    result = {
        "benchmark": "threads_per_job_demo_model",
        "unit": "training steps (batch 100) per second",
        "seconds_per_scenario": args.seconds,
        "rows": rows,
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform()},
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    main()
