"""The values of an integer program and the operations between them (`mpqjax.export.lowering`'s algebra).

A value is a `Const` (known when the program is built: parameters, batch statistics, literals), a `Fixed` tensor
(int32 codes ``q`` with an exponent ``F``: value ``q / 2^F``, and a bound on its magnitude), a `Pending` layer output
(an int32 accumulator with a per-channel affine map not yet applied, into which per-channel constants fold) or a
`Flag` (a comparison's result). `activation_op` computes one equation of the model's jaxpr on such values; what has
no integer form raises `Unexpressible`, which the lowering turns into a message naming the layer before it.
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np

from mpqjax.export import fixed_point

__all__ = ["COMPARISONS", "STRUCTURAL", "SUMS", "Const", "Fixed", "Flag", "Pending", "Unexpressible", "activation_op",
           "as_fixed", "at_exponent", "bind", "bound_of", "common_exponent"]


class Unexpressible(Exception):
    """An operation without an integer form; its argument says what (``"operation 'tanh'"``)."""


@dataclasses.dataclass(frozen=True)
class Const:
    value: np.ndarray
    leaves: frozenset = frozenset()


@dataclasses.dataclass(frozen=True)
class Fixed:
    q: jax.Array  # int32
    exponent: int
    bound: float  # no |value| exceeds it


@dataclasses.dataclass(frozen=True)
class Pending:
    acc: jax.Array  # int32 accumulator of a layer
    axis: int  # its channel axis
    scale: np.ndarray  # float64 per channel: value = acc * scale + offset
    offset: np.ndarray
    acc_bound: np.ndarray  # per channel, no |acc| exceeds it

    def bound(self) -> float:
        return float(np.max(self.acc_bound * np.abs(self.scale) + np.abs(self.offset), initial=0.0))


@dataclasses.dataclass(frozen=True)
class Flag:
    value: jax.Array  # bool, from comparing activations




def as_fixed(value) -> Fixed:
    if isinstance(value, Pending):
        bound = value.bound()
        exponent = fixed_point.exponent_for(bound)
        shape = [1] * value.acc.ndim
        shape[value.axis] = -1
        q = fixed_point.rescale(value.acc, (value.scale * 2.0 ** exponent).reshape(shape))
        q = q + jnp.asarray(np.round(value.offset * 2.0 ** exponent).astype(np.int32).reshape(shape))
        return Fixed(q, exponent, bound)
    if isinstance(value, Fixed):
        return value
    raise Unexpressible(f"expected an activation, got a {type(value).__name__}")


def bound_of(value) -> float:
    return float(np.max(np.abs(value.value), initial=0.0)) if isinstance(value, Const) else (
        value.bound() if isinstance(value, Pending) else value.bound)


def at_exponent(value, exponent: int):
    """An activation or constant as int32 at ``exponent``."""
    if isinstance(value, Const):
        scaled = np.asarray(value.value, np.float64) * 2.0 ** exponent
        return jnp.asarray(np.clip(np.round(np.nan_to_num(scaled, posinf=2 ** 31 - 1, neginf=-(2 ** 31) + 1)),
                                   -(2 ** 31) + 1, 2 ** 31 - 1).astype(np.int32))
    fixed = as_fixed(value)
    return fixed_point.shift_exponent(fixed.q, fixed.exponent, exponent)


def common_exponent(values, bound: float) -> int:
    exponents = [as_fixed(value).exponent for value in values if not isinstance(value, Const)]
    return min(exponents + [fixed_point.exponent_for(bound)])


def _channel_vector(const: Const, pending: Pending):
    """The constant as one value per channel of ``pending`` (None when it varies along another axis)."""
    ndim = pending.acc.ndim
    value = np.asarray(const.value, np.float64)
    if value.ndim > ndim:
        return None
    full = value.reshape((1,) * (ndim - value.ndim) + value.shape)
    if any(size != 1 for axis, size in enumerate(full.shape) if axis != pending.axis):
        return None
    return np.broadcast_to(full.reshape(-1), pending.scale.shape)


def _fold(name: str, first, second):
    """A per-channel affine operation folded into a pending accumulator, or None."""
    pending, const = (first, second) if isinstance(first, Pending) else (second, first)
    if not isinstance(pending, Pending) or not isinstance(const, Const):
        return None
    vector = _channel_vector(const, pending)
    if vector is None:
        return None
    replace = dataclasses.replace
    if name == "add":
        return replace(pending, offset=pending.offset + vector)
    if name == "sub":
        return (replace(pending, offset=pending.offset - vector) if pending is first
                else replace(pending, scale=-pending.scale, offset=vector - pending.offset))
    if name == "mul":
        return replace(pending, scale=pending.scale * vector, offset=pending.offset * vector)
    if name == "div" and pending is first and np.all(vector != 0):
        return replace(pending, scale=pending.scale / vector, offset=pending.offset / vector)
    return None


def _arithmetic(name: str, first, second):
    """add, sub, mul, div, max, min of activations and constants in fixed point."""
    folded = _fold(name, first, second)
    if folded is not None:
        return folded
    if name in ("mul", "div"):
        if isinstance(first, Const) == isinstance(second, Const) or (name == "div" and isinstance(second, Fixed)):
            raise Unexpressible(f"'{name}' of two activations (or of a constant by an activation)")
        activation, const = (first, second) if isinstance(second, Const) else (second, first)
        factor = np.asarray(const.value, np.float64)
        factor = 1.0 / factor if name == "div" else factor
        fixed = as_fixed(activation)
        bound = fixed.bound * float(np.max(np.abs(factor), initial=0.0))
        exponent = fixed_point.exponent_for(bound)
        return Fixed(fixed_point.rescale(fixed.q, factor * 2.0 ** (exponent - fixed.exponent)), exponent, bound)
    bounds = (bound_of(first), bound_of(second))
    bound = sum(bounds) if name in ("add", "sub") else max(bounds)
    exponent = common_exponent((first, second), bound)
    a, b = at_exponent(first, exponent), at_exponent(second, exponent)
    q = {"add": jnp.add, "sub": jnp.subtract, "max": jnp.maximum, "min": jnp.minimum}[name](a, b)
    return Fixed(q, exponent, bound)


COMPARISONS = {"gt": jnp.greater, "ge": jnp.greater_equal, "lt": jnp.less, "le": jnp.less_equal,
                "eq": jnp.equal, "ne": jnp.not_equal}
# Operations that move or copy values without changing them: run on the codes, exponent and bound kept.
STRUCTURAL = frozenset({"reshape", "transpose", "broadcast_in_dim", "squeeze", "expand_dims", "slice", "rev",
                         "copy", "copy_p", "reduce_max", "reduce_min", "reduce_window_max", "reduce_window_min",
                         "dynamic_slice", "gather"})
SUMS = frozenset({"reduce_sum", "reduce_window_sum"})


def bind(eqn, operands, **changes):
    params = {**eqn.params, **changes}
    with eqn.ctx.manager:
        return eqn.primitive.bind(*operands, **eqn.primitive.get_bind_params(params))


def _summed(eqn, fixed: Fixed):
    """reduce_sum / reduce_window_sum: summed in int64, then shifted to an exponent the sum fits."""
    if eqn.primitive.name == "reduce_sum":
        count = math.prod(fixed.q.shape[axis] for axis in eqn.params["axes"])
    else:
        count = math.prod(eqn.params["window_dimensions"])
    if not isinstance(count, int):
        raise Unexpressible(f"'{eqn.primitive.name}' over the batch axis")
    bound = fixed.bound * count
    exponent = min(fixed.exponent, fixed_point.exponent_for(bound))
    total = bind(eqn, [fixed.q.astype(jnp.int64)])
    return Fixed(fixed_point.shift_exponent(total, fixed.exponent, exponent), exponent, bound)


def activation_op(eqn, operands):
    """An operation on activations (and constants) other than a layer, a concatenation or a padding."""
    name = eqn.primitive.name
    if name in ("add", "sub", "mul", "div", "max", "min"):
        return _arithmetic(name, *operands)
    if name == "neg":
        fixed = as_fixed(operands[0])
        return Fixed(-fixed.q, fixed.exponent, fixed.bound)
    if name == "abs":
        fixed = as_fixed(operands[0])
        return Fixed(jnp.abs(fixed.q), fixed.exponent, fixed.bound)
    if name in COMPARISONS:
        exponent = common_exponent(operands, max(bound_of(operand) for operand in operands))
        return Flag(COMPARISONS[name](*(at_exponent(operand, exponent) for operand in operands)))
    if name == "select_n":
        if not isinstance(operands[0], Flag):
            raise Unexpressible("'select_n' on a constant condition")
        cases = operands[1:]
        bound = max(bound_of(case) for case in cases)
        exponent = common_exponent(cases, bound)
        selected = jax.lax.select_n(operands[0].value, *(at_exponent(case, exponent) for case in cases))
        return Fixed(selected, exponent, bound)
    if name == "convert_element_type":
        if not jnp.issubdtype(eqn.params["new_dtype"], jnp.floating):
            raise Unexpressible(f"conversion of an activation to {eqn.params['new_dtype']}")
        return operands[0]
    if any(isinstance(operand, Flag) for operand in operands):
        raise Unexpressible(f"'{name}' on a comparison's result")
    if name in STRUCTURAL:
        fixed = as_fixed(operands[0])
        rest = [at_exponent(operand, fixed.exponent) if isinstance(operand, Const) and operand.value.dtype.kind == "f"
                else jnp.asarray(operand.value) for operand in operands[1:]]
        return Fixed(bind(eqn, [fixed.q, *rest]), fixed.exponent, fixed.bound)
    if name in SUMS:
        return _summed(eqn, as_fixed(operands[0]))
    raise Unexpressible(f"operation '{name}'")
