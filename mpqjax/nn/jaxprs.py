"""Reading a traced model's jaxpr: the bodies of calls and loops, and which equations are layers.

Shared by `mpqjax.nn.graph` (which finds the layers) and `mpqjax.nn.intercept` (which runs them quantised), so that
both see the same layers.
"""

from __future__ import annotations

from collections.abc import Sequence

from jax.extend import core as jex_core

__all__ = ["CALL_PRIMITIVES", "bodies", "contracts", "input_kinds", "layer_operands", "sub_jaxpr"]

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
