"""mpqjax: hardware-aware mixed-precision quantisation and width search for Flax models.

The public API is re-exported here; see README.md for a tour.
"""

from mpqjax import (
    cluster,
    data,
    export,
    hardware,
    hessian,
    layers,
    models,
    objective,
    parzen,
    population,
    quant,
    report,
    search,
    sensitivity,
    store,
    train,
)
from mpqjax.hessian import LayerTraces, hvp, layer_traces
from mpqjax.sensitivity import LayerSpace, Sensitivity, layer_space, prune_space
from mpqjax.space import SearchSpace, categorical, integer, ordinal, real
from mpqjax.tpe import KMeansTPE, TPEParams, TPEState, auto_batch, auto_joint, load_state, run, save_state

__version__ = "0.1.0"

__all__ = [
    "KMeansTPE", "LayerSpace", "LayerTraces", "SearchSpace", "Sensitivity", "TPEParams", "TPEState", "auto_batch",
    "auto_joint", "categorical", "cluster", "data", "export", "hardware", "hessian", "hvp", "integer", "layer_space",
    "layer_traces", "layers", "load_state", "models", "objective", "ordinal", "parzen", "population", "prune_space",
    "quant", "real", "report", "run", "save_state", "search", "sensitivity", "store", "train",
]
