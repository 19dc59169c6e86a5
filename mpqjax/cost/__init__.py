"""Hardware cost: model size, latency, speed-up, bit-operations and energy of configurations on a target.

* `mpqjax.cost.packing`: multiplications per DSP by bit-width (the paper's table, HiKonv's rule);
* `mpqjax.cost.targets`: hardware targets as data (`FPGATarget`, `GenericTarget`) and `load_target`;
* `mpqjax.cost.model`: the counting rules and `cost`, a pure `jax.numpy` function (jittable, vmappable);
* `mpqjax.cost.channels`: `channel_cost`, the cost of one configuration with a weight bit-width per output channel;
* `mpqjax.cost.relaxed`: `relaxed_cost`, the differentiable cost of probabilities over choices (gradient search);
* `mpqjax.cost.report`: `cost_report`, one configuration's cost as plain data.

Every name is re-exported here and imported on first use; nothing here imports Flax. Check a user's configuration
with `mpqjax.nn.config.check_config` before costing it.

Example:
    >>> from mpqjax import cost as cost_model
    >>> from mpqjax.nn.table import LayerSpec, LayerTable
    >>> table = LayerTable((LayerSpec("conv", "conv", 3, 8, kernel=(3, 3), out_hw=(4, 4)),))
    >>> result = cost_model.cost(table, [4], [1.0], cost_model.FPGATarget(rows=4, cols=8))
    >>> int(result.size_bytes), int(result.latency_cycles)
    (108, 22)
"""

from mpqjax._lazy import attach

__getattr__, __dir__, __all__ = attach(
    __name__,
    submodules=["channels", "model", "packing", "relaxed", "report", "targets"],
    names={
        "HiKonvPacking": "packing", "PAPER_PACKING": "packing", "hikonv_packing": "packing",
        "hikonv_packing_table": "packing", "packing_table": "packing",
        "FPGATarget": "targets", "GenericTarget": "targets", "Target": "targets", "load_target": "targets",
        "target_from_dict": "targets", "target_to_dict": "targets",
        "Cost": "model", "array_cycles": "model", "baselines": "model", "cost": "model", "cost_of_layers": "model",
        "cycles_and_energy": "model", "exact_ceil_div": "model",
        "fip16_size_bytes": "model", "layer_counts": "model", "products_per_dsp": "model", "table_arrays": "model",
        "channel_cost": "channels", "channel_groups": "channels",
        "channel_probs_groups": "relaxed", "layer_choice_groups": "relaxed", "relaxed_cost": "relaxed",
        "cost_report": "report",
    },
)
