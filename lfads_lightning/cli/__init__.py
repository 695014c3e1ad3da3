"""The `lfads` command line: one module per subcommand group; `main` is the entry point."""

from __future__ import annotations

from lfads_lightning.cli.main import main

__all__ = ["main"]
