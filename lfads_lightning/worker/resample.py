"""`lfads sample`: which model a run stands for, and posterior sampling of new trials with it.

Any run can be sampled: a fit run (its best checkpoint), a PBT member (the checkpoint its fitness
was measured on, `schema.BEST_CHECKPOINT`), or a PBT/search parent (its best member: the
`lfads.best_run` tag once finished, else the best member so far).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from lfads_lightning.data.infer import ModelShape, load_trials, sha256
from lfads_lightning.errors import LfadsError
from lfads_lightning.runs import schema, tracking

PARENT_KINDS = ("pbt", "search")


def model_run(client: Any, run_id: str) -> tuple[str, str]:
    """(the run holding the model, its checkpoint artifact) for any run id."""
    run = client.get_run(run_id)
    tags = run.data.tags
    model = run_id
    if tags.get(tracking.TAG_PREFIX + "kind") in PARENT_KINDS:
        model = tags.get(schema.BEST_RUN) or _best_so_far(client, run_id)
        run = client.get_run(model)
    listed = [a.path for a in client.list_artifacts(model, "checkpoints")]
    ckpt = schema.best_checkpoint(run, listed)
    if ckpt is None:
        raise LfadsError(
            f"run {model} has no checkpoint artifact yet (checkpoints/best.ckpt or last.ckpt); "
            f"it is still training or failed before its first checkpoint: wait for it to finish, "
            f"or sample another run"
        )
    return model, ckpt


def _best_so_far(client: Any, parent: str) -> str:
    usable = [m for m in schema.load_members(client, parent) if m.usable]
    if not usable:
        raise LfadsError(
            f"PBT run {parent} has no member that finished a generation yet, so no model to "
            f"sample; wait (see `lfads pbt status {parent}`) and run this again"
        )
    return min(usable, key=lambda m: (m.fitness, -m.generation)).run_id


def data_tag(path: str | Path, digest: str) -> str:
    """'<stem>-<sha256[:8]>': names the data in metric prefixes and file names."""
    stem = re.sub(r"[^A-Za-z0-9_.-]", "_", Path(path).stem)
    return f"{stem}-{digest[:8]}"


def shape_of(module: Any, session: int) -> ModelShape:
    h = module.hparams
    if not 0 <= session < len(h["encod_dims"]):
        raise LfadsError(
            f"--session {session} is out of range: the model has {len(h['encod_dims'])} "
            f"session(s); pass 0..{len(h['encod_dims']) - 1}"
        )
    return ModelShape(
        h["encod_dims"][session], h["recon_dims"][session], h["encod_seq_len"],
        h["recon_seq_len"], h.get("ext_input_dim", 0),
    )  # fmt: skip


def sample_trials(
    module: Any,
    data_path: str | Path,
    out_path: Path,
    n_samples: int,
    session: int = 0,
    attrs: dict | None = None,
    batch_size: int = 100,
) -> Path:
    """Check the trials against the model, posterior-sample them, write the output file."""
    import h5py

    from lfads_lightning.data.datamodule import trials_loader
    from lfads_lightning.worker.sampling import sample_split, write_trials_output

    trials = load_trials(data_path, shape_of(module, session), module.model_cfg.recon)
    digest = sha256(data_path)
    outputs = {
        split: sample_split(
            module, trials_loader(trials, split, session, batch_size, module.sv_rate, 0), n_samples
        )
        for split in trials.splits
    }
    with h5py.File(data_path, "r") as f:
        source_attrs = dict(f.attrs)
    meta = {
        "lfads_data_file": str(Path(data_path).resolve()),
        "lfads_data_sha256": digest,
        "lfads_data_tag": data_tag(data_path, digest),
        "lfads_session": session,
        "n_samples": n_samples,
        **(attrs or {}),
    }
    return write_trials_output(out_path, trials, outputs, source_attrs, meta)
