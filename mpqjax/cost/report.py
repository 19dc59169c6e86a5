"""The cost of one configuration as plain data: per-layer rows and totals, ready for JSON and for printing.

Example:
    >>> from mpqjax.nn.table import LayerSpec, LayerTable
    >>> table = LayerTable((LayerSpec("conv", "conv", 3, 8, kernel=(3, 3), out_hw=(4, 4)),), model="tiny")
    >>> report = cost_report(table, 4, 1.0, "fpga")
    >>> report["layers"][0]["weights"], report["totals"]["size_bytes"]
    (216, 108.0)
"""

from __future__ import annotations

import os
from typing import Any

import jax
import numpy as np

from mpqjax.cost.model import Cost, cost, layer_counts
from mpqjax.cost.targets import FPGATarget, Target, load_target, target_to_dict
from mpqjax.nn.config import check_config
from mpqjax.nn.table import LayerTable

__all__ = ["cost_report"]


def cost_report(table: LayerTable, bits, widths, target: Target | str | os.PathLike | None = None) -> dict[str, Any]:
    """A validated configuration's cost as plain data: per-layer rows and totals (JSON-ready); not jittable.

    Args:
        table: the model's layer table.
        bits: bit-width per layer (one configuration) or a scalar for every layer.
        widths: width multiplier per layer or a scalar.
        target: a target, a name or a target file (`load_target`); the paper's FPGA by default.

    Returns:
        ``{"model", "target", "layers": [...], "totals": {...}}`` with Python numbers.

    Raises:
        ValueError: a bad configuration or target (see `mpqjax.nn.config.check_config`, `load_target`).
    """
    target = load_target("fpga" if target is None else target)
    bits, widths = check_config(table, bits, widths)
    if bits.ndim != 1:
        raise ValueError("cost_report takes one configuration; use cost() for a batch")
    result = jax.tree_util.tree_map(np.asarray, cost(table, bits, widths, target))
    quantities = layer_counts(table, widths, exact=True)
    packing = np.asarray(target.packing)[bits - 1] if isinstance(target, FPGATarget) else None
    layers = []
    for index, layer in enumerate(table):
        row = {
            "name": layer.name,
            "kind": layer.kind,
            "bits": int(bits[index]),
            "width": float(widths[index]),
            "in_channels": int(quantities["consumed"][index]),
            "out_channels": int(quantities["produced"][index]),
            "weights": int(quantities["weights"][index]),
            "macs": int(quantities["macs"][index]),
            "size_bytes": float(result.layer_size_bytes[index]),
            "latency_cycles": float(result.layer_cycles[index]),
            "bops": float(result.layer_bops[index]),
        }
        if packing is not None:
            row["mults_per_dsp"] = int(packing[index])
        layers.append(row)
    totals = {field: float(getattr(result, field)) for field in Cost._fields if not field.startswith("layer_")}
    totals["weights"] = int(quantities["weights"].sum())
    totals["macs"] = int(quantities["macs"].sum())
    return {"model": table.model, "target": target_to_dict(target), "layers": layers, "totals": totals}
