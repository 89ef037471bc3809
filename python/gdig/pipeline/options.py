"""Command-line flags and config-file keys generated from the option dataclasses.

Each dataclass field is one flag (``--field-name``) and one config key (``field_name``),
with the field's ``help`` metadata as its help text: one source of truth for the CLI,
config files (YAML or TOML) and the manifest.

A value comes from, in order of precedence: a flag, the config file, the run folder's
manifest (so ``gdig select --out RUN --budget 20`` keeps every other option), the default.
Every value is checked (type, then range) before anything is computed or removed, and a
bad one is named as the user wrote it: ``--budget`` or ``my.yaml: budget``. A field whose
metadata has ``parse`` reads its flag's text (and a config file's text) with it, as
``--budget 15%`` is read.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import types
import typing
from collections.abc import Callable
from pathlib import Path
from typing import Any

from gdig.io.errors import UsageError
from gdig.io.validate import OptionError, read_saved
from gdig.pipeline.config import SECTIONS, RunOptions

log = logging.getLogger("gdig")

# Old public names still accepted (flag or config key), with a deprecation note.
DEPRECATED = {"seed": "seeds"}


class ConfigFileError(UsageError):
    """A config file that cannot be read, names an unknown key or holds a bad value."""


def flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _base_type(tp: Any) -> tuple[type, bool]:
    """(scalar type, optional?) of a field annotation such as ``int | None``."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return args[0], True
    return tp, False


def _field_types(cls: type) -> dict[str, tuple[type, bool]]:
    hints = typing.get_type_hints(cls)
    return {f.name: _base_type(hints[f.name]) for f in dataclasses.fields(cls)}


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

    convert.__name__ = {int: "integer", float: "number"}.get(tp, tp.__name__)
    return convert


def _metavar(tp: type, optional: bool, choices: tuple[str, ...] | None) -> str:
    if choices:
        return "{" + ",".join(choices + (("none",) if optional else ())) + "}"
    return {int: "N", float: "X", str: "TEXT"}.get(tp, tp.__name__.upper())


def add_flags(
    parser: argparse.ArgumentParser,
    sections: tuple[str, ...],
    classes: dict[str, type] = SECTIONS,
    skip: set[str] = frozenset(),
) -> None:
    """One flag per field of the sections' dataclasses, grouped under each class's title.
    Defaults stay unset (``argparse.SUPPRESS``): a value the user did not give comes from
    the config file, the run folder or the dataclass, in that order."""
    for section in sections:
        cls = classes[section]
        title = (cls.__doc__ or section).splitlines()[0].rstrip(".")
        group = parser.add_argument_group(title)
        types_ = _field_types(cls)
        for f in dataclasses.fields(cls):
            name = f.name
            if name in skip:
                continue
            tp, optional = types_[f.name]
            default = f.default if f.default is not dataclasses.MISSING else None
            help_text = f.metadata.get("help", "")
            if default is not None:
                help_text += f" (default: {default})"
            help_text = help_text.replace("%", "%%")  # argparse formats help with %
            choices = tuple(f.metadata.get("choices") or ()) or None  # a table: its names
            if tp is bool:
                group.add_argument(
                    flag(name),
                    dest=name,
                    action=argparse.BooleanOptionalAction,
                    default=argparse.SUPPRESS,
                    help=help_text,
                )
            else:
                group.add_argument(
                    flag(name),
                    dest=name,
                    type=f.metadata.get("parse") or _converter(tp, optional),
                    default=argparse.SUPPRESS,
                    metavar=f.metadata.get("metavar") or _metavar(tp, optional, choices),
                    help=help_text,
                )
        if section == "seeds":  # the old name of --seeds, kept working
            group.add_argument(
                "--seed", dest="seed", default=argparse.SUPPRESS, help=argparse.SUPPRESS
            )


def known_keys(
    sections: tuple[str, ...] = tuple(SECTIONS), classes: dict[str, type] = SECTIONS
) -> set[str]:
    return {f.name for s in sections for f in dataclasses.fields(classes[s])}


def read_config_file(path: str | Path, allowed: set[str] | None = None) -> dict[str, Any]:
    """Flat key/value options from YAML (.yaml/.yml) or TOML (.toml); JSON works as YAML."""
    p = Path(path)
    if not p.is_file():
        raise ConfigFileError(f"--config {p}: file not found")
    text = p.read_text(encoding="utf-8")
    try:
        if p.suffix == ".toml":
            try:
                import tomllib
            except ImportError:  # Python 3.10
                import tomli as tomllib

            data = tomllib.loads(text)
        else:
            import yaml

            data = yaml.safe_load(text) or {}
    except Exception as exc:  # the parsers' own messages carry line and column
        raise ConfigFileError(f"{p}: cannot parse: {exc}") from exc
    if not isinstance(data, dict):
        raise ConfigFileError(f"{p}: expected a mapping of option: value at the top level")
    data = {str(k).replace("-", "_"): v for k, v in data.items()}
    allowed = known_keys() if allowed is None else allowed
    for old, new in DEPRECATED.items():
        if old in data and old not in allowed:
            log.warning("%s: key '%s' is deprecated; use '%s'", p, old, new)
            data.setdefault(new, data.pop(old))
    unknown = sorted(set(data) - allowed)
    if unknown:
        raise ConfigFileError(
            f"{p}: unknown option(s) {', '.join(unknown)}; known options: "
            f"{', '.join(sorted(allowed))}"
        )
    return data


def _check_type(value: Any, tp: type, optional: bool) -> str | None:
    """Why ``value`` (from a config file) does not fit the field's type, or None."""
    if value is None:
        return None if optional else "must not be empty"
    if tp is bool:
        ok = isinstance(value, bool)
    elif tp is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif tp is float:
        ok = isinstance(value, int | float) and not isinstance(value, bool)
    else:
        ok = isinstance(value, tp)
    if ok:
        return None
    what = {bool: "true or false", int: "an integer", float: "a number", str: "text"}[tp]
    return f"expected {what}, got {value!r}"


def _checked(f: dataclasses.Field, tp: tuple[type, bool], value: Any, where: str) -> Any:
    """A value given as data (a config file's, Python's) for field ``f``: parsed when the
    field parses text (``budget: 15%``), else type-checked; a bad one is named ``where``."""
    parse = f.metadata.get("parse")
    if parse is not None and isinstance(value, str):
        try:
            return parse(value)
        except (argparse.ArgumentTypeError, ValueError) as exc:
            raise ConfigFileError(f"{where}: {exc}") from None
    why = None if parse is not None else _check_type(value, *tp)
    if why:
        raise ConfigFileError(f"{where}: {why}")
    return value


def check_values(
    values: dict[str, Any], source: str, classes: dict[str, type] = SECTIONS
) -> dict[str, Any]:
    """Options given in Python (``gdig.run(budget=...)``), checked as a config file's are;
    a bad one is named ``source: name``. Every name must be a field of ``classes``."""
    fields = {
        f.name: (f, _field_types(cls)[f.name])
        for cls in classes.values()
        for f in dataclasses.fields(cls)
    }
    return {k: _checked(*fields[k], v, f"{source}: {k}") for k, v in values.items()}


def resolve(
    flags: dict[str, Any],
    file_values: dict[str, Any],
    file_name: str | None,
    saved: dict[str, dict[str, Any]],
    classes: dict[str, type] | None = None,
    flag_name: Callable[[str], str] = flag,
) -> Any:
    """Build every section from flags > config file > saved manifest config > defaults,
    checking each value and naming its source when it is bad (a flag as ``flag_name``
    spells it: ``--budget``, or ``gdig.run(): budget`` for the API). Returns
    :class:`RunOptions`, or a dict of the built sections when ``classes`` is given (the
    model tools)."""
    built: dict[str, Any] = {}
    for section, cls in (classes or SECTIONS).items():
        types_ = _field_types(cls)
        kwargs: dict[str, Any] = {}
        origin: dict[str, str] = {}
        kept = read_saved(cls, saved.get(section, {}), "the run folder's manifest")
        for f in dataclasses.fields(cls):
            name = f.name
            if name in flags:
                kwargs[f.name], origin[f.name] = flags[name], flag_name(name)
            elif name in file_values:
                value = _checked(f, types_[f.name], file_values[name], f"{file_name}: {name}")
                kwargs[f.name], origin[f.name] = value, f"{file_name}: {name}"
            elif f.name in kept:
                kwargs[f.name], origin[f.name] = kept[f.name], f"the run's {name}"
        try:
            built[section] = cls(**kwargs)
        except OptionError as exc:
            where = origin.get(exc.name, flag(exc.name))
            raise OptionError(exc.name, exc.detail).with_message(where) from None
    return built if classes else RunOptions(**built)
