"""Layers as groups of parameter leaves: which leaves of a parameter tree make up each layer whose trace is estimated.

A leaf is named by its path in the tree, its keys joined with ``"/"`` (``"stage1/block0/conv1/kernel"``). By default a
layer is the parent module of a ``kernel`` leaf and holds only that kernel: the weights whose bit-width the search
chooses.

Example:
    >>> group_leaves({"Dense_0": {"kernel": w, "bias": b}})
    {'Dense_0': ('Dense_0/kernel',)}
    >>> leaf_layers({"Dense_0": {"kernel": w, "bias": b}}, None)
    (('Dense_0',), [-1, 0])
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import jax

__all__ = ["group_leaves", "leaf_layers", "leaf_paths"]

PyTree = Any


def _path_name(path) -> str:
    """A key path as ``"stage1/block0/conv1/kernel"`` (the same text as `mpqjax.nn.models.path_text`)."""
    return jax.tree_util.keystr(path, simple=True, separator="/")


def leaf_paths(params: PyTree) -> list[str]:
    """The path of every leaf of ``params``, keys joined with ``"/"``, in the order of `jax.tree_util.tree_leaves`.

    Example:
        >>> leaf_paths({"conv": {"kernel": w, "bias": b}})
        ['conv/bias', 'conv/kernel']
    """
    return [_path_name(path) for path, _ in jax.tree_util.tree_flatten_with_path(params)[0]]


def group_leaves(
    params: PyTree, prefixes: Sequence[str] | None = None, *, leaf_names: Sequence[str] | None = ("kernel",)
) -> dict[str, tuple[str, ...]]:
    """Which parameter leaves make up each layer: ``{layer name: (leaf path, ...)}``, paths joined with '/'.

    By default a layer is the parent module of each ``kernel`` leaf and holds only that kernel: the weights whose
    bit-width the search chooses. Biases and batch-norm parameters are NOT included (the paper normalises the trace by
    the number of weights); pass ``leaf_names=("kernel", "bias")`` to include biases, or ``leaf_names=None`` to take
    every leaf under each prefix.

    Args:
        params: the model's parameters (the ``params`` collection, not the whole variables dict).
        prefixes: layer names in the order wanted, each a module path such as ``"stage1/block0/conv1"``; a layer
            holds the leaves under its prefix. Default: every parent of a leaf named in ``leaf_names``, in the order
            of ``jax.tree_util`` flattening.
        leaf_names: the last path component of the leaves to keep; ``None`` keeps all leaves.

    Returns:
        An ordered dict from layer name to the paths of its leaves.

    Raises:
        ValueError: a prefix matches no leaf, or no leaf matches at all.

    Example:
        >>> group_leaves({"Dense_0": {"kernel": w, "bias": b}})
        {'Dense_0': ('Dense_0/kernel',)}
    """
    paths = leaf_paths(params)
    keep = lambda path: leaf_names is None or path.rsplit("/", 1)[-1] in leaf_names
    groups: dict[str, tuple[str, ...]] = {}
    if prefixes is None:
        for path in paths:
            if keep(path) and "/" in path:
                layer = path.rsplit("/", 1)[0]
                groups[layer] = groups.get(layer, ()) + (path,)
            elif keep(path):
                groups[path] = groups.get(path, ()) + (path,)
        if not groups:
            raise ValueError(f"no parameter leaf is named any of {tuple(leaf_names or ())}; pass the layers explicitly")
        return groups
    if isinstance(prefixes, str):
        raise ValueError("prefixes must be a sequence of layer names, not one string")
    for prefix in prefixes:
        members = tuple(path for path in paths if (path == prefix or path.startswith(prefix + "/")) and keep(path))
        if not members:
            raise ValueError(f"layer {prefix!r} matches no parameter leaf (leaf names {leaf_names})")
        groups[prefix] = members
    return groups


def leaf_layers(
    params: PyTree, layers: Mapping[str, Sequence[str]] | Sequence[str] | None
) -> tuple[tuple[str, ...], list[int]]:
    """Layer names and, for each parameter leaf, the index of its layer (-1: in no layer).

    Args:
        params: the parameters.
        layers: ``None`` (one layer per ``kernel`` leaf, `group_leaves`), a sequence of layer-name prefixes, or a
            mapping from layer name to the paths of its leaves (an empty sequence gives a layer with no leaves).

    Returns:
        ``(names, leaf_layer)``: the layer names in order, and one layer index per leaf in `leaf_paths` order.

    Raises:
        ValueError: a path naming no leaf, a leaf in two layers, one string instead of a sequence of paths, or no
            layer at all.
    """
    if layers is None:
        groups = group_leaves(params)
    elif isinstance(layers, Mapping):
        for name, members in layers.items():
            if isinstance(members, str):
                raise ValueError(f"layer {name!r}: give a sequence of leaf paths, not one string")
        groups = {str(name): tuple(members) for name, members in layers.items()}
    else:
        groups = group_leaves(params, list(layers))
    paths = leaf_paths(params)
    index_of_path = {path: i for i, path in enumerate(paths)}
    leaf_layer = [-1] * len(paths)
    for layer_index, (name, members) in enumerate(groups.items()):
        for member in members:
            if member not in index_of_path:
                raise ValueError(f"layer {name!r}: no parameter leaf at path {member!r}")
            leaf = index_of_path[member]
            if leaf_layer[leaf] != -1:
                raise ValueError(f"parameter leaf {member!r} belongs to more than one layer")
            leaf_layer[leaf] = layer_index
    if not groups:
        raise ValueError("no layers to estimate")
    return tuple(groups), leaf_layer
