"""The one error type launchers raise for bad options or an unreachable backend.

Launchers know nothing of the rest of the project, so they cannot raise its errors; the CLI
reports a LauncherError as one line and exits with `exit_code`, like its own config errors.
"""

from __future__ import annotations


class LauncherError(Exception):
    """Bad launcher options, or a backend that cannot be reached (exit code 2)."""

    exit_code = 2
