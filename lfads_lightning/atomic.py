"""Atomic file writes: a temporary file in the destination's directory, fsync, os.replace.

A reader sees the old file or the complete new one, never a truncated one; a failed write
(disk full, a signal) leaves no temporary file behind. Files get the usual mode from the
umask (tempfile.mkstemp's 0600 would make shared outputs unreadable to others).
"""

from __future__ import annotations

import contextlib
import errno
import os
from collections.abc import Iterator
from pathlib import Path

from lfads_lightning.errors import LfadsError, disk_full_message


class DiskFullError(LfadsError):
    """No space left while writing an output or a checkpoint."""

    exit_code = 1


def is_disk_full(err: BaseException) -> bool:
    if isinstance(err, OSError) and err.errno in (errno.ENOSPC, errno.EDQUOT):
        return True
    text = str(err)
    return "No space left on device" in text or "errno = 28" in text or "Disk quota" in text


def _umask_mode() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


def _fsync_dir(directory: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


@contextlib.contextmanager
def atomic_path(path: str | Path, needed: int | None = None) -> Iterator[Path]:
    """Yield a temporary path next to `path`; once the block wrote it, it replaces `path`.

    A disk-full error inside the block becomes one DiskFullError naming `path` (and `needed`
    bytes when the caller knows them); the temporary file is removed whatever happens.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        yield tmp
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.chmod(tmp, _umask_mode())
        os.replace(tmp, path)
        _fsync_dir(path.parent)
    except Exception as err:
        if is_disk_full(err):
            raise DiskFullError(disk_full_message(err, path, needed)) from None
        raise
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
