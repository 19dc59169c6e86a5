"""Hessian-based search-space pruning (Section III.A): sharp layers get high bit-widths, flat layers low ones.

Each layer's Hessian trace is divided by its number of weights; k-means (k = 4 by default, deterministic, from
`mpqjax.optim.cluster`) groups these normalised traces; clusters sorted from the largest centroid to the smallest get
the candidate bit-width sets ``bit_sets[0], bit_sets[1], ...`` (the paper's example: {8, 6}, {6, 4, 3}, {4, 3, 2},
{3, 2}). Width multipliers are never pruned. The result is a `SearchSpace` with, per layer, an ordinal dimension
``"bits/<layer name>"`` and, per width group, an ordinal dimension ``"width/<first layer of the group>"`` (groups whose
layers are all unscalable, such as a classifier head, have none: their width is 1).

`LayerSpace` maps configurations of such a space to the per-layer arrays ``bits[L]`` and ``widths[L]`` that the
model zoo, the training and the cost model consume, and back.

Example:
    >>> table = models.layer_table("digits_cnn")
    >>> result = prune_space(table, traces, fixed_bits={"conv1": 8, "head": 8})
    >>> result.log10_size_before, result.log10_size_after
    >>> bits, widths = result.layer_space.to_arrays(config)
"""

from __future__ import annotations

import dataclasses
import math
import numbers
from collections.abc import Mapping, Sequence
from typing import Any

import jax.numpy as jnp
import numpy as np

from mpqjax.nn.table import LayerTable
from mpqjax.optim.cluster import kmeans_1d
from mpqjax.optim.space import SearchSpace, ordinal
from mpqjax.sensitivity.hessian import LayerTraces

__all__ = [
    "ALL_BITS",
    "DEFAULT_BIT_SETS",
    "DEFAULT_WIDTHS",
    "LayerSpace",
    "Sensitivity",
    "bits_dimension",
    "layer_space",
    "prune_space",
    "width_dimension",
]

ALL_BITS = (8, 6, 4, 3, 2)
DEFAULT_BIT_SETS = ((8, 6), (6, 4, 3), (4, 3, 2), (3, 2))  # from the most to the least sensitive cluster
DEFAULT_WIDTHS = (0.75, 0.875, 1.0, 1.125, 1.25)

def bits_dimension(layer_name: str) -> str:
    """Name of the bit-width dimension of a layer: ``"bits/<layer name>"``."""
    return f"bits/{layer_name}"


def width_dimension(first_layer_name: str) -> str:
    """Name of the width dimension of a width group, after its first layer: ``"width/<layer name>"``."""
    return f"width/{first_layer_name}"


def _check_choices(what: str, choices: Sequence, *, integers: bool) -> tuple:
    choices = tuple(choices)
    if not choices:
        raise ValueError(f"{what}: needs at least one choice")
    for choice in choices:
        wrong_type = not isinstance(choice, numbers.Integral if integers else numbers.Real) or isinstance(choice, bool)
        if wrong_type or not math.isfinite(choice) or choice <= 0:
            kind = "positive integers" if integers else "positive numbers"
            raise ValueError(f"{what}: choices must be {kind}, got {choice!r}")
    if len(set(choices)) != len(choices):
        raise ValueError(f"{what}: choices must be distinct, got {list(choices)}")
    return choices


@dataclasses.dataclass(frozen=True)
class LayerSpace:
    """A search space over per-layer bit-widths and per-group width multipliers of one model.

    Attributes:
        table: the model's layer table.
        space: the `SearchSpace`: ``bits/<layer>`` for every layer, then ``width/<first layer>`` for every width
            group with a scalable layer.
    """

    table: LayerTable
    space: SearchSpace

    @property
    def bits_index(self) -> np.ndarray:
        """[L] index in the space of each layer's bit-width dimension."""
        return np.asarray([self.space.names.index(bits_dimension(name)) for name in self.table.names])

    @property
    def width_index(self) -> np.ndarray:
        """[L] index in the space of each layer's width dimension, -1 for a layer whose group has none (width 1)."""
        index = np.full(len(self.table), -1)
        for group in self.table.width_groups():
            name = width_dimension(self.table[group[0]].name)
            if name in self.space.names:
                index[group] = self.space.names.index(name)
        return index

    def to_arrays(self, config: Mapping[str, Any]) -> tuple[np.ndarray, np.ndarray]:
        """Per-layer ``bits`` (int32 [L]) and ``widths`` (float32 [L]) of a configuration (validated)."""
        self.space.validate(config)
        bits = np.asarray([config[bits_dimension(name)] for name in self.table.names], np.int32)
        widths = np.ones(len(self.table), np.float32)
        for layer, dimension in enumerate(self.width_index):
            if dimension >= 0:
                widths[layer] = config[self.space.names[dimension]]
        return bits, widths

    def to_config(self, bits, widths) -> dict[str, Any]:
        """The configuration of per-layer arrays; raises ValueError if they are not a point of the space."""
        bits = np.asarray(bits).reshape(-1)
        widths = np.asarray(widths, np.float64).reshape(-1)
        if bits.shape[0] != len(self.table) or widths.shape[0] != len(self.table):
            raise ValueError(f"bits and widths need {len(self.table)} entries (one per layer), got "
                             f"{bits.shape[0]} and {widths.shape[0]}")
        config: dict[str, Any] = {}
        for layer, name in enumerate(self.table.names):
            if float(bits[layer]) != int(bits[layer]):
                raise ValueError(f"layer {name!r}: bit-width must be an integer, got {bits[layer]}")
            config[bits_dimension(name)] = int(bits[layer])
        width_index = self.width_index
        for group in self.table.width_groups():
            dimension = width_index[group[0]]
            if dimension < 0:
                continue
            values = {float(widths[layer]) for layer in group if self.table[layer].scalable}
            if len(values) != 1:
                raise ValueError(f"width group of layer {self.table[group[0]].name!r} has different widths {values}")
            config[self.space.names[dimension]] = values.pop()
        self.space.validate(config)
        return config

    def encoded_to_arrays(self, encoded) -> tuple[jnp.ndarray, jnp.ndarray]:
        """Per-layer bits and widths [..., L] of encoded configurations [..., D] (jittable, vmappable)."""
        return self.values_to_arrays(self.space.values(jnp.asarray(encoded)))

    def values_to_arrays(self, values) -> tuple[jnp.ndarray, jnp.ndarray]:
        """Per-layer bits and widths [..., L] of configurations given as `SearchSpace.values` [..., D] (jittable)."""
        values = jnp.asarray(values)
        bits = jnp.take(values, jnp.asarray(self.bits_index), axis=-1)
        width_index = self.width_index
        widths = jnp.where(width_index >= 0, jnp.take(values, jnp.asarray(np.maximum(width_index, 0)), axis=-1), 1.0)
        return bits, widths


def layer_space(
    table: LayerTable,
    candidate_bits: Sequence[Sequence[int]] | None = None,
    *,
    widths: Sequence[float] = DEFAULT_WIDTHS,
) -> LayerSpace:
    """The search space of a model: a bit-width dimension per layer and a width dimension per width group.

    Args:
        table: the model's layer table.
        candidate_bits: per layer, its allowed bit-widths (default: `ALL_BITS` for every layer).
        widths: the width multipliers of every width group.

    Returns:
        A `LayerSpace`.

    Example:
        >>> layer_space(models.layer_table("digits_cnn")).space.log10_size()  # 4 layers, 3 width groups: 5^7
        4.89...
    """
    if len(table) == 0:
        raise ValueError("the layer table has no layers")
    candidate_bits = [ALL_BITS] * len(table) if candidate_bits is None else list(candidate_bits)
    if len(candidate_bits) != len(table):
        raise ValueError(f"candidate_bits has {len(candidate_bits)} entries but the table has {len(table)} layers")
    widths = _check_choices("widths", widths, integers=False)
    dimensions = [
        ordinal(bits_dimension(layer.name), _check_choices(f"layer {layer.name!r} bits", bits, integers=True))
        for layer, bits in zip(table, candidate_bits, strict=True)
    ]
    for group in table.width_groups():
        if any(table[layer].scalable for layer in group):
            dimensions.append(ordinal(width_dimension(table[group[0]].name), widths))
    return LayerSpace(table=table, space=SearchSpace(dimensions))


@dataclasses.dataclass(frozen=True)
class Sensitivity:
    """Result of the pruning: clusters of layers by normalised Hessian trace and the pruned space.

    Attributes:
        names: layer names (table order).
        trace_per_weight: the normalised traces that were clustered.
        cluster: per layer, the rank of its cluster (0: largest centroid, the most sensitive); -1 for fixed layers.
        centroids: cluster centroids from the largest to the smallest.
        candidate_bits: per layer, its allowed bit-widths (descending).
        layer_space: the pruned space and its mapping to per-layer arrays.
        log10_size_before: log10 of the number of configurations with every bit-width allowed for every layer.
        log10_size_after: the same for the pruned space.
    """

    names: tuple[str, ...]
    trace_per_weight: np.ndarray
    cluster: np.ndarray
    centroids: np.ndarray
    candidate_bits: tuple[tuple[int, ...], ...]
    layer_space: LayerSpace
    log10_size_before: float
    log10_size_after: float

    @property
    def space(self) -> SearchSpace:
        """The pruned `SearchSpace` (``layer_space.space``)."""
        return self.layer_space.space

    def to_dict(self) -> dict:
        """JSON-ready summary."""
        return {
            "layers": [
                {
                    "name": name,
                    "trace_per_weight": float(self.trace_per_weight[i]),
                    "cluster": int(self.cluster[i]),
                    "candidate_bits": list(self.candidate_bits[i]),
                }
                for i, name in enumerate(self.names)
            ],
            "centroids": [float(c) for c in self.centroids],
            "log10_size_before": self.log10_size_before,
            "log10_size_after": self.log10_size_after,
        }


def _trace_per_weight(table: LayerTable, traces) -> np.ndarray:
    if isinstance(traces, LayerTraces):
        by_name = dict(zip(traces.names, traces.trace_per_weight, strict=True))
        missing = [name for name in table.names if name not in by_name]
        if missing:
            raise ValueError(f"no Hessian trace for layers {missing}")
        values = np.asarray([by_name[name] for name in table.names], np.float64)
    elif isinstance(traces, Mapping):
        missing = [name for name in table.names if name not in traces]
        if missing:
            raise ValueError(f"no Hessian trace for layers {missing}")
        values = np.asarray([traces[name] for name in table.names], np.float64)
    else:
        values = np.asarray(traces, np.float64).reshape(-1)
        if values.shape[0] != len(table):
            raise ValueError(f"got {values.shape[0]} traces per weight for a table of {len(table)} layers")
    if not np.all(np.isfinite(values)):
        bad = [name for name, value in zip(table.names, values, strict=True) if not np.isfinite(value)]
        raise ValueError(f"traces per weight must be finite; not for layers {bad}")
    return values


def prune_space(
    table: LayerTable,
    traces: LayerTraces | Mapping[str, float] | Sequence[float],
    *,
    bit_sets: Sequence[Sequence[int]] = DEFAULT_BIT_SETS,
    num_clusters: int | None = None,
    fixed_bits: Mapping[str, int] | None = None,
    widths: Sequence[float] = DEFAULT_WIDTHS,
    all_bits: Sequence[int] = ALL_BITS,
    log_scale: bool = False,
) -> Sensitivity:
    """Prune the per-layer bit-width choices by clustering normalised Hessian traces.

    Args:
        table: the model's layer table.
        traces: a `LayerTraces` (its ``trace_per_weight`` is used, matched by layer name), a mapping from layer name
            to trace per weight, or a sequence of traces per weight in table order.
        bit_sets: candidate bit-widths per cluster, from the most sensitive (largest centroid) to the least.
        num_clusters: k; defaults to ``len(bit_sets)`` and must equal it. With fewer free layers than k, there are
            as many clusters as layers and they take the first sets.
        fixed_bits: layers fixed by hand, ``{name: bits}`` (e.g. first and last at 8); they are left out of the
            clustering and get a single-choice dimension.
        widths: width multipliers (never pruned).
        all_bits: the bit-widths of the unpruned space (for ``log10_size_before``).
        log_scale: cluster ``log10`` of the traces per weight instead of the values (the paper's choice); traces per
            weight often span orders of magnitude, where one large value takes a cluster of its own on the linear
            scale. Needs positive traces; centroids are reported on the natural scale.

    Returns:
        A `Sensitivity` with the clusters, the candidate bits per layer, the pruned space and both sizes.

    Raises:
        ValueError: traces missing or not finite, ``num_clusters != len(bit_sets)``, empty or invalid bit sets,
            unknown fixed layers, or non-positive traces with ``log_scale``.
    """
    values = _trace_per_weight(table, traces)
    bit_sets = [tuple(sorted(_check_choices(f"bit set {i}", s, integers=True), reverse=True))
                for i, s in enumerate(bit_sets)]
    if not bit_sets:
        raise ValueError("bit_sets must hold at least one set of bit-widths")
    k = len(bit_sets) if num_clusters is None else num_clusters
    if not isinstance(k, numbers.Integral) or k != len(bit_sets):
        raise ValueError(f"num_clusters ({num_clusters}) must equal the number of bit sets ({len(bit_sets)})")
    all_bits = _check_choices("all_bits", all_bits, integers=True)
    fixed_bits = dict(fixed_bits or {})
    unknown = sorted(set(fixed_bits) - set(table.names))
    if unknown:
        raise ValueError(f"fixed_bits names unknown layers {unknown}; layers are {list(table.names)}")
    for name, bits in fixed_bits.items():
        _check_choices(f"fixed bits of layer {name!r}", (bits,), integers=True)

    free = np.asarray([name not in fixed_bits for name in table.names])
    if log_scale and np.any(values[free] <= 0):
        raise ValueError("log_scale needs positive traces per weight")
    points = np.log10(np.where(free, np.abs(values), 1.0)) if log_scale else values
    cluster = np.full(len(table), -1)
    centroids = np.zeros(0)
    if np.any(free):
        result = kmeans_1d(jnp.asarray(points, jnp.float32), k, mask=jnp.asarray(free))
        used = int(result.num_clusters)
        labels = np.asarray(result.labels)
        cluster = np.where(free, used - 1 - labels, -1)  # rank 0 = largest centroid
        ascending = np.asarray(result.centroids, np.float64)[:used]
        centroids = (10.0**ascending if log_scale else ascending)[::-1]

    candidate_bits = tuple(
        (int(fixed_bits[name]),) if name in fixed_bits else bit_sets[cluster[i]] for i, name in enumerate(table.names)
    )
    pruned = layer_space(table, candidate_bits, widths=widths)
    before = layer_space(table, [all_bits] * len(table), widths=widths)
    return Sensitivity(
        names=table.names,
        trace_per_weight=values,
        cluster=cluster,
        centroids=centroids,
        candidate_bits=candidate_bits,
        layer_space=pruned,
        log10_size_before=before.space.log10_size(),
        log10_size_after=pruned.space.log10_size(),
    )
