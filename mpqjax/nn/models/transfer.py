"""Starting a configuration from a trained float model: `transfer_variables`, and `channel_ranks` (which channels
a narrowed width group keeps).

The weights keep their places. Each width group ranks its channels by importance, the L1 norm of their weights, so
a narrowed group keeps its most important channels (the interceptor masks by rank, `mpqjax.nn.intercept.mask_of`).
A wider model takes the float weights in its leading channels and its own initialisation in the new ones (ranked
after every old one), with the weights that read new channels zeroed: the function is the float model's until
training moves them, and the new channels train (their consumers' weights get gradients at once).
"""

from __future__ import annotations

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
    """`transfer_variables` once the layers are checked."""
    shape = tuple(input_shape) if input_shape is not None else model.input_shape()
    base = model.check_variables(float_variables, shape)
    ranks = channel_ranks(model, base, shape)
    if model.model_function is model.function:
        return model.with_quant_variables(base, shape, ranks=ranks)
    wide = jax.tree.map(np.array, model.model_function.initial_variables(key, shape))
    flat_base = dict(zip(leaf_paths(base), jax.tree.leaves(base), strict=True))
    analysis = model.analysis(shape)
    ones = np.ones(len(analysis.table), np.float32)
    reads = {}  # weight path -> (input-channel axes, which input channels exist at width 1)
    for index, layer in enumerate(analysis.table):
        mask = intercept.mask_of(analysis.plan.in_masks[index], ones, analysis.plan.base_channels)
        if mask is not None and layer.kind != "depthwise":
            reads[f"params/{layer.weight_path}"] = (analysis.in_axes[index], np.asarray(mask))

    def paste(path, leaf):
        name = path_text(path)
        old = flat_base.get(name)
        if old is None or old.ndim != leaf.ndim or any(a > b for a, b in zip(old.shape, leaf.shape, strict=True)):
            raise ValueError(f"the width factory builds {name!r} as {leaf.shape} at width {model.max_width:g}, "
                             f"which does not hold its {None if old is None else old.shape} at width 1")
        leaf[tuple(slice(0, size) for size in old.shape)] = old
        if name in reads:
            axes, mask = reads[name]
            leaf *= np.asarray(intercept.along(jnp.asarray(mask), leaf.ndim, axes, leaf.shape), leaf.dtype)
        return leaf

    return model.with_quant_variables(jax.tree_util.tree_map_with_path(paste, wide), shape, ranks=ranks)


def channel_ranks(model: Model, variables, input_shape: Sequence[int] | None = None) -> dict[str, np.ndarray]:
    """Each width group's channels ranked by importance (0: the most important), keyed by its first layer.

    A channel's importance is the L1 norm of its weights (the slice of each layer's weight that writes it),
    divided by the layer's mean and summed over the group's layers, which share the channel positions. Ties
    (an untrained model) keep their order.

    Args:
        variables: the width-1 model's variables (``params``).
        input_shape: one example's shape.

    Returns:
        ``{first layer of each group whose channels can change: int32 ranks [channels]}``.
    """
    analysis = model.analysis(input_shape)
    table = analysis.table
    flat = dict(zip(leaf_paths(variables["params"]), jax.tree.leaves(variables["params"]), strict=True))
    ranks = {}
    for group in table.width_groups():
        first = table[group[0]]
        if not first.scalable:
            continue
        importance = np.zeros(first.out_channels)
        for index in group:
            weight, axis = flat.get(table[index].weight_path), analysis.out_axes[index]
            if weight is None or axis is None or np.shape(weight)[axis] != first.out_channels:
                continue  # a weight computed from several leaves: no ranking of its own
            l1 = np.abs(np.asarray(weight)).sum(axis=tuple(a for a in range(np.ndim(weight)) if a != axis))
            importance += l1 / max(float(l1.mean()), 1e-12)
        rank = np.empty(first.out_channels, np.int32)
        rank[np.argsort(-importance, kind="stable")] = np.arange(first.out_channels, dtype=np.int32)
        ranks[first.name] = rank
    return ranks
