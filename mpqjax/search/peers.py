"""The one-shot peer methods' configurations, computed once from the float model (`mpqjax.search.methods` names
them; each configuration is then fine-tuned as a trial):

- ``uniform``: every layer at one bit-width: each bit-width of ``bits`` that meets the limits, at width 1;
- ``hawq_ilp`` (HAWQ-V3): per-layer sensitivity ``Omega(b) = trace(H) / n * ||Q_b(W) - W||^2`` from the Hessian
  traces, minimised under every limit by an exact integer linear programme (`mpqjax.optim.allocation.solve_ilp`);
- ``rd_layers`` (rate-distortion allocation, per layer): the distortion of the network's output when one layer alone
  is quantised, assumed additive; a Lagrange multiplier found by bisection trades it against the limited resource
  (`mpqjax.optim.allocation.bisect_multiplier`);
- ``rd_channels``: the same per output channel, under the size limit, a channel of a layer that owns its channels
  possibly pruned: a channel-wise configuration (`mpqjax.search.channels`).

The peers choose bit-widths only: their widths are 1 (``rd_channels``'s pruning aside). HAWQ's sensitivity is the loss
change of a weight perturbation of the trained model; a narrower layer is not a perturbation of its weights, so widths
get no Omega term, and the rate-distortion curves have no width axis either.

Example:
    >>> proposals = propose("hawq_ilp", problem, key, traces_per_weight=traces)
    >>> proposals[0].bits, proposals[0].widths
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from mpqjax import cost as cost_model
from mpqjax.nn import models, quant
from mpqjax.optim import allocation
from mpqjax.search import channels, objective
from mpqjax.search.methods import METHODS
from mpqjax.search.problem import Problem
from mpqjax.sensitivity.leaves import leaf_paths
from mpqjax.training import train

__all__ = ["Proposal", "calibration_inputs", "channel_distortions", "layer_distortions", "layer_sensitivities",
           "propose", "prunable_layers", "pruning_distortions", "resource_tables", "uniform_proposals"]


class Proposal:
    """A one-shot method's configuration: per-layer ``bits`` and ``widths`` (NumPy arrays), and for a channel-wise
    one ``channel_bits``, ``{layer: one weight bit-width per output channel at width 1}`` (``bits[l]`` is then the
    bit-width of the layer's input activations)."""

    __slots__ = ("bits", "channel_bits", "widths")

    def __init__(self, bits, widths, channel_bits: dict[str, list[int]] | None = None):
        self.bits, self.widths = np.asarray(bits, np.int64), np.asarray(widths, np.float32)
        self.channel_bits = channel_bits

    def __eq__(self, other):
        return (isinstance(other, Proposal) and np.array_equal(self.bits, other.bits)
                and np.array_equal(self.widths, other.widths) and self.channel_bits == other.channel_bits)

    def __repr__(self):
        channels = "" if self.channel_bits is None else f", channel_bits={self.channel_bits}"
        return f"Proposal(bits={self.bits.tolist()}, widths={self.widths.tolist()}{channels})"


def propose(name: str, problem: Problem, key, *, traces_per_weight: Sequence[float] | None = None
            ) -> list[Proposal]:
    """The configurations of the one-shot method ``name`` for ``problem`` (bits from its space, widths 1).

    Args:
        name: ``"uniform"``, ``"hawq_ilp"``, ``"rd_layers"`` or ``"rd_channels"``.
        problem: the search's problem; its space gives each layer's candidate bit-widths.
        key: PRNG key (the transfer of the float weights into the quantised model: ``rd_layers``, ``rd_channels``).
        traces_per_weight: per layer, the Hessian trace divided by its weight count (``hawq_ilp``).

    Returns:
        The proposals, best guess first; ``uniform`` gives one per bit-width that meets the hard limits.

    Raises:
        ValueError: an unknown or iterative method, or no configuration meets the limits.
    """
    if name not in METHODS or METHODS[name].iterative or METHODS[name].relaxed:
        raise ValueError(f"{name!r} is not a one-shot method computed here; they are: "
                         f"{', '.join(m for m, method in METHODS.items() if not (method.iterative or method.relaxed))}"
                         f" (mixprec and dnas: mpqjax.search.relaxed)")
    if name == "uniform":
        return uniform_proposals(problem.config, problem.table, problem.target, problem.limits, problem.layer_space)
    options, allowed = _options(problem.layer_space)
    if name == "rd_channels":
        return [_channel_proposal(problem, options, allowed, key)]
    ones = np.ones(len(problem.table), np.float32)
    costs, budgets, names = resource_tables(problem, options)
    if name == "hawq_ilp":
        if traces_per_weight is None:
            raise ValueError("hawq_ilp needs the Hessian traces per weight")
        loss = layer_sensitivities(problem, options, traces_per_weight)
        choice = allocation.solve_ilp(loss, costs, budgets, allowed=allowed)
    else:
        if len(names) != 1:
            raise ValueError(f"rd_layers allocates under one limit, got {len(names)} ({', '.join(names)}); give one "
                             f"of the size, latency or energy limits (or use hawq_ilp)")
        loss = layer_distortions(problem, options, key)
        choice, _ = allocation.bisect_multiplier(loss, costs[0], float(budgets[0]), allowed=allowed)
    return [Proposal(options[choice], ones)]


def _options(layer_space) -> tuple[np.ndarray, np.ndarray]:
    """``(options [B], allowed [L, B])``: every bit-width of the space, and which each layer may take."""
    dimensions = layer_space.space.dimensions
    per_layer = [tuple(dimensions[index].choices) for index in layer_space.bits_index]
    options = np.asarray(sorted({int(b) for choices in per_layer for b in choices}), np.int64)
    allowed = np.asarray([[int(b) in choices for b in options] for choices in per_layer], bool)
    return options, allowed


def uniform_proposals(config, table, target, limits, layer_space) -> list[Proposal]:
    """The ``uniform`` method's configurations: one per bit-width that every layer with a choice may take
    (``fixed_bits`` layers keep theirs), highest first, width 1; only those within the hard limits (all of them with
    soft limits). Needs no model: a search checks it before any training.

    Raises:
        ValueError: no uniform bit-width meets the limits.
    """
    options, allowed = _options(layer_space)
    length = len(table)
    free = allowed.sum(axis=1) > 1
    fixed = {index: int(options[row][0]) for index, row in enumerate(allowed) if not free[index]}
    shared = options[allowed[free].all(axis=0)] if free.any() else options[:1]
    ones = np.ones(length, np.float32)
    proposals = []
    for bits in sorted(shared.tolist(), reverse=True):
        layer_bits = np.asarray([fixed.get(index, bits) for index in range(length)])
        if config.soft_limits or bool(objective.is_feasible(cost_model.cost(table, layer_bits, ones, target), limits)):
            proposals.append(Proposal(layer_bits, ones))
    if not proposals:
        raise ValueError(f"no uniform bit-width of {sorted(shared.tolist())} meets the limits; lower the limits or "
                         f"use a mixed-precision method")
    return proposals


def resource_tables(problem: Problem, options: Sequence[int]) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Each set limit as an additive resource over layers: ``(costs [R, L, B], budgets [R], names)``.

    Every cost of the model is a sum over layers (size, cycles, energy, bit-operations), so at width 1 the total of a
    configuration is that of a reference configuration (every layer at the smallest option) plus each layer's change
    from it: ``costs[r, l, b]`` is that change when layer ``l`` alone takes option ``b``, and the budget is the limit
    minus the reference's total. A throughput limit is the latency limit ``1 / throughput``.
    """
    limits, table = problem.limits, problem.table
    length, options = len(table), np.asarray(options)
    is_set = limits.is_set()
    budgets = {name: float(getattr(limits, name)) for name in ("size_bytes", "latency_seconds", "energy_joules", "bops")
               if is_set[name]}
    if is_set["throughput_per_second"]:
        budgets["latency_seconds"] = min(budgets.get("latency_seconds", math.inf),
                                         1.0 / float(limits.throughput_per_second))
    names = list(budgets)
    reference = np.full(length, options.min(), np.float32)
    configurations = np.tile(reference, (length * len(options), 1))
    for index in range(length):
        configurations[index * len(options):(index + 1) * len(options), index] = options
    costs = problem.cost(np.vstack([reference, configurations]), np.ones((len(configurations) + 1, length)))
    tables, limits_left = [], []
    for name in names:
        totals = np.asarray(getattr(costs, name), np.float64)
        tables.append((totals[1:] - totals[0]).reshape(length, len(options)))
        limits_left.append(budgets[name] - totals[0])
    return np.asarray(tables).reshape(len(names), length, len(options)), np.asarray(limits_left), names


def layer_sensitivities(problem: Problem, options: Sequence[int], traces_per_weight: Sequence[float]) -> np.ndarray:
    """HAWQ-V3's ``Omega[l, b] = trace(H_l) / n_l * ||Q_b(W_l) - W_l||^2`` (``[L, B]``), Q_b the search's weight
    quantiser (symmetric, per output channel)."""
    leaves, _, where = _kernel_leaves(problem)
    kernels = [np.asarray(leaves[where[layer.name][0]], np.float32) for layer in problem.table]
    errors = np.asarray([[float(jnp.sum((quant.quantize_weights(kernel, bits) - kernel) ** 2)) for bits in options]
                         for kernel in kernels])
    return np.asarray(traces_per_weight, np.float64)[:, None] * errors


def calibration_inputs(problem: Problem, examples: int | None = None) -> np.ndarray:
    """The rate-distortion methods' calibration set: the first ``examples`` training inputs (default the search's
    ``rd_examples``)."""
    return np.asarray(problem.dataset.train.x[: examples or problem.config.rd_examples])


def layer_distortions(problem: Problem, options: Sequence[int], key) -> np.ndarray:
    """``D[l, b]``: the mean squared change of the output logits when layer ``l`` alone is quantised at ``b`` bits
    (weights and input activations, clips calibrated at ``b``), every other layer in float, on the calibration set.

    The float weights go into the quantised model as a trial's fine-tune starts (`mpqjax.nn.models.
    transfer_variables`); no training happens.
    """
    model, length = problem.quant_model, len(problem.table)
    x = calibration_inputs(problem)
    variables = models.transfer_variables(key, model, problem.float_model, problem.float_variables,
                                          input_shape=problem.dataset.input_shape)
    ones = np.ones(length, np.float32)
    floats = np.full(length, quant.PASS_THROUGH_BITS, np.float32)  # 16 bits and above: not quantised
    reference = train.predict(model, variables, x, bits=floats, widths=ones)
    distortions = np.zeros((length, len(options)))
    for column, bits in enumerate(options):
        calibrated = train.calibrate(model, variables, x, bits=np.full(length, bits), widths=ones,
                                     method=problem.config.calibration)
        for index in range(length):
            layer_bits = floats.copy()
            layer_bits[index] = bits
            logits = train.predict(model, calibrated, x, bits=layer_bits, widths=ones)
            distortions[index, column] = float(np.mean((logits - reference) ** 2))
    return distortions


def _kernel_leaves(problem: Problem):
    """``(leaves, treedef, {layer: (leaf index, output-channel axis)})`` of the float model's parameters."""
    params = problem.float_variables["params"]
    leaves, treedef = jax.tree.flatten(params)
    position = {path: index for index, path in enumerate(leaf_paths(params))}
    out_axes = problem.quant_model.analysis(problem.dataset.input_shape).out_axes
    where = {}
    for layer, axis in zip(problem.table, out_axes, strict=True):
        leaf = leaves[position[layer.weight_path]]
        where[layer.name] = (position[layer.weight_path], leaf.ndim - 1 if axis is None else axis)
    return leaves, treedef, where


def channel_distortions(problem: Problem, options: Sequence[int], examples: int | None = None) -> list[np.ndarray]:
    """Per layer, ``D[c, b]``: the mean squared change of the output logits when only output channel ``c`` of the
    layer's weight is quantised at ``b`` bits (its own scale, as the search's quantiser), the rest of the float
    model unchanged, on the calibration set. One float forward pass per channel and bit-width, compiled once.

    A layer whose weight has several output axes (an einsum) is measured over the flattened last axis.
    """
    x = jnp.asarray(calibration_inputs(problem, examples))
    model, variables = problem.float_model, problem.float_variables
    leaves, treedef, where = _kernel_leaves(problem)
    others = {name: value for name, value in variables.items() if name != "params"}

    @jax.jit
    def logits_with(kernel_index_leaves):
        params = jax.tree.unflatten(treedef, kernel_index_leaves)
        return model.apply({"params": params, **others}, x, None, None, train=False)

    reference = logits_with(leaves)
    distortions = []
    for layer in problem.table:
        index, axis = where[layer.name]
        kernel = jnp.moveaxis(jnp.asarray(leaves[index]), axis, -1)
        quantized = [quant.quantize_weights(kernel, bits) for bits in options]
        rows = np.zeros((kernel.shape[-1], len(options)))
        for channel in range(kernel.shape[-1]):
            for column, kernel_b in enumerate(quantized):
                changed = kernel.at[..., channel].set(kernel_b[..., channel])
                trial = list(leaves)
                trial[index] = jnp.moveaxis(changed, -1, axis)
                rows[channel, column] = float(jnp.mean((logits_with(trial) - reference) ** 2))
        distortions.append(rows)
    return distortions


def prunable_layers(table) -> list[int]:
    """The layers whose output channels can be pruned one by one: scalable and alone in their width group
    (`mpqjax.search.channels.channel_layout`)."""
    sizes = {index: len(group) for group in table.width_groups() for index in group}
    return [index for index, layer in enumerate(table) if layer.scalable and sizes[index] == 1]


def pruning_distortions(problem: Problem, key, examples: int | None = None) -> dict[int, np.ndarray]:
    """Per prunable layer (`prunable_layers`), ``D0[c]``: the mean squared change of the output logits when output
    channel ``c`` alone is switched off (as a pruned channel is: its output reads as zero, bias and batch norm
    included), every layer in float, on the calibration set."""
    model, table, shape = problem.quant_model, problem.table, problem.dataset.input_shape
    x = calibration_inputs(problem, examples)
    variables = models.transfer_variables(key, model, problem.float_model, problem.float_variables,
                                          input_shape=shape)
    ones, floats = np.ones(len(table), np.float32), np.full(len(table), quant.PASS_THROUGH_BITS, np.float32)
    reference = train.predict(model, variables, x, bits=floats, widths=ones)
    distortions = {}
    for index in prunable_layers(table):
        channels = table[index].out_channels
        widths = ones.copy()
        widths[index] = (channels - 1) / channels
        rows = np.zeros(channels)
        for channel in range(channels):
            rank = np.concatenate([np.arange(channel), [channels - 1], np.arange(channel, channels - 1)])
            off = model.with_quant_variables(variables, shape, ranks={table[index].name: rank.astype(np.int32)})
            logits = train.predict(model, off, x, bits=floats, widths=widths)
            rows[channel] = float(np.mean((logits - reference) ** 2))
        distortions[index] = rows
    return distortions


def _channel_proposal(problem: Problem, options: np.ndarray, allowed: np.ndarray, key) -> Proposal:
    """``rd_channels``: every output channel's weight bit-width, or 0 (pruned) in a layer that can prune, by one
    Lagrangian bisection over all channels; the rate a channel's weight bits (``patch x b``; a pruned channel's 0,
    which leaves out what pruning also saves: its bias and batch norm, and its consumers' weights), the budget the size
    limit less the auxiliary parameters. Each layer's input activations at its widest channel's bit-width."""
    if not problem.limits.is_set()["size_bytes"]:
        raise ValueError("rd_channels allocates under a size limit: give one")
    table = problem.table
    counts = cost_model.layer_counts(table, np.ones(len(table)), exact=True)
    distortions = channel_distortions(problem, options)
    pruned = pruning_distortions(problem, key)
    with_zero = np.concatenate([[0], options])
    loss = np.concatenate([np.column_stack([pruned.get(index, np.zeros(len(rows))), rows])
                           for index, rows in enumerate(distortions)])
    layer_of = np.concatenate([np.full(len(rows), index) for index, rows in enumerate(distortions)])
    may_prune = np.isin(layer_of, list(pruned))
    channel_allowed = np.column_stack([may_prune, allowed[layer_of]])
    rate = counts["patch"][layer_of][:, None] * with_zero[None, :]
    budget = problem.limits.size_bytes * 8.0 - float((counts["aux"] * problem.target.bias_bits).sum())
    choice, _ = allocation.bisect_multiplier(loss, rate, budget, allowed=channel_allowed)
    channel_bits = {}
    for index, layer in enumerate(table):
        row = with_zero[choice[layer_of == index]]
        if not row.any():  # a layer keeps at least its channel that pruning distorts most, at the fewest bits
            row[int(np.argmax(loss[layer_of == index, 0]))] = options[allowed[index]].min()
        channel_bits[layer.name] = row.tolist()
    bits = np.asarray([max(row) for row in channel_bits.values()])
    layout = channels.channel_layout(table, channel_bits)
    return Proposal(bits, layout.widths, channel_bits)
