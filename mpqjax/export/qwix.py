"""mpqjax's chosen bit-widths as Qwix rules: one ``qwix.QtRule`` per layer (per module), for Google's Qwix
(``pip install "mpqjax[qwix]"``) to quantise the same Flax model (linen or NNX) with `qwix.quantize_model`.

A layer of mpqjax is a contraction of an activation with a parameter, named by its weight's path
(``"stage/block0/conv/kernel"``); its module's path (the weight path without the parameter's name) is what Qwix
matches: every operation Qwix intercepts looks up the first rule whose ``module_path`` matches the '/'-joined path of
the module running it (`re.fullmatch`, ``qwix/_src/qconfig.py``). Each rule's ``module_path`` is that path, escaped
and anchored, so it matches that one module; its ``weight_qtype`` and ``act_qtype`` are the layer's bit-width (mpqjax
quantises a layer's weights and its input activations at one width).

What the rules say, as mpqjax does:
    * weights: one scale per output channel. This is Qwix's default (``disable_channelwise_axes=False``, no
      ``tile_size``: a convolution's output-feature axis, a dense kernel's non-contracted axes are channelwise).
    * activations: one static scale per tensor (``act_static_scale=True``): Qwix calibrates it (``quant_stats`` in
      QAT, the parameter ``<op>_lhs_scale`` in PTQ), averaging per-example maxima over the batch axis (a dense layer
      on inputs of more than two axes gets one scale per position of the middle axes). Pass
      ``act_static_scale=False`` for Qwix's dynamic scales (per example, computed on every call, nothing to calibrate).

What cannot be expressed, and why:
    * 9 to 15 bits: Qwix's integer types are ``int2`` ... ``int8`` (``int4`` and ``int8`` are JAX dtypes; 2, 3, 5, 6
      and 7 bits are Qwix's own ``"intN"`` types, stored in int4 or int8, ``qwix/_src/core/numerics.py``); wider types
      are refused (``get_symmetric_bound``: "Cannot use ... as qtype" for types over one byte). ``unsupported=
      "round_up"`` leaves such a layer in float, the next wider thing Qwix has: the model gets bigger, not less
      accurate. 16 bits is mpqjax's own "not quantised": such a layer gets no rule, as do layers mpqjax's rules
      exclude (they are not in the table).
    * two layers of one module at different widths (two parameters contracted in one module, or one weight used
      twice): a Qwix rule selects a module, not a parameter. ``"round_up"`` gives the module the widest of them.
    * the numerics are Qwix's, not mpqjax's: Qwix's symmetric grid has one more negative level (scale = max / (2^(b-1)
      - 0.5), codes in [-2^(b-1), 2^(b-1) - 1]); activations are signed (absmax), where mpqjax quantises non-negative
      inputs (after a ReLU) unsigned, on twice the levels (Qwix's asymmetric ``minmax`` exists for int4 and int8
      only); a calibrated scale is Qwix's, not the clip mpqjax calibrated or learned. The bit-widths are the same; the
      accuracy is not guaranteed to be, so evaluate (or fine-tune with ``qwix.QtProvider``) in Qwix.
    * a rule covers every contraction its module runs (a module that also multiplies two activations gets those
      quantised too), and width multipliers are not quantisation: build the module at the widths mpqjax chose
      (module paths do not depend on widths).
    * the rules are for ``qwix.QtProvider`` (QAT) and ``qwix.PtqProvider``; Qwix's ODML providers read ``act_qtype``
      as the quantisation of a module's output. XLA's CPU backend (jax 0.10) does not compile Qwix's integer
      convolutions and matrix products stored in int4 (2, 3 and 4 bits): "does not support custom element sizes on
      non-sub-byte types"; 5 to 8 bits run on a CPU. Qwix 0.1.8's ``PtqProvider`` leaves a tracer in the parameters
      for a weight contracted with ``@`` (``jnp.matmul``); Flax's layers, ``jnp.dot`` and ``jnp.einsum`` are fine.

Example:
    >>> import qwix
    >>> model = mpqjax.nn.models.get("digits_cnn")
    >>> rules = qwix_rules(model, [8, 6, 5, 8])
    >>> qat_module = qwix.quantize_model(model.function.module, qwix.QtProvider(rules))
    >>> source = qwix_rules_source(model, [8, 6, 5, 8])  # "rules = [...]", to paste where mpqjax is not installed
"""

from __future__ import annotations

import dataclasses
import re

import numpy as np

from mpqjax.nn.config import MAX_BITS, check_bits

__all__ = ["QWIX_BITS", "UNSUPPORTED_MODES", "qwix_rules", "qwix_rules_source"]

QWIX_BITS = range(2, 9)  # the integer bit-widths Qwix quantises to: "int2" ... "int8"
UNSUPPORTED_MODES = ("error", "round_up")
_INSTALL = 'mpqjax.export.qwix needs qwix: pip install "mpqjax[qwix]"'


@dataclasses.dataclass(frozen=True)
class _Module:
    """A module holding layers, its Qwix type (None: no rule, it stays in float) and a note naming its layers."""

    path: str
    qtype: str | None
    note: str


def qwix_rules(model, bits, *, input_shape=None, unsupported: str = "error", act_static_scale: bool = True) -> list:
    """Qwix rules quantising ``model`` at ``bits``: one ``qwix.QtRule`` per quantised module, for ``qwix.QtProvider``
    or ``qwix.PtqProvider``.

    Args:
        model: an mpqjax `Model` (`mpqjax.nn.models.get` or `mpqjax.nn.models.wrap`).
        bits: one bit-width per layer, in the order of ``model.table()`` (integers in [2, 16]; 16: float).
        input_shape: one example's shape, when the model was wrapped without one.
        unsupported: ``"error"``: a bit-width Qwix cannot express raises; ``"round_up"``: the next wider thing Qwix
            has (float for 9 to 15 bits; the widest of a module's layers, when they differ).
        act_static_scale: activations with one calibrated scale per tensor (as mpqjax); False: Qwix's dynamic scales.

    Returns:
        A list of ``qwix.QtRule``, in the layer table's order; layers left in float have none.

    Raises:
        ImportError: qwix is not installed.
        ValueError: bits of the wrong length or outside [2, 16], an unknown ``unsupported``, or (``"error"``) a
            bit-width Qwix cannot express, in one line naming the layer.

    Example:
        >>> rules = qwix_rules(mpqjax.nn.models.get("digits_cnn"), [8, 6, 5, 8])
        >>> rules[1].module_path, rules[1].weight_qtype
        ('^conv2$', 'int6')
    """
    try:
        import qwix
    except ImportError as error:
        raise ImportError(_INSTALL) from error
    modules = _plan(model, bits, input_shape, unsupported)
    return [qwix.QtRule(**_fields(module, act_static_scale)) for module in modules if module.qtype is not None]


def qwix_rules_source(model, bits, *, input_shape=None, unsupported: str = "error",
                      act_static_scale: bool = True) -> str:
    """`qwix_rules` as Python source to paste next to ``import qwix``: ``rules = [qwix.QtRule(...), ...]``, each
    rule after a comment naming its layers and their bit-widths, and a comment per layer left in float. Writing it
    needs no qwix (the text can be made where mpqjax runs and pasted where Qwix does).

    Arguments and errors as `qwix_rules` (no ImportError: the text is written without qwix).

    Example:
        >>> print(qwix_rules_source(mpqjax.nn.models.get("digits_cnn"), [8, 6, 5, 16]))
        rules = [
            # conv1: 8 bits
            qwix.QtRule(module_path='^conv1$', weight_qtype='int8', act_qtype='int8', act_static_scale=True),
            # conv2: 6 bits
            qwix.QtRule(module_path='^conv2$', weight_qtype='int6', act_qtype='int6', act_static_scale=True),
            # conv3: 5 bits
            qwix.QtRule(module_path='^conv3$', weight_qtype='int5', act_qtype='int5', act_static_scale=True),
            # head: 16 bits, left in float (mpqjax's unquantised width)
        ]
        <BLANKLINE>
    """
    lines = ["rules = ["]
    for module in _plan(model, bits, input_shape, unsupported):
        if module.qtype is None:
            lines.append(f"    # {module.note}")
            continue
        arguments = ", ".join(f"{name}={value!r}" for name, value in _fields(module, act_static_scale).items())
        lines += [f"    # {module.note}", f"    qwix.QtRule({arguments}),"]
    lines.append("]")
    return "\n".join(lines) + "\n"


def _fields(module: _Module, act_static_scale: bool) -> dict:
    """The ``qwix.QtRule`` fields of a quantised module."""
    return {"module_path": f"^{re.escape(module.path)}$", "weight_qtype": module.qtype, "act_qtype": module.qtype,
            "act_static_scale": bool(act_static_scale)}


def _plan(model, bits, input_shape, unsupported: str) -> list[_Module]:
    """Each module holding layers of ``model``, in the table's order, with its Qwix type (None: float)."""
    if unsupported not in UNSUPPORTED_MODES:
        raise ValueError(f"unsupported must be one of {UNSUPPORTED_MODES}, got {unsupported!r}")
    table = model.table(input_shape)
    values = _checked_bits(table, bits)
    grouped: dict[str, list[tuple[str, int]]] = {}
    for layer, width in zip(table, values, strict=True):
        grouped.setdefault(_module_path(layer.weight_path), []).append((layer.name, int(width)))
    return [_module(path, members, unsupported) for path, members in grouped.items()]


def _checked_bits(table, bits) -> np.ndarray:
    """``bits`` as ints, one per layer, each in [2, 16] (a one-line ValueError otherwise)."""
    if isinstance(bits, (str, bytes)) or np.ndim(np.asarray(bits, dtype=object)) != 1:
        raise ValueError(f"bits must be a sequence of one bit-width per layer ({len(table)}: "
                         f"{', '.join(table.names)}), got {bits!r}")
    if len(bits) != len(table):
        raise ValueError(f"bits has {len(bits)} entries but model {table.model!r} has {len(table)} layers "
                         f"({', '.join(table.names)})")
    return check_bits(list(bits), table.names)


def _module_path(weight_path: str) -> str:
    """The path of the module owning a weight: its path without the parameter's name ('' for the top module)."""
    return weight_path.rpartition("/")[0]


def _module(path: str, members: list[tuple[str, int]], unsupported: str) -> _Module:
    """One module's Qwix type from the bit-widths of its layers (None: float), with a note for the source."""
    names = tuple(name for name, _ in members)
    widths = tuple(width for _, width in members)
    width = max(widths)
    label = ", ".join(names)
    if len(set(widths)) > 1:
        if unsupported == "error":
            shown = ", ".join(f"{name!r} ({bits} bits)" for name, bits in members)
            raise ValueError(f"layers {shown} share module {path!r} and a Qwix rule gives a module one type; pass "
                             f"unsupported='round_up' to use the widest, {width} bits")
        label = f"{label}: {'/'.join(map(str, widths))} bits, rounded up to {width}"
    else:
        label = f"{label}: {width} bits"
    if width in QWIX_BITS:
        return _Module(path, f"int{width}", label)
    if width == MAX_BITS:
        return _Module(path, None, f"{label}, left in float (mpqjax's unquantised width)")
    if unsupported == "error":
        raise ValueError(f"layer {names[widths.index(width)]!r}: Qwix has no {width}-bit type (it offers int2 ... "
                         f"int8, or float); pass unsupported='round_up' to leave the layer in float")
    return _Module(path, None, f"{label}, left in float (Qwix has no {width}-bit type)")
