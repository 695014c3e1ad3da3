"""`lfads data synth` and `lfads data nlb`: make or convert session files."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

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


def add_parsers(sub: argparse._SubParsersAction) -> None:
    data = sub.add_parser("data", help="make or convert data files")
    data_sub = data.add_subparsers(dest="data_command", required=True)
    synth = data_sub.add_parser("synth", help="generate synthetic data with ground-truth rates")
    synth.add_argument("kind", choices=("lorenz", "chaotic-rnn"))
    synth.add_argument("out", help="output HDF5 path")
    synth.add_argument("--seed", type=int, default=0)
    synth.add_argument("--overwrite", action="store_true")
    synth.add_argument(
        "params", nargs="*", metavar="key=value", help="generator parameters, e.g. n_neurons=40"
    )
    synth.set_defaults(func=cmd_data_synth)
    nlb = data_sub.add_parser(
        "nlb", help="convert NLB tensors (held-in/held-out/forward) to the project format"
    )
    nlb.add_argument(
        "src", help="directory with <name>_train.h5 and <name>_val.h5, or an NLB .nwb file"
    )
    nlb.add_argument("out", help="output HDF5 path")
    nlb.add_argument(
        "--valid-every",
        type=int,
        default=5,
        help="every Nth train trial becomes a validation trial",
    )
    nlb.add_argument("--overwrite", action="store_true")
    nlb.add_argument(
        "--align", default="move_onset_time", help="NWB: trials column of the alignment event"
    )
    nlb.set_defaults(func=cmd_data_nlb)
