"""The check of a relaxation against the model it runs on (`mpqjax.nn.models.Model.apply`'s ``relaxation``).

A `mpqjax.nn.intercept.Relaxation` names layers; this module checks those names and the shapes of their probabilities
against the model (they are static, so they are checked under jit too) and the candidate bit-widths when they are
concrete, before the interceptor runs them.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from mpqjax.nn.config import MAX_BITS, MIN_BITS
from mpqjax.nn.intercept import Relaxation

__all__ = ["check_relaxation", "is_concrete"]


def check_relaxation(model, relaxation, bits, input_shape: tuple[int, ...]) -> Relaxation:
    """``relaxation`` checked against ``model`` (a `mpqjax.nn.models.Model`) at one input shape: names and shapes
    always (they are static), the candidate bit-widths when concrete; its arrays as float32.

    Raises:
        ValueError: a relaxation on a float model or without ``bits``, an unknown layer, a shape that does not fit,
            or a candidate bit-width that is not a whole number in [2, 16] (0 too for ``weight_bits``), naming the
            layer.
    """
    if not isinstance(relaxation, Relaxation):
        raise ValueError(f"relaxation must be an mpqjax.nn.Relaxation, got {type(relaxation).__name__}")
    if not model.quantize:
        raise ValueError(f"model {model.name!r} is not quantised: it takes no relaxation")
    if bits is None:
        raise ValueError("a relaxation needs bits too: they quantise what the relaxation leaves out")
    names = model.table(input_shape).names
    relaxation = jax.tree.map(_float32, relaxation)
    act_bits, act_probs, weight_bits = relaxation.act_bits, relaxation.act_probs, relaxation.weight_bits
    if (act_bits is None) != (act_probs is None):
        raise ValueError("relaxation: act_bits and act_probs go together (both or neither)")
    if act_bits is not None:
        _check_options("act_bits", act_bits, pruned=False)
        expected = (len(names), np.shape(act_bits)[0])
        if np.shape(act_probs) != expected:
            raise ValueError(f"relaxation: act_probs has shape {np.shape(act_probs)}, expected {expected} (one row "
                             f"per quantised layer, in table order: {', '.join(names)}; one column per act_bits)")
    weight_probs = dict(relaxation.weight_probs or {})
    if weight_probs:
        if weight_bits is None:
            raise ValueError("relaxation: weight_probs needs weight_bits (the candidate bit-widths)")
        _check_options("weight_bits", weight_bits, pruned=True)
        options = np.shape(weight_bits)[0]
        channels = model.weight_channels(input_shape)
        for name, probs in weight_probs.items():
            if name not in channels:
                raise ValueError(f"relaxation: weight_probs: unknown layer {name!r}; the quantised layers are: "
                                 f"{', '.join(channels)}")
            if np.shape(probs) not in ((options,), (channels[name], options)):
                raise ValueError(f"relaxation: weight_probs: layer {name!r} has shape {np.shape(probs)}, "
                                 f"expected ({options},) or ({channels[name]}, {options}) ({channels[name]} "
                                 f"output channels, {options} weight_bits options)")
    elif weight_bits is not None:
        _check_options("weight_bits", weight_bits, pruned=True)
    keep = dict(relaxation.keep or {})
    if keep:
        held = model.held_channels(input_shape)
        for name, probs in keep.items():
            if name not in held:
                why = "is not the first layer of a width group that can narrow" if name in names else \
                    "is an unknown layer"
                raise ValueError(f"relaxation: keep: {name!r} {why}; the width groups' first layers are: "
                                 f"{', '.join(held) or 'none'}")
            if np.shape(probs) != (held[name],):
                raise ValueError(f"relaxation: keep: layer {name!r} has shape {np.shape(probs)}, expected "
                                 f"({held[name]},) (the channels its width group holds)")
    return relaxation._replace(weight_probs=relaxation.weight_probs if weight_probs else None,
                               keep=relaxation.keep if keep else None)


def _float32(values):
    """An array of a relaxation as float32: a host value on the host (no program compiled), a traced one traced."""
    if not isinstance(values, jax.Array) and is_concrete(values):
        return np.asarray(values, np.float32)
    return jnp.asarray(values, jnp.float32)


def _check_options(label: str, options, *, pruned: bool) -> None:
    """Candidate bit-widths: a 1-D array, its concrete values whole numbers in [MIN_BITS, MAX_BITS] (or 0)."""
    if np.ndim(options) != 1 or np.shape(options)[0] < 1:
        raise ValueError(f"relaxation: {label} must be a non-empty 1-D array of bit-widths, got shape "
                         f"{np.shape(options)}")
    if not is_concrete(options):
        return
    values = np.asarray(options, np.float64)
    valid = np.isfinite(values) & (values == np.round(values)) & (values >= MIN_BITS) & (values <= MAX_BITS)
    if pruned:
        valid |= values == 0
    if not valid.all():
        allowed = f"0 (pruned) or an integer in [{MIN_BITS}, {MAX_BITS}]" if pruned else \
            f"an integer in [{MIN_BITS}, {MAX_BITS}]"
        raise ValueError(f"relaxation: {label}[{int(np.argmin(valid))}] must be {allowed}, got "
                         f"{values[np.argmin(valid)]:g}")


def is_concrete(values) -> bool:
    """Not None and free of tracers (a configuration given eagerly, not traced)."""
    return values is not None and not any(isinstance(leaf, jax.core.Tracer) for leaf in jax.tree.leaves(values))
