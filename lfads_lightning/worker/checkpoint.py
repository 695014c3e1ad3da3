"""Checkpoints: written atomically, and only ever loaded with torch's weights_only unpickler.

A checkpoint file is a pickle; loading one with weights_only=False runs whatever code it names.
Every load here (Lightning's resume via the CheckpointIO, LfadsModule.load_from_checkpoint
through load_module) uses weights_only=True, with the few plain types a Lightning checkpoint of
this project holds registered as safe. A file that needs anything else is refused in one line.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO

from lfads_lightning.atomic import atomic_path
from lfads_lightning.errors import LfadsError


class CheckpointError(LfadsError):
    """A checkpoint cannot be loaded safely (or at all)."""

    exit_code = 1


def _register_safe_globals() -> None:
    import pathlib

    import torch

    torch.serialization.add_safe_globals([pathlib.PosixPath, pathlib.PurePosixPath])


_register_safe_globals()


def _nbytes(obj: Any) -> int:
    import torch

    if isinstance(obj, torch.Tensor):
        return obj.numel() * obj.element_size()
    if isinstance(obj, dict):
        return sum(_nbytes(v) for v in obj.values())
    if isinstance(obj, list | tuple):
        return sum(_nbytes(v) for v in obj)
    return 0


def refused(path: Any, err: BaseException) -> CheckpointError:
    first = (str(err).strip().splitlines() or [type(err).__name__])[0]
    if "Weights only load failed" in str(err) or "Unsupported global" in str(err):
        detail = next(
            (ln.strip() for ln in str(err).splitlines() if "Unsupported global" in ln), first
        )
        return CheckpointError(
            f"checkpoint {path} was refused: it holds objects other than weights ({detail}); "
            f"loading it could run code, so only checkpoints written by lfads are accepted"
        )
    return CheckpointError(f"checkpoint {path} cannot be loaded ({first}); is it a .ckpt file?")


class AtomicCheckpointIO(TorchCheckpointIO):
    """Save: temp file + fsync + os.replace (a full disk never leaves a truncated .ckpt).
    Load: weights_only=True always."""

    def save_checkpoint(
        self, checkpoint: dict[str, Any], path: Any, storage_options: Any = None
    ) -> None:
        import torch

        with atomic_path(Path(path), _nbytes(checkpoint)) as tmp:
            torch.save(checkpoint, tmp)

    def load_checkpoint(
        self, path: Any, map_location: Any = None, weights_only: bool | None = None
    ) -> dict[str, Any]:
        import pickle

        try:
            return super().load_checkpoint(path, map_location=map_location, weights_only=True)
        except (pickle.UnpicklingError, RuntimeError, EOFError) as err:
            raise refused(path, err) from None


def load_module(path: Any, map_location: Any = "cpu") -> Any:
    """LfadsModule.load_from_checkpoint with weights_only=True; one-line error on refusal."""
    import pickle

    from lfads_lightning.model.module import LfadsModule

    try:
        return LfadsModule.load_from_checkpoint(path, map_location=map_location, weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError) as err:
        raise refused(path, err) from None
