"""Models: the zoo by name, a user's own linen or NNX module wrapped as it is, and the layer table of either.

Every model is a `Model` (`model`): the zoo's are plain Flax modules built by width (`blocks`, `small`, `resnet`,
`mobilenet`) and wrapped by `get` (`core`); a user's is wrapped by `wrap`. `analysis` reads a model's layers from its
trace once; `transfer` starts a configuration from a trained float model.

Example:
    >>> from mpqjax.nn import models
    >>> model = models.get("resnet20")
    >>> table = models.layer_table(model)
    >>> len(table), round(table.total_macs / 1e6, 1)
    (20, 40.6)
"""

from mpqjax.nn.intercept import Relaxation
from mpqjax.nn.models.core import (
    DEFAULT_MAX_WIDTH,
    available,
    get,
    host_initializer,
    init_variables,
    layer_table,
)
from mpqjax.nn.models.flax_function import RNG, FlaxFunction, WidthFactory, leaf_paths, path_text
from mpqjax.nn.models.model import RANKS, Model, wrap
from mpqjax.nn.models.rules import Rules
from mpqjax.nn.models.sources import as_variables, from_factory
from mpqjax.nn.models.transfer import channel_ranks, transfer_variables
from mpqjax.nn.table import LayerSpec, LayerTable, scale_channels

__all__ = [
    "DEFAULT_MAX_WIDTH",
    "RANKS",
    "FlaxFunction",
    "LayerSpec",
    "LayerTable",
    "Model",
    "RNG",
    "Relaxation",
    "Rules",
    "WidthFactory",
    "as_variables",
    "available",
    "channel_ranks",
    "from_factory",
    "get",
    "host_initializer",
    "init_variables",
    "layer_table",
    "leaf_paths",
    "path_text",
    "scale_channels",
    "transfer_variables",
    "wrap",
]
