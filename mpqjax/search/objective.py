"""The search objective: accuracy under hardware limits, with Lagrangian penalties (Section III.C of the paper).

The paper's problem is ``max accuracy s.t. size <= mu, latency <= tau, energy <= epsilon, throughput >= pi``, solved
through its Lagrangian with large multipliers; mpqjax adds a bit-operations limit (HAWQ-V3's budget). Here each
limit's violation is measured relative to the limit,

    violation_size = max(0, size / mu - 1),   ...,   violation_throughput = max(0, 1 - throughput / pi),

and the objective (maximised) is ``accuracy - sum_i multiplier_i * violation_i``. A limit that is not set is
infinite (zero for throughput) and never violated. With hard limits the search masks out every configuration that
violates one before evaluating it (the cost model is cheap), so the penalties only act on soft limits.

All functions are pure ``jnp`` arithmetic on a `mpqjax.cost.Cost` and vmap over configurations.

Example:
    >>> limits = make_limits(size_bytes=20_000)
    >>> cost = hardware.cost(table, bits, widths, target)
    >>> objective(0.97, cost, limits), is_feasible(cost, limits)
"""

from __future__ import annotations

import math
from typing import NamedTuple

import jax.numpy as jnp
import numpy as np

__all__ = ["DEFAULT_MULTIPLIER", "LIMIT_NAMES", "Limits", "is_feasible", "make_limits", "objective", "violations"]

LIMIT_NAMES = ("size_bytes", "latency_seconds", "energy_joules", "throughput_per_second", "bops")
DEFAULT_MULTIPLIER = 10.0  # "large": a 1% excess costs 0.1 of accuracy


class Limits(NamedTuple):
    """Upper limits on size, latency, energy and bit-operations and a lower limit on throughput (a PyTree of floats).

    Unset limits are ``inf`` (``0`` for throughput). Build with `make_limits`, which validates.
    """

    size_bytes: float = math.inf
    latency_seconds: float = math.inf
    energy_joules: float = math.inf
    throughput_per_second: float = 0.0
    bops: float = math.inf

    def is_set(self) -> dict[str, bool]:
        """Which limits constrain anything."""
        return {name: bool(np.isfinite(value) and (value > 0 if name == "throughput_per_second" else True))
                for name, value in self._asdict().items()}

    def to_dict(self) -> dict[str, float | None]:
        """JSON-ready: set limits as numbers, unset ones as None."""
        return {name: (float(value) if self.is_set()[name] else None) for name, value in self._asdict().items()}


def make_limits(*, size_bytes: float | None = None, latency_seconds: float | None = None,
                energy_joules: float | None = None, throughput_per_second: float | None = None,
                bops: float | None = None) -> Limits:
    """Validated `Limits`; None leaves a limit unset.

    Raises:
        ValueError: a limit that is not a positive finite number.
    """
    given = dict(size_bytes=size_bytes, latency_seconds=latency_seconds, energy_joules=energy_joules,
                 throughput_per_second=throughput_per_second, bops=bops)
    for name, value in given.items():
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, (int, float, np.number)) or not math.isfinite(value) \
                or value <= 0:
            raise ValueError(f"limit {name} must be a positive number, got {value!r}")
    defaults = Limits()
    return Limits(**{name: float(defaults._asdict()[name] if value is None else value)
                     for name, value in given.items()})


def violations(cost, limits: Limits) -> jnp.ndarray:
    """Relative violation of each limit, ``[..., 5]`` in `LIMIT_NAMES` order (0 where met or unset).

    Args:
        cost: a `mpqjax.cost.Cost` (or anything with its ``size_bytes``, ``latency_seconds``, ``energy_joules``,
            ``throughput_per_second`` and ``bops`` fields), possibly batched.
        limits: the limits.
    """
    over = [
        jnp.maximum(jnp.asarray(cost.size_bytes) / limits.size_bytes - 1.0, 0.0),
        jnp.maximum(jnp.asarray(cost.latency_seconds) / limits.latency_seconds - 1.0, 0.0),
        jnp.maximum(jnp.asarray(cost.energy_joules) / limits.energy_joules - 1.0, 0.0),
        jnp.where(limits.throughput_per_second > 0,
                  jnp.maximum(1.0 - jnp.asarray(cost.throughput_per_second)
                              / jnp.maximum(limits.throughput_per_second, 1e-30), 0.0), 0.0),
        jnp.maximum(jnp.asarray(cost.bops) / limits.bops - 1.0, 0.0),
    ]
    return jnp.stack(over, axis=-1)


def is_feasible(cost, limits: Limits) -> jnp.ndarray:
    """True where every limit is met."""
    return jnp.all(violations(cost, limits) <= 0.0, axis=-1)


def objective(accuracy, cost, limits: Limits, multipliers=DEFAULT_MULTIPLIER) -> jnp.ndarray:
    """The Lagrangian objective to maximise: ``accuracy - sum(multipliers * violations(cost, limits))``.

    Args:
        accuracy: validation accuracy in [0, 1] (NaN for a failed trial, which stays NaN).
        cost: the configuration's `mpqjax.cost.Cost`.
        limits: the limits.
        multipliers: one multiplier for all limits, or one per limit in `LIMIT_NAMES` order.
    """
    weights = jnp.broadcast_to(jnp.asarray(multipliers, jnp.float32), (len(LIMIT_NAMES),))
    return jnp.asarray(accuracy, jnp.float32) - jnp.sum(weights * violations(cost, limits), axis=-1)
