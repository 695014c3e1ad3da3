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
