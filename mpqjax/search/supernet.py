"""The gradient-based peer methods' supernet: its weights and its relaxed choices (`mpqjax.search.relaxed`) trained
together under the expected cost, then read at their most probable configuration, fitted to the limits.

- ``mixprec``: weights and logits updated together on every batch; the temperature annealed from 1 to
  ``exp(-22.5)`` over the run (PLiNIO's ``exp(-0.045)`` per epoch over 500 epochs, rescaled to the run's length).
- ``dnas``: a weight step on a batch of one half of the training split, then an architecture step on a batch of the
  other half (DARTS' alternation); temperature 1.

The loss is ``cross-entropy + sum_r multiplier_r * E[cost_r] / limit_r`` over the limits the search sets (a
throughput limit as latency). Each multiplier starts at ``cost_strength`` and follows dual ascent,
``multiplier_r += (E[cost_r] / limit_r - 1) / steps per epoch``, floored at 0: it grows while the expected cost is
over its limit and shrinks while under, so the strength is tuned to the limit rather than swept. The weights take the
trials' optimiser (Adam with decoupled decay, one-cycle at ``finetune_learning_rate``), the logits Adam at
``arch_learning_rate``. A loss that becomes NaN or infinite fails the search with the reason, before any trial is
written.

Example:
    >>> proposal, details = propose_relaxed("mixprec", problem, key)
    >>> proposal.channel_bits["conv1"][:4], details["multipliers"]
"""

from __future__ import annotations

import dataclasses
import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from mpqjax import data
from mpqjax.nn import models
from mpqjax.search import objective
from mpqjax.search.peers import Proposal
from mpqjax.search.problem import Problem
from mpqjax.search.relaxed import Relaxer, Space, fit, relaxed_space, relaxer
from mpqjax.training import feed, train

__all__ = ["TOTAL_TEMPERATURE_DECAY", "cost_ratios", "propose_relaxed", "train_supernet"]

# PLiNIO's temperature falls by exp(-0.045) per epoch for 500 epochs: exp(-22.5) over a whole run.
TOTAL_TEMPERATURE_DECAY = 22.5


def cost_ratios(cost, limits: objective.Limits) -> jax.Array:
    """Each limit's ``cost / limit`` in `mpqjax.search.objective.LIMIT_NAMES` order (a throughput limit as
    ``latency * throughput limit``), 0 where a limit is not set: what the relaxed loss weighs. ``limits`` are
    concrete (which are set is a structural fact of the search)."""
    ratios = [cost.size_bytes / limits.size_bytes, cost.latency_seconds / limits.latency_seconds,
              cost.energy_joules / limits.energy_joules, cost.latency_seconds * limits.throughput_per_second,
              cost.bops / limits.bops]
    is_set = limits.is_set()
    return jnp.stack([jnp.asarray(ratio, jnp.float32) if is_set[name] else jnp.zeros((), jnp.float32)
                      for name, ratio in zip(objective.LIMIT_NAMES, ratios, strict=True)])


def _set_limits(limits: objective.Limits) -> np.ndarray:
    """1.0 for each limit the search sets, 0.0 for the others (`mpqjax.search.objective.LIMIT_NAMES` order)."""
    is_set = limits.is_set()
    return np.asarray([is_set[name] for name in objective.LIMIT_NAMES], np.float32)


class _State(NamedTuple):
    """The supernet's training state: its weights' (a `mpqjax.training.train.TrainState`), the architecture logits
    and their optimiser's state, and each limit's multiplier."""

    weights: train.TrainState
    logits: dict
    arch_opt: optax.OptState
    multipliers: jax.Array


@functools.lru_cache(maxsize=1)
def _arch_optimizer() -> optax.GradientTransformation:
    """Adam on the architecture logits, its learning rate injected (no weight decay)."""
    return optax.inject_hyperparams(optax.adam)(learning_rate=1e-2)


def _step_function(problem: Problem, relaxation: Relaxer, bits, widths, ranks, *, alternating: bool,
                   annealed: bool, steps_per_epoch: int, total_steps: int):
    """The supernet's training step ``(state, weight feed, arch feed, arch lr, weight decay) -> (state, (loss,
    cross-entropy, cost ratios))``: one joint step (weights and logits on the same batch), or a weight step on the
    weight feed's batch then an architecture step on the arch feed's."""
    model, limits, augmentation = problem.quant_model, problem.limits, problem.dataset.augmentation
    is_set = jnp.asarray(_set_limits(limits))

    def loss_of(params, model_state, logits, x, y, multipliers, step):
        temperature = jnp.exp(-TOTAL_TEMPERATURE_DECAY * step / total_steps) if annealed else 1.0
        relaxed, cost = relaxation.relax(logits, temperature, ranks)
        out, updates = model.apply({"params": params, **model_state}, x, bits, widths, train=True,
                                   mutable=["batch_stats"], relaxation=relaxed,
                                   rngs={"dropout": jax.random.fold_in(jax.random.key(0), step)})
        cross_entropy = optax.softmax_cross_entropy_with_integer_labels(out, y).mean()
        ratios = cost_ratios(cost, limits)
        return cross_entropy + jnp.sum(multipliers * ratios), (cross_entropy, ratios, updates)

    def arch_update(state: _State, grads, arch_rate):
        opt_state = state.arch_opt
        opt_state.hyperparams["learning_rate"] = arch_rate
        changes, opt_state = _arch_optimizer().update(grads, opt_state, state.logits)
        return optax.apply_updates(state.logits, changes), opt_state

    def step(state: _State, weight_feed: feed.Feed, arch_feed: feed.Feed, arch_rate, decay):
        weights, number = state.weights, state.weights.step
        x, y, rate = feed.batch(weight_feed, number, augmentation)
        if alternating:
            grad = jax.grad(loss_of, argnums=0, has_aux=True)
            params_grads, (_, _, updates) = grad(weights.params, weights.model_state, state.logits, x, y,
                                                 state.multipliers, number)
            weights = train.apply_gradients(weights, params_grads, updates, rate, decay)
            x, y, _ = feed.batch(arch_feed, number, augmentation)
            (loss, (cross_entropy, ratios, _)), logit_grads = jax.value_and_grad(loss_of, argnums=2, has_aux=True)(
                weights.params, weights.model_state, state.logits, x, y, state.multipliers, number)
        else:
            (loss, (cross_entropy, ratios, updates)), (params_grads, logit_grads) = jax.value_and_grad(
                loss_of, argnums=(0, 2), has_aux=True)(weights.params, weights.model_state, state.logits, x, y,
                                                       state.multipliers, number)
            weights = train.apply_gradients(weights, params_grads, updates, rate, decay)
        logits, arch_opt = arch_update(state, logit_grads, arch_rate)
        # dual ascent: a limit's multiplier grows while the expected cost is over it, shrinks while under
        multipliers = jnp.maximum(state.multipliers + is_set * (ratios - 1.0) / steps_per_epoch, 0.0)
        return _State(weights, logits, arch_opt, multipliers), (loss, cross_entropy, ratios)

    return step


def _start(problem: Problem, space: Space, key):
    """``(variables, train key, bits, widths, ranks)``: the float weights in the quantised model at every layer's
    highest candidate bit-width and widest width (clips calibrated there), and each searched group's channel
    ranks."""
    table = problem.table
    bits = np.asarray([space.options[row].max() for row in space.allowed], np.float32)
    widths = np.where([layer.scalable for layer in table], space.widths.max(), 1.0).astype(np.float32)
    variables, train_key = train.finetune_start(key, problem.float_model, problem.float_variables,
                                                problem.quant_model, problem.dataset, bits=bits, widths=widths,
                                                calibration=problem.config.calibration)
    ranks = {table[group[0]].name: jnp.asarray(variables["quant"][table[group[0]].name][models.RANKS])
             for group in space.groups}
    return variables, train_key, bits, widths, ranks


def _halves(dataset: data.Dataset) -> tuple[data.Dataset, data.Dataset]:
    """The dataset with its training split cut in two halves of equal size (weights, architecture)."""
    half = len(dataset.train) // 2
    split = dataset.train
    return (dataclasses.replace(dataset, train=data.Split(split.x[:half], split.y[:half])),
            dataclasses.replace(dataset, train=data.Split(split.x[half: 2 * half], split.y[half: 2 * half])))


def train_supernet(name: str, problem: Problem, space: Space, key) -> tuple[Relaxer, dict, dict]:
    """Train the supernet of method ``name``: ``(relaxation, final logits, details)``, the details the run's steps,
    final cross-entropy, expected cost ratios and multipliers (per set limit).

    Raises:
        ValueError: the training diverged (a non-finite loss).
    """
    config = problem.config
    relaxation = relaxer(name, problem, space)
    variables, train_key, bits, widths, ranks = _start(problem, space, key)
    alternating = name == "dnas"
    weight_data, arch_data = _halves(problem.dataset) if alternating else (problem.dataset, problem.dataset)
    batch_size = min(config.batch_size, len(weight_data.train))
    rate = feed.scaled_learning_rate(config.finetune_learning_rate, batch_size, config.learning_rate_scaling)
    weight_key, arch_key = jax.random.split(train_key)
    weight_feed = feed.plan(weight_key, weight_data, epochs=config.supernet_epochs, batch_size=batch_size,
                            learning_rate=rate)
    arch_feed = feed.plan(arch_key, arch_data, epochs=config.supernet_epochs, batch_size=batch_size,
                          learning_rate=rate) if alternating else weight_feed
    steps_per_epoch = weight_feed.steps // config.supernet_epochs
    step = jax.jit(_step_function(problem, relaxation, jnp.asarray(bits), jnp.asarray(widths), ranks,
                                  alternating=alternating, annealed=name == "mixprec",
                                  steps_per_epoch=steps_per_epoch, total_steps=weight_feed.steps), donate_argnums=0)
    logits = relaxation.init()
    is_set = _set_limits(problem.limits)
    state = _State(train.init_state(variables), logits, _arch_optimizer().init(logits),
                   jnp.asarray(is_set * config.cost_strength))
    arch_rate, decay = jnp.asarray(config.arch_learning_rate, jnp.float32), jnp.asarray(config.weight_decay,
                                                                                         jnp.float32)
    outputs = []
    for _ in range(weight_feed.steps):  # dispatched ahead; read once at the end
        state, output = step(state, weight_feed, arch_feed, arch_rate, decay)
        outputs.append(output)
    losses, cross_entropies, ratios = (np.asarray(jnp.stack(values)) for values in zip(*outputs, strict=True))
    bad = np.flatnonzero(~np.isfinite(losses))
    if len(bad):
        raise ValueError(f"{name}: the supernet's training diverged at step {int(bad[0])} of {len(losses)} "
                         f"(non-finite loss, cost strength {config.cost_strength:g}); lower finetune_learning_rate, "
                         f"arch_learning_rate or cost_strength")
    set_names = [limit for limit, flag in zip(objective.LIMIT_NAMES, is_set, strict=True) if flag]
    multipliers = np.asarray(state.multipliers)
    details = {"steps": len(losses), "final_cross_entropy": float(cross_entropies[-1]),
               "expected_cost_ratio": {limit: float(ratios[-1][objective.LIMIT_NAMES.index(limit)])
                                       for limit in set_names},
               "multipliers": {limit: float(multipliers[objective.LIMIT_NAMES.index(limit)]) for limit in set_names}}
    return relaxation, jax.tree.map(np.asarray, state.logits), details


def propose_relaxed(name: str, problem: Problem, key) -> tuple[Proposal, dict]:
    """The configuration of the relaxed method ``name`` for ``problem``: its supernet trained, every choice at its
    most probable option, fitted to the hard limits (`mpqjax.search.relaxed.fit`).

    Args:
        name: ``"mixprec"`` or ``"dnas"``.
        problem: the search's problem (its space gives each layer's candidate bit-widths and the widths).
        key: PRNG key (the float weights' transfer into the supernet and its batches).

    Returns:
        ``(proposal, details)``: a `mpqjax.search.peers.Proposal` (channel-wise for ``mixprec``) and what the
        supernet's training and the fit did (for ``search.json``).

    Raises:
        ValueError: see `mpqjax.search.relaxed.relaxed_space`, `train_supernet` and `mpqjax.search.relaxed.fit`.
    """
    space = relaxed_space(name, problem)
    relaxation, logits, details = train_supernet(name, problem, space, key)
    configuration = relaxation.argmax(logits)
    fitted = {"lowered": 0, "raised": 0}
    if not problem.config.soft_limits:  # soft limits: the argmax as it is, its violation penalised in its trial
        configuration, fitted = fit(problem, relaxation, logits, configuration)
    return (Proposal(configuration.bits, configuration.widths, configuration.channel_bits),
            {**details, "fitted": fitted})
