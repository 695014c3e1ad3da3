"""`lfads data nlb FILE.nwb`: a tiny NWB file in the benchmark's layout, built with pynwb, against
hand-computed binned counts. Runs in `python3 dev.py tests_nlb_tools` (which installs pynwb)."""

from __future__ import annotations

from datetime import UTC, datetime

import h5py
import numpy as np
import pytest

from lfads_lightning.cli import main

pynwb = pytest.importorskip("pynwb")
pytestmark = pytest.mark.nlb_tools


def make_nwb(path, with_event: bool = True) -> None:
    """3 units (the last held out), 6 trials: 5 'train', 1 'val'; 10 ms bins, window -20..+30 ms
    around move onset, 20 ms forward; hand velocity sampled every 5 ms."""
    from pynwb import NWBHDF5IO, NWBFile, TimeSeries

    nwb = NWBFile("tiny NLB-like", "tiny-1", datetime(2021, 1, 1, tzinfo=UTC))
    nwb.add_unit_column("heldout", "held-out unit")
    # Unit 0: one spike 5 ms after each onset; unit 1: two spikes in the first bin of each
    # window; unit 2 (held out): one spike in the first forward bin.
    onsets = 1.0 + np.arange(6)
    nwb.add_unit(spike_times=onsets + 0.005, obs_intervals=[[0.0, 10.0]], heldout=False)
    nwb.add_unit(
        spike_times=np.sort(np.concatenate([onsets - 0.019, onsets - 0.011])),
        obs_intervals=[[0.0, 10.0]],
        heldout=False,
    )
    nwb.add_unit(spike_times=onsets + 0.035, obs_intervals=[[0.0, 10.0]], heldout=True)
    nwb.add_trial_column("split", "NLB split")
    nwb.add_trial_column("trial_type", "maze")
    nwb.add_trial_column("trial_version", "version")
    if with_event:
        nwb.add_trial_column("move_onset_time", "movement onset")
    for i, t in enumerate(onsets):
        extra = {"move_onset_time": t} if with_event else {}
        nwb.add_trial(
            start_time=t - 0.5,
            stop_time=t + 0.5,
            split="val" if i == 5 else "train",
            trial_type=i % 2,
            trial_version=0,
            **extra,
        )
    stamps = np.arange(0.0, 8.0, 0.005)
    vel = np.stack([stamps, -stamps], axis=1)
    beh = nwb.create_processing_module("behavior", "hand kinematics")
    beh.add(TimeSeries(name="hand_vel", data=vel, timestamps=stamps, unit="mm/s"))
    with NWBHDF5IO(str(path), "w") as io:
        io.write(nwb)


def test_nwb_to_session_file_by_hand(tmp_path):
    src = tmp_path / "tiny.nwb"
    make_nwb(src)
    out = tmp_path / "tiny.h5"
    # Window -20..+30 ms = 5 bins of 10 ms, and 2 forward bins: override the MC_Maze defaults.
    from lfads_lightning.data.nwb import convert_nlb_nwb

    convert_nlb_nwb(src, out, start_ms=-20, end_ms=30, forward_ms=20, bin_size_ms=10,
                    behavior_lag_ms=20, valid_every=5)  # fmt: skip
    expected = np.zeros((7, 3), dtype=np.float32)
    expected[0, 1] = 2  # unit 1: -19 and -11 ms are both in bin [-20, -10)
    expected[2, 0] = 1  # unit 0: +5 ms is in bin [0, 10)
    expected[5, 2] = 1  # unit 2 (held out): +35 ms is the first forward bin [30, 40)
    with h5py.File(out, "r") as f:
        # 5 NLB train trials: every 5th (the first) becomes valid; the val trial becomes test.
        assert f["train_inds"][()].tolist() == [1, 2, 3, 4]
        assert f["valid_inds"][()].tolist() == [0]
        assert f["test_inds"][()].tolist() == [5]
        for split in ("train", "valid", "test"):
            rec = f[f"{split}_recon_data"][()]
            assert rec.shape[1:] == (7, 3)
            np.testing.assert_array_equal(rec, np.broadcast_to(expected, rec.shape))
            np.testing.assert_array_equal(f[f"{split}_encod_data"][()], rec[:, :5, :2])
        assert f["train_cond_idx"][()].tolist() == [1, 0, 1, 0]
        # Velocity = (t, -t): the mean of the 5 ms samples in a 10 ms bin is t0 + 2.5 ms.
        beh = f["train_behavior"][()]
        onset = 2.0  # trial 1
        np.testing.assert_allclose(beh[0, :, 0], onset - 0.02 + 0.01 * np.arange(5) + 0.0025,
                                   rtol=1e-6)  # fmt: skip
        np.testing.assert_allclose(beh[0, :, 1], -beh[0, :, 0])
        assert "test_behavior" not in f
        assert f.attrs["event_bin"] == 2 and f.attrs["behavior_lag_bins"] == 2


def test_cli_nwb_and_errors(tmp_path, capsys):
    src = tmp_path / "tiny.nwb"
    make_nwb(src)
    assert main(["data", "nlb", str(src), str(tmp_path / "a.h5")]) == 0
    with h5py.File(tmp_path / "a.h5", "r") as f:
        # MC_Maze defaults: -250..+450 ms at 5 ms = 140 bins, + 40 forward bins.
        assert f["train_recon_data"].shape == (4, 180, 3)
        assert f["train_recon_data"][()].sum() == 4 * 4  # every spike of each trial falls inside
    capsys.readouterr()
    make_nwb(tmp_path / "noevent.nwb", with_event=False)
    for argv, expected in (
        ([str(tmp_path / "missing.nwb"), str(tmp_path / "b.h5")], "NWB file not found"),
        ([str(tmp_path / "noevent.nwb"), str(tmp_path / "c.h5")], "no 'move_onset_time' column"),
    ):
        assert main(["data", "nlb", *argv]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and expected in err[0], err
        assert not (tmp_path / argv[1]).exists()
