"""Training throughput at MC_Maze sizes: trials per second of forward + backward + Adam step.

Sizes: 107 held-in -> 142 reconstructed neurons, 140 observed + 40 forward bins, NLB reference
dims (ic_enc 100, ci_enc 80, con 80, co 4, ic 100, gen 100, fac 40), controller on.

Four variants, timed in one process with interleaved repeats (machines here are noisy, so the
ratios measured within one run are the figures to compare across runs):
- `fast`: LFADS with `model.fast_path: true`, as users get it: the fused kernels of
  lfads_lightning/model/fused.py with their loops in native code (kernels.cpp) where it builds;
- `fast_torch_ops`: the same fast path with its torch-op loops (the fallback without a compiler);
- `reference`: the same model with `model.fast_path: false` (per-bin autograd);
- `nn_gru`: a plain stand-in of the same sizes made of PyTorch's fused `nn.GRU` layers (no
  controller loop, no clipping): what a cuDNN/oneDNN-style recurrence costs here.

Peak memory per step: each of fast / reference runs in a fresh subprocess, which records its
resident set after building the model and data, resets the kernel's high-water mark
(/proc/self/clear_refs) and reads it (VmHWM) after two training steps; the difference is the
step's resident-memory peak (PyTorch's CPU allocator returns to malloc, which `tracemalloc` does
not see). Not `ru_maxrss`: Linux keeps it across exec, so a child started by this (large)
process reported the parent's peak, and earlier runs' ratio of 1.00 meant nothing.

The matmul floor: every GEMM the model needs per trial (forward, input gradients, weight
gradients) is counted analytically and timed alone at its own shape with one thread; the floor
is the sum of those times, `fraction_of_matmul_floor` the floor's time divided by the fast
path's measured step time (batch 64, 1 thread). The native kernels' one-off build is timed too,
into an empty temporary cache (`native_compile_s`); a PBT run's workers share the built library
through the cache under ~/.cache.

Usage: python benchmarks/bench_throughput.py [--quick] [--repeats 7] [--threads 1 2] [--batches 64 100]
(batch 64 with 1 thread must be among the settings: the headline figures are taken there)
Writes benchmarks/results/throughput.json.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch import nn

from lfads_lightning.config import ModelConfig
from lfads_lightning.model import native
from lfads_lightning.model.network import LFADS

ENC_DIM, RECON_DIM, T_OBS, T_FWD = 107, 142, 140, 40
DIMS = dict(
    ic_enc_dim=100, ci_enc_dim=80, con_dim=80, co_dim=4, ic_dim=100, gen_dim=100, fac_dim=40
)
VARIANTS = ("fast", "fast_torch_ops", "reference", "nn_gru")


class FusedGRUReference(nn.Module):
    """Encoder nn.GRU (bidirectional) -> initial state -> decoder nn.GRU -> linear readout."""

    def __init__(self) -> None:
        super().__init__()
        self.encoder = nn.GRU(ENC_DIM, DIMS["ic_enc_dim"], batch_first=True, bidirectional=True)
        self.to_h0 = nn.Linear(2 * DIMS["ic_enc_dim"], DIMS["gen_dim"])
        self.decoder = nn.GRU(1, DIMS["gen_dim"], batch_first=True)
        self.factors = nn.Linear(DIMS["gen_dim"], DIMS["fac_dim"], bias=False)
        self.readout = nn.Linear(DIMS["fac_dim"], RECON_DIM)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _, h = self.encoder(x)
        h0 = self.to_h0(torch.cat([h[0], h[1]], -1)).unsqueeze(0)
        z = x.new_zeros(x.shape[0], T_OBS + T_FWD, 1)
        out, _ = self.decoder(z, h0)
        return self.readout(self.factors(out))


def lfads_loss(model: LFADS, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    out = model(x)
    kl_ic, kl_co = model.kl_terms(out)
    return model.recon.nll(out.params, y).mean() + 1e-4 * (kl_ic + kl_co)


def gru_loss(model: FusedGRUReference, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    log_rates = model(x)
    return (torch.exp(log_rates) - y * log_rates).mean()


def build(variant: str) -> tuple[nn.Module, object]:
    if variant == "nn_gru":
        return FusedGRUReference(), gru_loss
    cfg = ModelConfig(**DIMS, fast_path=variant.startswith("fast"))
    return LFADS(cfg, [ENC_DIM], [RECON_DIM], T_OBS, T_OBS + T_FWD), lfads_loss


class Stepper:
    def __init__(self, variant: str, batch: int) -> None:
        torch.manual_seed(0)
        self.model, self.loss = build(variant)
        self.loops = (
            native.torch_ops_only if variant == "fast_torch_ops" else contextlib.nullcontext
        )
        self.opt = torch.optim.Adam(self.model.parameters(), lr=1e-3)
        self.x = torch.poisson(torch.full((batch, T_OBS, ENC_DIM), 0.1))
        self.y = torch.poisson(torch.full((batch, T_OBS + T_FWD, RECON_DIM), 0.1))

    def step(self) -> tuple[float, float]:
        """(wall seconds, process CPU seconds) of one training step."""
        start, cpu = time.perf_counter(), time.process_time()
        with self.loops():
            loss = self.loss(self.model, self.x, self.y)
            self.opt.zero_grad()
            loss.backward()
            self.opt.step()
        return time.perf_counter() - start, time.process_time() - cpu


def time_setting(batch: int, threads: int, repeats: int) -> dict[str, dict[str, float]]:
    """Interleaved repeats: one step of each variant in turn, after one warm-up step each."""
    torch.set_num_threads(threads)
    steppers = {v: Stepper(v, batch) for v in VARIANTS}
    for s in steppers.values():
        s.step()
    rates: dict[str, list[float]] = {v: [] for v in VARIANTS}
    cpu_rates: dict[str, list[float]] = {v: [] for v in VARIANTS}
    for _ in range(repeats):
        for v, s in steppers.items():
            wall, cpu = s.step()
            rates[v].append(batch / wall)
            cpu_rates[v].append(batch / cpu)
    return {
        v: {
            "median": statistics.median(r),
            "max": max(r),
            "min": min(r),
            "all": r,
            # trials per CPU-second of the process: insensitive to time-slicing by other jobs
            # (at 1 thread the best estimate of the undisturbed rate; at 2 threads it sums both)
            "per_cpu_s_median": statistics.median(cpu_rates[v]),
        }
        for v, r in rates.items()
    }


# ---------------------------------------------------------------------- peak memory


def memory_worker(variant: str, batch: int) -> None:
    torch.set_num_threads(1)
    s = Stepper(variant, batch)
    before = _proc_status_kib("VmRSS")
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # reset VmHWM to the current resident set
    for _ in range(2):
        s.step()
    print(json.dumps({"peak_step_kib": _proc_status_kib("VmHWM") - before}))


def _proc_status_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"no {field} in /proc/self/status")


def peak_memory(variant: str, batch: int) -> int:
    cmd = [sys.executable, __file__, "--memory-worker", variant, "--batch", str(batch)]
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[1]))
    out = subprocess.run(cmd, capture_output=True, text=True, check=True, env=env).stdout
    return json.loads(out.strip().splitlines()[-1])["peak_step_kib"]


# ---------------------------------------------------------------------- matmul floor


def model_gemms(batch: int) -> list[tuple[int, int, int, int]]:
    """Every GEMM (rows M, inner K, cols N, count) of one fast-path training step.

    Forward Y[M, N] = X[M, K] W[K, N]; backward dW = X^T dY ([K, M] x [M, N], one GEMM over all
    bins) and dX = dY W^T ([M, N] x [N, K], per bin inside the recurrences), except no dX for
    the data itself (the encoder input projections).
    """
    d = DIMS
    t, s, b = T_OBS, T_OBS + T_FWD, batch
    ie, ce, con, co, gen, fac = (
        d["ic_enc_dim"],
        d["ci_enc_dim"],
        d["con_dim"],
        d["co_dim"],
        d["gen_dim"],
        d["fac_dim"],
    )
    # (M per call, K, N, calls, input gradient needed, bins folded into dW)
    fwd = [
        (t * b, ENC_DIM, 3 * ie, 2, False, 1),
        (t * b, ENC_DIM, 3 * ce, 2, False, 1),
        (b, ie, 2 * ie, 2 * t, True, t),
        (b, ie, ie, 2 * t, True, t),
        (b, ce, 2 * ce, 2 * t, True, t),
        (b, ce, ce, 2 * t, True, t),
        (b, 2 * ie, 2 * d["ic_dim"], 1, True, 1),
        (b, d["ic_dim"], gen, 1, True, 1),
        (b, gen, fac, 1, True, 1),
        (s * b, 2 * ce, 3 * con, 1, True, 1),
        (b, fac, 3 * con, s, True, s),
        (b, con, 2 * con, s, True, s),
        (b, con, con, s, True, s),
        (b, con, 2 * co, s, True, s),
        (b, co, 3 * gen, s, True, s),
        (b, gen, 2 * gen, s, True, s),
        (b, gen, gen, s, True, s),
        (b, gen, fac, s, True, s),
        (s * b, fac, RECON_DIM, 1, True, 1),
    ]
    gemms = []
    for m, k, n, calls, need_dx, bins in fwd:
        gemms.append((m, k, n, calls))
        gemms.append((k, m * bins, n, calls // bins))  # weight gradient, all bins at once
        if need_dx:
            gemms.append((m, n, k, calls))
    return gemms


def time_gemm(m: int, k: int, n: int, reps: int) -> float:
    a, w = torch.randn(m, k), torch.randn(k, n)
    calls = max(1, int(2e8 // (2 * m * k * n)))  # about 0.2 GFLOP per timing
    out = torch.mm(a, w)
    best = float("inf")
    for _ in range(reps):
        start = time.perf_counter()
        for _ in range(calls):
            torch.mm(a, w, out=out)
        best = min(best, (time.perf_counter() - start) / calls)
    return best


def matmul_floor(batch: int, reps: int) -> dict[str, float]:
    torch.set_num_threads(1)
    flops, seconds = 0.0, 0.0
    for m, k, n, count in model_gemms(batch):
        flops += 2.0 * m * k * n * count
        seconds += time_gemm(m, k, n, reps) * count
    return {
        "flop_per_trial": flops / batch,
        "floor_seconds_per_step": seconds,
        "sgemm_gflops_at_model_shapes": flops / seconds / 1e9,
        "floor_trials_per_s": batch / seconds,
    }


def native_build() -> dict[str, object]:
    """The native kernels as this run used them, and the time of a cold build."""
    status = native.status()
    result: dict[str, object] = {"loaded": status.loaded, "library": status.reason}
    cxx = native._compiler()
    if status.loaded and cxx:
        with tempfile.TemporaryDirectory() as tmp:
            result["native_compile_s"] = native._build(cxx, Path(tmp) / "cold.so")
    return result


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="3 repeats (a few minutes)")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--batches", type=int, nargs="+", default=[64, 100])
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "throughput.json"))
    parser.add_argument("--memory-worker", choices=VARIANTS, help=argparse.SUPPRESS)
    parser.add_argument("--batch", type=int, default=64, help=argparse.SUPPRESS)
    return parser.parse_args()


def sweep(threads_list: list[int], batches: list[int], repeats: int) -> dict[str, dict]:
    """Every (batch, threads) setting, each with its interleaved repeats and speedups."""
    settings = {}
    for threads in threads_list:
        for batch in batches:
            res = time_setting(batch, threads, repeats)
            res["speedup_fast_over_reference"] = res["fast"]["median"] / res["reference"]["median"]
            res["speedup_best"] = res["fast"]["max"] / res["reference"]["max"]
            res["speedup_cpu_time"] = (
                res["fast"]["per_cpu_s_median"] / res["reference"]["per_cpu_s_median"]
            )
            settings[f"batch{batch}_threads{threads}"] = res
            print(f"batch {batch} threads {threads}: " + ", ".join(
                f"{v} {res[v]['median']:.1f}" for v in VARIANTS
            ) + f"  speedup {res['speedup_fast_over_reference']:.2f}"
              f" (best {res['speedup_best']:.2f}, cpu time {res['speedup_cpu_time']:.2f})",
              flush=True)  # fmt: skip
    return settings


def headline(settings: dict, floor: dict, memory: dict) -> dict:
    """The issue's keys, taken at batch 64 with one thread."""
    main_setting = settings["batch64_threads1"]
    fast = main_setting["fast"]
    return {
        "speedup_fast_over_reference": main_setting["speedup_fast_over_reference"],
        "speedup_fast_over_reference_2_threads": settings.get("batch64_threads2", {}).get(
            "speedup_fast_over_reference"
        ),
        "fast_trials_per_s": fast["median"],
        "fast_torch_ops_trials_per_s": main_setting["fast_torch_ops"]["median"],
        "speedup_native_over_torch_ops": fast["median"] / main_setting["fast_torch_ops"]["median"],
        "reference_trials_per_s": main_setting["reference"]["median"],
        "nn_gru_trials_per_s": main_setting["nn_gru"]["median"],
        "fraction_of_matmul_floor": floor["floor_seconds_per_step"] * fast["median"] / 64,
        "fraction_of_matmul_floor_cpu_time": floor["floor_seconds_per_step"]
        * fast["per_cpu_s_median"]
        / 64,
        "peak_memory_ratio": memory["fast"] / memory["reference"],
    }


def main() -> None:
    args = parse_args()
    if args.memory_worker:
        memory_worker(args.memory_worker, args.batch)
        return
    repeats = 3 if args.quick else args.repeats
    settings = sweep(args.threads, args.batches, repeats)
    floor = matmul_floor(64, reps=3 if args.quick else 5)
    memory = {v: peak_memory(v, 64) for v in ("fast", "reference")}
    result = {
        "benchmark": "training_throughput_mc_maze_sizes",
        "unit": "trials_per_second (forward + backward + Adam step), median of interleaved repeats",
        "repeats": repeats,
        **headline(settings, floor, memory),
        "native_kernels": native_build(),
        "matmul_floor": floor,
        "peak_step_memory_kib": memory,
        "settings": settings,
        "sizes": {
            "encod_dim": ENC_DIM,
            "recon_dim": RECON_DIM,
            "observed_bins": T_OBS,
            "forward_bins": T_FWD,
            **DIMS,
        },
        "torch": torch.__version__,
        "machine": {
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "cuda": torch.cuda.is_available(),
        },
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    print(json.dumps({k: v for k, v in result.items() if k != "settings"}, indent=2))


if __name__ == "__main__":
    main()
