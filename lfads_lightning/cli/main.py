"""`lfads` command line: the parser is assembled from one module per subcommand group. Heavy
imports (torch, lightning, mlflow) happen inside the commands so that `lfads --help` stays fast."""

from __future__ import annotations

import argparse
import errno
import os
import sys
import traceback

from launchers.errors import LauncherError
from lfads_lightning.cli import data, fit, pbt, results, server
from lfads_lightning.errors import LfadsError, Terminated, disk_full_message


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lfads",
        description="Fit LFADS models of neural population dynamics, tracked in MLflow.\n"
        "Every command has its own help with examples: lfads COMMAND --help.",
        epilog="examples:\n"
        "  lfads fit configs/lorenz.yaml\n"
        "  lfads pbt configs/pbt_lorenz.yaml && lfads pbt status RUN\n"
        "  lfads evaluate RUN\n\n"
        "see README.md and docs/usage.md",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--debug",
        action="store_true",
        help="show Python tracebacks (also in worker jobs) instead of one-line errors",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module in (fit, pbt, results, data, server):
        module.add_parsers(sub)
    return parser


def _route(argv: list[str]) -> list[str]:
    """`lfads pbt status ...` goes to its own parser (its own --help); `lfads pbt CONFIG` and
    `lfads pbt --resume RUN` stay with the pbt parser."""
    if argv[:2] == ["pbt", "status"]:
        return [pbt.STATUS_COMMAND, *argv[2:]]
    if argv[:2] in (["pbt", "stop"], ["search", "stop"]):
        return [pbt.STOP_COMMANDS[argv[0]], *argv[2:]]
    return argv


def _attach_extra(
    parser: argparse.ArgumentParser, args: argparse.Namespace, extra: list[str]
) -> None:
    """Overrides may follow options (`--seed 3 n_neurons=40`), which plain parse_args rejects."""
    target = "items" if hasattr(args, "items") else "params" if hasattr(args, "params") else None
    bad = [e for e in extra if "=" not in e or e.startswith("-")]
    if target is None or bad:
        parser.error(f"unrecognized arguments: {' '.join(bad or extra)}")
    setattr(args, target, [*getattr(args, target), *extra])


def main(argv: list[str] | None = None) -> int:
    # MLflow draws a progress bar per artifact download; PBT downloads many small files.
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    parser = build_parser()
    args, extra = parser.parse_known_args(_route(sys.argv[1:] if argv is None else list(argv)))
    if extra:
        _attach_extra(parser, args, extra)
    if args.debug:
        os.environ["LFADS_DEBUG"] = "1"  # inherited by worker jobs this process starts
    debug = os.environ.get("LFADS_DEBUG") == "1"
    try:
        return int(args.func(args) or 0)
    except (LfadsError, LauncherError) as err:
        if debug:
            traceback.print_exc()
        print(f"error: {err}", file=sys.stderr)
        return err.exit_code
    except KeyboardInterrupt:
        print("lfads: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `lfads pbt status RUN | head`: the reader has what it wanted
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except Terminated as sig:
        print(f"lfads: stopped by {sig.name}", file=sys.stderr)
        return sig.exit_code
    except OSError as err:
        if debug:
            traceback.print_exc()
        if err.errno in (errno.ENOSPC, errno.EDQUOT):
            print(f"error: {disk_full_message(err)}", file=sys.stderr)
        else:
            print(f"error: {_one_line(err)}", file=sys.stderr)
        return 1
    except Exception as err:  # noqa: BLE001 - one line unless --debug
        if debug:
            traceback.print_exc()
        print(
            f"error: unexpected {_one_line(err)} (rerun with lfads --debug for the traceback)",
            file=sys.stderr,
        )
        return 1


def _one_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[0]}" if text else type(err).__name__


if __name__ == "__main__":
    sys.exit(main())
