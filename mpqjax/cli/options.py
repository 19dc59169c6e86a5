"""Command-line options generated from `mpqjax.search.SearchConfig`'s field metadata, and the parsers of their text.

A command names the settings it takes (`add_config_options`); each becomes an option with the field's help, group
and default, spelled ``--<field-name>`` unless the field says otherwise (``option``, ``aliases``) or the command
gives spellings of its own. Defaults are not copied into argparse: an option not given is left out, so
`config_from_args` builds the `SearchConfig` from what was given and the defaults stay in one place. Values are
checked by `SearchConfig.validate`, with messages that name the option.

Example:
    >>> parser = argparse.ArgumentParser()
    >>> add_config_options(parser, ["trials", "max_size_bytes"])
    >>> config_from_args(parser.parse_args(["--max-size", "16kB"])).max_size_bytes
    16000.0
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import re
from collections.abc import Callable, Mapping, Sequence

from mpqjax.search.config import GROUPS, SearchConfig

__all__ = ["SIZE_UNITS", "TIME_UNITS", "add_config_options", "bit_sets", "config_from_args", "fixed_bits",
           "float_list", "format_default", "given_options", "int_list", "number_list", "option_names", "population",
           "quantity", "refuse_unused", "seconds", "size_bytes"]

SIZE_UNITS = {"b": 1.0, "kb": 1e3, "mb": 1e6, "gb": 1e9, "kib": 1024.0, "mib": 1024.0**2}
TIME_UNITS = {"s": 1.0, "ms": 1e-3, "us": 1e-6, "ns": 1e-9}


# -- parsers of option values (argparse types: bad text raises ArgumentTypeError, reported as one line) -----------


def quantity(text: str, units: Mapping[str, float], default_unit: str) -> float:
    """A positive number with an optional unit suffix, e.g. ``16kB`` or ``1.5ms``, in base units.

    Raises:
        argparse.ArgumentTypeError: not a positive number with a known unit.
    """
    match = re.fullmatch(r"\s*([0-9.eE+-]+)\s*([A-Za-z]*)\s*", text)
    unit = (match.group(2) if match else "").lower() or default_unit
    try:
        value = float(match.group(1)) * units[unit] if match else math.nan
    except (ValueError, KeyError):
        value = math.nan
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"expected a positive number with an optional unit ({', '.join(units)}), "
                                         f"got {text!r}")
    return value


def size_bytes(text: str) -> float:
    """A size: ``20000``, ``16kB``, ``0.5MB``, ``64KiB`` (bytes by default)."""
    return quantity(text, SIZE_UNITS, "b")


def seconds(text: str) -> float:
    """A duration: ``0.01``, ``1.5ms``, ``2us`` (seconds by default)."""
    return quantity(text, TIME_UNITS, "s")


def int_list(text: str) -> tuple[int, ...]:
    """Comma-separated integers: ``8,6,4``."""
    try:
        return tuple(int(item) for item in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None


def float_list(text: str) -> tuple[float, ...]:
    """Comma-separated numbers: ``0.75,1,1.25``."""
    try:
        return tuple(float(item) for item in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from None


def number_list(text: str) -> tuple[float, ...]:
    """Comma-separated numbers, naming the first item that is not one (per-layer values: ``8,3,3,8``)."""
    values = []
    for item in text.split(","):
        try:
            values.append(float(item))
        except ValueError:
            raise argparse.ArgumentTypeError(f"{item.strip()!r} is not a number") from None
    return tuple(values)


def bit_sets(text: str) -> tuple[tuple[int, ...], ...]:
    """Groups of bit-widths separated by ``;``: ``8,6;6,4,3;4,3,2;3,2``."""
    try:
        return tuple(tuple(int(bits) for bits in group.split(",")) for group in text.split(";"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected groups of integers like '8,6;6,4,3', got {text!r}") from None


def fixed_bits(text: str) -> tuple[tuple[str, int], ...]:
    """Layers fixed by hand, ``conv1=8,head=8``, as sorted ``(name, bits)`` pairs (a layer named twice stays twice:
    `SearchConfig.validate` refuses it rather than keep one silently)."""
    fixed = []
    for item in filter(None, (part.strip() for part in text.split(","))):
        name, _, bits = item.partition("=")
        try:
            fixed.append((name.strip(), int(bits)))
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected 'layer=bits' items, got {item!r}") from None
    return tuple(sorted(fixed))


def population(text: str) -> int | str:
    """A population size: ``auto`` or an integer (its range is `SearchConfig.validate`'s)."""
    if text == "auto":
        return text
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a positive integer or 'auto', got {text!r}") from None


# A field's parser by its annotation (SearchConfig's annotations are strings); a unit replaces it.
_PARSERS: dict[str, Callable[[str], object]] = {
    "str": str, "str | None": str, "int": int, "float": float, "float | None": float, "int | str": population,
    "tuple[int, ...]": int_list, "tuple[float, ...]": float_list, "tuple[tuple[int, ...], ...]": bit_sets,
    "tuple[tuple[str, int], ...]": fixed_bits,
}
_UNIT_PARSERS = {"bytes": size_bytes, "seconds": seconds}


def format_default(value) -> str | None:
    """A default as its option's text (the inverse of the parsers), or None when there is nothing to show."""
    if value is None or isinstance(value, bool) or value == ():
        return None
    if isinstance(value, tuple) and isinstance(value[0], tuple):
        if isinstance(value[0][0], str):
            return ",".join(f"{name}={bits}" for name, bits in value)
        return ";".join(",".join(map(str, group)) for group in value)
    if isinstance(value, tuple):
        return ",".join(f"{item:g}" if isinstance(item, float) else str(item) for item in value)
    return f"{value:g}" if isinstance(value, float) else str(value)


# -- options from the config ---------------------------------------------------------------------------------------


def _fields() -> dict[str, dataclasses.Field]:
    return {field.name: field for field in dataclasses.fields(SearchConfig)}


def _spellings(field: dataclasses.Field, own: Sequence[str]) -> list[str]:
    main = field.metadata.get("option") or "--" + field.name.replace("_", "-")
    return list(dict.fromkeys([*own, main, *field.metadata.get("aliases", ())]))


def option_names(fields: Sequence[str], spellings: Mapping[str, Sequence[str]] | None = None) -> dict[str, str]:
    """The option each setting is named by in messages: the command's own spelling, else the field's."""
    known, spellings = _fields(), dict(spellings or {})
    return {name: _spellings(known[name], spellings.get(name, ()))[0] for name in fields}


def add_config_options(parser: argparse.ArgumentParser, fields: Sequence[str], *,
                       spellings: Mapping[str, Sequence[str]] | None = None,
                       notes: Mapping[str, str] | None = None) -> None:
    """Add an option for each named `SearchConfig` field, in the config's groups and field order.

    Args:
        parser: the command's parser.
        fields: the settings the command takes.
        spellings: a command's own spellings of some settings, first in the list (e.g. ``{"final_epochs":
            ["--epochs"]}``); the field's spelling stays accepted.
        notes: text appended to some settings' help.
    """
    known, spellings, notes = _fields(), dict(spellings or {}), dict(notes or {})
    unknown = sorted(set(fields) - set(known))
    if unknown:
        raise ValueError(f"not SearchConfig fields: {unknown}")
    for group_name in GROUPS:
        members = [known[name] for name in known if name in fields and known[name].metadata["group"] == group_name]
        group = parser.add_argument_group(group_name) if members else None
        for field in members:
            help_text, shown = field.metadata["help"], format_default(field.default)
            if shown is not None and "default" not in help_text:
                help_text += f" (default {shown})"
            if field.name in notes:
                help_text += f"; {notes[field.name]}"
            flags = _spellings(field, spellings.get(field.name, ()))
            kwargs = {"dest": field.name, "default": argparse.SUPPRESS, "help": help_text.replace("%", "%%")}
            if field.type == "bool":
                kwargs["action"] = "store_false" if field.default else "store_true"
            else:
                unit = field.metadata.get("unit")
                kwargs["type"] = _UNIT_PARSERS[unit] if unit else _PARSERS[field.type]
                kwargs["metavar"] = flags[0].lstrip("-").replace("-", "_").upper()
            group.add_argument(*flags, **kwargs)
    parser.set_defaults(config_options=option_names(fields, spellings))


def given_options(args: argparse.Namespace) -> set[str]:
    """The settings whose options were given (`add_config_options`' options default to absent)."""
    return {name for name in getattr(args, "config_options", {}) if hasattr(args, name)}


def refuse_unused(args: argparse.Namespace, settings: Sequence[str], why: str) -> None:
    """Raise ValueError when an option of ``settings`` was given: it would have no effect ``why`` (a command's own
    rule; `SearchConfig.validate` holds those of every command).

    Example:
        >>> refuse_unused(args, ["target"], "with --float: the float model has no configuration to cost")
    """
    names = getattr(args, "config_options", {})
    unused = [names.get(setting, setting) for setting in settings if hasattr(args, setting)]
    if unused:
        raise ValueError(f"{' and '.join(unused)} {'has' if len(unused) == 1 else 'have'} no effect {why}")


def config_from_args(args: argparse.Namespace, **overrides) -> SearchConfig:
    """The `SearchConfig` of the options given (`add_config_options`'), with ``overrides``, validated: values,
    contradictions and options that would have no effect (`SearchConfig.validate` with the options given).

    Raises:
        ValueError: a bad setting or combination, named by its options.
    """
    names = getattr(args, "config_options", {})
    given = given_options(args)
    config = SearchConfig(**{**{name: getattr(args, name) for name in given}, **overrides})
    config.validate(names=names, given=given)
    return config
