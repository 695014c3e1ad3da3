"""`lfads data synth` and `lfads data nlb`: make or convert session files."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from lfads_lightning.cli.common import add_command
from lfads_lightning.errors import ConfigError


def _parse_params(items: list[str]) -> dict[str, Any]:
    from lfads_lightning.config import parse_override

    params = {}
    for item in items:
        path, value = parse_override(item)
        params["_".join(path)] = value
    return params


def cmd_data_synth(args: argparse.Namespace) -> int:
    from lfads_lightning.data.synth import make_dataset

    try:
        path = make_dataset(
            args.kind,
            args.out,
            seed=args.seed,
            overwrite=args.overwrite,
            **_parse_params(args.params),
        )
    except TypeError as err:
        raise ConfigError(f"bad generator parameter for {args.kind}: {err}") from None
    print(f"lfads: wrote {path}", file=sys.stderr)
    return 0


def cmd_data_nlb(args: argparse.Namespace) -> int:
    if str(args.src).endswith(".nwb"):
        from lfads_lightning.data.nwb import convert_nlb_nwb

        path = convert_nlb_nwb(
            Path(args.src),
            args.out,
            align=args.align,
            valid_every=args.valid_every,
            overwrite=args.overwrite,
        )
    else:
        from lfads_lightning.data.nlb import convert_nlb_tensors

        path = convert_nlb_tensors(
            args.src, args.out, valid_every=args.valid_every, overwrite=args.overwrite
        )
    print(f"lfads: wrote {path}", file=sys.stderr)
    return 0


def _add_synth(data_sub: argparse._SubParsersAction) -> None:
    synth = add_command(
        data_sub,
        "synth",
        "generate synthetic data with ground-truth rates",
        "Generate a synthetic dataset (spikes from known rates, so rate R2 can be scored).\n"
        "Generator parameters follow as key=value.",
        [
            "lfads data synth lorenz lorenz.h5",
            "lfads data synth lorenz-sparse sparse.h5   # 60 neurons at 1-3 Hz, 10 ms bins",
            "lfads data synth chaotic-rnn rnn.h5 --seed 3 n_neurons=50 --overwrite",
        ],
        "docs/data-format.md",
    )
    synth.add_argument(
        "kind",
        choices=("lorenz", "lorenz-sparse", "chaotic-rnn"),
        help="the dynamical system behind the rates (lorenz-sparse: real cortex's 1-3 Hz rates)",
    )
    synth.add_argument("out", help="output HDF5 path")
    synth.add_argument("--seed", type=int, default=0, help="random seed of the generator")
    synth.add_argument(
        "--overwrite", action="store_true", help="replace OUT if it exists (else: error)"
    )
    synth.add_argument(
        "params", nargs="*", metavar="key=value", help="generator parameters, e.g. n_neurons=40"
    )
    synth.set_defaults(func=cmd_data_synth)


def _add_nlb(data_sub: argparse._SubParsersAction) -> None:
    nlb = add_command(
        data_sub,
        "nlb",
        "convert NLB tensors (held-in/held-out/forward) to the project format",
        "Convert Neural Latents Benchmark data: a directory of NLB tensors\n"
        "(<name>_train.h5, <name>_val.h5) or an NWB file (needs pynwb: pip install -e .[nwb]).",
        [
            "lfads data nlb ~/nlb/mc_maze_small mc_maze_small.h5",
            "lfads data nlb sub-Jenkins_ses-small.nwb mc_maze_small.h5 --align move_onset_time",
        ],
        "docs/data-format.md",
    )
    nlb.add_argument(
        "src", help="directory with <name>_train.h5 and <name>_val.h5, or an NLB .nwb file"
    )
    nlb.add_argument("out", help="output HDF5 path")
    nlb.add_argument(
        "--valid-every",
        type=int,
        default=5,
        metavar="N",
        help="every Nth train trial becomes a validation trial",
    )
    nlb.add_argument(
        "--overwrite", action="store_true", help="replace OUT if it exists (else: error)"
    )
    nlb.add_argument(
        "--align", default="move_onset_time", help="NWB: trials column of the alignment event"
    )
    nlb.set_defaults(func=cmd_data_nlb)


def add_parsers(sub: argparse._SubParsersAction) -> None:
    data = add_command(
        sub,
        "data",
        "make or convert data files",
        "Make synthetic session files or convert Neural Latents Benchmark data into the\n"
        "project's HDF5 format (see docs/data-format.md).",
        [
            "lfads data synth lorenz lorenz.h5 n_neurons=40",
            "lfads data nlb ~/nlb/mc_maze_small mc_maze_small.h5",
        ],
        "docs/data-format.md",
    )
    data_sub = data.add_subparsers(dest="data_command", required=True, metavar="KIND")
    _add_synth(data_sub)
    _add_nlb(data_sub)
