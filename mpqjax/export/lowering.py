"""Integer-only inference of a quantised model: its traced forward pass rewritten in integer arithmetic (`lower`).

The model's inference jaxpr is evaluated equation by equation, as `mpqjax.nn.intercept` does for fake
quantisation, but every activation is an integer tensor:

- **Layers** (the convolutions and contractions the layer table lists) multiply int8 input codes by int8 weight
  codes with int32 accumulation. The input codes are the layer's activation quantiser applied in integers: the
  incoming fixed-point tensor times the dyadic ``1 / step``, rounded and clipped to the layer's levels.
- **Folding.** A layer's output stays an int32 accumulator with a pending per-channel affine map (scale
  ``step * weight_scale[c]``, offset 0) until an operation needs its value: the bias, the batch norm's
  subtraction, multiplication and addition by per-channel constants fold into that map. One dyadic multiply and one
  integer add per channel then give a fixed-point tensor (`mpqjax.export.fixed_point`): batch norm and scales cost
  nothing extra, as on the accelerator.
- **Between layers** tensors are int32 fixed point, ``value = q / 2^F``, with ``F`` chosen from a bound on the
  tensor's magnitude that the lowering derives from the weights and the operations (never from data), so no value
  can overflow: ReLU and clipping are integer max/min, residual additions align exponents by shifts, max pooling
  runs on integers, sum and mean pooling sum in int64 and shift, multiplications and divisions by constants are
  dyadic. Channel masks (widths below 1) are applied as the fake quantiser applies them.
- **At the edges** the float input is converted once to fixed point (``input_bound``, its largest magnitude,
  chooses the exponent; larger inputs saturate) and the logits are returned as ``q / 2^F`` in float32.

What cannot run on integers is refused with a `LoweringError` naming the operation and the last layer before it:
transcendental functions (tanh, sigmoid, GELU, softmax, exp), products of two activations (attention), layers left
in float by the rules, bit-widths above 8.

Example:
    >>> program = lower(model, variables, bits, widths, input_bound=float(np.abs(train_x).max()))
    >>> logits = program(test_x)            # integer arithmetic, float32 logits
    >>> program.layers[0].codes.dtype        # the int8 weight codes of the first layer
    dtype('int8')
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
from jax.extend import core as jex_core

from mpqjax.export import fixed_point
from mpqjax.export._fixed_tensors import (
    Const,
    Fixed,
    Pending,
    Unexpressible,
    activation_op,
    as_fixed,
    at_exponent,
    bind,
    bound_of,
    common_exponent,
)
from mpqjax.export.bitpack import MAX_PACKED_BITS
from mpqjax.export.integer import activation_scale, integer_weights
from mpqjax.nn import intercept
from mpqjax.nn.jaxprs import CALL_PRIMITIVES, COMPOSING, input_kinds, layer_operands, sub_jaxpr

__all__ = ["IntegerLayer", "IntegerProgram", "LoweringError", "lower"]


class LoweringError(ValueError):
    """An operation or setting of the model that the integer program cannot express."""


@dataclasses.dataclass(frozen=True)
class IntegerLayer:
    """One layer of the integer program.

    Attributes:
        name: the layer's name in the layer table.
        bits: its bit-width (weights and input codes).
        signed: whether its input codes are signed.
        input_step: the input quantiser's step (value of one input code).
        codes: the int8 weight codes, the kernel's shape; switched-off channels are zero.
        weight_scale: float32 scale per output channel (value of one weight code).
        kept: ``((axis, channel indices), ...)``: the channels of the kernel that the configuration keeps (an axis
            not listed keeps all): the block that the packed file stores.
        channel_axis: the kernel's output-channel axis.
        weight_bits: a channel-wise configuration's weight bit-width per output channel of the kernel (its input
            codes stay at ``bits``); None: every weight at ``bits``.
    """

    name: str
    bits: int
    signed: bool
    input_step: float
    codes: np.ndarray
    weight_scale: np.ndarray
    kept: tuple
    channel_axis: int = -1
    weight_bits: tuple | None = None

    def block(self) -> np.ndarray:
        """The kept block of the codes (what is stored)."""
        block = self.codes
        for axis, indices in self.kept:
            block = np.take(block, indices, axis=axis)
        return block

    def weight_groups(self) -> list[tuple[int, np.ndarray]]:
        """``[(bits, channels), ...]``: the block's output channels (indices along `channel_axis`) by weight
        bit-width, narrowest first; one group at ``bits`` for a per-layer configuration."""
        axis = self.channel_axis % self.codes.ndim
        if self.weight_bits is None:
            return [(self.bits, np.arange(self.block().shape[axis]))]
        kept_bits = np.asarray(self.weight_bits)
        for kept_axis, indices in self.kept:
            if kept_axis == axis:
                kept_bits = kept_bits[np.asarray(indices)]
        return [(int(bits), np.flatnonzero(kept_bits == bits)) for bits in np.unique(kept_bits)]


class _Lowering:
    """The walk over a model's jaxpr with integer values (see the module docstring)."""

    def __init__(self, spec: _Spec, kernels):
        self.spec, self.kernels = spec, kernels
        self.layers: dict[int, IntegerLayer] = {}
        self.seen: dict = {}
        self.compositions = 0
        self.last_layer = "the input"

    def fail(self, what: str):
        raise LoweringError(f"{what} after layer {self.last_layer!r} cannot run in the integer program")

    def evaluate(self, jaxpr, consts, args):
        values = {}

        def read(atom):
            return Const(np.asarray(atom.val)) if isinstance(atom, jex_core.Literal) else values[atom]

        for var, value in zip(jaxpr.constvars, consts, strict=True):
            values[var] = Const(np.asarray(value))
        for var, value in zip(jaxpr.invars, args, strict=True):
            values[var] = value
        for eqn in jaxpr.eqns:
            outs = self.equation(eqn, [read(atom) for atom in eqn.invars])
            for var, out in zip(eqn.outvars, outs, strict=True):
                values[var] = out
        return [read(atom) for atom in jaxpr.outvars]

    def equation(self, eqn, operands) -> list:
        name = eqn.primitive.name
        body = sub_jaxpr(eqn) if name in CALL_PRIMITIVES else None
        if body is not None:
            return self.evaluate(body[0], body[1], operands)
        if all(isinstance(operand, Const) for operand in operands):
            return self.constant(eqn, operands)
        weight_position = layer_operands(eqn, [isinstance(o, Const) and bool(o.leaves) for o in operands],
                                         [not isinstance(o, Const) for o in operands])
        if weight_position is not None:
            return [self.layer(eqn, operands, weight_position)]
        if name in COMPOSING:
            return [self.compose(eqn, operands)]
        try:
            return [activation_op(eqn, operands)]
        except Unexpressible as unexpressible:
            self.fail(str(unexpressible))

    def constant(self, eqn, operands) -> list:
        """An operation on constants only, computed now; a broadcast to the symbolic batch stays unexpanded."""
        leaves = frozenset().union(*(operand.leaves for operand in operands))
        if eqn.primitive.name == "broadcast_in_dim" and not all(isinstance(size, int) for size in eqn.params["shape"]):
            shape = [1] * len(eqn.params["shape"])
            value = operands[0].value
            for position, axis in enumerate(eqn.params["broadcast_dimensions"]):
                shape[axis] = value.shape[position]
            return [Const(value.reshape(shape), leaves)]
        with jax.ensure_compile_time_eval(), jax.enable_x64(False):
            outs = bind(eqn, [operand.value for operand in operands])
        outs = outs if eqn.primitive.multiple_results else [outs]
        return [Const(np.asarray(out), leaves) for out in outs]

    def compose(self, eqn, operands):
        """A concatenation or padding: operands aligned, masked where the plan says, then joined on integers."""
        number, self.compositions = self.compositions, self.compositions + 1
        masks = {operand: (axis, description)
                 for operand, axis, description in self.spec.plan.formations.get(number, ())}
        activations = operands if eqn.primitive.name == "concatenate" else operands[:1]
        bound = max(bound_of(operand) for operand in activations)
        exponent = common_exponent(activations, bound)
        integers = []
        for position, operand in enumerate(operands):
            if eqn.primitive.name == "pad" and position == 1:
                value = float(operand.value)
                integers.append(jnp.int32(-(2 ** 31) + 1 if value == -math.inf else at_exponent(operand, exponent)))
                continue
            q = at_exponent(operand, exponent)
            if position in masks:
                axis, description = masks[position]
                mask = self.spec.mask(description)
                q = jnp.where(intercept.along(jnp.asarray(mask), q.ndim, [axis], q.shape) > 0, q, 0)
            integers.append(q)
        return Fixed(bind(eqn, integers), exponent, bound)

    def layer(self, eqn, operands, weight_position: int):
        spec = self.spec
        weight = operands[weight_position]
        leaf = spec.main_leaf.get(weight.leaves, min(weight.leaves))
        occurrence = self.seen[leaf] = self.seen.get(leaf, 0) + 1
        index = spec.plan.layer_of_leaf.get((leaf, occurrence))
        if index is None:
            self.fail(f"the layer of weight {spec.leaf_names[leaf]!r}, left in float by the rules,")
        layer, integer_layer = spec.layer_axes(eqn, weight_position, index, np.asarray(weight.value, np.float32))
        self.last_layer = integer_layer.name
        self.layers[index] = integer_layer
        x = as_fixed(operands[1 - weight_position])
        signed = integer_layer.signed
        levels = (2 ** (integer_layer.bits - 1) - 1) if signed else (2 ** integer_layer.bits - 1)
        codes = fixed_point.rescale(x.q, 2.0 ** -x.exponent / float(integer_layer.input_step))
        codes = jnp.clip(codes, -levels if signed else 0, levels)
        if layer.in_mask is not None:
            codes = jnp.where(intercept.along(jnp.asarray(layer.in_mask), codes.ndim, layer.x_axes, codes.shape) > 0,
                              codes, 0)
        kernel = self.kernels[index] if self.kernels is not None else jnp.asarray(integer_layer.codes)
        # unsigned 8-bit codes reach 255: such a layer multiplies in int16 (uint8 x int8 on the device)
        operand_type = jnp.int8 if levels <= 127 else jnp.int16
        ordered = [None, None]
        ordered[weight_position] = kernel.astype(operand_type)
        ordered[1 - weight_position] = codes.astype(operand_type)
        acc = bind(eqn, ordered, preferred_element_type=jnp.dtype(jnp.int32))
        per_channel = np.abs(integer_layer.codes.astype(np.int64))
        per_channel = np.moveaxis(per_channel, layer.channel_axis, -1).reshape(-1, per_channel.shape[
            layer.channel_axis]).sum(axis=0)
        scale = float(integer_layer.input_step) * integer_layer.weight_scale.astype(np.float64)
        return Pending(acc, layer.out_axis, scale, np.zeros_like(scale), per_channel * float(levels))


@dataclasses.dataclass(frozen=True)
class _LayerAxes:
    x_axes: list
    channel_axis: int  # of the kernel
    out_axis: int  # of the layer's output
    in_mask: np.ndarray | None


@dataclasses.dataclass
class _Spec:
    """What the walk needs of the model and the configuration, all concrete."""

    plan: intercept.Plan
    main_leaf: dict
    leaf_names: list
    names: tuple
    bits: np.ndarray
    widths: np.ndarray
    clips: np.ndarray
    ranks: dict
    groups: dict  # layer index -> first layer of its width group
    scalable: tuple
    weight_bits: dict  # layer index -> its weight bit-width per output channel (channel-wise configurations)

    def mask(self, description):
        with jax.ensure_compile_time_eval():
            mask = intercept.mask_of(description, self.widths, self.plan.base_channels, self.ranks)
        return None if mask is None else np.asarray(mask)

    def layer_axes(self, eqn, weight_position: int, index: int, weight: np.ndarray):
        """The layer's axes and its `IntegerLayer` (codes, scales, kept channels) at this configuration."""
        bits = int(self.bits[index])
        if bits > MAX_PACKED_BITS:
            raise LoweringError(f"layer {self.names[index]!r} is at {bits} bits; the integer program holds 2 to "
                                f"{MAX_PACKED_BITS} bits")
        if eqn.primitive.name == "conv_general_dilated":
            numbers = eqn.params["dimension_numbers"]
            x_axes, in_axes, channel_axes = [numbers.lhs_spec[1]], [numbers.rhs_spec[1]], [numbers.rhs_spec[0]]
            out_axis, grouped = numbers.out_spec[1], eqn.params["feature_group_count"] > 1
        else:
            (contracting, batch) = eqn.params["dimension_numbers"]
            x_axes, in_axes = list(contracting[1 - weight_position]), list(contracting[weight_position])
            channel_axes = [axis for axis in range(weight.ndim) if axis not in in_axes + list(batch[weight_position])]
            grouped = False
            out_axis = (eqn.outvars[0].aval.ndim - 1 if weight_position == 1
                        else len(batch[0]) + sorted(set(range(weight.ndim)) - set(in_axes) - set(batch[0])).index(
                            channel_axes[0]) if channel_axes else 0)
        if len(channel_axes) != 1 or len(in_axes) != 1:
            raise LoweringError(f"layer {self.names[index]!r} has {len(channel_axes)} output-channel axes and "
                                f"{len(in_axes)} input-channel axes; the integer program takes one of each")
        in_mask = self.mask(self.plan.in_masks[index])
        if in_mask is not None and not grouped:
            with jax.ensure_compile_time_eval():
                weight = weight * np.asarray(intercept.along(in_mask, weight.ndim, in_axes, weight.shape))
        moved = np.moveaxis(weight, channel_axes[0], -1)
        weight_bits = self.weight_bits.get(index)
        codes, weight_scale = integer_weights(moved, bits if weight_bits is None else weight_bits)
        kept = []
        if in_mask is not None and not grouped:
            kept.append((in_axes[0], np.flatnonzero(in_mask)))
        if self.scalable[index]:
            out_mask = self.mask(("group", self.groups[index], weight.shape[channel_axes[0]]))
            codes = codes * out_mask.astype(codes.dtype)
            kept.append((channel_axes[0], np.flatnonzero(out_mask)))
        codes = np.moveaxis(codes, -1, channel_axes[0]).astype(np.int8)
        signed = bool(self.plan.signed[index])
        step = activation_scale(self.clips[index], bits, signed=signed)
        layer = IntegerLayer(self.names[index], bits, signed, float(step), codes, weight_scale, tuple(kept),
                             channel_axes[0], None if weight_bits is None else tuple(int(b) for b in weight_bits))
        return _LayerAxes(x_axes, channel_axes[0], out_axis, in_mask), layer


@dataclasses.dataclass(frozen=True, eq=False)
class IntegerProgram:
    """A model lowered to integer arithmetic at one configuration (`lower`).

    Attributes:
        layers: the `IntegerLayer` of each layer, in the layer table's order.
        input_bound: the largest input magnitude the fixed-point input holds (larger inputs saturate).
        input_shape: one example's shape.
        input_dtype: float32 (the model's inputs) or uint8 (raw pixels, normalised by the program).
        normalisation: ``{"mean": [...], "std": [...]}`` per channel for raw pixels, else None.
    """

    layers: tuple
    input_bound: float
    input_shape: tuple
    input_dtype: np.dtype
    normalisation: dict | None
    _run: Callable = dataclasses.field(repr=False)

    def run(self, kernels, x):
        """The logits of ``x`` with the given int8 kernels (one per layer, the codes' shapes): traceable, and
        traced with 64-bit integers on (``jax.enable_x64``)."""
        return self._run(kernels, x)

    @functools.cached_property
    def _jitted(self):
        return jax.jit(self._run)

    def __call__(self, x) -> np.ndarray:
        """The float32 logits of a batch, computed in integers with the lowered codes."""
        x = np.asarray(x)
        if x.ndim == 0 or x.shape[1:] != self.input_shape:
            raise ValueError(f"input has example shape {x.shape[1:]}, expected {self.input_shape}")
        if self.input_dtype == np.uint8 and (x.dtype.kind not in "ui" or x.min(initial=0) < 0
                                              or x.max(initial=0) > 255):
            raise ValueError(f"this program takes raw 8-bit pixels (integers 0..255), got {x.dtype} values")
        with jax.enable_x64(True):
            logits = self._jitted(tuple(jnp.asarray(layer.codes) for layer in self.layers),
                                   jnp.asarray(x, self.input_dtype))
        return np.asarray(logits)


def _model_spec(model, variables, bits, widths, input_shape):
    from mpqjax.nn.config import check_config

    analysis = model.analysis(input_shape)
    table = analysis.table
    check_config(table, bits, widths, max_width=model.max_width)
    params, state, clips, ranks = model._split(variables, table.names)
    groups = {index: group[0] for group in table.width_groups() for index in group}
    from mpqjax.nn.models.flax_function import leaf_paths

    spec = _Spec(plan=analysis.plan, main_leaf=analysis.main_leaf, leaf_names=leaf_paths(params), names=table.names,
                 bits=np.broadcast_to(np.asarray(bits, np.float64), (len(table),)).astype(int),
                 widths=np.broadcast_to(np.asarray(widths, np.float32), (len(table),)),
                 clips=np.asarray(clips, np.float32), ranks={k: np.asarray(v) for k, v in ranks.items()},
                 groups=groups, scalable=tuple(layer.scalable for layer in table),
                 weight_bits={table.names.index(name): np.asarray(bits).astype(int)
                              for name, bits in model.weight_bits(variables).items()})
    return spec, jax.tree.map(np.asarray, params), jax.tree.map(np.asarray, state)


def _input_entry(input_bound, normalisation, channels: int):
    """``(exponent, bound, convert)``: how the program's input becomes a fixed-point tensor."""
    if (input_bound is None) == (normalisation is None):
        raise ValueError("give either input_bound (float inputs) or normalisation (raw 8-bit pixels), not both")
    if normalisation is None:
        if not (math.isfinite(input_bound) and input_bound > 0):
            raise ValueError(f"input_bound must be a positive number, got {input_bound}")
        exponent = fixed_point.exponent_for(float(input_bound))

        def convert(x):
            scaled = jnp.round(x.astype(jnp.float32) * np.float32(2.0 ** exponent))
            return jnp.clip(scaled, -(2.0 ** 30), 2.0 ** 30).astype(jnp.int32)

        return exponent, float(input_bound), convert
    mean, std = (np.broadcast_to(np.asarray(value, np.float64).reshape(-1), (channels,)) for value in normalisation)
    if not (np.all(np.isfinite(mean)) and np.all(std > 0)):
        raise ValueError("normalisation needs finite means and positive standard deviations")
    bound = float(np.max(np.maximum(np.abs(mean), np.abs(255.0 - mean)) / std))
    exponent = fixed_point.exponent_for(bound)

    def convert(pixels):  # (p - mean) / std in integers: one dyadic multiply and one add per channel
        scaled = fixed_point.rescale(pixels.astype(jnp.int32), 2.0 ** exponent / std)
        return scaled - jnp.asarray(np.round(mean / std * 2.0 ** exponent).astype(np.int32))

    return exponent, bound, convert


def lower(model, variables, bits, widths, *, input_bound: float | None = None, normalisation=None,
          input_shape=None) -> IntegerProgram:
    """The integer-only program of a quantised model at one configuration.

    Args:
        model: an mpqjax model (`mpqjax.nn.models.get` or `wrap`).
        variables: its trained variables (with the activation clips and channel ranks).
        bits, widths: the configuration, per layer; bit-widths 2 to 8.
        input_bound: for a program that takes the model's float inputs: their largest magnitude (e.g.
            ``max |x|`` over the training set); larger inputs saturate.
        normalisation: instead, ``(mean, std)`` per channel (`mpqjax.data.Dataset`'s): the program takes raw
            8-bit pixels (uint8) and normalises them in integers.
        input_shape: one example's shape (default: the model's).

    Returns:
        An `IntegerProgram`: call it on a batch for the logits.

    Raises:
        LoweringError: an operation the integer program cannot express (named, with the layer before it), a layer
            left in float, a bit-width above 8.
        ValueError: a configuration that does not fit the model; neither or both of ``input_bound`` and
            ``normalisation``, or bad values.
    """
    shape = tuple(int(size) for size in (input_shape or model.input_shape()))
    input_exponent, bound, convert = _input_entry(input_bound, normalisation, shape[-1])
    spec, params, state = _model_spec(model, variables, bits, widths, shape)
    function = model.model_function
    flat_params, flat_state = jax.tree.leaves(params), jax.tree.leaves(state)
    found: dict[int, IntegerLayer] = {}

    def run(kernels, x):
        with jax.enable_x64(False):
            closed = jax.make_jaxpr(lambda p, s, v: function(p, s, v, False))(
                params, state, jax.ShapeDtypeStruct(x.shape, jnp.float32))
        kinds = input_kinds(len(closed.jaxpr.invars), len(flat_params), len(flat_state))
        leaves = [*flat_params, *flat_state, None]
        args = [Const(leaf, frozenset({position})) if kind == "param" else Const(leaf) if kind == "state"
                else Fixed(convert(x), input_exponent, bound)
                for position, (kind, leaf) in enumerate(zip(kinds, leaves, strict=True))]
        walk = _Lowering(spec, kernels)
        output = walk.evaluate(closed.jaxpr, closed.consts, args)[0]
        found.update(walk.layers)
        fixed = as_fixed(output)
        return fixed.q.astype(jnp.float32) * np.float32(2.0 ** -fixed.exponent)

    input_type = jnp.float32 if normalisation is None else jnp.uint8
    try:
        with jax.enable_x64(True):
            jax.eval_shape(lambda x: run(None, x), jax.ShapeDtypeStruct((1, *shape), input_type))
    except LoweringError as error:  # raised inside a trace: JAX appends lines about its traceback filtering
        raise LoweringError(str(error).splitlines()[0]) from None
    layers = tuple(found[index] for index in range(len(spec.names)))
    described = None if normalisation is None else {
        "mean": [float(value) for value in np.ravel(normalisation[0])],
        "std": [float(value) for value in np.ravel(normalisation[1])]}
    return IntegerProgram(layers, bound, shape, np.dtype(input_type), described, run)
