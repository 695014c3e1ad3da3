"""Progress of long steps on stderr, without flooding logs.

On a terminal one line is redrawn in place (at most 5 times a second); otherwise (a log file, a
SLURM or Kubernetes job's output, a pipe) a new line is written at most every `interval`
seconds (default 2 s), plus one line when the step ends. Stdlib only: cheap to import.
"""

from __future__ import annotations

import sys
import time
from typing import IO


def _fmt_seconds(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    return f"{seconds / 60:.1f} min"


class Progress:
    """`with Progress("posterior sampling", total, "sample-batches") as p: ... p.update(k)`."""

    def __init__(
        self,
        label: str,
        total: int,
        unit: str = "",
        stream: IO[str] | None = None,
        interval: float | None = None,
        prefix: str = "lfads",
    ) -> None:
        self.label, self.total, self.unit, self.prefix = label, max(int(total), 0), unit, prefix
        self.stream = stream if stream is not None else sys.stderr
        try:
            self.tty = self.stream.isatty()
        except (AttributeError, ValueError):
            self.tty = False
        self.interval = interval if interval is not None else (0.2 if self.tty else 2.0)
        self.done = 0
        self.start = time.monotonic()
        self._last = self.start
        self._closed = False

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        self.close(ok=exc_type is None)

    def _line(self, final: bool = False) -> str:
        elapsed = time.monotonic() - self.start
        unit = f" {self.unit}" if self.unit else ""
        head = f"{self.prefix}: {self.label}: "
        if final:
            return f"{head}done, {self.done}{unit} in {_fmt_seconds(elapsed)}"
        if not self.total:
            return f"{head}{self.done}{unit}, {_fmt_seconds(elapsed)}"
        frac = min(self.done / self.total, 1.0)
        eta = elapsed / frac - elapsed if frac > 0 else None
        tail = f", ETA {_fmt_seconds(eta)}" if eta is not None else ""
        return (
            f"{head}{self.done}/{self.total}{unit} ({100 * frac:.0f}%), "
            f"{_fmt_seconds(elapsed)}{tail}"
        )

    def _write(self, text: str, final: bool = False) -> None:
        if self.tty:
            self.stream.write("\r\033[K" + text + ("\n" if final else ""))
        else:
            self.stream.write(text + "\n")
        self.stream.flush()

    def update(self, n: int = 1) -> None:
        self.done += n
        now = time.monotonic()
        if now - self._last >= self.interval and not self._closed:
            self._last = now
            self._write(self._line())

    def close(self, ok: bool = True) -> None:
        if self._closed:
            return
        self._closed = True
        if ok:
            self._write(self._line(final=True), final=True)
        elif self.tty:
            self.stream.write("\n")
            self.stream.flush()
