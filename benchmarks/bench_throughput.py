"""Training throughput at MC_Maze sizes: trials per second of forward + backward + Adam step.

Sizes: 107 held-in -> 142 reconstructed neurons, 140 observed + 40 forward bins, NLB reference
dims (ic_enc 100, ci_enc 80, con 80, co 4, ic 100, gen 100, fac 40). Next to our model, in the
same process, a plain reference: a sequential autoencoder of the same sizes made of PyTorch's
fused `nn.GRU` layers (no controller loop, no clipping). Machines here are noisy, so the ratio
measured in one run is the figure to compare across runs.

Usage: python benchmarks/bench_throughput.py [--batch 100] [--repeats 5] [--threads N]
Writes benchmarks/results/throughput.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from pathlib import Path

import torch
from torch import nn

from lfads_lightning.config import ModelConfig
from lfads_lightning.model.network import LFADS

ENC_DIM, RECON_DIM, T_OBS, T_FWD = 107, 142, 140, 40
DIMS = dict(
    ic_enc_dim=100, ci_enc_dim=80, con_dim=80, co_dim=4, ic_dim=100, gen_dim=100, fac_dim=40
)


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


def time_steps(model: nn.Module, step, batch: int, repeats: int) -> list[float]:
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    x = torch.poisson(torch.full((batch, T_OBS, ENC_DIM), 0.1))
    y = torch.poisson(torch.full((batch, T_OBS + T_FWD, RECON_DIM), 0.1))
    rates = []
    for i in range(repeats + 1):
        start = time.perf_counter()
        loss = step(model, x, y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if i > 0:  # first iteration is warm-up
            rates.append(batch / (time.perf_counter() - start))
    return rates


def lfads_step(model: LFADS, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    out = model(x)
    kl_ic, kl_co = model.kl_terms(out)
    return model.recon.nll(out.params, y).mean() + 1e-4 * (kl_ic + kl_co)


def reference_step(model: FusedGRUReference, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    log_rates = model(x)
    return (torch.exp(log_rates) - y * log_rates).mean()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=100)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "throughput.json"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    ours = time_steps(
        LFADS(ModelConfig(**DIMS), [ENC_DIM], [RECON_DIM], T_OBS, T_OBS + T_FWD),
        lfads_step,
        args.batch,
        args.repeats,
    )
    ref = time_steps(FusedGRUReference(), reference_step, args.batch, args.repeats)
    result = {
        "benchmark": "training_throughput_mc_maze_sizes",
        "unit": "trials_per_second (forward + backward + Adam step)",
        "batch": args.batch,
        "threads": args.threads,
        "sizes": {
            "encod_dim": ENC_DIM,
            "recon_dim": RECON_DIM,
            "observed_bins": T_OBS,
            "forward_bins": T_FWD,
            **DIMS,
        },
        "lfads_trials_per_s_median": statistics.median(ours),
        "lfads_trials_per_s_all": ours,
        "fused_gru_reference_trials_per_s_median": statistics.median(ref),
        "ratio_lfads_over_reference": statistics.median(ours) / statistics.median(ref),
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
    print(json.dumps({k: v for k, v in result.items() if not k.endswith("_all")}, indent=2))


if __name__ == "__main__":
    main()
