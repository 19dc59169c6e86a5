"""The relaxations of the gradient-based peer methods: each choice of a configuration as probabilities over its
options, what the model and the cost model take of them, and the configuration they are read back into.

- ``mixprec`` (Motetti et al., joint pruning and channel-wise mixed precision; PLiNIO's MPS): every output channel
  of every weight chooses among the candidate bit-widths and, in a layer that owns its channels, 0 (pruned); every
  layer's input activations choose among the candidates.
- ``dnas`` (Zur and Bronstein, DARTS-style): every layer one bit-width for its weights and its input activations,
  every width group one width multiplier.

A choice's probabilities are ``softmax(logits / temperature)`` over the options it may take. The model runs their
expectation (`mpqjax.nn.models.Relaxation`: mixed quantisers, a channel's keep probability on its mask) and the cost
model costs it (`mpqjax.cost.relaxed_cost`: exactly the discrete cost at one-hot probabilities). After training
(`mpqjax.search.supernet`) every choice takes its most probable option (``argmax``), and `fit` moves that
configuration to the limits: while it breaks one, the choice whose logit falls least by it takes its next lower
option; then, while a choice's next higher option keeps every limit met, the one whose logit falls least takes it.
The supernet's expected cost lands near the limit, its argmax anywhere around it; fitted, every method's
configuration uses the budget it is given, as HAWQ's and the rate-distortion allocations do by construction.

Example:
    >>> space = relaxed_space("dnas", problem)
    >>> relaxation = relaxer("dnas", problem, space)
    >>> probabilities, expected_cost = relaxation.relax(relaxation.init(), 1.0, ranks)
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from mpqjax import cost as cost_model
from mpqjax.nn import models
from mpqjax.nn.config import MAX_CHANNEL_BITS
from mpqjax.nn.table import scale_channels
from mpqjax.search import channels, objective, peers
from mpqjax.search.problem import Problem

__all__ = ["RELAXED_METHODS", "Choice", "Configuration", "Relaxer", "Space", "fit", "relaxed_space", "relaxer"]

RELAXED_METHODS = ("mixprec", "dnas")
_MASKED = -1e9  # the logit of an option a choice may not take


class Space(NamedTuple):
    """What a relaxed method chooses among, fixed for a search (`relaxed_space`).

    Attributes:
        options: the candidate bit-widths, ascending ``[B]``.
        allowed: ``[L, B]``: which bit-widths each layer may take (its space's).
        prunable: per layer, whether its channels may be pruned (``mixprec``; all False for ``dnas``).
        widths: the width multipliers, ascending ``[W]`` (``dnas``; ``[1.0]`` for ``mixprec``).
        groups: the width groups (tuples of layer indices) whose multiplier is chosen (``dnas``).
    """

    options: np.ndarray
    allowed: np.ndarray
    prunable: tuple
    widths: np.ndarray
    groups: tuple


def relaxed_space(name: str, problem: Problem) -> Space:
    """The choices of the relaxed method ``name`` in ``problem``: each layer's bit-widths as its space has them,
    and (``dnas``) the width multipliers of each width group the space searches.

    Raises:
        ValueError: no limit to trade accuracy against; ``mixprec`` with a candidate bit-width above 8 (weights are
            quantised channel by channel at 2 to 8 bits); nothing to relax (every choice fixed).
    """
    if name not in RELAXED_METHODS:
        raise ValueError(f"{name!r} is not a relaxed method; relaxed methods: {', '.join(RELAXED_METHODS)}")
    if not any(problem.limits.is_set().values()):
        raise ValueError(f"{name} trades accuracy against a limit: give one (size, latency, energy, throughput or "
                         f"bit-operations)")
    table, layer_space = problem.table, problem.layer_space
    dimensions = layer_space.space.dimensions
    per_layer = [tuple(int(b) for b in dimensions[index].choices) for index in layer_space.bits_index]
    options = np.asarray(sorted({b for choices in per_layer for b in choices}), np.int64)
    allowed = np.asarray([[int(b) in choices for b in options] for choices in per_layer], bool)
    free = allowed.sum(axis=1) > 1
    if name == "mixprec":
        over = [(layer.name, choices) for layer, choices in zip(table, per_layer, strict=True)
                if max(choices) > MAX_CHANNEL_BITS]
        if over:
            raise ValueError(f"mixprec quantises weights channel by channel at 2 to {MAX_CHANNEL_BITS} bits, but layer "
                             f"{over[0][0]!r} may take {sorted(over[0][1])}: leave bit-widths above "
                             f"{MAX_CHANNEL_BITS} out of the bits and fixed bits")
        prunable = tuple(index in peers.prunable_layers(table) and bool(free[index]) for index in range(len(table)))
        if not free.any():
            raise ValueError(f"mixprec has nothing to relax in model {table.model!r}: every layer's bit-width is fixed")
        return Space(options, allowed, prunable, np.ones(1), ())
    width_index = layer_space.width_index
    groups = tuple(tuple(group) for group in table.width_groups() if width_index[group[0]] >= 0)
    widths = np.asarray(sorted(dimensions[width_index[groups[0][0]]].choices), np.float64) if groups \
        else np.ones(1)
    if len(widths) == 1:
        groups = ()
    if not groups and not free.any():
        raise ValueError(f"dnas has nothing to relax in model {table.model!r}: every layer's bit-width is fixed and "
                         f"no width multiplier is searched")
    return Space(options, allowed, (False,) * len(table), widths, groups)


class Configuration(NamedTuple):
    """A discrete configuration of a relaxed method: per-layer ``bits`` (the activations' for ``mixprec``),
    ``widths``, and ``channel_bits`` (``mixprec``: ``{layer: weight bit-width per channel, 0 pruned}``)."""

    bits: np.ndarray
    widths: np.ndarray
    channel_bits: dict | None


class Choice(NamedTuple):
    """One choice of a configuration as `fit` sees it: its ``logits`` over its options (ordered from the cheapest),
    the option it takes (``current``), the options it may take now (``allowed``) and its ``key`` for
    `Relaxer.assign`."""

    logits: np.ndarray
    current: int
    allowed: np.ndarray
    key: tuple


class Relaxer(NamedTuple):
    """One method's relaxation, as functions (built by `relaxer`).

    Attributes:
        init: ``() -> logits``, the architecture parameters at the start.
        relax: ``(logits, temperature, ranks) -> (mpqjax.nn.models.Relaxation, mpqjax.cost.Cost)``: the model's
            relaxation and the expected cost (traceable; ``ranks``: each searched width group's channel ranks).
        argmax: ``logits -> Configuration``: every choice at its most probable option.
        choices: ``(logits, Configuration) -> [Choice]``: every choice of the configuration.
        assign: ``(Configuration, key, option) -> Configuration``: one choice changed.
    """

    init: Callable
    relax: Callable
    argmax: Callable
    choices: Callable
    assign: Callable


def relaxer(name: str, problem: Problem, space: Space) -> Relaxer:
    """The relaxation of method ``name`` (``"mixprec"`` or ``"dnas"``) over ``space`` (`relaxed_space`)."""
    return (_mixprec if name == "mixprec" else _dnas)(problem, space)


def _masked_softmax(logits, allowed, temperature=1.0):
    return jax.nn.softmax(jnp.where(allowed, logits / temperature, _MASKED), axis=-1)


def _index(values, value) -> int:
    return int(np.argmin(np.abs(np.asarray(values, np.float64) - float(value))))


def _mixprec(problem: Problem, space: Space) -> Relaxer:
    """``mixprec``: each channel over (pruned, options), each layer's activations over the options; the logits start
    at ``bits / max bits`` (0 for pruned), as PLiNIO's."""
    table, options = problem.table, space.options
    names = table.names
    held = problem.quant_model.weight_channels(problem.dataset.input_shape)
    allowed = {layer.name: np.concatenate([[space.prunable[index]], space.allowed[index]])
               for index, layer in enumerate(table)}
    start = np.concatenate([[0.0], options / options.max()])

    def init():
        return {"act": jnp.asarray(np.broadcast_to(start[1:], space.allowed.shape), jnp.float32),
                "weights": {layer.name: jnp.asarray(np.tile(start, (layer.out_channels, 1)), jnp.float32)
                            for layer in table}}

    def relax(logits, temperature, ranks):
        del ranks  # a channel is kept by its own probability, not by rank
        act_probs = _masked_softmax(logits["act"], space.allowed, temperature)
        channel_probs = [_masked_softmax(logits["weights"][name], allowed[name], temperature) for name in names]
        groups = cost_model.channel_probs_groups(channel_probs, len(options))
        cost = cost_model.relaxed_cost(table, act_probs, options, groups, options, problem.target)
        weight_probs, keep = {}, {}
        for index, (name, probs) in enumerate(zip(names, channel_probs, strict=True)):
            kept = 1.0 - probs[:, 0]
            extra = held[name] - probs.shape[0]  # channels a wider module holds beyond width 1 stay switched off
            weight_probs[name] = jnp.pad(probs[:, 1:] / jnp.maximum(kept, 1e-12)[:, None], ((0, extra), (0, 0)),
                                         constant_values=1.0 / len(options))
            if space.prunable[index]:
                keep[name] = jnp.pad(kept, (0, extra))
        return models.Relaxation(options, act_probs, options, weight_probs, keep), cost

    def argmax(logits):
        act = np.where(space.allowed, np.asarray(logits["act"]), -np.inf)
        channel_bits = {}
        for name in names:
            rows = np.where(allowed[name], np.asarray(logits["weights"][name]), -np.inf)
            choice = np.argmax(rows, axis=1)
            if not choice.any():  # every channel pruned: keep the one whose pruning is least likely
                kept = int(np.argmax(np.max(rows[:, 1:], axis=1) - rows[:, 0]))
                choice[kept] = 1 + int(np.argmax(rows[kept, 1:]))
            channel_bits[name] = [0 if column == 0 else int(options[column - 1]) for column in choice]
        return _channel_configuration(table, options[np.argmax(act, axis=1)], channel_bits)

    def choices(logits, configuration):
        act = np.asarray(logits["act"])
        found = [Choice(act[index], _index(options, bits), space.allowed[index], ("act", index))
                 for index, bits in enumerate(configuration.bits)]
        for name in names:
            rows, row = np.asarray(logits["weights"][name]), configuration.channel_bits[name]
            last = sum(1 for bits in row if bits) == 1
            for channel, bits in enumerate(row):
                current = 0 if bits == 0 else 1 + _index(options, bits)
                may = allowed[name].copy()
                may[0] &= not (last and bits)  # a layer keeps a channel
                found.append(Choice(rows[channel], current, may, ("channel", name, channel)))
        return found

    def assign(configuration, key, option):
        if key[0] == "act":
            bits = configuration.bits.copy()
            bits[key[1]] = options[option]
            return _channel_configuration(table, bits, configuration.channel_bits)
        _, name, channel = key
        row = list(configuration.channel_bits[name])
        row[channel] = 0 if option == 0 else int(options[option - 1])
        return _channel_configuration(table, configuration.bits, {**configuration.channel_bits, name: row})

    return Relaxer(init, relax, argmax, choices, assign)


def _channel_configuration(table, bits, channel_bits) -> Configuration:
    return Configuration(np.asarray(bits, np.int64), channels.channel_layout(table, channel_bits).widths,
                         channel_bits)


def _dnas(problem: Problem, space: Space) -> Relaxer:
    """``dnas``: each layer over the options (weights and activations together), each searched width group over the
    widths; the logits start at 0 (uniform)."""
    table, options, widths = problem.table, space.options, space.widths
    group_of = np.zeros(len(table), np.int64)
    searched = np.zeros(len(table), bool)
    for number, group in enumerate(space.groups):
        group_of[list(group)], searched[list(group)] = number, True
    # a layer whose width is not searched runs at the widest (the only width when one is given; 1 if not scalable)
    fixed = np.where([layer.scalable for layer in table], widths.max(), 1.0)
    widest = np.eye(len(widths), dtype=np.float32)[-1]
    every_width = np.ones(len(widths), bool)

    def init():
        return {"bits": jnp.zeros(space.allowed.shape, jnp.float32),
                "widths": jnp.zeros((len(space.groups), len(widths)), jnp.float32)}

    def relax(logits, temperature, ranks):
        bit_probs = _masked_softmax(logits["bits"], space.allowed, temperature)
        group_probs = jax.nn.softmax(logits["widths"] / temperature, axis=-1)
        width_probs = jnp.where(searched[:, None], group_probs[group_of] if space.groups else widest, widest)
        act_probs, groups = cost_model.layer_choice_groups(table, bit_probs, options, width_probs, widths)
        cost = cost_model.relaxed_cost(table, act_probs, options, groups, options, problem.target)
        keep = {}
        for number, group in enumerate(space.groups):
            first = table[group[0]]
            active = jnp.asarray([scale_channels(first.out_channels, float(w)) for w in widths], jnp.float32)
            keep[first.name] = jnp.sum(group_probs[number][:, None] * (ranks[first.name][None, :] < active[:, None]),
                                       axis=0)
        weight_probs = {name: bit_probs[index] for index, name in enumerate(table.names)}
        return models.Relaxation(options, bit_probs, options, weight_probs, keep), cost

    def argmax(logits):
        bits = options[np.argmax(np.where(space.allowed, np.asarray(logits["bits"]), -np.inf), axis=1)]
        layer_widths = fixed.copy()
        if space.groups:
            layer_widths = np.where(searched, widths[np.argmax(np.asarray(logits["widths"]), axis=1)][group_of],
                                    fixed)
        return Configuration(bits.astype(np.int64), layer_widths.astype(np.float32), None)

    def choices(logits, configuration):
        rows, width_rows = np.asarray(logits["bits"]), np.asarray(logits["widths"])
        found = [Choice(rows[index], _index(options, bits), space.allowed[index], ("bits", index))
                 for index, bits in enumerate(configuration.bits)]
        return found + [Choice(width_rows[number], _index(widths, configuration.widths[group[0]]), every_width,
                               ("width", number)) for number, group in enumerate(space.groups)]

    def assign(configuration, key, option):
        bits, layer_widths = configuration.bits.copy(), configuration.widths.copy()
        if key[0] == "bits":
            bits[key[1]] = options[option]
        else:
            layer_widths[list(space.groups[key[1]])] = widths[option]
        return Configuration(bits, layer_widths, None)

    return Relaxer(init, relax, argmax, choices, assign)


def _next_option(choice: Choice, step: int) -> int | None:
    """The nearest option the choice may take below (``step`` -1) or above (+1) its current one, or None."""
    option = choice.current + step
    while 0 <= option < len(choice.allowed):
        if choice.allowed[option]:
            return option
        option += step
    return None


def _moves(relaxation: Relaxer, logits, configuration: Configuration, step: int) -> list:
    """``[(fall of the logit, key, option)]`` of every choice's next option in direction ``step``, least fall
    first."""
    moves = []
    for choice in relaxation.choices(logits, configuration):
        option = _next_option(choice, step)
        if option is not None:
            moves.append((float(choice.logits[choice.current] - choice.logits[option]), choice.key, option))
    return sorted(moves, key=lambda move: move[0])


def fit(problem: Problem, relaxation: Relaxer, logits, configuration: Configuration) -> tuple[Configuration, dict]:
    """``configuration`` moved to the hard limits: lowered, the choice whose logit falls least first, until it meets
    them; then raised the same way while every limit stays met (a choice that cannot take its next option then never
    can: every cost grows with every choice). Returns the configuration and ``{"lowered": n, "raised": n}``.

    Raises:
        ValueError: no lowering meets the limits.
    """
    def feasible(candidate: Configuration) -> bool:
        cost = problem.cost(candidate.bits, candidate.widths, candidate.channel_bits)
        return bool(objective.is_feasible(cost, problem.limits))

    lowered = raised = 0
    while not feasible(configuration):
        moves = _moves(relaxation, logits, configuration, -1)
        if not moves:
            raise ValueError(f"{problem.config.method}: no configuration its supernet can lower to meets the limits")
        configuration = relaxation.assign(configuration, *moves[0][1:])
        lowered += 1
    blocked = set()
    while True:
        moves = [move for move in _moves(relaxation, logits, configuration, +1) if move[1:] not in blocked]
        for move in moves:
            candidate = relaxation.assign(configuration, *move[1:])
            if feasible(candidate):
                configuration, raised = candidate, raised + 1
                break
            blocked.add(move[1:])
        else:
            return configuration, {"lowered": lowered, "raised": raised}
