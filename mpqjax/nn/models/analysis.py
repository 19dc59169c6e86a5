"""What a model is, read once from its trace: its layer table and how the interceptor runs it (`analyse`).

`mpqjax.nn.graph` finds the layers of the width-1 module; the rules (`mpqjax.nn.models.rules`) keep, exclude or pin
them; a width factory's wider module must have the same layers with room for its widths. The result is cached per
module, rules and input shape: a search analyses its model once.
"""

from __future__ import annotations

import dataclasses
import functools

from mpqjax.nn import graph, intercept
from mpqjax.nn.models.flax_function import FlaxFunction
from mpqjax.nn.models.rules import Rules
from mpqjax.nn.table import LayerSpec, LayerTable, scale_channels

__all__ = ["Analysis", "analyse"]


@dataclasses.dataclass(frozen=True)
class Analysis:
    """A model's layer table (at width 1) and how the interceptor runs its (possibly wider) module."""

    table: LayerTable
    plan: intercept.Plan
    main_leaf: dict
    pinned: dict
    in_axes: tuple  # per layer, its weight's input-channel axes
    out_axes: tuple  # per layer, its weight's output-channel axis (None: several axes)


def _discover(function: FlaxFunction, rules: Rules, name: str, input_shape: tuple[int, ...]):
    """``(discovery, kept, weight paths)`` of one module: its layers with the rules applied."""
    closed, paths, num_state = function.eval_jaxpr(input_shape)
    num_params = len(paths)
    found = graph.discover(closed, paths, num_params, num_state)
    if not found.layers:
        raise ValueError(f"model {name!r} has no quantisable layer (no convolution or dense contraction of its input "
                         f"with a parameter)")
    kept = rules.kept(found.names)
    if not any(kept):
        raise ValueError(f"the rules leave model {name!r} no layer to quantise")
    if not all(kept):
        found = graph.discover(closed, paths, num_params, num_state,
                               fixed_layers=frozenset(i for i, keep in enumerate(kept) if not keep))
    return found, kept, paths


def _table(found, kept, paths, position: dict, name: str, input_shape) -> LayerTable:
    specs = []
    for index, layer in enumerate(found.layers):
        if kept[index]:
            specs.append(LayerSpec(
                name=found.names[index], kind=layer.kind, in_channels=layer.in_channels,
                out_channels=layer.out_channels, kernel=layer.kernel, stride=layer.stride, out_hw=layer.out_hw,
                input_layer=position.get(found.input_layer[index], -1), input_repeat=found.input_repeat[index],
                width_group=position[found.out_classes[index]], scalable=not found.fixed[index],
                use_bias=found.use_bias[index], batch_norm=found.batch_norm[index], groups=layer.groups,
                weight=paths[layer.leaf]))
    return LayerTable(layers=tuple(specs), input_shape=input_shape, model=name)


def _check_wider(table: LayerTable, wide: LayerTable, max_width: float) -> None:
    """A width factory's wider module must have the same layers, each with room for ``max_width``."""
    if table.names != wide.names:
        raise ValueError(f"the width factory builds other layers at width {max_width:g} ({', '.join(wide.names)}) "
                         f"than at width 1 ({', '.join(table.names)})")
    for layer, wider in zip(table, wide, strict=True):
        if not layer.scalable and wider.out_channels != layer.out_channels:
            raise ValueError(f"layer {layer.name!r}: its channels are fixed by the graph, but the width factory gives "
                             f"it {wider.out_channels} at width {max_width:g} instead of {layer.out_channels}")
        needed = scale_channels(layer.out_channels, max_width) if layer.scalable else layer.out_channels
        if wider.out_channels < needed:
            raise ValueError(f"layer {layer.name!r}: the width factory gives it {wider.out_channels} channels at "
                             f"width {max_width:g}, fewer than the {needed} that width needs")


@functools.lru_cache(maxsize=64)
def analyse(function: FlaxFunction, model_function: FlaxFunction, rules: Rules, act_clipping: str, name: str,
             input_shape: tuple[int, ...], max_width: float) -> Analysis:
    """The table of the width-1 module; the plan of the module that runs (the same, or built at ``max_width``)."""
    found, kept, paths = _discover(function, rules, name, input_shape)
    position = {old: new for new, old in enumerate(i for i, keep in enumerate(kept) if keep)}
    table = _table(found, kept, paths, position, name, input_shape)
    if model_function is not function:
        found, kept, paths = _discover(model_function, rules, name, input_shape)
        _check_wider(table, _table(found, kept, paths, position, name, input_shape), max_width)
    occurrences, layer_of_leaf = {}, {}
    for index, layer in enumerate(found.layers):
        occurrences[layer.leaf] = occurrences.get(layer.leaf, 0) + 1
        if kept[index]:
            layer_of_leaf[(layer.leaf, occurrences[layer.leaf])] = position[index]
    in_masks = tuple(_renumber(found.in_masks[i], position) for i, keep in enumerate(kept) if keep)
    formations = {number: tuple((operand, axis, _renumber(description, position))
                                for operand, axis, description in masks)
                  for number, masks in found.formations.items()}
    plan = intercept.Plan(layer_of_leaf=layer_of_leaf, in_masks=in_masks,
                          signed=tuple(not found.input_nonneg[i] for i, keep in enumerate(kept) if keep),
                          base_channels=tuple(layer.out_channels for layer in table), act_clipping=act_clipping,
                          formations=formations)
    in_axes = tuple(layer.in_axes for layer, keep in zip(found.layers, kept, strict=True) if keep)
    out_axes = tuple(layer.out_axis for layer, keep in zip(found.layers, kept, strict=True) if keep)
    return Analysis(table, plan, found.main_leaf, rules.pinned(table.names), in_axes, out_axes)


def _renumber(description, position: dict):
    """A mask description with discovery's layer indices replaced by table indices."""
    if description is None:
        return None
    if description[0] == "group":
        return ("group", position[description[1]], description[2])
    if description[0] == "ones":
        return description
    return (description[0], tuple(_renumber(part, position) for part in description[1]))
