"""The measured choice of how to train a population: how many members at once, and which strategy.

Which strategy of `mpqjax.training.population` is fastest depends on the backend and the model (a Python loop over a
jitted step or ``lax.scan``; vmapped members or one after another; measured in docs/results.md, section "Population
training"). `choose` times a few training steps of each candidate on the machine at hand and picks the highest
configurations-per-hour throughput (``mpqjax search --population auto``).

Example:
    >>> choice = choose(model, dataset, batch_size=64, steps_per_configuration=400)
    >>> choice.population, choice.strategy, choice.to_dict()["measurements"]
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh

from mpqjax.data import Dataset
from mpqjax.nn.models import Model, init_variables, layer_table
from mpqjax.training import feed, population, train
from mpqjax.training.devices import (
    max_population,
    member_sharding,
    padded_size,
    place,
    population_mesh,
    replicated_sharding,
)

__all__ = ["Choice", "choose"]


@dataclasses.dataclass(frozen=True)
class Choice:
    """What `choose` picked and why.

    Attributes:
        population: members trained together.
        strategy: ``"sequential"``, ``"vmap"`` or ``"scan"``.
        measurements: one dict per candidate: ``population``, ``strategy``, ``seconds_per_step`` (the whole
            population's) and ``configurations_per_hour`` at the calibration's fine-tune length.
        max_population: the memory bound (`mpqjax.training.devices.max_population`).
    """

    population: int
    strategy: str
    measurements: tuple[dict, ...]
    max_population: int

    def to_dict(self) -> dict:
        """JSON-ready: the fields, measurements as a list."""
        return {"population": self.population, "strategy": self.strategy, "max_population": self.max_population,
                "measurements": [dict(m) for m in self.measurements]}


def choose(model: Model, data: Dataset, *, batch_size: int, steps_per_configuration: int,
           populations: Sequence[int] | None = None, strategies: Sequence[str] = population.STRATEGIES,
           max_size: int | None = None,
           mesh: Mesh | None = None, memory_bytes: int | None = None, tolerance: float = 0.1,
           repeats: int = 3) -> Choice:
    """Measure the strategies on a few training steps and pick the population size and strategy.

    The pick has the highest configurations-per-hour throughput, or rather the smallest population within
    ``tolerance`` of it: a smaller population is proposed by a better-informed optimiser.

    Args:
        model: the masked quantised model.
        data: the dataset (its first training batch is used).
        batch_size: examples per step.
        steps_per_configuration: training steps of one fine-tune (turns step times into configurations per hour).
        populations: sizes to try (default 1, 4, 16, capped by memory and ``max_size``; multiples of the device
            count).
        strategies: strategies to try; ``"sequential"`` is measured at population 1 only (it runs members in turn).
        max_size: the most configurations a population may hold (e.g. the trials of a search).
        mesh, memory_bytes: devices and memory (defaults: every device, its free memory).
        tolerance: relative throughput a smaller population may give up.
        repeats: timed repetitions per candidate (the median is used).

    Returns:
        A `Choice`.

    Raises:
        ValueError: an unknown strategy, nothing to measure, or not even one configuration fits in memory.
    """
    for strategy in strategies:
        population.check_strategy(strategy)
    mesh = population_mesh() if mesh is None else mesh
    fit = max_population(model, data.input_shape, batch_size=batch_size, mesh=mesh, memory_bytes=memory_bytes)
    cap = fit if max_size is None else min(fit, max_size)
    if populations is None:
        populations = sorted({min(size, cap) for size in (1, 4, 16)})
    populations = sorted({padded_size(size, mesh) for size in populations if size >= 1 and size <= max(cap, 1)})
    table = layer_table(model, input_shape=data.input_shape)
    run = feed.plan(jax.random.key(0), data, epochs=1, batch_size=batch_size, learning_rate=1e-4)
    chunk = population.scan_chunk(run.steps)
    base = init_variables(jax.random.key(0), model, data.input_shape)  # values do not matter
    # sequential runs one member at a time on one device; vmap of a single member is the sequential program
    candidates = [(1, "sequential")] if "sequential" in strategies else []
    candidates += [(size, strategy) for size in populations for strategy in strategies
                   if strategy == "scan" or strategy == "vmap" and size > 1]
    measurements = []
    for size, strategy in candidates:
        bits = np.full((size, len(table)), 8.0, np.float32)
        widths = np.ones((size, len(table)), np.float32)
        seconds = _step_seconds(model, base, run, data.augmentation, bits, widths, strategy=strategy, chunk=chunk,
                                mesh=mesh, repeats=repeats)
        per_hour = 3600.0 * size / (seconds * steps_per_configuration)
        measurements.append({"population": size, "strategy": strategy, "seconds_per_step": seconds,
                             "configurations_per_hour": per_hour})
    if not measurements:
        raise ValueError("no strategy to measure: give at least one population size and strategy")
    best = max(m["configurations_per_hour"] for m in measurements)
    good = [m for m in measurements if m["configurations_per_hour"] >= (1 - tolerance) * best]
    pick = min(good, key=lambda m: (m["population"], -m["configurations_per_hour"]))
    return Choice(pick["population"], pick["strategy"], tuple(measurements), fit)


def _time_steps(call: Callable[[], object], repeats: int) -> float:
    """Median seconds of ``call()`` (which blocks) over ``repeats`` calls, after one warm-up call (the compilation)."""
    call()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def _step_seconds(model: Model, variables, run: feed.Feed, augmentation: str | None, bits, widths, *,
                  strategy: str, chunk: int, mesh: Mesh, repeats: int) -> float:
    """Median seconds of one training step of a whole population under ``strategy``.

    Args:
        model: the masked quantised model.
        variables: one member's variables (every member starts from them).
        run: the steps to take (a `mpqjax.training.feed.Feed`; the first ones are timed, as training runs them).
        augmentation: the dataset's augmentation.
        bits, widths: ``[P, L]`` configurations (``"sequential"`` times the first one: its members run in turn).
        strategy: one of `mpqjax.training.population.STRATEGIES`.
        chunk: steps per ``lax.scan`` of the ``"scan"`` strategy (its time is divided by them).
        mesh: devices of the population axis.
        repeats: timed calls (after one warm-up call).

    Returns:
        Seconds per step.
    """
    decay = np.float32(1e-4)
    if strategy == "sequential":
        step_fn = train.training_step(model, augmentation)
        holder = {"state": train.init_state(variables)}
        b, w = jnp.asarray(bits[0]), jnp.asarray(widths[0])

        def run_steps():
            holder["state"], loss = step_fn(holder["state"], run, b, w, decay)
            jax.block_until_ready(loss)

        return _time_steps(run_steps, repeats)
    members, replicated = member_sharding(mesh), replicated_sharding(mesh)
    holder = {"state": population.init_state(population.stack(variables, len(bits), mesh), mesh)}
    b, w = place(bits, members), place(widths, members)
    placed = jax.tree.map(lambda leaf: place(leaf, replicated), run)
    if strategy == "vmap":
        step_fn = population.vmapped_fed_step(model, mesh, augmentation)

        def run_steps():
            holder["state"], loss = step_fn(holder["state"], placed, b, w, decay)
            jax.block_until_ready(loss)

        return _time_steps(run_steps, repeats)
    scan_fn = population.scanned_steps(model, mesh, augmentation, chunk)

    def run_chunk():
        holder["state"], loss = scan_fn(holder["state"], placed, b, w, decay)
        jax.block_until_ready(loss)

    return _time_steps(run_chunk, repeats) / chunk
