"""The model zoo: quantised Flax models by name, and the layer table each one derives from itself.

Example:
    >>> from mpqjax import models
    >>> model = models.get("resnet20")
    >>> table = models.layer_table(model)
    >>> len(table), round(table.total_macs / 1e6, 1)
    (20, 40.6)
"""

from mpqjax.nn.models import mobilenet, resnet, small  # noqa: F401  (registers the zoo)
from mpqjax.nn.models.core import (
    DEFAULT_MAX_WIDTH,
    QModel,
    available,
    get,
    init_variables,
    layer_table,
    trace,
)
from mpqjax.nn.models.flax_function import RNG, FlaxFunction, WidthFactory, leaf_paths, path_text
from mpqjax.nn.models.own import OwnModel, wrap
from mpqjax.nn.models.rules import Rules
from mpqjax.nn.models.sources import as_variables, from_factory
from mpqjax.nn.models.transfer import materialize, transfer_variables
from mpqjax.nn.table import LayerSpec, LayerTable, scale_channels

__all__ = [
    "DEFAULT_MAX_WIDTH",
    "FlaxFunction",
    "LayerSpec",
    "LayerTable",
    "OwnModel",
    "QModel",
    "RNG",
    "Rules",
    "WidthFactory",
    "as_variables",
    "available",
    "from_factory",
    "get",
    "init_variables",
    "layer_table",
    "leaf_paths",
    "materialize",
    "path_text",
    "scale_channels",
    "trace",
    "transfer_variables",
    "wrap",
]
