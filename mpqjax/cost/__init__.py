"""Hardware cost model: model size, latency, speed-up, bit-operations and energy of a configuration on a target.

A configuration of a model is two arrays over its layer table (`mpqjax.nn.models.LayerTable`): ``bits[l]`` (weights and
input activations of layer ``l`` share one bit-width, as in the paper) and ``widths[l]`` (width multiplier). Every
cost is a pure `jax.numpy` function of ``(table, bits, widths, target)``: it runs under `jax.jit`, and a batch of
configurations (arrays of shape ``(..., len(table))``, or `jax.vmap`) costs one call. The table is static (a Python
object, hashable, so it may be a static argument of `jax.jit`); the target is a PyTree whose numbers (array size,
clock, packing, energies) are traced, so changing them does not recompile.

Counting rules (the same for every target):

- Channels follow the table's width semantics: layer ``l`` produces ``scale_channels(out_channels, widths[l])``
  channels (its base ``out_channels`` if not ``scalable``) and consumes what its ``input_layer`` produces (base
  ``in_channels`` for the model input). A depthwise layer produces as many channels as it consumes.
- Weights: ``kh*kw*Cin'*Cout'`` (conv, dense), ``kh*kw*Cout'`` (depthwise), stored at the layer's bit-width; the
  paper's memory packing makes size linear in the bit-width (3-bit weights cost 3 bits).
- Auxiliary parameters: a bias (``Cout'`` values) when ``use_bias`` and a batch-norm scale and offset (``2*Cout'``,
  running statistics folded in) when ``batch_norm``, stored at the target's ``bias_bits`` (16 by default).
- Baselines: FiP16 is the same model at width 1 with weights, activations and auxiliary parameters at 16 bits, run
  on the same target (16-bit operands: 1 multiplication per DSP); FP32 (size only) stores everything at 32 bits.
  Sizes are in bytes; "MB" in the paper is 10**6 bytes.
- Bit-operations (BOPs): ``MACs * bits * bits`` per layer (weights and activations share the bit-width).
- Bytes moved (for energy): each layer reads its weights and its input feature map (``out_h*stride_h`` by
  ``out_w*stride_w`` by ``Cin'``) and writes its output feature map, activations at the layer's bit-width.

The paper's FPGA (`FPGATarget`, Section III.C): an M x N systolic array of processing elements with one DSP each
(27x18 multiplier, 48-bit accumulator). A layer's ``k*k*Cin'`` input patch (``k*k`` for depthwise) is streamed N
entries per row pass, ``ceil(patch / N)`` passes per output pixel; M output channels are computed per invocation of
the array, repeated ``ceil(Cout'/M)`` times. A DSP packs P multiplications of low-bit operands (HiKonv packs
neighbouring activations and kernel entries), so a row completes P of its passes per cycle. Per layer:

    cycles = ceil(out_h * out_w * ceil(patch / N) / P(bits)) * ceil(Cout' / M) + overhead_cycles * ceil(Cout' / M)

with P from the target's packing table (the paper's: 15 at 2 bits, 6 at 3-4 bits, 2 at 6-8 bits, 1 at 16 bits;
widths the paper does not list pad to the next listed width, so 1 bit packs like 2 and 5 like 6).
`hikonv_packing_table` derives a table from HiKonv's rule for any A x B multiplier instead.

The generic target (`GenericTarget`) counts size and BOPs only: its latency is ``BOPs / bops_per_cycle`` cycles, the
model of a machine whose throughput scales with operand width (a bit-serial or bit-flexible accelerator).

Library functions under jit cannot raise on traced values: inside `cost`, bit-widths are rounded and clipped to
1..16. Call `validate_config` (not jitted) on user input first; it raises a `ValueError` naming the problem.

Example:
    >>> from mpqjax import hardware
    >>> from mpqjax.nn.models import LayerSpec, LayerTable
    >>> table = LayerTable((LayerSpec("conv", "conv", 3, 8, kernel=(3, 3), out_hw=(4, 4)),))
    >>> bits, widths = hardware.validate_config(table, 4, 1.0)
    >>> result = hardware.cost(table, bits, widths, hardware.FPGATarget(rows=4, cols=8))
    >>> int(result.size_bytes), int(result.latency_cycles)
    (108, 22)
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import numbers
import os
from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from mpqjax.nn.table import LayerTable

MIN_BITS = 1
MAX_BITS = 16


def _as_int(value, what: str) -> int:
    if isinstance(value, str):
        try:
            value = float(value)
        except ValueError:
            raise ValueError(f"{what} must be an integer, got {value!r}") from None
    if isinstance(value, bool) or not isinstance(value, (numbers.Real, np.number)) or float(value) != int(value):
        raise ValueError(f"{what} must be an integer, got {value!r}")
    return int(value)


#: The paper's packing (Section III.C): multiplications per 27x18 DSP for the bit-widths it lists.
PAPER_PACKING: dict[int, int] = {2: 15, 3: 6, 4: 6, 6: 2, 8: 2, 16: 1}


def packing_table(entries: Mapping[int, int] | Sequence[int]) -> tuple[int, ...]:
    """Multiplications per DSP for every bit-width 1..16, from a full list or a sparse mapping.

    A sparse mapping lists some bit-widths; a width that is not listed uses the entry of the next wider listed one
    (its operands are padded to that width), so the table must list 16 or a wider entry must cover every width.

    Args:
        entries: a sequence of 16 positive integers (bit-widths 1..16 in order) or a mapping {bits: multiplications}.

    Returns:
        A tuple of 16 positive integers; entry ``b - 1`` is the multiplications per DSP at ``b`` bits.

    Example:
        >>> packing_table(PAPER_PACKING)[:8]
        (15, 15, 6, 6, 2, 2, 2, 2)
    """
    if isinstance(entries, Mapping):
        sparse = {}
        for key, value in entries.items():
            bits = _as_int(key, "packing bit-width")
            if not MIN_BITS <= bits <= MAX_BITS:
                raise ValueError(f"packing lists {bits} bits, outside {MIN_BITS}..{MAX_BITS}")
            sparse[bits] = _as_int(value, f"packing at {bits} bits")
        if MAX_BITS not in sparse:
            raise ValueError(f"a sparse packing table must list {MAX_BITS} bits (the FiP16 baseline)")
        table = []
        for bits in range(MIN_BITS, MAX_BITS + 1):
            table.append(sparse[min(listed for listed in sparse if listed >= bits)])
    else:
        if isinstance(entries, (str, bytes)) or len(entries) != MAX_BITS:
            raise ValueError(f"a packing list needs {MAX_BITS} entries (bit-widths 1..{MAX_BITS})")
        table = [_as_int(value, f"packing at {bits} bits") for bits, value in enumerate(entries, start=1)]
    for bits, value in enumerate(table, start=1):
        if value < 1:
            raise ValueError(f"packing at {bits} bits must be at least 1 multiplication per DSP, got {value}")
    return tuple(table)


class HiKonvPacking(NamedTuple):
    """One packed multiplication by HiKonv's rule: ``activations`` x ``weights`` operands in one multiply."""

    activations: int  # operands packed in the A port (HiKonv's N)
    weights: int  # operands packed in the B port (HiKonv's K)
    products: int  # multiplications done by one multiply, N*K
    additions: int  # additions done for free, N*K - (N+K-1): products that land in a shared output slice
    slice_bits: int  # bits per packed slice, p + q + guard
    guard_bits: int  # ceil(log2(min(N, K))) (+ extra): room for the sum of overlapping products


def hikonv_packing(
    bits: int, *, multiplier_bits: tuple[int, int] = (27, 18), accumulator_bits: int = 48, extra_guard_bits: int = 0
) -> HiKonvPacking:
    """The most products one A x B multiplier yields for ``bits``-bit operands under HiKonv's packing rule.

    HiKonv packs N activations in the A port and K weights in the B port, each in a slice of
    ``S = p + q + G`` bits with ``G = ceil(log2(min(N, K)))`` guard bits (so the up to min(N, K) products summed into
    one output slice do not overflow into the next); one multiply then yields the N*K products of a 1-D convolution
    as N+K-1 output slices, i.e. N*K multiplications and N*K-(N+K-1) additions. The operands fit when
    ``(N-1)*S + p <= A``, ``(K-1)*S + q <= B`` and the ``(N+K-2)*S + p + q + G`` output bits fit the accumulator.
    Among all (N, K) that fit, the one with the most products wins (ties: more activations).

    With the paper's 27x18 DSP this gives 2 products at 8 and 6 bits, 6 (+2 additions) at 4 bits and 15 (+8
    additions) at 2 bits, as in the paper; at 3 bits it gives 8 products (4 x 2 operands in 7-bit slices, 3
    additions) where the paper's table uses the 4-bit layout (6). Operands are treated as unsigned slices; signed
    operands use the same slices with HiKonv's sign correction.

    Args:
        bits: operand bit-width p = q (weights and activations share it).
        multiplier_bits: (A, B) input port widths of the multiplier.
        accumulator_bits: width of the accumulator that holds the packed result.
        extra_guard_bits: guard bits added to every slice, e.g. ``ceil(log2(c))`` to accumulate c packed products
            before reading the slices out.

    Returns:
        A `HiKonvPacking`.

    Raises:
        ValueError: when a single operand does not fit the ports.

    Example:
        >>> hikonv_packing(4).products, hikonv_packing(4).additions
        (6, 2)
    """
    bits = _as_int(bits, "bits")
    port_a, port_b = (_as_int(value, "multiplier_bits") for value in multiplier_bits)
    if bits < 1 or bits > port_a or bits > port_b:
        raise ValueError(f"{bits}-bit operands do not fit a {port_a}x{port_b} multiplier")
    best = None
    for activations in range(1, port_a // bits + 1):
        for weights in range(1, port_b // bits + 1):
            guard = math.ceil(math.log2(min(activations, weights))) + extra_guard_bits
            slice_bits = 2 * bits + guard
            fits = (
                (activations - 1) * slice_bits + bits <= port_a
                and (weights - 1) * slice_bits + bits <= port_b
                and (activations + weights - 2) * slice_bits + 2 * bits + guard <= accumulator_bits
            )
            if not fits:
                continue
            products = activations * weights
            candidate = HiKonvPacking(
                activations, weights, products, products - (activations + weights - 1), slice_bits, guard
            )
            if best is None or (products, activations) > (best.products, best.activations):
                best = candidate
    if best is None:  # a single product of p + q bits must fit the accumulator
        raise ValueError(f"{bits}-bit products do not fit a {accumulator_bits}-bit accumulator")
    return best


def hikonv_packing_table(
    *, multiplier_bits: tuple[int, int] = (27, 18), accumulator_bits: int = 48, extra_guard_bits: int = 0
) -> tuple[int, ...]:
    """Multiplications per DSP for bit-widths 1..16 by HiKonv's rule (see `hikonv_packing`).

    Example:
        >>> hikonv_packing_table()[:8]
        (28, 15, 8, 6, 6, 2, 2, 2)
    """
    return tuple(
        hikonv_packing(
            bits, multiplier_bits=multiplier_bits, accumulator_bits=accumulator_bits, extra_guard_bits=extra_guard_bits
        ).products
        for bits in range(MIN_BITS, MAX_BITS + 1)
    )


# ---------------------------------------------------------------------------------------------------------------------
# Targets


def _is_concrete(value) -> bool:
    # Under jit/vmap the dataclasses are rebuilt with tracers: only check values we can read.
    return isinstance(value, (numbers.Number, np.number)) and not isinstance(value, bool)


def _check_positive(owner: str, name: str, value, *, integer: bool = False, allow_zero: bool = False):
    if isinstance(value, bool):
        raise ValueError(f"{owner}: {name} must be a number, got {value!r}")
    if not _is_concrete(value):
        return
    if integer and float(value) != int(value):
        raise ValueError(f"{owner}: {name} must be an integer, got {value!r}")
    if not math.isfinite(float(value)) or value < 0 or (value == 0 and not allow_zero):
        bound = ">= 0" if allow_zero else "> 0"
        raise ValueError(f"{owner}: {name} must be finite and {bound}, got {value!r}")


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
            _check_positive(owner, name, getattr(self, name), integer=True)
        _check_positive(owner, "clock_hz", self.clock_hz)
        for name in ("overhead_cycles", "energy_per_dsp_op_pj", "energy_per_byte_pj"):
            _check_positive(owner, name, getattr(self, name), allow_zero=True)
        if all(_is_concrete(value) for value in _leaves(self.packing)):
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
        _check_positive(owner, "bops_per_cycle", self.bops_per_cycle)
        _check_positive(owner, "clock_hz", self.clock_hz)
        _check_positive(owner, "bias_bits", self.bias_bits, integer=True)
        for name in ("energy_per_bop_pj", "energy_per_byte_pj"):
            _check_positive(owner, name, getattr(self, name), allow_zero=True)


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


def _leaves(value):
    return value if isinstance(value, (tuple, list)) else (value,)


def target_from_dict(spec: Mapping[str, Any]) -> Target:
    """A target from plain data (a parsed JSON or TOML document).

    The mapping needs ``kind`` (``"fpga"`` or ``"generic"``); every other key is a field of that dataclass. For an
    FPGA, ``packing`` may be ``"paper"``, ``"hikonv"`` (derived from ``multiplier_bits`` and ``accumulator_bits`` by
    `hikonv_packing_table`), a list of 16 multiplications per DSP (bit-widths 1..16) or a table such as
    ``{"2": 15, "4": 6, "8": 2, "16": 1}`` (unlisted widths pad to the next listed one).

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
            values[key] = tuple(_as_int(item, "multiplier_bits") for item in value)
        elif key in _INTEGER_FIELDS:
            values[key] = _as_int(value, key)
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
    """Plain data for a target (JSON-ready; `target_from_dict` reads it back)."""
    kind = {cls: kind for kind, cls in _TARGET_KINDS.items()}[type(target)]
    data: dict[str, Any] = {"kind": kind}
    for field in dataclasses.fields(target):
        value = getattr(target, field.name)
        data[field.name] = list(value) if isinstance(value, tuple) else value
    return data


def _read_toml(path: str) -> dict:
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        try:
            import tomli as tomllib
        except ModuleNotFoundError:
            raise ValueError(
                f"reading {path} needs Python >= 3.11 or the 'tomli' package; use a .json target file instead"
            ) from None
    with open(path, "rb") as handle:
        return tomllib.load(handle)


def load_target(spec: str | os.PathLike | Mapping | Target = "fpga") -> Target:
    """A target by name (``"fpga"``: the paper's; ``"generic"``), from a ``.json``/``.toml`` file, or from a mapping.

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
    try:
        if suffix == ".json":
            with open(text, encoding="utf-8") as handle:
                data = json.load(handle)
        else:
            data = _read_toml(text)
    except (ValueError, UnicodeDecodeError) as error:  # JSONDecodeError and TOMLDecodeError are ValueErrors
        if "needs Python" in str(error):
            raise
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise ValueError(f"malformed target file {text}: {first_line}") from None
    try:
        return target_from_dict(data)
    except ValueError as error:
        raise ValueError(f"target file {text}: {error}") from None


# ---------------------------------------------------------------------------------------------------------------------
# Configurations


def validate_config(table: LayerTable, bits, widths) -> tuple[np.ndarray, np.ndarray]:
    """Check a configuration (or a batch of them) for ``table`` and return it as arrays; not jittable.

    A scalar bit-width or width applies to every layer. Bit-widths must be integers in 1..16; width multipliers
    finite and > 0; the last axis must have one entry per layer; layers of one width group must share a multiplier.

    Args:
        table: the model's layer table.
        bits: bit-width per layer, shape ``(..., len(table))`` or a scalar.
        widths: width multiplier per layer, shape ``(..., len(table))`` or a scalar.

    Returns:
        ``(bits, widths)`` as int32 and float32 NumPy arrays broadcast to one common shape ``(..., len(table))``.

    Raises:
        ValueError: naming the first problem found (and the layer it concerns).
    """
    n_layers = len(table)
    where = f" of {table.model}" if table.model else ""
    checked = []
    for name, values in (("bit-widths", bits), ("width multipliers", widths)):
        try:
            array = np.asarray(values, dtype=np.float64)
        except (TypeError, ValueError):
            raise ValueError(f"{name} must be numbers, got {values!r}") from None
        if array.ndim == 0:
            array = np.full((n_layers,), float(array))
        if array.shape[-1] != n_layers:
            raise ValueError(f"got {array.shape[-1]} {name} for the {n_layers} layers{where}")
        checked.append(array)
    bits_array, widths_array = np.broadcast_arrays(*checked)
    names = table.names

    def first_bad(mask):
        return names[int(np.argwhere(mask)[0][-1])]

    bad = ~np.isfinite(bits_array) | (bits_array != np.round(bits_array))
    if bad.any():
        value = bits_array[tuple(np.argwhere(bad)[0])]
        raise ValueError(f"bit-width {value:g} of layer {first_bad(bad)!r} is not an integer")
    bad = (bits_array < MIN_BITS) | (bits_array > MAX_BITS)
    if bad.any():
        value = bits_array[tuple(np.argwhere(bad)[0])]
        raise ValueError(f"bit-width {value:g} of layer {first_bad(bad)!r} is outside {MIN_BITS}..{MAX_BITS}")
    bad = ~np.isfinite(widths_array) | (widths_array <= 0)
    if bad.any():
        value = widths_array[tuple(np.argwhere(bad)[0])]
        raise ValueError(f"width multiplier {value:g} of layer {first_bad(bad)!r} must be finite and > 0")
    for group in table.width_groups():
        spread = widths_array[..., group] != widths_array[..., group[:1]]
        if spread.any():
            index = tuple(np.argwhere(spread)[0])
            other = group[index[-1]]
            raise ValueError(
                f"layers {names[group[0]]!r} and {names[other]!r} share a width group but have width multipliers "
                f"{widths_array[index[:-1] + (group[0],)]:g} and {widths_array[index]:g}"
            )
    return bits_array.astype(np.int32), widths_array.astype(np.float32)


# ---------------------------------------------------------------------------------------------------------------------
# Cost arithmetic


class Cost(NamedTuple):
    """Cost of a configuration (leading batch axes as in the inputs; per-layer fields add a last axis)."""

    size_bytes: jax.Array
    latency_cycles: jax.Array
    latency_seconds: jax.Array
    throughput_per_second: jax.Array  # inferences per second, 1 / latency
    speedup_vs_fip16: jax.Array
    size_reduction_vs_fip16: jax.Array
    size_reduction_vs_fp32: jax.Array
    bops: jax.Array
    energy_joules: jax.Array
    layer_size_bytes: jax.Array
    layer_cycles: jax.Array
    layer_macs: jax.Array
    layer_bops: jax.Array
    layer_weights: jax.Array  # weight count of each layer at its width


@functools.lru_cache(maxsize=64)
def _static_arrays(table: LayerTable) -> dict[str, np.ndarray]:
    arrays = {key: np.asarray(value) for key, value in table.arrays().items()}
    # A depthwise layer produces what it consumes: follow its input chain to the layer that sets its channel count.
    channel_source = np.arange(len(table))
    for index, layer in enumerate(table):
        if layer.kind == "depthwise":
            channel_source[index] = -1 if layer.input_layer < 0 else channel_source[layer.input_layer]
    arrays["channel_source"] = channel_source
    arrays["aux_per_channel"] = arrays["use_bias"].astype(np.float32) + 2.0 * arrays["batch_norm"].astype(np.float32)
    return arrays


def _layer_channels(arrays, widths, xp=jnp, dtype=jnp.float32):
    """Channels each layer consumes and produces at ``widths`` (float arrays, shape of widths)."""
    base_out = xp.asarray(arrays["out_channels"], dtype)
    base_in = xp.asarray(arrays["in_channels"], dtype)
    scaled = xp.where(arrays["scalable"], xp.floor(base_out * widths + 0.5), base_out)
    source = arrays["channel_source"]
    produced = xp.where(source >= 0, xp.take(scaled, np.maximum(source, 0), axis=-1), base_in)
    input_layer = arrays["input_layer"]
    consumed = xp.where(input_layer >= 0, xp.take(produced, np.maximum(input_layer, 0), axis=-1), base_in)
    return consumed, produced


def _layer_quantities(table: LayerTable, widths, xp=jnp, dtype=jnp.float32):
    """Per-layer channels, weights, MACs and activation counts; ``xp=np`` with float64 gives exact counts."""
    arrays = _static_arrays(table)
    consumed, produced = _layer_channels(arrays, widths, xp, dtype)
    kernel = xp.asarray(arrays["kernel_h"] * arrays["kernel_w"], dtype)
    pixels = xp.asarray(arrays["out_h"] * arrays["out_w"], dtype)
    patch = kernel * xp.where(arrays["depthwise"], 1.0, consumed)
    weights = patch * produced
    in_pixels = xp.asarray(arrays["out_h"] * arrays["stride_h"] * arrays["out_w"] * arrays["stride_w"], dtype)
    return {
        "consumed": consumed,
        "produced": produced,
        "patch": patch,
        "weights": weights,
        "aux": arrays["aux_per_channel"] * produced,
        "macs": weights * pixels,
        "pixels": pixels,
        "activations": in_pixels * consumed + pixels * produced,
    }


def _layer_cost(table: LayerTable, bits, widths, target: Target, bias_bits):
    """Per-layer size in bits, cycles, MACs, BOPs and energy in picojoules."""
    quantities = _layer_quantities(table, widths)
    size_bits = quantities["weights"] * bits + quantities["aux"] * bias_bits
    bops = quantities["macs"] * bits * bits
    bytes_moved = (quantities["weights"] + quantities["activations"]) * bits / 8.0
    if isinstance(target, FPGATarget):
        packing = jnp.asarray(target.packing, jnp.float32)
        products = packing[bits.astype(jnp.int32) - 1]
        invocations = jnp.ceil(quantities["produced"] / target.rows)
        row_passes = quantities["pixels"] * jnp.ceil(quantities["patch"] / target.cols)
        cycles = jnp.ceil(row_passes / products) * invocations + target.overhead_cycles * invocations
        energy_pj = (
            quantities["macs"] / products * target.energy_per_dsp_op_pj + bytes_moved * target.energy_per_byte_pj
        )
    elif isinstance(target, GenericTarget):
        cycles = bops / target.bops_per_cycle
        energy_pj = bops * target.energy_per_bop_pj + bytes_moved * target.energy_per_byte_pj
    else:
        raise TypeError(f"unsupported target type {type(target).__name__}")
    return size_bits, cycles, quantities["macs"], bops, energy_pj


def cost(table: LayerTable, bits, widths, target: Target | None = None) -> Cost:
    """Size, latency, speed-up, BOPs and energy of configurations of ``table`` on ``target``; jittable, vmappable.

    Args:
        table: the model's layer table (static).
        bits: bit-width per layer, shape ``(..., len(table))`` (rounded and clipped to 1..16; validate user input
            with `validate_config` first).
        widths: width multiplier per layer, same shape (broadcasting applies).
        target: `FPGATarget` (default) or `GenericTarget`; its numbers may be traced.

    Returns:
        A `Cost` of float32 arrays: totals with the configurations' batch shape, per-layer fields with a last axis.

    Example:
        >>> costs = jax.jit(jax.vmap(lambda b, w: cost(table, b, w)))(bits_batch, widths_batch)  # doctest: +SKIP
    """
    target = FPGATarget() if target is None else target
    bits = jnp.clip(jnp.round(jnp.asarray(bits, jnp.float32)), MIN_BITS, MAX_BITS)
    widths = jnp.asarray(widths, jnp.float32)
    bits, widths = jnp.broadcast_arrays(bits, widths)
    size_bits, cycles, macs, bops, energy_pj = _layer_cost(table, bits, widths, target, target.bias_bits)

    base_bits = jnp.full((len(table),), 16.0)
    base_widths = jnp.ones((len(table),), jnp.float32)
    fip16_size_bits, fip16_cycles, _, _, _ = _layer_cost(table, base_bits, base_widths, target, 16.0)
    fp32_size_bits = _layer_cost(table, 2 * base_bits, base_widths, GenericTarget(), 32.0)[0]

    total_cycles = cycles.sum(-1)
    latency_seconds = total_cycles / target.clock_hz
    size_bytes = size_bits.sum(-1) / 8.0
    return Cost(
        size_bytes=size_bytes,
        latency_cycles=total_cycles,
        latency_seconds=latency_seconds,
        throughput_per_second=1.0 / latency_seconds,
        speedup_vs_fip16=fip16_cycles.sum() / total_cycles,
        size_reduction_vs_fip16=fip16_size_bits.sum() / 8.0 / size_bytes,
        size_reduction_vs_fp32=fp32_size_bits.sum() / 8.0 / size_bytes,
        bops=bops.sum(-1),
        energy_joules=energy_pj.sum(-1) * 1e-12,
        layer_size_bytes=size_bits / 8.0,
        layer_cycles=cycles,
        layer_macs=macs,
        layer_bops=bops,
        layer_weights=_layer_quantities(table, widths)["weights"],
    )


def fip16_size_bytes(table: LayerTable) -> float:
    """Size of the FiP16 baseline (width 1, weights and auxiliary parameters at 16 bits) in bytes."""
    return float(cost(table, 16, 1.0, GenericTarget(bias_bits=16)).size_bytes)


def cost_report(table: LayerTable, bits, widths, target: Target | str | os.PathLike | None = None) -> dict[str, Any]:
    """A validated configuration's cost as plain data: per-layer rows and totals (JSON-ready); not jittable.

    Args:
        table: the model's layer table.
        bits: bit-width per layer (one configuration) or a scalar for every layer.
        widths: width multiplier per layer or a scalar.
        target: a target, a name or a target file (`load_target`); the paper's FPGA by default.

    Returns:
        ``{"model", "target", "layers": [...], "totals": {...}}`` with Python numbers.

    Raises:
        ValueError: a bad configuration or target (see `validate_config`, `load_target`).
    """
    target = load_target("fpga" if target is None else target)
    bits, widths = validate_config(table, bits, widths)
    if bits.ndim != 1:
        raise ValueError("cost_report takes one configuration; use cost() for a batch")
    result = jax.tree_util.tree_map(np.asarray, cost(table, bits, widths, target))
    quantities = _layer_quantities(table, widths.astype(np.float64), np, np.float64)  # exact integer counts
    packing = np.asarray(target.packing)[bits - 1] if isinstance(target, FPGATarget) else None
    layers = []
    for index, layer in enumerate(table):
        row = {
            "name": layer.name,
            "kind": layer.kind,
            "bits": int(bits[index]),
            "width": float(widths[index]),
            "in_channels": int(quantities["consumed"][index]),
            "out_channels": int(quantities["produced"][index]),
            "weights": int(quantities["weights"][index]),
            "macs": int(quantities["macs"][index]),
            "size_bytes": float(result.layer_size_bytes[index]),
            "latency_cycles": float(result.layer_cycles[index]),
            "bops": float(result.layer_bops[index]),
        }
        if packing is not None:
            row["mults_per_dsp"] = int(packing[index])
        layers.append(row)
    totals = {field: float(getattr(result, field)) for field in Cost._fields if not field.startswith("layer_")}
    totals["weights"] = int(quantities["weights"].sum())
    totals["macs"] = int(quantities["macs"].sum())
    return {"model": table.model, "target": target_to_dict(target), "layers": layers, "totals": totals}
