"""Reading a traced model's jaxpr: the bodies of calls and loops, which equations are layers and what each layer is
(`describe_layer`).

Shared by `mpqjax.nn.graph` (which finds the layers) and `mpqjax.nn.intercept` (which runs them quantised), so that
both see the same layers.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np
from jax.extend import core as jex_core

__all__ = ["CALL_PRIMITIVES", "COMPOSING", "FoundLayer", "bodies", "composes", "contracts", "describe_layer",
           "input_kinds", "layer_operands", "sub_jaxpr"]

# Higher-order primitives whose body runs once, in order: a walk enters them.
CALL_PRIMITIVES = frozenset({"jit", "pjit", "closed_call", "core_call", "custom_jvp_call", "custom_vjp_call",
                             "custom_vjp_call_jaxpr", "checkpoint", "remat", "remat2"})


def bodies(eqn):
    """Every jaxpr in an equation's parameters (a scan's body, a cond's branches, ...)."""
    for value in eqn.params.values():
        for item in value if isinstance(value, (tuple, list)) else (value,):
            if isinstance(item, jex_core.ClosedJaxpr):
                yield item.jaxpr
            elif isinstance(item, jex_core.Jaxpr):
                yield item


def contracts(jaxpr) -> bool:
    """Whether a convolution or a contraction runs somewhere in ``jaxpr``."""
    return any(eqn.primitive.name in ("conv_general_dilated", "dot_general") or any(map(contracts, bodies(eqn)))
               for eqn in jaxpr.eqns)


# Operations that lay channel segments side by side (`mpqjax.nn.spaces`): a composite space may form at each.
COMPOSING = frozenset({"concatenate", "pad"})


def composes(jaxpr) -> bool:
    """Whether a concatenation or a padding runs somewhere in ``jaxpr``."""
    return any(eqn.primitive.name in COMPOSING or any(map(composes, bodies(eqn))) for eqn in jaxpr.eqns)


def sub_jaxpr(eqn):
    """``(jaxpr, consts)`` of a call primitive's body, or None."""
    for key in ("jaxpr", "call_jaxpr", "fun_jaxpr"):
        body = eqn.params.get(key)
        if body is None:
            continue
        if isinstance(body, jex_core.ClosedJaxpr):
            return body.jaxpr, body.consts
        if isinstance(body, jex_core.Jaxpr):
            return body, ()
    return None


def layer_operands(eqn, is_weight: Sequence[bool], is_activation: Sequence[bool]):
    """The weight operand's index when ``eqn`` is a layer (a convolution or contraction of an activation with a
    weight), else None."""
    if eqn.primitive.name not in ("conv_general_dilated", "dot_general") or len(eqn.invars) != 2:
        return None
    for weight, other in ((1, 0), (0, 1)):
        if is_weight[weight] and is_activation[other]:
            if eqn.primitive.name == "conv_general_dilated" and weight != 1:
                return None
            return weight
    return None


def input_kinds(num_inputs: int, num_param_leaves: int, num_state_leaves: int) -> list[str]:
    """What each input of ``forward(params, state, x)``'s jaxpr is: ``"param"``, ``"state"`` or ``"input"``."""
    return ["param" if position < num_param_leaves else
            "state" if position < num_param_leaves + num_state_leaves else "input" for position in range(num_inputs)]


@dataclasses.dataclass(frozen=True)
class FoundLayer:
    """One layer as the walk meets it: its weight leaf, the operand positions and the op's static facts."""

    leaf: int
    weight_position: int  # operand index of the weight (0 or 1)
    kind: str  # "conv", "depthwise", "dense"
    in_channels: int
    out_channels: int
    kernel: tuple[int, int]
    stride: tuple[int, int]
    groups: int
    out_hw: tuple[int, int]
    in_axes: tuple[int, ...] = ()  # the weight's input-channel (contracted) axes
    out_axis: int | None = None  # the weight's output-channel axis (None: the output channels span several axes)


def _pair(sizes) -> tuple[int, int]:
    """Spatial sizes as (height, width): 1-D padded with 1, 3-D and more folded into the width."""
    sizes = [int(size) for size in sizes] + [1, 1]
    return sizes[0], int(np.prod(sizes[1:]))


def describe_layer(eqn, weight_position: int, leaf: int) -> FoundLayer:
    """A layer's kind, channels, kernel, stride, groups and output size from its equation."""
    weight_shape = eqn.invars[weight_position].aval.shape
    out_shape = eqn.outvars[0].aval.shape
    if eqn.primitive.name == "conv_general_dilated":
        numbers = eqn.params["dimension_numbers"]
        lhs_shape = eqn.invars[0].aval.shape
        in_channels = lhs_shape[numbers.lhs_spec[1]]
        out_channels = out_shape[numbers.out_spec[1]]
        groups = int(eqn.params["feature_group_count"])
        kernel = _pair([weight_shape[axis] for axis in numbers.rhs_spec[2:]])
        out_hw = _pair([out_shape[axis] for axis in numbers.out_spec[2:]])
        stride = (tuple(eqn.params["window_strides"]) + (1, 1))[:2]
        kind = "depthwise" if groups == in_channels and groups == out_channels and groups > 1 else "conv"
        return FoundLayer(leaf, weight_position, kind, in_channels, out_channels, kernel, stride, groups, out_hw,
                          (numbers.rhs_spec[1],), numbers.rhs_spec[0])
    (contracting, batch) = eqn.params["dimension_numbers"]
    weight_contracting = contracting[weight_position]
    weight_batch = batch[weight_position]
    in_channels = int(np.prod([weight_shape[axis] for axis in weight_contracting]))
    free_axes = [axis for axis in range(len(weight_shape))
                 if axis not in weight_contracting and axis not in weight_batch]
    free = [weight_shape[axis] for axis in free_axes]
    out_channels = int(np.prod(free + [weight_shape[axis] for axis in weight_batch]))
    # positions of one example that each apply the weight (tokens of a sequence): the dense layer's "pixels"
    activation_shape = eqn.invars[1 - weight_position].aval.shape
    act_contracting = contracting[1 - weight_position]
    act_batch = batch[1 - weight_position]
    act_free = [size for axis, size in enumerate(activation_shape)
                if axis not in act_contracting and axis not in act_batch]
    positions = int(np.prod(act_free[1:])) if act_free else 1
    return FoundLayer(leaf, weight_position, "dense", in_channels, out_channels, (1, 1), (1, 1), 1, (positions, 1),
                      tuple(weight_contracting), free_axes[0] if len(free_axes) == 1 and not weight_batch else None)
