"""One search problem: the limits in absolute units, the space they leave, and the objective of a configuration.

`Problem` holds everything fixed during a search (data, float model, masked quantised model, space, hardware, limits);
`Problem.evaluate` is one trial: a short quantisation-aware fine-tune, the validation accuracy, the cost and the
objective (accuracy with Lagrangian penalties, `mpqjax.search.objective`).

Example:
    >>> limits = config_limits(config, table, target)
    >>> check_attainable(full_space(config, table), target, limits)
    >>> record = problem.evaluate(key, bits, widths)
    >>> record["objective"], record["size_bytes"], record["feasible"]
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import math
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from mpqjax import cost as cost_model
from mpqjax import data, sensitivity
from mpqjax.nn import models
from mpqjax.nn.config import MAX_BITS
from mpqjax.search import channels, methods, objective, steps
from mpqjax.search.config import SearchConfig
from mpqjax.training import feed, population, train

__all__ = ["COST_FIELDS", "TIME_FIELDS", "Problem", "check_attainable", "check_limits", "cheapest_pruning",
           "config_limits", "full_space"]

# The fields of a trial record that are times: they differ between runs of the same search.
TIME_FIELDS = ("seconds", "training_seconds")
# The cost fields of a trial record (and of best_config.json).
COST_FIELDS = ("size_bytes", "latency_seconds", "latency_cycles", "energy_joules", "throughput_per_second",
               "speedup_vs_fip16", "size_reduction_vs_fip16", "size_reduction_vs_fp32")


def config_limits(config: SearchConfig, table: models.LayerTable, target) -> objective.Limits:
    """A search's limits in absolute units, refused when no configuration the search could reach meets them.

    Reductions and speed-ups are taken against the FiP16 model; of a size given both ways (the Python API's default
    reduction with ``max_size_bytes``) the stricter applies. `check_limits` runs before anything is returned, so an
    impossible limit fails before any training.

    Raises:
        ValueError: see `check_limits` and `full_space`.

    Example:
        >>> config_limits(SearchConfig(min_size_reduction=4.0), table, target).size_bytes  # FiP16 size / 4
    """
    ones = np.ones(len(table), np.float32)
    fip16 = cost_model.cost(table, np.full(len(table), MAX_BITS), ones, target)
    sizes = [config.max_size_bytes]
    if config.min_size_reduction is not None:
        sizes.append(float(fip16.size_bytes) / config.min_size_reduction)
    latencies = [config.max_latency_seconds]
    if config.min_speedup is not None:
        latencies.append(float(fip16.latency_seconds) / config.min_speedup)
    smallest = lambda values: min((v for v in values if v is not None), default=None)  # noqa: E731
    limits = objective.make_limits(size_bytes=smallest(sizes), latency_seconds=smallest(latencies),
                                   energy_joules=config.max_energy_joules,
                                   throughput_per_second=config.min_throughput, bops=config.max_bops)
    check_limits(config, table, target, limits)
    return limits


def full_space(config: SearchConfig, table: models.LayerTable) -> sensitivity.LayerSpace:
    """The unpruned space: every layer takes ``config.bits`` (or its ``fixed_bits``) and the width multipliers.

    Raises:
        ValueError: ``fixed_bits`` names a layer the model does not have.
    """
    fixed_bits = dict(config.fixed_bits)
    unknown = sorted(set(fixed_bits) - set(table.names))
    if unknown:
        raise ValueError(f"fixed_bits names unknown layers {unknown}; layers are {list(table.names)}")
    return sensitivity.layer_space(
        table, [(fixed_bits[name],) if name in fixed_bits else config.bits for name in table.names],
        widths=config.widths)


def _describe(name: str, value: float) -> str:
    if name == "size_bytes":
        return f"{value / 1e6:.4g} MB" if value >= 1e5 else f"{value / 1e3:.4g} kB"
    if name == "latency_seconds":
        return f"{value * 1e3:.4g} ms" if value >= 1e-3 else f"{value * 1e6:.4g} us"
    if name == "bops":
        return f"{value / 1e6:.4g} M bit-operations"
    if name == "energy_joules":
        return f"{value * 1e3:.4g} mJ" if value >= 1e-3 else f"{value * 1e6:.4g} uJ"
    return f"{value:.4g} inferences/s"


def _cheapest_cost(layer_space: sensitivity.LayerSpace, target) -> cost_model.Cost:
    """The cost of the space's configuration of the smallest bits and widths: the cheapest in every respect, since
    size, latency and energy grow with every layer's bits and width (throughput is the inverse of latency)."""
    cheapest = {dimension.name: min(dimension.choices) for dimension in layer_space.space.dimensions}
    return cost_model.cost(layer_space.table, *layer_space.to_arrays(cheapest), target)


def _broken(cost: cost_model.Cost, limits: objective.Limits) -> list[tuple[str, str]]:
    """``(limit name, "the <smallest|highest> possible <what>{where} is X, <above|below> the limit Y")`` per limit
    that ``cost`` breaks; ``{where}`` is left for the caller."""
    over = np.asarray(objective.violations(cost, limits))
    broken = []
    for index, name in enumerate(objective.LIMIT_NAMES):
        if over[index] > 0:
            value, limit = float(getattr(cost, name)), float(getattr(limits, name))
            relation, adjective = ("below", "highest") if name == "throughput_per_second" else ("above", "smallest")
            what = "bit-operations" if name == "bops" else name.split("_")[0]
            broken.append((name, f"the {adjective} possible {what}{{where}} is {_describe(name, value)}, "
                                 f"{relation} the limit {_describe(name, limit)}"))
    return broken


def _raised_layers(layer_space: sensitivity.LayerSpace, most: int = 4) -> str:
    """The layers whose smallest candidate bit-width is above the space's smallest, e.g. ``"conv1 at least 6 bits
    ({8, 6}), head at least 3 bits ({6, 4, 3})"`` (at most ``most`` named), or ``""``."""
    choices = {dimension.name: dimension.choices for dimension in layer_space.space.dimensions}
    bits = {name: choices[sensitivity.bits_dimension(name)] for name in layer_space.table.names}
    floor = min(min(options) for options in bits.values())
    raised = [f"{name} at least {min(options)} bits ({{{', '.join(map(str, sorted(options, reverse=True)))}}})"
              for name, options in bits.items() if min(options) > floor]
    more = f" and {len(raised) - most} more" if len(raised) > most else ""
    return ", ".join(raised[:most]) + more


def check_attainable(layer_space: sensitivity.LayerSpace, target, limits: objective.Limits, where: str = "") -> None:
    """Raise ValueError when even the cheapest configuration of the space breaks a limit.

    Size, latency and energy grow with every layer's bits and width in the cost model, so the configuration of the
    smallest bits and widths is the cheapest in every respect at once (throughput is the inverse of latency). The
    message names the layers whose candidate bits keep the cheapest configuration up (the pruning's or fixed ones).

    Args:
        layer_space: the space.
        target: the hardware target.
        limits: the limits.
        where: appended to the quantity in the message (e.g. ``" after Hessian pruning"``).
    """
    broken = _broken(_cheapest_cost(layer_space, target), limits)
    if not broken:
        return
    raised = _raised_layers(layer_space)
    if raised and where:
        advice = (f": the pruning left {raised}; relax the limit, give those layers fewer bits (bit sets, fixed "
                  "bits) or search without pruning")
    elif raised:
        advice = f", with {raised}: relax the limit or allow those layers fewer bits"
    else:
        advice = ": relax the limit or allow fewer bits / narrower widths"
    raise ValueError(broken[0][1].format(where=where) + advice)


# The quantity whose smallest value decides whether each limit can be met.
_DECIDING = {"size_bytes": "size_bytes", "latency_seconds": "latency_seconds", "energy_joules": "energy_joules",
             "throughput_per_second": "latency_seconds", "bops": "bops"}


def cheapest_pruning(config: SearchConfig, table: models.LayerTable, target, quantity: str
                     ) -> sensitivity.LayerSpace | None:
    """Of every space Hessian pruning could leave, the one whose cheapest configuration has the smallest
    ``quantity`` (``"size_bytes"``, ``"latency_seconds"``, ``"energy_joules"`` or ``"bops"``), found before any
    training.

    Pruning (`mpqjax.sensitivity.prune_space`) clusters the free layers (those not in ``fixed_bits``) into
    ``min(len(bit_sets), free layers)`` clusters, none empty, and gives cluster ``j`` the bits ``bit_sets[j]``. Which
    layer lands where depends on the traces, so the best case is a minimum over assignments: every free layer at
    its cheapest set, except that each set must take a layer, a small assignment problem (each quantity is a sum
    over layers, each layer's term depending on its own bits at fixed widths).

    Returns:
        The space of that pruning, or None when no layer is free (pruning changes nothing).
    """
    from scipy.optimize import linear_sum_assignment

    fixed = dict(config.fixed_bits)
    free = [index for index, name in enumerate(table.names) if name not in fixed]
    sets = [tuple(bit_set) for bit_set in config.bit_sets][: len(free)]
    if not free:
        return None
    unpruned = full_space(config, table)
    bits, widths = unpruned.to_arrays({d.name: min(d.choices) for d in unpruned.space.dimensions})
    trial_bits = np.repeat(bits[None], len(free) * len(sets), axis=0)  # one layer at one set's smallest bits
    for row, (layer, bit_set) in enumerate(itertools.product(free, sets)):
        trial_bits[row, layer] = min(bit_set)
    values = np.asarray(getattr(cost_model.cost(table, trial_bits, widths[None], target), quantity), np.float64)
    values = values.reshape(len(free), len(sets))
    choice = values.argmin(axis=1)
    set_index, layer_index = linear_sum_assignment((values - values.min(axis=1, keepdims=True)).T)
    choice[layer_index] = set_index  # each set's representative: the distinct layers it costs least to raise
    by_layer = dict(zip(free, choice, strict=True))
    return sensitivity.layer_space(
        table, [(fixed[name],) if name in fixed else sets[by_layer[index]] for index, name in enumerate(table.names)],
        widths=config.widths)


def check_limits(config: SearchConfig, table: models.LayerTable, target, limits: objective.Limits) -> None:
    """Raise ValueError when no configuration the search could reach meets the limits, before any training.

    Checked against the cheapest configuration of the unpruned space (`full_space`: every layer at its smallest
    bit-width, or its fixed one, and the narrowest width), then, when the search prunes its space (an iterative
    method with ``prune``, `mpqjax.search.methods.prunes`), against the cheapest configuration
    of the most favourable pruning (`cheapest_pruning`): when even that breaks a limit, every pruning will. The
    pruning the traces actually give is checked again after the Hessian (`check_attainable`).

    Raises:
        ValueError: naming the limit, the smallest value possible, the layers that keep it up and what to change.
    """
    check_attainable(full_space(config, table), target, limits)
    if not methods.prunes(config):  # no pruning, or a one-shot method, whose space is never pruned
        return
    set_limits = [name for name, value in limits.to_dict().items() if value is not None]
    for name in set_limits:
        pruned = cheapest_pruning(config, table, target, _DECIDING[name])
        if pruned is None:  # every layer fixed: nothing to prune
            return
        broken = dict(_broken(_cheapest_cost(pruned, target), limits))
        if name in broken:
            clusters = min(len(config.bit_sets), len(table) - len(config.fixed_bits))
            raise ValueError(
                broken[name].format(where=" after any Hessian pruning") + f": each of the {clusters} sensitivity "
                f"clusters gets a layer, so at best {_raised_layers(pruned)}; relax the limit, give the most "
                "sensitive clusters fewer bits (bit sets) or search without pruning")


@functools.lru_cache(maxsize=64)
def _jitted_cost(table):
    """The cost model of one layer table, compiled once per table (bits, widths and target are traced)."""
    return jax.jit(lambda bits, widths, target: cost_model.cost(table, bits, widths, target))


@dataclasses.dataclass
class Problem:
    """Everything fixed during one search: data, float model, space, hardware, limits; `evaluate` scores a
    configuration.

    ``quant_model`` is the masked quantised model (`mpqjax.search.steps.quantized_model`): every configuration of
    bits and widths shares its one compiled training step.
    """

    config: SearchConfig
    dataset: data.Dataset
    table: models.LayerTable
    target: Any
    limits: objective.Limits
    float_model: models.Model
    float_variables: dict
    quant_model: models.Model
    layer_space: sensitivity.LayerSpace

    def cost(self, bits, widths, channel_bits: Mapping[str, Sequence[int]] | None = None) -> cost_model.Cost:
        """The cost model at per-layer ``bits`` and ``widths``; with ``channel_bits`` (``{layer: one weight
        bit-width per channel at width 1, 0 for a pruned channel}``), the channel-wise cost
        (`mpqjax.cost.channel_cost`; the widths are then those of the pruning, `mpqjax.search.channels`).
        """
        if channel_bits:
            layout = channels.channel_layout(self.table, channel_bits)
            rows = [layout.kept_bits.get(name) for name in self.table.names]
            return cost_model.channel_cost(self.table, np.asarray(bits), layout.widths, rows, self.target)
        return _jitted_cost(self.table)(jnp.asarray(bits, jnp.float32), jnp.asarray(widths, jnp.float32),
                                        self.target)

    def feasible_fn(self) -> Callable[[jax.Array], jax.Array]:
        """``values[D] -> bool`` for `KMeansTPE(feasible=...)`: the configuration meets every hard limit."""
        table, target, limits, layer_space = self.table, self.target, self.limits, self.layer_space

        def feasible(values):
            bits, widths = layer_space.values_to_arrays(values)
            return objective.is_feasible(cost_model.cost(table, bits, widths, target), limits)

        return feasible

    def finetune(self, key, bits, widths, *, epochs: int, learning_rate: float,
                 channel_bits: Mapping[str, Sequence[int]] | None = None):
        """Fine-tune a configuration from the float model; returns ``(variables, losses)``."""
        return steps.finetune_configuration(key, self.config, self.dataset, self.float_model, self.float_variables,
                                            self.quant_model, bits, widths, epochs=epochs, learning_rate=learning_rate,
                                            channel_bits=channel_bits)

    def evaluate(self, key, bits, widths, channel_bits: Mapping[str, Sequence[int]] | None = None) -> dict:
        """Short fine-tune, validation accuracy, cost and objective of one configuration (a trial record's fields);
        ``channel_bits`` makes it channel-wise (see `cost`).

        The record's ``seconds`` is the whole trial's time, ``training_seconds`` its training steps' (the rest:
        weight transfer, calibration, validation). A run whose loss becomes NaN or infinite is a failed trial
        (objective None), never an error.
        """
        start = time.perf_counter()
        variables, train_key = steps.finetune_start(key, self.config, self.dataset, self.float_model,
                                                    self.float_variables, self.quant_model, bits, widths,
                                                    channel_bits=channel_bits)
        training_start = time.perf_counter()
        variables, losses = steps.train_configuration(train_key, self.config, self.dataset, self.quant_model,
                                                      variables, bits, widths, epochs=self.config.finetune_epochs,
                                                      learning_rate=self.config.finetune_learning_rate)
        training_seconds = time.perf_counter() - training_start  # the losses are on the host: the steps are done
        accuracy = math.nan
        if np.all(np.isfinite(losses)):
            accuracy = train.evaluate(self.quant_model, variables, self.dataset.validation, bits=bits, widths=widths)
        record = self._trial_fields(bits, widths, losses, accuracy, time.perf_counter() - start, channel_bits)
        return {**record, "training_seconds": training_seconds}

    def evaluate_population(self, key, bits, widths, *, strategy: str = "vmap", mesh=None) -> list[dict]:
        """`evaluate` of P configurations (``bits``, ``widths``: ``[P, L]``) fine-tuned together with one key
        (`mpqjax.training.population.finetune`): one record each, its ``seconds`` the population's time over P
        (its ``training_seconds`` likewise)."""
        start = time.perf_counter()
        rate = feed.scaled_learning_rate(self.config.finetune_learning_rate, self.config.batch_size,
                                          self.config.learning_rate_scaling)
        variables, losses, training_seconds = population.finetune(
            key, self.float_model, self.float_variables, self.quant_model, self.dataset, bits=bits, widths=widths,
            epochs=self.config.finetune_epochs, batch_size=self.config.batch_size, learning_rate=rate,
            calibration=self.config.calibration, weight_decay=self.config.weight_decay, strategy=strategy,
            mesh=mesh, timed=True)
        accuracies = population.evaluate(self.quant_model, variables, self.dataset.validation, bits=bits,
                                         widths=widths, mesh=mesh)
        seconds = (time.perf_counter() - start) / len(bits)
        return [{**self._trial_fields(bits[i], widths[i], losses[i], float(accuracies[i]), seconds),
                 "training_seconds": training_seconds / len(bits)} for i in range(len(bits))]

    def _trial_fields(self, bits, widths, losses, accuracy: float, seconds: float, channel_bits=None) -> dict:
        """A trial's record from its fine-tune losses and validation accuracy (failed when either is not finite)."""
        error = None
        if not np.all(np.isfinite(losses)):
            error, accuracy = "training diverged (non-finite loss)", math.nan
        elif not math.isfinite(accuracy):
            error = "non-finite validation accuracy"
        record = self.cost_record(bits, widths, accuracy, channel_bits)
        record.update(status="ok" if error is None else "failed", seconds=seconds, error=error)
        return record

    def cost_record(self, bits, widths, accuracy: float, channel_bits: Mapping[str, Sequence[int]] | None = None
                    ) -> dict:
        """Bits, widths (and channel bits), cost fields, feasibility and objective of a configuration with a given
        accuracy."""
        cost = self.cost(bits, widths, channel_bits)
        value = float(objective.objective(accuracy, cost, self.limits, self.config.penalty))
        channels = {"channel_bits": {name: [int(b) for b in row] for name, row in channel_bits.items()}} \
            if channel_bits else {}
        return {
            "bits": [int(b) for b in np.asarray(bits)],
            "widths": [float(w) for w in np.asarray(widths)],
            **channels,
            "objective": value if math.isfinite(value) else None,
            "validation_accuracy": accuracy if math.isfinite(accuracy) else None,
            **{name: float(getattr(cost, name)) for name in COST_FIELDS},
            "feasible": bool(objective.is_feasible(cost, self.limits)),
        }

    def layer_rows(self, bits, widths, channel_bits: Mapping[str, Sequence[int]] | None = None) -> list[dict]:
        """The per-layer table of a configuration: bits, width, weights at that width, size and cycles."""
        cost = self.cost(bits, widths, channel_bits)
        return [
            {"name": layer.name, "bits": int(bits[index]), "width": float(widths[index]),
             "weights": int(round(float(cost.layer_weights[index]))),
             "size_bytes": float(cost.layer_size_bytes[index]), "cycles": float(cost.layer_cycles[index])}
            for index, layer in enumerate(self.table)
        ]
