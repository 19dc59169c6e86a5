"""Sensitivity: Hutchinson estimates of per-layer Hessian traces, and the candidate bit-widths they select.

Modules: `hessian` (Hessian-vector products and the Hutchinson estimator), `leaves` (which parameter leaves make up
each layer), `candidates` (k-means over the traces -> candidate bit-widths -> the search space).
"""

from mpqjax._lazy import attach

__getattr__, __dir__, __all__ = attach(
    __name__,
    submodules=["candidates", "hessian", "leaves"],
    names={
        "PROBINGS": "hessian", "LayerTraces": "hessian", "default_chunk_size": "hessian", "hvp": "hessian",
        "fixed_probe_traces": "hessian", "layer_traces": "hessian", "probe_step": "hessian",
        "group_leaves": "leaves", "leaf_layers": "leaves", "leaf_paths": "leaves",
        "ALL_BITS": "candidates", "DEFAULT_BIT_SETS": "candidates", "DEFAULT_WIDTHS": "candidates",
        "LayerSpace": "candidates", "Sensitivity": "candidates", "bits_dimension": "candidates",
        "layer_space": "candidates", "prune_space": "candidates", "width_dimension": "candidates",
    },
)
