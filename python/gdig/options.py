"""Command-line flags and config-file keys generated from the option dataclasses.

Each dataclass field is one flag (``--field-name``) and one config key (``field_name``),
with the field's ``help`` metadata as its help text: one source of truth for the CLI,
config files (YAML or TOML) and the manifest. Where two dataclasses share a field name
with one meaning (``device``), one flag sets both; ``RENAMES`` gives a field another
public name where the plain one would clash (SelectConfig.seed is ``--random-seed``,
because ``--seed`` is the seed set).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import types
import typing
from pathlib import Path
from typing import Any

# (dataclass name, field name) -> public name
RENAMES: dict[tuple[str, str], str] = {("SelectConfig", "seed"): "random_seed"}


class ConfigFileError(ValueError):
    """A config file that cannot be read or names an unknown key."""


def public_name(cls: type, name: str) -> str:
    return RENAMES.get((cls.__name__, name), name)


def _base_type(tp: Any) -> tuple[type, bool]:
    """(scalar type, optional?) of a field annotation such as ``int | None``."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return args[0], True
    return tp, False


def _parse_bool(text: str) -> bool:
    low = text.lower()
    if low in ("1", "true", "yes", "on"):
        return True
    if low in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true/false, got {text!r}")


def _converter(tp: type, optional: bool):
    def convert(text: str):
        if optional and text.lower() in ("none", "auto", ""):
            return None
        if tp is bool:
            return _parse_bool(text)
        return tp(text)

    convert.__name__ = tp.__name__  # argparse shows it in "invalid int value" messages
    return convert


def add_dataclass_flags(parser: argparse.ArgumentParser, *classes: type) -> None:
    """Add one flag per field of ``classes`` (shared names once). Defaults stay unset
    (``argparse.SUPPRESS``) so that config-file values are only overridden by flags the
    user actually gave."""
    seen: set[str] = set()
    for cls in classes:
        hints = typing.get_type_hints(cls)
        group = parser.add_argument_group(cls.__doc__.splitlines()[0] if cls.__doc__ else None)
        for f in dataclasses.fields(cls):
            name = public_name(cls, f.name)
            if name in seen:
                continue
            seen.add(name)
            tp, optional = _base_type(hints[f.name])
            default = f.default if f.default is not dataclasses.MISSING else None
            help_text = f.metadata.get("help", "")
            help_text += f" (default: {default})" if default is not None else ""
            flag = "--" + name.replace("_", "-")
            if tp is bool and not optional:
                group.add_argument(
                    flag,
                    dest=name,
                    action=argparse.BooleanOptionalAction,
                    default=argparse.SUPPRESS,
                    help=help_text,
                )
            else:
                group.add_argument(
                    flag,
                    dest=name,
                    type=_converter(tp, optional),
                    default=argparse.SUPPRESS,
                    metavar=tp.__name__.upper(),
                    help=help_text,
                )


def known_keys(*classes: type) -> set[str]:
    return {public_name(c, f.name) for c in classes for f in dataclasses.fields(c)}


def read_config_file(path: str | Path, allowed: set[str]) -> dict[str, Any]:
    """Flat key/value options from YAML (.yaml/.yml) or TOML (.toml); JSON works as YAML."""
    p = Path(path)
    if not p.is_file():
        raise ConfigFileError(f"{p}: config file not found")
    text = p.read_text(encoding="utf-8")
    try:
        if p.suffix == ".toml":
            import tomllib

            data = tomllib.loads(text)
        else:
            import yaml

            data = yaml.safe_load(text) or {}
    except Exception as exc:  # the parsers' own messages carry line and column
        raise ConfigFileError(f"{p}: cannot parse: {exc}") from exc
    if not isinstance(data, dict):
        raise ConfigFileError(f"{p}: expected a mapping of option: value at the top level")
    data = {str(k).replace("-", "_"): v for k, v in data.items()}
    unknown = sorted(set(data) - allowed)
    if unknown:
        raise ConfigFileError(
            f"{p}: unknown option(s) {', '.join(unknown)}; known options: "
            f"{', '.join(sorted(allowed))}"
        )
    return data


def build(cls: type, values: dict[str, Any]) -> Any:
    """Instantiate ``cls`` from public-name ``values`` (extra keys are ignored)."""
    kwargs = {}
    for f in dataclasses.fields(cls):
        name = public_name(cls, f.name)
        if name in values:
            kwargs[f.name] = values[name]
    return cls(**kwargs)


def as_dict(obj: Any) -> dict[str, Any]:
    """A dataclass as JSON-safe public-name keys (for the manifest)."""
    cls = type(obj)
    out = {}
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        json.dumps(value)  # fail loudly if a field stops being JSON-safe
        out[public_name(cls, f.name)] = value
    return out
