"""Hardware targets as data: the paper's FPGA (`FPGATarget`), a generic bit-operation machine (`GenericTarget`), and
reading them from names, mappings and ``.json``/``.toml`` files.

A target is a frozen dataclass registered as a PyTree: its numbers (array size, clock, packing, energies) are
traced leaves, so a jitted cost function takes a new target without recompiling; its name and the DSP's port widths
are static. Constructors check the numbers they can read (not tracers) and raise a ``ValueError`` naming the field.

Example:
    >>> load_target({"kind": "fpga", "rows": 8, "cols": 8, "packing": "hikonv"}).packing[2]
    8
    >>> target_to_dict(GenericTarget())["kind"]
    'generic'
"""

from __future__ import annotations

import dataclasses
import json
import numbers
import os
from collections.abc import Mapping
from typing import Any

import jax

from mpqjax.cost._checks import as_int, check_positive, is_concrete
from mpqjax.cost.packing import PAPER_PACKING, hikonv_packing_table, packing_table

__all__ = ["FPGATarget", "GenericTarget", "Target", "load_target", "target_from_dict", "target_to_dict"]


def _leaves(value):
    return value if isinstance(value, (tuple, list)) else (value,)


@dataclasses.dataclass(frozen=True)
class FPGATarget:
    """The paper's accelerator: an M x N systolic array of one-DSP processing elements with operand packing.

    Attributes:
        rows: M, output channels computed per invocation of the array (one processing unit per row).
        cols: N, input-patch entries a row consumes per pass.
        clock_hz: clock frequency (the paper does not state one; 200 MHz is an assumed default).
        packing: multiplications per DSP at bit-widths 1..16 (`packing_table`); the paper's by default.
        bias_bits: precision of biases and batch-norm parameters in the stored model.
        overhead_cycles: cycles added per invocation of the array (pipeline fill, adder-tree drain); 0 counts only
            the streaming cycles, as the paper's description does.
        energy_per_dsp_op_pj: energy of one (packed) DSP multiply-accumulate, in picojoules. Placeholder default;
            set it for your device.
        energy_per_byte_pj: energy per byte moved between memory and the array, in picojoules. Placeholder default.
        name: a label (static).
        multiplier_bits: the DSP's multiplier port widths (A, B) (static; documents `packing`).
        accumulator_bits: the DSP's accumulator width (static).

    Example:
        >>> FPGATarget(rows=32, cols=32, packing=hikonv_packing_table()).packing[2]
        8
    """

    rows: int = 16
    cols: int = 16
    clock_hz: float = 200e6
    packing: tuple[int, ...] = packing_table(PAPER_PACKING)
    bias_bits: int = 16
    overhead_cycles: float = 0.0
    energy_per_dsp_op_pj: float = 2.0
    energy_per_byte_pj: float = 10.0
    name: str = "fpga"
    multiplier_bits: tuple[int, int] = (27, 18)
    accumulator_bits: int = 48

    def __post_init__(self):
        owner = f"target {self.name!r}"
        for name in ("rows", "cols", "bias_bits"):
            check_positive(owner, name, getattr(self, name), integer=True)
        check_positive(owner, "clock_hz", self.clock_hz)
        for name in ("overhead_cycles", "energy_per_dsp_op_pj", "energy_per_byte_pj"):
            check_positive(owner, name, getattr(self, name), allow_zero=True)
        if all(is_concrete(value) for value in _leaves(self.packing)):
            object.__setattr__(self, "packing", packing_table(self.packing))


@dataclasses.dataclass(frozen=True)
class GenericTarget:
    """A target described by size and bit-operations only: latency is ``BOPs / bops_per_cycle`` cycles.

    Attributes:
        bops_per_cycle: bit-operations per cycle (65536 is 256 16x16-bit MACs per cycle).
        clock_hz: clock frequency.
        bias_bits: precision of biases and batch-norm parameters in the stored model.
        energy_per_bop_pj: energy per bit-operation in picojoules (placeholder default: about 0.2 pJ per 8-bit
            multiplication, Horowitz 2014, over 64 BOPs).
        energy_per_byte_pj: energy per byte moved, in picojoules (placeholder default).
        name: a label (static).
    """

    bops_per_cycle: float = 65536.0
    clock_hz: float = 1e9
    bias_bits: int = 16
    energy_per_bop_pj: float = 0.003
    energy_per_byte_pj: float = 10.0
    name: str = "generic"

    def __post_init__(self):
        owner = f"target {self.name!r}"
        check_positive(owner, "bops_per_cycle", self.bops_per_cycle)
        check_positive(owner, "clock_hz", self.clock_hz)
        check_positive(owner, "bias_bits", self.bias_bits, integer=True)
        for name in ("energy_per_bop_pj", "energy_per_byte_pj"):
            check_positive(owner, name, getattr(self, name), allow_zero=True)


Target = FPGATarget | GenericTarget

jax.tree_util.register_dataclass(
    FPGATarget,
    data_fields=[
        "rows",
        "cols",
        "clock_hz",
        "packing",
        "bias_bits",
        "overhead_cycles",
        "energy_per_dsp_op_pj",
        "energy_per_byte_pj",
    ],
    meta_fields=["name", "multiplier_bits", "accumulator_bits"],
)
jax.tree_util.register_dataclass(
    GenericTarget,
    data_fields=["bops_per_cycle", "clock_hz", "bias_bits", "energy_per_bop_pj", "energy_per_byte_pj"],
    meta_fields=["name"],
)

_TARGET_KINDS = {"fpga": FPGATarget, "generic": GenericTarget}
_INTEGER_FIELDS = {"rows", "cols", "bias_bits", "accumulator_bits"}


def target_from_dict(spec: Mapping[str, Any]) -> Target:
    """A target from plain data (a parsed JSON or TOML document).

    The mapping needs ``kind`` (``"fpga"`` or ``"generic"``); every other key is a field of that dataclass. For an
    FPGA, ``packing`` may be ``"paper"``, ``"hikonv"`` (derived from ``multiplier_bits`` and ``accumulator_bits`` by
    `hikonv_packing_table`), a list of 16 multiplications per DSP (bit-widths 1..16) or a table such as
    ``{"2": 15, "4": 6, "8": 2, "16": 1}`` (unlisted widths pad to the next listed one).

    Args:
        spec: the settings, e.g. a parsed JSON or TOML document.

    Returns:
        An `FPGATarget` or a `GenericTarget`.

    Raises:
        ValueError: unknown kind or key, or a value of the wrong type or range.

    Example:
        >>> target_from_dict({"kind": "fpga", "rows": 8, "cols": 8, "packing": "hikonv"}).packing[2]
        8
    """
    if not isinstance(spec, Mapping):
        raise ValueError(f"a target must be a table of settings, got {type(spec).__name__}")
    kind = spec.get("kind")
    if kind not in _TARGET_KINDS:
        raise ValueError(f"target kind must be one of {sorted(_TARGET_KINDS)}, got {kind!r}")
    cls = _TARGET_KINDS[kind]
    fields = {field.name for field in dataclasses.fields(cls)}
    unknown = sorted(set(spec) - fields - {"kind"})
    if unknown:
        raise ValueError(f"unknown {kind} target setting(s) {unknown}; known: {sorted(fields)}")
    values: dict[str, Any] = {}
    for key, value in spec.items():
        if key in ("kind", "packing"):
            continue
        if key == "name":
            if not isinstance(value, str):
                raise ValueError(f"target name must be a string, got {value!r}")
            values[key] = value
        elif key == "multiplier_bits":
            if not isinstance(value, (list, tuple)) or len(value) != 2:
                raise ValueError(f"multiplier_bits must be two port widths [A, B], got {value!r}")
            values[key] = tuple(as_int(item, "multiplier_bits") for item in value)
        elif key in _INTEGER_FIELDS:
            values[key] = as_int(value, key)
        else:
            if isinstance(value, bool) or not isinstance(value, numbers.Real):
                raise ValueError(f"target setting {key} must be a number, got {value!r}")
            values[key] = float(value)
    if cls is FPGATarget and "packing" in spec:
        packing = spec["packing"]
        if packing == "paper":
            values["packing"] = packing_table(PAPER_PACKING)
        elif packing == "hikonv":
            values["packing"] = hikonv_packing_table(
                multiplier_bits=values.get("multiplier_bits", (27, 18)),
                accumulator_bits=values.get("accumulator_bits", 48),
            )
        elif isinstance(packing, (Mapping, list, tuple)):
            values["packing"] = packing_table(packing)
        else:
            raise ValueError(f"packing must be 'paper', 'hikonv', a list or a table, got {packing!r}")
    return cls(**values)


def target_to_dict(target: Target) -> dict[str, Any]:
    """Plain data for a target: ``kind`` and every field, tuples as lists (JSON-ready).

    Args:
        target: an `FPGATarget` or a `GenericTarget`.

    Returns:
        A dict that `target_from_dict` reads back to an equal target.
    """
    kind = {cls: kind for kind, cls in _TARGET_KINDS.items()}[type(target)]
    data: dict[str, Any] = {"kind": kind}
    for field in dataclasses.fields(target):
        value = getattr(target, field.name)
        data[field.name] = list(value) if isinstance(value, tuple) else value
    return data


def _read_toml(path: str) -> Any:
    import tomllib

    with open(path, "rb") as handle:
        return tomllib.load(handle)


def _read_target_file(path: str, suffix: str) -> Any:
    """The parsed document of a ``.json`` or ``.toml`` target file; a parse error raises a one-line ValueError."""
    try:
        if suffix == ".json":
            with open(path, encoding="utf-8") as handle:
                return json.load(handle)
        return _read_toml(path)
    except (ValueError, UnicodeDecodeError) as error:  # JSONDecodeError and TOMLDecodeError are ValueErrors
        if "needs Python" in str(error):
            raise
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise ValueError(f"malformed target file {path}: {first_line}") from None


def load_target(spec: str | os.PathLike | Mapping | Target = "fpga") -> Target:
    """A target by name (``"fpga"``: the paper's; ``"generic"``), from a ``.json``/``.toml`` file, or from a mapping.

    Args:
        spec: a name, a path to a ``.json`` or ``.toml`` file (read by `target_from_dict`), a mapping of settings,
            or a target (returned as it is).

    Returns:
        An `FPGATarget` or a `GenericTarget`.

    Raises:
        ValueError: unknown name, missing file, or a malformed file (the message names the file and the problem).

    Example:
        >>> load_target("generic").name
        'generic'
    """
    if isinstance(spec, (FPGATarget, GenericTarget)):
        return spec
    if isinstance(spec, Mapping):
        return target_from_dict(spec)
    text = os.fspath(spec)
    if text in _TARGET_KINDS:
        return _TARGET_KINDS[text]()
    suffix = os.path.splitext(text)[1].lower()
    if suffix not in (".json", ".toml"):
        raise ValueError(f"unknown target {text!r}: expected 'fpga', 'generic', or a .json/.toml target file")
    if not os.path.isfile(text):
        raise ValueError(f"target file not found: {text}")
    data = _read_target_file(text, suffix)
    try:
        return target_from_dict(data)
    except ValueError as error:
        raise ValueError(f"target file {text}: {error}") from None
