"""Sensitivity: Hutchinson estimates of per-layer Hessian traces, and the candidate bit-widths they select."""

from mpqjax._lazy import attach

__getattr__, __dir__, __all__ = attach(
    __name__,
    submodules=["candidates", "hessian"],
    names={
        "LayerTraces": "hessian", "group_leaves": "hessian", "hvp": "hessian", "layer_traces": "hessian",
        "ALL_BITS": "candidates", "DEFAULT_BIT_SETS": "candidates", "DEFAULT_WIDTHS": "candidates",
        "LayerSpace": "candidates", "Sensitivity": "candidates", "bits_dimension": "candidates",
        "layer_space": "candidates", "prune_space": "candidates", "width_dimension": "candidates",
    },
)
