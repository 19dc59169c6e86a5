"""mpqjax: hardware-aware mixed-precision quantisation and width search for Flax models.

The public API is re-exported here; see README.md for a tour.
"""

from mpqjax import cluster, data, hardware, hessian, layers, models, parzen, quant, sensitivity, train
from mpqjax.hessian import LayerTraces, hvp, layer_traces
from mpqjax.sensitivity import LayerSpace, Sensitivity, layer_space, prune_space
from mpqjax.space import SearchSpace, categorical, integer, ordinal, real
from mpqjax.tpe import KMeansTPE, TPEParams, TPEState, load_state, run, save_state

__version__ = "0.1.0"

__all__ = [
    "KMeansTPE", "LayerSpace", "LayerTraces", "SearchSpace", "Sensitivity", "TPEParams", "TPEState", "categorical",
    "cluster", "data", "hardware", "hessian", "hvp", "integer", "layer_space", "layer_traces", "layers", "load_state",
    "models", "ordinal", "parzen", "prune_space", "quant", "real", "run", "save_state", "sensitivity", "train",
]
