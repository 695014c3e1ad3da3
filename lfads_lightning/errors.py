"""User-facing errors: every one is printed as a single line by the CLI, with a non-zero exit."""

from __future__ import annotations


class LfadsError(Exception):
    """A problem the user can fix; the message names the problem and the fix."""

    exit_code = 2


class ConfigError(LfadsError):
    """A config file or a key=value override is wrong."""


class DataError(LfadsError):
    """An input data file is missing, malformed or holds values the model cannot use."""


class TrackingError(LfadsError):
    """The MLflow tracking store cannot be reached or used."""

    exit_code = 3


class TrainingDiverged(LfadsError):
    """The loss or the inferred rates became NaN or infinite during training."""

    exit_code = 1

    def __init__(self, epoch: int, step: int, what: str = "the loss is NaN or infinite") -> None:
        super().__init__(
            f"training diverged at epoch {epoch}, step {step} ({what}); likely causes: "
            f"train.lr too high, loss.loss_scale too large, or train.grad_clip too loose"
        )


class Terminated(BaseException):
    """SIGTERM or SIGHUP arrived: unwinds like KeyboardInterrupt so that runs get closed."""

    def __init__(self, signum: int) -> None:
        import signal

        super().__init__(signum)
        self.signum = signum
        self.name = signal.Signals(signum).name
        self.exit_code = 128 + signum


def raise_on_signals(*signums: int) -> dict[int, object]:
    """Make each signal raise Terminated in the main thread; returns the previous handlers
    (for restore_signals). A no-op outside the main thread."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        return {}

    def handler(signum: int, frame: object) -> None:
        raise Terminated(signum)

    return {s: signal.signal(s, handler) for s in signums}


def restore_signals(previous: dict[int, object]) -> None:
    import signal

    for signum, old in previous.items():
        signal.signal(signum, old)  # type: ignore[arg-type]


def disk_full_message(err: OSError, path: object = None, needed: int | None = None) -> str:
    """One line for ENOSPC/EDQUOT: the path, and the space needed when known."""
    import contextlib
    import shutil
    from pathlib import Path

    where = path or getattr(err, "filename", None) or "an output file"
    need = f"; about {needed / 1e6:.1f} MB needed" if needed else ""
    free = ""
    with contextlib.suppress(OSError):
        free = f", {shutil.disk_usage(Path(str(where)).parent).free / 1e6:.1f} MB free"
    return f"no space left on the device writing {where}{need}{free}; free space or set output.dir elsewhere"
