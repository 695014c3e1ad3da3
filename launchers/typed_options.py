"""Typed option sections from plain mappings: unknown keys are refused with the valid ones listed,
values are checked against the dataclass annotations.

Shared by the launchers (each validates its own config section) and the project's config loader,
which wraps SectionError in its own error type; it lives here because launchers import nothing
from the rest of the project.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from typing import Any

from launchers.errors import LauncherError


class SectionError(ValueError):
    """A bad key or value in an option section; the message names the key and the fix."""


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", str(tp))


def coerce(value: Any, tp: Any, key: str) -> Any:
    """Check `value` against the annotation `tp`; ints are accepted where floats are expected."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return coerce(value, arg, key)
            except SectionError as err:
                errors.append(str(err))
        raise SectionError(errors[0] if errors else f"{key}: bad value {value!r}")
    if origin is list:
        (item_tp,) = typing.get_args(tp)
        if isinstance(value, str | int | float):
            value = [value]
        if not isinstance(value, list):
            raise SectionError(f"{key}: expected a list, got {value!r}")
        return [coerce(v, item_tp, f"{key}[{i}]") for i, v in enumerate(value)]
    if dataclasses.is_dataclass(tp):
        return typed_section(tp, value, f"{key}.")
    if tp is bool:
        if isinstance(value, bool):
            return value
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
    elif tp is float:
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)  # YAML reads "1e-4" as a string
            except ValueError:
                pass
    elif tp is str:
        if isinstance(value, str):
            return value
        if isinstance(value, int | float) and not isinstance(value, bool):
            return str(value)
    else:
        raise SectionError(f"{key}: unsupported config type {tp!r}")
    raise SectionError(
        f"{key}: expected {_type_name(tp)}, got {value!r} ({type(value).__name__}); "
        f"fix the value in the config file or override"
    )


def valid_keys(cls: type, prefix: str = "") -> list[str]:
    keys = []
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        tp = hints[f.name]
        if dataclasses.is_dataclass(tp):
            keys.extend(valid_keys(tp, f"{prefix}{f.name}."))
        else:
            keys.append(f"{prefix}{f.name}")
    return keys


def typed_section(cls: type, data: dict[str, Any] | None, prefix: str = "") -> Any:
    """Build dataclass `cls` from a nested dict, rejecting unknown keys and wrong types."""
    data = data or {}
    if not isinstance(data, dict):
        raise SectionError(f"{prefix.rstrip('.') or 'config'}: expected a mapping, got {data!r}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        valid = ", ".join(valid_keys(cls, prefix))
        raise SectionError(f"unknown config key '{prefix}{unknown[0]}'; valid keys: {valid}")
    kwargs = {}
    for name, value in data.items():
        tp = hints[name]
        key = f"{prefix}{name}"
        if dataclasses.is_dataclass(tp):
            kwargs[name] = typed_section(tp, value, f"{key}.")
        else:
            kwargs[name] = coerce(value, tp, key)
    return cls(**kwargs)


def launcher_section(cls: type, data: dict[str, Any], prefix: str) -> Any:
    """`typed_section` for a launcher's own options: a bad key or value is a LauncherError,
    which the CLI reports as one line."""
    try:
        return typed_section(cls, data, prefix)
    except SectionError as err:
        raise LauncherError(str(err)) from None
