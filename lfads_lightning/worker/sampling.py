"""Posterior sampling after training: average N posterior samples per trial, write HDF5.

The output file holds a copy of the input data next to the inferred quantities, so it is
self-contained for evaluation and plotting. It is written to a temporary name and renamed,
so an interrupted run never leaves a partial output file.
"""

from __future__ import annotations

import os
from pathlib import Path

import h5py
import numpy as np
import torch

from lfads_lightning.atomic import atomic_path
from lfads_lightning.data.datamodule import LfadsDataModule
from lfads_lightning.data.format import SPLITS, SessionData
from lfads_lightning.model.module import LfadsModule

OUTPUT_KEYS = ("rates", "factors", "gen_states", "co_means", "ic_mean", "ic_std")


@torch.no_grad()
def sample_split(
    module: LfadsModule, loader, n_samples: int, max_rows: int = 2000, progress=None
) -> dict[str, np.ndarray]:
    """Mean over `n_samples` posterior samples of every output, in trial order.

    Samples are drawn by repeating each batch, several samples per forward pass, which costs
    far less Python overhead than one pass per sample.
    """
    lfads = module.lfads
    was_training = lfads.training
    lfads.eval()
    device = module.device
    chunks: dict[str, list[np.ndarray]] = {k: [] for k in OUTPUT_KEYS}
    try:
        for batch in loader:
            enc = batch.encod_data.to(device)
            ext = batch.ext_input.to(device) if lfads.ext_input_dim > 0 else None
            if module.sv_rate > 0:
                enc = enc * batch.sv_mask.to(device) / (1.0 - module.sv_rate)
            b = enc.shape[0]
            per_pass = max(1, min(n_samples, max_rows // max(b, 1)))
            sums: dict[str, torch.Tensor] = {}
            done = 0
            while done < n_samples:
                k = min(per_pass, n_samples - done)
                enc_k = enc.repeat(k, 1, 1)
                ext_k = ext.repeat(k, 1, 1) if ext is not None else None
                out = lfads(
                    enc_k, session=int(batch.session), ext_input=ext_k, sample_posteriors=True
                )
                values = {
                    "rates": lfads.recon.mean(out.params),
                    "factors": out.factors,
                    "gen_states": out.gen_states,
                    "co_means": out.co_means,
                    "ic_mean": out.ic_mean,
                    "ic_std": torch.sqrt(out.ic_var),
                }
                for key, v in values.items():
                    v = v.reshape(k, b, *v.shape[1:]).sum(0)
                    sums[key] = v if key not in sums else sums[key] + v
                done += k
                if progress is not None:
                    progress.update(k)
            for key in OUTPUT_KEYS:
                chunks[key].append((sums[key] / n_samples).cpu().numpy())
    finally:
        lfads.train(was_training)
    return {k: np.concatenate(v, 0).astype(np.float32) for k, v in chunks.items()}


def sample_all(
    module: LfadsModule, datamodule: LfadsDataModule, n_samples: int, batch_size: int | None = None
) -> list[dict[str, dict[str, np.ndarray]]]:
    """Per session, per split present in its file: the averaged posterior outputs.

    Progress (samples x batches done, ETA) goes to stderr: redrawn on a terminal, a line every
    few seconds in a log (`lfads_lightning.progress`)."""
    from lfads_lightning.progress import Progress

    loaders = [
        (s, split, datamodule.split_loader(split, s, batch_size))
        for s, session in enumerate(datamodule.sessions)
        for split in SPLITS
        if split in session.splits
    ]
    total = n_samples * sum(len(loader) for _, _, loader in loaders)
    results: list[dict[str, dict[str, np.ndarray]]] = [{} for _ in datamodule.sessions]
    with Progress(
        f"posterior sampling ({n_samples} samples per trial)", total, "sample-batches"
    ) as progress:
        for s, split, loader in loaders:
            results[s][split] = sample_split(module, loader, n_samples, progress=progress)
    return results


def write_output(
    out_path: str | Path,
    source_path: str | Path,
    outputs: dict[str, dict[str, np.ndarray]],
    attrs: dict | None = None,
) -> Path:
    """Copy of the input file + `<split>_<output>` datasets, written atomically."""
    out_path = Path(out_path)
    needed = os.path.getsize(source_path) + sum(
        a.nbytes for values in outputs.values() for a in values.values()
    )
    with (
        atomic_path(out_path, needed) as tmp,
        h5py.File(source_path, "r") as src,
        h5py.File(tmp, "w") as dst,
    ):
        for name in src:
            src.copy(src[name], dst, name=name)
        for key, value in src.attrs.items():
            dst.attrs[key] = value
        for split, values in outputs.items():
            for key, array in values.items():
                dst.create_dataset(
                    f"{split}_{key}", data=array, compression="gzip", compression_opts=1
                )
        dst.attrs["lfads_source_file"] = str(Path(source_path).resolve())
        for key, value in (attrs or {}).items():
            dst.attrs[key] = value
    return out_path


def write_trials_output(
    out_path: str | Path,
    session: SessionData,
    outputs: dict[str, dict[str, np.ndarray]],
    source_attrs: dict,
    attrs: dict,
) -> Path:
    """A file of inferred trials (`lfads sample --data`): the validated trials as
    `<split>_<field>` (a session file's layout, so `lfads evaluate` reads it) + the outputs."""
    out_path = Path(out_path)
    arrays = {
        f"{split}_{name}": value
        for split, data in session.splits.items()
        for name, value in vars(data).items()
        if value is not None
    }
    arrays.update({f"{s}_{k}": v for s, values in outputs.items() for k, v in values.items()})
    needed = sum(a.nbytes for a in arrays.values())
    with atomic_path(out_path, needed) as tmp, h5py.File(tmp, "w") as dst:
        for name, array in arrays.items():
            dst.create_dataset(name, data=array, compression="gzip", compression_opts=1)
        for key, value in {**source_attrs, **attrs}.items():
            dst.attrs[key] = value
    return out_path
