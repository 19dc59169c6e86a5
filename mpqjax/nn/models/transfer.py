"""Starting a configuration from a trained float model: `transfer_variables`, and `channel_ranks` (which channels
a narrowed width group keeps).

The weights keep their places. Each width group ranks its channels by importance, the L1 norm of their weights, so
a narrowed group keeps its most important channels (the interceptor masks by rank, `mpqjax.nn.intercept.mask_of`).
A wider model takes the float weights in its leading channels and its own initialisation in the new ones (ranked
after every old one), with the weights that read new channels zeroed: the function is the float model's until
training moves them, and the new channels train (their consumers' weights get gradients at once).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from mpqjax.nn import intercept
from mpqjax.nn.models.flax_function import leaf_paths, path_text
from mpqjax.nn.models.model import Model

__all__ = ["channel_ranks", "transfer_variables"]


def transfer_variables(key, model: Model, float_model: Model, float_variables, *, input_shape=None) -> dict:
    """Initialise ``model`` (quantised or not, up to its ``max_width``) from a trained width-1 ``float_model``.

    The weights keep their places; each width group ranks its channels by importance (`channel_ranks`), so
    a narrowed group keeps its most important channels; a widened one starts as the float model's function.

    Args:
        key: PRNG key for the new channels' initialisation.
        model: the target model.
        float_model: the source model at width 1.
        float_variables: its variables (``params``, ``batch_stats``).
        input_shape: one example's shape; the model's default when None.

    Raises:
        ValueError: models with different layers, or variables that do not fit the width-1 model.
    """
    table, float_table = model.table(input_shape), float_model.table(input_shape)
    if [(layer.name, layer.kind, layer.out_channels) for layer in table] != [
            (layer.name, layer.kind, layer.out_channels) for layer in float_table]:
        raise ValueError(f"models {table.model!r} and {float_table.model!r} have different layers")
    return _transfer(model, key, float_variables, input_shape)


def _transfer(model: Model, key, float_variables, input_shape: Sequence[int] | None) -> dict:
    """`transfer_variables` once the layers are checked: the checks on the host, the transfer in one compiled
    program on the device (the float weights are read where they lie; nothing comes back to the host)."""
    shape = tuple(int(size) for size in input_shape) if input_shape is not None else model.input_shape()
    base = model.check_variables(float_variables, shape, as_numpy=False)
    if model.model_function is model.function:
        return _transfer_program(model, shape)(None, base)
    wide = model.model_function.initial_variables(key, shape)
    flat_base = dict(zip(leaf_paths(base), jax.tree.leaves(base), strict=True))
    for path, leaf in jax.tree_util.tree_flatten_with_path(wide)[0]:
        name = path_text(path)
        old = flat_base.get(name)
        if old is None or np.ndim(old) != np.ndim(leaf) or any(
                a > b for a, b in zip(np.shape(old), np.shape(leaf), strict=True)):
            raise ValueError(f"the width factory builds {name!r} as {np.shape(leaf)} at width {model.max_width:g}, "
                             f"which does not hold its {None if old is None else np.shape(old)} at width 1")
    return _transfer_program(model, shape)(wide, base)


@functools.lru_cache(maxsize=32)
def _transfer_program(model: Model, shape: tuple[int, ...]):
    """The jitted ``(wide initial variables or None, width-1 variables) -> transferred variables`` of a model."""
    analysis = model.analysis(shape)
    ones = np.ones(len(analysis.table), np.float32)
    reads = {}  # weight path -> (input-channel axes, which input channels exist at width 1)
    for index, layer in enumerate(analysis.table):
        mask = intercept.mask_of(analysis.plan.in_masks[index], ones, analysis.plan.base_channels)
        if mask is not None and layer.kind != "depthwise":
            reads[f"params/{layer.weight_path}"] = (analysis.in_axes[index], np.asarray(mask))

    def transfer(wide, base):
        ranks = _ranks(model, base, shape)
        if wide is None:
            return model.with_quant_variables(base, shape, ranks=ranks)
        flat_base = dict(zip(leaf_paths(base), jax.tree.leaves(base), strict=True))

        def paste(path, leaf):
            name = path_text(path)
            old = flat_base[name]
            leaf = leaf.at[tuple(slice(0, size) for size in old.shape)].set(old.astype(leaf.dtype))
            if name in reads:
                axes, mask = reads[name]
                leaf = leaf * intercept.along(jnp.asarray(mask), leaf.ndim, axes, leaf.shape).astype(leaf.dtype)
            return leaf

        return model.with_quant_variables(jax.tree_util.tree_map_with_path(paste, wide), shape, ranks=ranks)

    return jax.jit(transfer)


def channel_ranks(model: Model, variables, input_shape: Sequence[int] | None = None) -> dict[str, jax.Array]:
    """Each width group's channels ranked by importance (0: the most important), keyed by its first layer.

    A channel's importance is the L1 norm of its weights (the slice of each layer's weight that writes it),
    divided by the layer's mean and summed over the group's layers, which share the channel positions. Ties
    (an untrained model) keep their order. Computed where the weights lie (one compiled program per model).

    Args:
        variables: the width-1 model's variables (``params``).
        input_shape: one example's shape.

    Returns:
        ``{first layer of each group whose channels can change: int32 ranks [channels]}``.
    """
    shape = tuple(int(size) for size in input_shape) if input_shape is not None else model.input_shape()
    return _ranks_program(model, shape)({"params": variables["params"]})


@functools.lru_cache(maxsize=32)
def _ranks_program(model: Model, shape: tuple[int, ...]):
    return jax.jit(functools.partial(_ranks, model, shape=shape))


def _ranks(model: Model, variables, shape: tuple[int, ...]) -> dict[str, jax.Array]:
    """`channel_ranks`, traceable."""
    analysis = model.analysis(shape)
    table = analysis.table
    flat = dict(zip(leaf_paths(variables["params"]), jax.tree.leaves(variables["params"]), strict=True))
    ranks = {}
    for group in table.width_groups():
        first = table[group[0]]
        if not first.scalable:
            continue
        importance = jnp.zeros(first.out_channels, jnp.float32)
        for index in group:
            weight, axis = flat.get(table[index].weight_path), analysis.out_axes[index]
            if weight is None or axis is None or np.shape(weight)[axis] != first.out_channels:
                continue  # a weight computed from several leaves: no ranking of its own
            l1 = jnp.abs(jnp.asarray(weight, jnp.float32)).sum(
                axis=tuple(a for a in range(np.ndim(weight)) if a != axis))
            importance = importance + l1 / jnp.maximum(l1.mean(), 1e-12)
        order = jnp.argsort(-importance, stable=True)
        ranks[first.name] = jnp.zeros(first.out_channels, jnp.int32).at[order].set(
            jnp.arange(first.out_channels, dtype=jnp.int32))
    return ranks
