"""Run a traced model with its layers fake-quantised and its channels masked: mpqjax's interceptor.

`quantized_call` evaluates the jaxpr of ``forward(params, state, x)`` equation by equation. Every layer that
`mpqjax.nn.graph.discover` found (a convolution or contraction of an activation with a weight) runs on quantised
operands instead: its weight fake-quantised per output channel and its input per tensor, at the layer's bit-width
(`mpqjax.nn.quant`), after the input channels that the configuration's widths switch off are zeroed. A layer given
per-channel weight bit-widths (``weight_bits``) quantises each output channel of its weight at its own bit-width
instead; its input keeps the layer's bit-width. The concatenations and paddings the plan names mask their operands as
they form. Everything else runs as traced, custom derivative rules included (a call is entered only when a layer, a
concatenation or a padding is inside it).

A `Relaxation` runs the model on expected quantisation instead, for a gradient-based precision search: a layer's input
is a probability-weighted mixture of its quantisations at several bit-widths (`mpqjax.nn.quant.mixed_activations`),
its weight likewise, per layer or per output channel (`mpqjax.nn.quant.mixed_weights`), and a width group's channels
are kept with a probability that multiplies their mask wherever it is applied (`mask_of`).

Bit-widths, widths and clipping values are ordinary arrays here, never Python values: one compiled program serves
every configuration and a population vmaps over them. Qwix takes its quantisation settings as static Python values
when it rewrites a model, which would compile one program per configuration; hence this interceptor of our own.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.extend import core as jex_core

from mpqjax.nn import quant
from mpqjax.nn.jaxprs import CALL_PRIMITIVES, COMPOSING, composes, contracts, input_kinds, layer_operands, sub_jaxpr
from mpqjax.nn.table import scale_channels

__all__ = ["Plan", "Relaxation", "along", "mask_of", "quantized_call"]


class Relaxation(NamedTuple):
    """A relaxed ("mixture") configuration: every probability a traced array, so one compiled program serves every
    value (a pytree: it vmaps, and gradients reach its probabilities).

    `mpqjax.nn.models.Model.apply` takes it keyed by layer names; `quantized_call` by layer indices (table order).
    What it leaves out, the configuration's ``bits`` decide: ``act_probs`` None quantises every input at ``bits[l]``,
    a layer absent from ``weight_probs`` quantises its weight at ``bits[l]`` (or at its per-channel weight bit-widths,
    `mpqjax.nn.models.Model.with_weight_bits`), a group absent from ``keep`` keeps its hard mask.

    Attributes:
        act_bits: ``[A]`` candidate bit-widths of the layers' input activations (None: no activation mixture).
        act_probs: ``[L, A]``: layer ``l``'s input is ``sum_a act_probs[l, a] * Q_{act_bits[a]}(x, clip_l)``
            (`mpqjax.nn.quant.mixed_activations`, the layer's clip and the model's clipping mode).
        weight_bits: ``[P]`` candidate bit-widths of the weights; 0 is a pruned option (its term is zero).
        weight_probs: ``{layer: [P] or [output channels, P]}``: the layer's weight is
            ``sum_p probs[..., p] * Q_{weight_bits[p]}(W)``, one mixture for the layer or one per output channel
            (flattened as per-channel weight bit-widths are; `mpqjax.nn.quant.mixed_weights`).
        keep: ``{first layer of a width group: [held channels]}``: each channel's keep probability, multiplying the
            group's channel mask wherever it is applied (its consumers' inputs, concatenations and paddings): keep 0
            is the channel pruned (its bias and batch-norm shift included), keep 1 the hard mask unchanged.
    """

    act_bits: Any = None
    act_probs: Any = None
    weight_bits: Any = None
    weight_probs: Mapping | None = None
    keep: Mapping | None = None


@dataclasses.dataclass(frozen=True)
class Plan:
    """What the interceptor does at each layer, fixed when the model is wrapped.

    Attributes:
        layer_of_leaf: ``{(weight leaf index, occurrence): layer index}`` of the quantised layers (an excluded layer
            is absent and runs in float).
        in_masks: per layer, how its input mask is built (`mpqjax.nn.graph.Discovery.in_masks`).
        signed: per layer, whether its input may be negative (signed activation quantiser).
        base_channels: per layer, its output channels at width 1 (what a width multiplier scales).
        act_clipping: ``"calibrated"``, ``"pact"`` or ``"lsq"``.
        formations: ``{composition: ((operand, axis, mask description), ...)}``: concatenations and paddings whose
            operands are masked as they form (`mpqjax.nn.graph.Discovery.formations`).
    """

    layer_of_leaf: dict
    in_masks: tuple
    signed: tuple
    base_channels: tuple
    act_clipping: str = "calibrated"
    formations: dict = dataclasses.field(default_factory=dict)

    def __hash__(self):
        return hash((tuple(sorted(self.layer_of_leaf.items())), self.in_masks, self.signed, self.base_channels,
                     self.act_clipping, tuple(sorted(self.formations.items()))))


def mask_of(description, widths, base_channels: Sequence[int], ranks=None, keep=None):
    """The float32 channel mask a description gives at ``widths`` (None: every channel kept).

    A width group keeps its ``active`` channels of lowest rank: ``ranks[layer]`` (a group's channel ranks, keyed by
    its first layer: 0 for the most important channel) when given, else the channel's position (the first ones).
    ``keep[layer]`` (keyed likewise: one probability per channel the group holds), when given, multiplies the group's
    mask: a relaxation's soft channel keep (`Relaxation.keep`).

    Example:
        >>> mask_of(("group", 0, 4), jnp.array([0.5]), [4]).tolist()
        [1.0, 1.0, 0.0, 0.0]
        >>> mask_of(("group", 0, 4), jnp.array([0.5]), [4], {0: jnp.array([3, 0, 2, 1])}).tolist()
        [0.0, 1.0, 0.0, 1.0]
        >>> mask_of(("group", 0, 4), jnp.array([0.5]), [4], keep={0: jnp.array([0.5, 0.25, 1.0, 1.0])}).tolist()
        [0.5, 0.25, 0.0, 0.0]
    """
    if description is None:
        return None
    kind = description[0]
    if kind == "ones":
        return jnp.ones((description[1],), jnp.float32)
    if kind == "group":
        _, layer, size = description
        active = scale_channels(base_channels[layer], widths[layer])
        rank = (ranks or {}).get(layer)
        mask = ((jnp.arange(size) if rank is None else rank) < active).astype(jnp.float32)
        soft = (keep or {}).get(layer)
        return mask if soft is None else mask * jnp.asarray(soft, jnp.float32)
    parts = [mask_of(part, widths, base_channels, ranks, keep) for part in description[1]]
    if kind == "concat":
        return jnp.concatenate(parts)
    mask = parts[0]
    for part in parts[1:]:
        mask = (mask[:, None] * part[None, :]).reshape(-1)
    return mask


def along(vector, ndim: int, axes: Sequence[int], shape: Sequence[int]):
    """``vector`` (the flattened ``axes`` of an array of ``ndim`` axes) shaped to broadcast against that array."""
    full = [1] * ndim
    for axis in axes:
        full[axis] = shape[axis]
    order = sorted(range(len(axes)), key=lambda k: axes[k])
    sizes = [shape[axis] for axis in axes]
    reshaped = vector.reshape(sizes)
    return jnp.transpose(reshaped, order).reshape(full)


def _quantize_weight(weight, bits, channel_axes: Sequence[int], layer: int, options=None):
    """Per-channel fake-quantisation of ``weight`` with one scale per entry of its ``channel_axes``.

    ``bits`` is the layer's scalar bit-width, or one per channel: the ``channel_axes`` flattened in their order,
    row-major (a single output axis: its channels in order). Given ``options`` (``[P]`` candidate bit-widths), the
    weight is a mixture instead (`mpqjax.nn.quant.mixed_weights`) and ``bits`` its probabilities: ``[P]`` for the
    layer, or ``[channels, P]`` with the channels flattened likewise.
    """
    others = [axis for axis in range(weight.ndim) if axis not in channel_axes]
    order = others + list(channel_axes)
    moved = jnp.transpose(weight, order)
    flat = moved.reshape(*moved.shape[: len(others)], -1) if channel_axes else moved.reshape(*moved.shape, 1)
    if options is None:
        if jnp.ndim(bits) > 0 and jnp.shape(bits) != (flat.shape[-1],):
            raise ValueError(f"layer {layer}: weight_bits has shape {tuple(jnp.shape(bits))} but the traced weight "
                             f"has {flat.shape[-1]} output channels")
        quantized = quant.quantize_weights(flat, bits).reshape(moved.shape)
    else:
        if jnp.ndim(bits) > 1 and jnp.shape(bits)[0] != flat.shape[-1]:
            raise ValueError(f"layer {layer}: weight_probs has shape {tuple(jnp.shape(bits))} but the traced weight "
                             f"has {flat.shape[-1]} output channels")
        quantized = quant.mixed_weights(flat, options, bits).reshape(moved.shape)
    return jnp.transpose(quantized, np.argsort(order))


@dataclasses.dataclass
class _Context:
    plan: Plan
    bits: jax.Array
    masks: list
    clips: jax.Array
    calibrate: bool
    main_leaf: dict
    widths: jax.Array
    ranks: dict
    weight_bits: dict = dataclasses.field(default_factory=dict)
    operand_dtype: object = None
    relaxation: Relaxation | None = None
    stats: dict = dataclasses.field(default_factory=dict)
    seen: dict = dataclasses.field(default_factory=dict)
    compositions: int = 0

    def compose(self, eqn, operands, infos):
        """A concatenation or padding, its operands masked where the plan says so."""
        number, self.compositions = self.compositions, self.compositions + 1
        operands = list(operands)
        for operand, axis, description in self.plan.formations.get(number, ()):
            value = operands[operand]
            if not infos[operand][1] or value.shape[axis] != _mask_size(description):
                raise ValueError(f"the traced model differs from the one analysed at concatenation or padding "
                                 f"number {number} ({eqn.primitive.name})")
            mask = mask_of(description, self.widths, self.plan.base_channels, self.ranks, self._keep())
            operands[operand] = value * along(mask, value.ndim, [axis], value.shape).astype(value.dtype)
        return _bind(eqn, operands)

    def _keep(self):
        return None if self.relaxation is None else self.relaxation.keep

    def layer(self, eqn, operands, weight_position: int, leaf: int):
        occurrence = self.seen.get(leaf, 0) + 1
        self.seen[leaf] = occurrence
        index = self.plan.layer_of_leaf.get((leaf, occurrence))
        if index is None:
            return _bind(eqn, operands)
        weight, x = operands[weight_position], operands[1 - weight_position]
        bits, mask, signed = self.bits[index], self.masks[index], self.plan.signed[index]
        if eqn.primitive.name == "conv_general_dilated":
            numbers = eqn.params["dimension_numbers"]
            x_axes, weight_in_axes, channel_axes = [numbers.lhs_spec[1]], [numbers.rhs_spec[1]], [numbers.rhs_spec[0]]
            grouped = eqn.params["feature_group_count"] > 1
        else:
            (contracting, batch) = eqn.params["dimension_numbers"]
            x_axes, weight_in_axes = list(contracting[1 - weight_position]), list(contracting[weight_position])
            channel_axes = [axis for axis in range(weight.ndim) if axis not in weight_in_axes]
            grouped = False
        relaxation = self.relaxation
        act_probs = None if relaxation is None or relaxation.act_probs is None else relaxation.act_probs[index]
        weight_probs = None if relaxation is None else (relaxation.weight_probs or {}).get(index)
        # a soft keep scales a channel once, on the input; the weight (its scales) and the statistics see the
        # channels kept with any probability, so that keep 0 is exactly the channel switched off
        hard = mask if mask is None or not self._keep() else (mask != 0).astype(mask.dtype)
        if mask is not None:
            x = x * along(mask, x.ndim, x_axes, x.shape).astype(x.dtype)
            if not grouped:
                weight = weight * along(hard, weight.ndim, weight_in_axes, weight.shape).astype(weight.dtype)
        if self.calibrate:
            channels_last = jnp.moveaxis(x, x_axes, list(range(x.ndim - len(x_axes), x.ndim)))
            channels_last = channels_last.reshape(-1, int(np.prod([x.shape[a] for a in x_axes])))
            # a relaxed input: the statistics of its highest candidate bit-width
            stats_bits = bits if act_probs is None else jnp.max(jnp.asarray(relaxation.act_bits, jnp.float32))
            self.stats[index] = quant.calibration_stats(channels_last, stats_bits, signed=signed, channel_mask=hard)
        if act_probs is None:
            x = quant.quantize_activations(x, bits, self.clips[index], signed=signed, mode=self.plan.act_clipping)
        else:
            x = quant.mixed_activations(x, relaxation.act_bits, act_probs, self.clips[index], signed=signed,
                                        mode=self.plan.act_clipping)
        if weight_probs is not None:
            weight = _quantize_weight(weight, weight_probs, channel_axes, index, options=relaxation.weight_bits)
        else:
            # per-channel weight bit-widths replace the layer's only for its weight: activations and statistics keep
            # bits
            weight = _quantize_weight(weight, self.weight_bits.get(index, bits), channel_axes, index)
        quantized = [None, None]
        quantized[weight_position], quantized[1 - weight_position] = weight, x
        if self.operand_dtype is None:
            return _bind(eqn, quantized)
        # mixed precision: the quantised operands in the narrower dtype, the products accumulated as before
        narrow = [operand.astype(self.operand_dtype) for operand in quantized]
        return _bind(eqn, narrow, preferred_element_type=eqn.outvars[0].aval.dtype)


def _check_relaxation(relaxation: Relaxation, count: int) -> None:
    """The structure of an index-keyed relaxation (shapes are static: checked under jit too)."""
    if not isinstance(relaxation, Relaxation):
        raise ValueError(f"relaxation must be a Relaxation, got {type(relaxation).__name__}")
    if (relaxation.act_bits is None) != (relaxation.act_probs is None):
        raise ValueError("relaxation: act_bits and act_probs go together (both or neither)")
    if relaxation.act_probs is not None:
        options = jnp.shape(relaxation.act_bits)
        if len(options) != 1 or jnp.shape(relaxation.act_probs) != (count, options[0]):
            raise ValueError(f"relaxation: act_probs has shape {tuple(jnp.shape(relaxation.act_probs))}, expected "
                             f"{(count, *options[:1])} ({count} layers by the act_bits options)")
    if relaxation.weight_probs and relaxation.weight_bits is None:
        raise ValueError("relaxation: weight_probs needs weight_bits (the candidate bit-widths)")


def _mask_size(description) -> int:
    if description[0] in ("ones", "group"):
        return description[-1]
    sizes = [_mask_size(part) for part in description[1]]
    return int(sum(sizes)) if description[0] == "concat" else int(np.prod(sizes))


def _bind(eqn, operands, **changed_params):
    with eqn.ctx.manager:
        return eqn.primitive.bind(*operands, **eqn.primitive.get_bind_params({**eqn.params, **changed_params}))


def _evaluate(jaxpr, consts, args, infos, context: _Context):
    values, known = {}, {}

    def read(atom):
        if isinstance(atom, jex_core.Literal):
            return atom.val, (frozenset(), False)
        return values[atom], known[atom]

    for var, const in zip(jaxpr.constvars, consts, strict=True):
        values[var], known[var] = const, (frozenset(), False)
    for var, arg, info in zip(jaxpr.invars, args, infos, strict=True):
        values[var], known[var] = arg, info
    for eqn in jaxpr.eqns:
        read_atoms = [read(atom) for atom in eqn.invars]
        operands = [value for value, _ in read_atoms]
        operand_infos = [info for _, info in read_atoms]
        leaves = frozenset().union(*(info[0] for info in operand_infos))
        activation = any(info[1] for info in operand_infos)
        out_infos = (leaves, activation)
        body = sub_jaxpr(eqn) if eqn.primitive.name in CALL_PRIMITIVES else None
        if body is not None and activation and len(body[0].invars) == len(operands) \
                and ((leaves and contracts(body[0])) or composes(body[0])):
            outs = _evaluate(body[0], body[1], operands, operand_infos, context)
        elif activation and eqn.primitive.name in COMPOSING:
            outs = [context.compose(eqn, operands, operand_infos)]
        else:
            is_weight = [bool(info[0]) and not info[1] for info in operand_infos]
            weight_position = layer_operands(eqn, is_weight, [info[1] for info in operand_infos])
            if weight_position is not None:
                weight_leaves = operand_infos[weight_position][0]
                leaf = context.main_leaf.get(weight_leaves, min(weight_leaves))
                outs = context.layer(eqn, operands, weight_position, leaf)
            else:
                outs = _bind(eqn, operands)
            outs = outs if eqn.primitive.multiple_results else [outs]
        for var, out in zip(eqn.outvars, outs, strict=True):
            values[var], known[var] = out, out_infos
    return [read(atom)[0] for atom in jaxpr.outvars]


def quantized_call(closed_jaxpr, flat_args, *, num_param_leaves: int, num_state_leaves: int, plan: Plan,
                   main_leaf: dict, bits, widths, clips, ranks=None, weight_bits=None, calibrate: bool = False,
                   precision: str = "float32", relaxation: Relaxation | None = None):
    """Evaluate a traced ``forward(params, state, x)`` with its layers quantised and masked.

    Args:
        closed_jaxpr: the model's jaxpr (inputs: parameter leaves, state leaves, the input).
        flat_args: the values of those inputs.
        num_param_leaves, num_state_leaves: how the inputs split.
        plan: the layers (`Plan`).
        main_leaf: ``{frozenset of leaves: the weight leaf}`` for weights computed from several leaves.
        bits, widths, clips: ``[L]`` float32 arrays: bit-widths, width multipliers, activation clips.
        ranks: ``{first layer of a width group: its channels' ranks}`` (see `mask_of`); a group without an entry
            keeps its first channels.
        weight_bits: ``{layer index: float32 [output channels]}``: per-channel bit-widths of the layer's weight (its
            output-channel axes flattened in order); a layer without an entry quantises its weight at ``bits``.
        calibrate: also return each layer's input statistics (`mpqjax.nn.quant.calibration_stats`); a layer whose
            input is a mixture computes them at the highest of ``relaxation.act_bits``.
        precision: the dtype of the layers' quantised operands (`mpqjax.nn.quant.PRECISIONS`; the products
            accumulate in the layer's own output dtype).
        relaxation: expected quantisation (`Relaxation`), its ``weight_probs`` keyed by layer index and its ``keep``
            by the index of a width group's first layer (as ``ranks``); ``bits`` and ``weight_bits`` serve where it
            says nothing, and ``widths`` still give the hard masks that ``keep`` multiplies.

    Returns:
        ``(outputs, stats)``: the jaxpr's outputs and ``{layer index: stats}`` (empty unless ``calibrate``).
    """
    jaxpr = closed_jaxpr.jaxpr
    ranks = dict(ranks or {})
    if relaxation is not None:
        _check_relaxation(relaxation, len(plan.in_masks))
    keep = None if relaxation is None else relaxation.keep
    masks = [mask_of(description, widths, plan.base_channels, ranks, keep) for description in plan.in_masks]
    if precision not in quant.PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(quant.PRECISIONS)}, got {precision!r}")
    context = _Context(plan, bits, masks, clips, calibrate, main_leaf, widths, ranks, dict(weight_bits or {}),
                       None if precision == "float32" else jnp.dtype(precision), relaxation)
    kinds = input_kinds(len(jaxpr.invars), num_param_leaves, num_state_leaves)
    infos = [(frozenset({position}) if kind == "param" else frozenset(), kind == "input")
             for position, kind in enumerate(kinds)]
    outputs = _evaluate(jaxpr, closed_jaxpr.consts, list(flat_args), infos, context)
    return outputs, context.stats
