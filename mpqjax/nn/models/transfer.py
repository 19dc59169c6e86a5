"""Moving weights between widths: float model -> configuration (`transfer_variables`), masked -> materialised
(`materialize`).

Channel importance is the L1 norm of a channel's kernel (its output slice), normalised by the layer's mean and
summed over the layers of a width group, since those layers share channel positions. A narrowed group keeps its
most important channels; the transferred model stores every group's channels in decreasing importance, so a masked
model's prefix masks keep the most important channels at every width. A widened layer keeps all of its channels
first and gets new ones after them: fresh initialisation on the producing side, zero weights on the consuming side,
so the widened model computes exactly the float model's function at transfer time and the new channels still
receive gradients. Zero-padding (option-A) shortcuts fix channel positions across stages: a stage fed by one keeps
the feeding stage's order on the carried channels and sorts only the rest.
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from mpqjax.nn.models.core import QModel, init_variables, trace
from mpqjax.nn.table import LayerTable, scale_channels

_VECTOR_KEYS = {("bias",), ("bn", "scale"), ("bn", "bias"), ("bn", "mean"), ("bn", "var")}


def _layer_entries(flat: dict, name: str):
    """Keys of ``flat`` (flattened variables) that belong to layer ``name``, with the key's remainder."""
    prefix = tuple(name.split("/"))
    for key in flat:
        collection, rest = key[0], key[1:]
        if rest[: len(prefix)] == prefix:
            yield key, collection, rest[len(prefix) :]


def _kernel(flat: dict, name: str):
    return np.asarray(flat[("params", *name.split("/"), "kernel")])


def _channel_orders(table: LayerTable, links, float_flat: dict) -> dict[int, np.ndarray]:
    """Per width group (keyed by its first layer), the base channels in decreasing importance."""
    importance: dict[int, np.ndarray] = {}
    first_of: dict[int, int] = {}
    for group in table.width_groups():
        for index in group:
            first_of[index] = group[0]
    for index, layer in enumerate(table):
        l1 = np.abs(_kernel(float_flat, layer.name)).reshape(-1, layer.out_channels).sum(axis=0)
        l1 = l1 / max(float(l1.mean()), 1e-12)
        first = first_of[index]
        importance[first] = importance.get(first, 0.0) + l1
    carried_into = {first_of[destination]: (first_of[source], carried) for source, destination, carried in links}
    orders: dict[int, np.ndarray] = {}
    for group in table.width_groups():
        first = group[0]
        base = table[first].out_channels
        if not table[first].scalable:
            orders[first] = np.arange(base)
            continue
        # A stable sort keeps ties (e.g. an untrained model) in their original order.
        by_importance = lambda values: np.argsort(-values, kind="stable")  # noqa: E731
        if first in carried_into:
            source_group, carried = carried_into[first]
            carried = min(carried, base)
            head = orders[source_group][:carried]
            tail = carried + by_importance(importance[first][carried:])
            orders[first] = np.concatenate([head, tail])
        else:
            orders[first] = by_importance(importance[first])
    return {index: orders[first_of[index]] for index in range(len(table))}


def _check_same_architecture(table: LayerTable, other: LayerTable):
    if [(layer.name, layer.kind, layer.out_channels) for layer in table] != [
        (layer.name, layer.kind, layer.out_channels) for layer in other
    ]:
        raise ValueError(f"models {table.model!r} and {other.model!r} have different layers")


def transfer_variables(key, model: QModel, float_model: QModel, float_variables, *, input_shape=None):
    """Initialise ``model`` (masked or materialised, quantised or not) from a trained width-1 ``float_model``.

    Args:
        key: PRNG key for the new channels' fresh initialisation.
        model: the target model.
        float_model: the source model, built at width 1 (``widths`` all 1, or masked with ``max_width=1``).
        float_variables: its variables (``params``, ``batch_stats``).
        input_shape: one example's shape; the model's default when None.

    Returns:
        Variables for ``model``. A masked target stores channels in importance order (see the module docstring);
        its outputs at widths >= 1 equal the float model's (same bits permitting).
    """
    if not isinstance(model, QModel):  # a user's model keeps its channels in place (`OwnModel.transfer`)
        _check_same_architecture(trace(model, input_shape=input_shape)[0],
                                 trace(float_model, input_shape=input_shape)[0])
        return model.transfer(key, float_variables, input_shape)
    table, links = trace(model, input_shape=input_shape)
    float_table, _ = trace(float_model, input_shape=input_shape)
    _check_same_architecture(table, float_table)
    target = init_variables(key, model, table.input_shape)
    target_flat = {k: np.array(v) for k, v in traverse_util.flatten_dict(target).items()}
    float_flat = {k: np.asarray(v) for k, v in traverse_util.flatten_dict(float_variables).items()}
    for layer in table:
        if _kernel(float_flat, layer.name).shape[-1] != layer.out_channels:
            raise ValueError(f"layer {layer.name!r}: the float model must be at width 1 "
                             f"({layer.out_channels} channels), got {_kernel(float_flat, layer.name).shape[-1]}")
    orders = _channel_orders(table, links, float_flat)

    def kept(index):
        """Source channels kept by layer ``index``'s output, in the target's order."""
        count = _kernel(target_flat, table[index].name).shape[-1]
        return orders[index][: min(count, table[index].out_channels)]

    for index, layer in enumerate(table):
        out_kept = kept(index)
        in_kept = None
        if layer.kind != "depthwise":
            in_kept = kept(layer.input_layer) if layer.input_layer >= 0 else np.arange(layer.in_channels)
        for key_, _collection, rest in _layer_entries(float_flat, layer.name):
            target_key = key_
            if target_key not in target_flat:
                continue
            source = float_flat[key_]
            value = target_flat[target_key]
            if rest == ("kernel",):
                if layer.kind == "depthwise":
                    value[..., : len(out_kept)] = source[..., out_kept]
                else:
                    value[..., : len(in_kept), : len(out_kept)] = source[..., in_kept, :][..., out_kept]
                    value[..., len(in_kept) :, :] = 0.0  # consumer side of new input channels
            elif rest in _VECTOR_KEYS:
                value[: len(out_kept)] = source[out_kept]
            else:
                value = source
            target_flat[target_key] = value
    return traverse_util.unflatten_dict({k: jnp.asarray(v) for k, v in target_flat.items()})


def materialize(model: QModel, variables, widths, *, input_shape=None):
    """The materialised model at ``widths`` and its variables, cut from a masked model's variables.

    The result computes the same outputs as ``model.apply(variables, x, bits, widths)`` for any bits.

    Returns:
        ``(materialised_model, materialised_variables)``.
    """
    if model.widths is not None:
        raise ValueError("materialize takes a masked model (built without widths)")
    table, _ = trace(model, input_shape=input_shape)
    widths = [float(w) for w in np.asarray(widths, np.float64).reshape(-1)]
    if len(widths) != len(table):
        raise ValueError(f"widths has {len(widths)} entries but model {table.model!r} has {len(table)} weight layers")
    flat = {k: np.asarray(v) for k, v in traverse_util.flatten_dict(variables).items()}
    counts = [scale_channels(layer.out_channels, w) if layer.scalable else layer.out_channels
              for layer, w in zip(table, widths, strict=True)]
    result = dict(flat)
    for index, layer in enumerate(table):
        count = counts[index]
        in_count = counts[layer.input_layer] if layer.input_layer >= 0 else layer.in_channels
        for key, _collection, rest in _layer_entries(flat, layer.name):
            value = flat[key]
            if rest == ("kernel",):
                value = value[..., :count] if layer.kind == "depthwise" else value[..., :in_count, :count]
            elif rest in _VECTOR_KEYS:
                value = value[:count]
            result[key] = value
    materialised = model.clone(widths=tuple(widths), parent=None)
    return materialised, traverse_util.unflatten_dict({k: jnp.asarray(v) for k, v in result.items()})
