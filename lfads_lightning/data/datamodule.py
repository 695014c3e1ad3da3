"""Lightning data module over one or more session files, with single-session batches.

All trials live in memory as pre-built tensors: the data sets LFADS is fit to are small, and
indexing a tensor is much faster than collating samples one by one. Every batch holds trials of a
single session because each session has its own neuron count (its own readin/readout).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import NamedTuple

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from lfads_lightning.data.format import SPLITS, SessionData, SplitData, load_session
from lfads_lightning.errors import ConfigError, DataError


class Batch(NamedTuple):
    """One batch of trials from one session (a NamedTuple, so Lightning moves it to the device)."""

    encod_data: torch.Tensor  # [B, T_enc, C_enc]
    recon_data: torch.Tensor  # [B, T_rec, C_rec]; NaN where unknown
    ext_input: torch.Tensor  # [B, T_rec, E], E may be 0
    sv_mask: torch.Tensor  # [B, T_enc, C_enc]; 1 = visible to training, 0 = sample-validation
    truth: torch.Tensor  # [B, T_rec, C_rec], or [B, 0, 0] without ground truth
    session: torch.Tensor  # long scalar: session (file) index
    index: torch.Tensor  # [B] long: trial position within its split


@dataclass
class _SplitTensors:
    encod_data: torch.Tensor
    recon_data: torch.Tensor
    ext_input: torch.Tensor
    sv_mask: torch.Tensor
    truth: torch.Tensor

    def batch(self, session: int, idx: torch.Tensor) -> Batch:
        return Batch(
            self.encod_data[idx],
            self.recon_data[idx],
            self.ext_input[idx],
            self.sv_mask[idx],
            self.truth[idx],
            torch.tensor(session, dtype=torch.long),
            idx,
        )


def _build_tensors(
    sess: SessionData, split: SplitData, session: int, split_code: int, sv_rate: float, sv_seed: int
) -> _SplitTensors:
    n = split.n_trials
    shape_rec = (n, sess.recon_seq_len, sess.recon_dim)
    recon = np.full(shape_rec, np.nan, np.float32) if split.recon_data is None else split.recon_data
    ext = (
        np.zeros((n, sess.recon_seq_len, 0), np.float32)
        if split.ext_input is None
        else split.ext_input
    )
    truth = np.zeros((n, 0, 0), np.float32) if split.truth is None else split.truth
    if sv_rate > 0:
        rng = np.random.default_rng([sv_seed, session, split_code])
        mask = (rng.random(split.encod_data.shape) >= sv_rate).astype(np.float32)
    else:
        mask = np.ones(split.encod_data.shape, np.float32)
    return _SplitTensors(
        *(
            torch.from_numpy(np.ascontiguousarray(a))
            for a in (split.encod_data, recon, ext, mask, truth)
        )
    )


class SessionBatchSampler(Sampler):
    """Yields (session, trial indices) so that every batch comes from one session.

    With shuffle, trials are permuted within each session and the batches of all sessions are
    interleaved in random order; the order depends only on (seed, epoch), so a resumed run
    (Lightning calls `set_epoch`) sees the same batches as an uninterrupted one.
    """

    def __init__(self, sizes: Sequence[int], batch_size: int, shuffle: bool, seed: int = 0):
        self.sizes = list(sizes)
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return sum(-(-n // self.batch_size) for n in self.sizes)

    def __iter__(self) -> Iterator[tuple[int, torch.Tensor]]:
        rng = np.random.default_rng([self.seed, self.epoch])
        self.epoch += 1
        batches = []
        for session, n in enumerate(self.sizes):
            order = rng.permutation(n) if self.shuffle else np.arange(n)
            for start in range(0, n, self.batch_size):
                batches.append((session, torch.from_numpy(order[start : start + self.batch_size])))
        if self.shuffle:
            batches = [batches[i] for i in rng.permutation(len(batches))]
        yield from batches


class _SessionsDataset(Dataset):
    """Indexed by (session, trial indices) -> Batch."""

    def __init__(self, tensors: Sequence[_SplitTensors], sessions: Sequence[int]):
        self.tensors = list(tensors)
        self.sessions = list(sessions)

    def __len__(self) -> int:
        return sum(len(t.encod_data) for t in self.tensors)

    def __getitem__(self, key: tuple[int, torch.Tensor]) -> Batch:
        pos, idx = key
        return self.tensors[pos].batch(self.sessions[pos], idx.long())


def _identity(batch: Batch) -> Batch:
    return batch


class LfadsDataModule(L.LightningDataModule):
    """Loads and validates every session up front, so errors surface before training starts."""

    def __init__(
        self,
        paths: Sequence[str],
        batch_size: int,
        recon: str = "poisson",
        sv_rate: float = 0.0,
        sv_seed: int = 0,
        seed: int = 0,
    ):
        super().__init__()
        if batch_size <= 0:
            raise ConfigError(f"data.batch_size must be > 0, got {batch_size}")
        if not 0.0 <= sv_rate < 1.0:
            raise ConfigError(f"data.sv_rate must be in [0, 1), got {sv_rate}")
        if not paths:
            raise ConfigError("data.paths is empty; list at least one HDF5 file")
        self.paths = [str(p) for p in paths]
        self.batch_size = batch_size
        self.recon = recon
        self.sv_rate = sv_rate
        self.sv_seed = sv_seed
        self.seed = seed
        self.sessions: list[SessionData] = [load_session(p, recon) for p in self.paths]
        first = self.sessions[0]
        for sess in self.sessions[1:]:
            for attr in ("encod_seq_len", "recon_seq_len", "ext_input_dim", "bin_size_ms"):
                a, b = getattr(first, attr), getattr(sess, attr)
                if a != b:
                    raise DataError(
                        f"sessions disagree on {attr}: {first.path} has {a}, {sess.path} has {b}; "
                        f"all sessions of one model need the same bins and external inputs"
                    )
        self.encod_seq_len = first.encod_seq_len
        self.recon_seq_len = first.recon_seq_len
        self.ext_input_dim = first.ext_input_dim
        self.bin_size_ms = first.bin_size_ms
        self.encod_dims = [s.encod_dim for s in self.sessions]
        self.recon_dims = [s.recon_dim for s in self.sessions]
        self._tensors: dict[tuple[str, int], _SplitTensors] = {}
        for i, sess in enumerate(self.sessions):
            for code, split in enumerate(SPLITS):
                if split in sess.splits:
                    self._tensors[(split, i)] = _build_tensors(
                        sess, sess.splits[split], i, code, sv_rate, sv_seed
                    )

    @property
    def n_sessions(self) -> int:
        return len(self.sessions)

    def _loader(
        self, split: str, sessions: Sequence[int], batch_size: int, shuffle: bool
    ) -> DataLoader:
        tensors = [self._tensors[(split, i)] for i in sessions]
        sampler = SessionBatchSampler(
            [len(t.encod_data) for t in tensors], batch_size, shuffle, self.seed
        )
        return DataLoader(
            _SessionsDataset(tensors, sessions),
            batch_size=None,
            sampler=sampler,
            collate_fn=_identity,
            num_workers=0,
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", range(self.n_sessions), self.batch_size, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("valid", range(self.n_sessions), self.batch_size, shuffle=False)

    def split_loader(self, split: str, session: int, batch_size: int | None = None) -> DataLoader:
        """One session's split in trial order (posterior sampling, evaluation)."""
        if not 0 <= session < self.n_sessions:
            raise DataError(
                f"session index {session} out of range; there are {self.n_sessions} sessions"
            )
        if (split, session) not in self._tensors:
            have = ", ".join(s for s in SPLITS if (s, session) in self._tensors)
            raise DataError(
                f"{self.sessions[session].path}: no '{split}' split (it has {have}); "
                f"ask for one of those or add {split}_encod_data to the file"
            )
        return self._loader(split, [session], batch_size or self.batch_size, shuffle=False)


def trials_loader(
    sess: SessionData, split: str, session: int, batch_size: int, sv_rate: float, sv_seed: int
) -> DataLoader:
    """One split of a file of trials to infer (data/infer.py), in trial order, as batches of
    the model's session `session` (its readin/readout)."""
    code = SPLITS.index(split)
    tensors = _build_tensors(sess, sess.splits[split], session, code, sv_rate, sv_seed)
    sampler = SessionBatchSampler([len(tensors.encod_data)], batch_size, shuffle=False)
    return DataLoader(
        _SessionsDataset([tensors], [session]),
        batch_size=None,
        sampler=sampler,
        collate_fn=_identity,
        num_workers=0,
    )
