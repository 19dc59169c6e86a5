"""Many configurations at once: fine-tune and evaluate a population of configurations of one model together.

A search's cost is almost all in its evaluations (a short quantisation-aware fine-tune each). A population of P
configurations of one masked model (bits traced, widths through the masked mode) shares the data batches, so it can
be trained as one program: every member has its own parameters, batch statistics, clips and optimiser state, stacked
on a leading population axis. Three strategies run the same computation:

* ``"sequential"``: the members one after another, each a Python loop over one jitted step (`mpqjax.training.train`);
* ``"vmap"``: all members at once, a Python loop over one jitted step vmapped over the population axis;
* ``"scan"``: all members at once, ``lax.scan`` over chunks of steps of the vmapped step (fewer dispatches).

They agree to float tolerance: member i of a population equals ``train.finetune(key, ..., bits=bits[i],
widths=widths[i])``. Which is fastest depends on the backend and the model (measured in docs/results.md, section
"Population training"), so `mpqjax.training.strategy.choose` measures instead of assuming
(``mpqjax search --population auto``). The population axis is sharded over the devices of
`mpqjax.training.devices.population_mesh`, padded to a multiple of their count.

Example:
    >>> variables, losses = finetune(key, float_model, float_variables, model, dataset, bits=bits, widths=widths,
    ...                              epochs=4, strategy="vmap")          # bits, widths: [P, L]
    >>> accuracies = evaluate(model, variables, dataset.validation, bits=bits, widths=widths)   # [P]
"""

from __future__ import annotations

import functools
import time

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from mpqjax.data import Dataset, Split
from mpqjax.nn.models import Model, layer_table, transfer_variables
from mpqjax.training import feed, train
from mpqjax.training.devices import (
    AXIS,
    member_sharding,
    padded_size,
    place,
    population_mesh,
    replicated_sharding,
    to_host,
)

__all__ = [
    "MAX_SCAN_CHUNK",
    "STRATEGIES",
    "calibrate",
    "check_strategy",
    "config_arrays",
    "evaluate",
    "finetune",
    "init_state",
    "predict",
    "scan_chunk",
    "scanned_steps",
    "stack",
    "train_population",
    "vmapped_fed_step",
]

STRATEGIES = ("sequential", "vmap", "scan")
MAX_SCAN_CHUNK = 32


# -- configurations -----------------------------------------------------------------------------------------------


def check_strategy(strategy: str) -> None:
    """Raise ValueError unless ``strategy`` is one of `STRATEGIES`."""
    if strategy not in STRATEGIES:
        raise ValueError(f"strategy must be one of {', '.join(STRATEGIES)}, got {strategy!r}")


def config_arrays(model: Model, bits, widths, input_shape) -> tuple[np.ndarray, np.ndarray]:
    """Validated ``[P, L]`` float32 bits and widths of a population (each row checked like one configuration).

    Raises:
        ValueError: not 2-D, rows of another length than the model's layer table, a population of 0, rows of
            different lengths (mixed model shapes), or any invalid bit-width or width.
    """
    length = len(layer_table(model, input_shape=input_shape))
    arrays = []
    for label, values in (("bits", bits), ("widths", widths)):
        try:
            values = np.asarray(values, np.float64)
        except ValueError:
            raise ValueError(f"population {label} must be a [P, L] array: its rows have different lengths "
                             f"(configurations of different models cannot share a population)") from None
        if values.ndim != 2 or values.shape[0] < 1:
            raise ValueError(f"population {label} must be a [P, L] array with P >= 1, got shape {values.shape}")
        if values.shape[1] != length:
            raise ValueError(f"population {label} rows have {values.shape[1]} entries, but model "
                             f"{model.zoo_name!r} has {length} weight layers")
        arrays.append(values)
    if arrays[0].shape[0] != arrays[1].shape[0]:
        raise ValueError(f"population bits and widths hold {arrays[0].shape[0]} and {arrays[1].shape[0]} "
                         f"configurations")
    rows = [train.config_arrays(model, b, w, input_shape) for b, w in zip(*arrays, strict=True)]
    return (np.stack([np.asarray(b) for b, _ in rows]).astype(np.float32),
            np.stack([np.asarray(w) for _, w in rows]).astype(np.float32))


def _pad(rows: np.ndarray, size: int) -> np.ndarray:
    """``rows`` [P, ...] padded to ``size`` with copies of the last row."""
    return np.concatenate([rows, np.repeat(rows[-1:], size - len(rows), axis=0)]) if size > len(rows) else rows


# -- stacked members ---------------------------------------------------------------------------------------------


def stack(variables, size: int, mesh: Mesh):
    """One variables tree repeated ``size`` times along a new leading axis, sharded over ``mesh``'s members."""
    sharding = member_sharding(mesh)
    return jax.tree.map(lambda leaf: place(np.broadcast_to(np.asarray(leaf), (size, *np.shape(leaf))), sharding),
                        variables)


def init_state(variables, mesh: Mesh) -> train.TrainState:
    """`mpqjax.training.train.init_state` of every member (stacked ``variables``), sharded over ``mesh``'s members.

    The arrays are fresh copies, so the donating steps never consume the caller's variables.
    """
    sharding = member_sharding(mesh)
    stacked = jax.tree.map(to_host, variables)
    params = stacked["params"]
    model_state = {name: value for name, value in stacked.items() if name != "params"}
    opt_state = jax.vmap(train.optimizer().init)(params)
    size = len(jax.tree.leaves(params)[0])
    state = train.TrainState(params, model_state, opt_state, np.zeros(size, np.int32))
    return jax.tree.map(lambda leaf: place(to_host(leaf), sharding), state)


# -- compiled programs (one per model, mesh and shape) ------------------------------------------------------------


def _members_step(model: Model):
    """`mpqjax.training.train.step_function` vmapped over the members (state and configurations), the batch shared."""
    return jax.vmap(train.step_function(model), in_axes=(0, None, None, 0, 0, None, None))


@functools.lru_cache(maxsize=32)
def vmapped_fed_step(model: Model, mesh: Mesh, augmentation: str | None = None):
    """The jitted step of a population that gathers its own batch (`mpqjax.training.train.fed_step_function`,
    vmapped over the members): ``(state, feed, bits, widths, weight_decay) -> (state, losses[P])``.

    The batch of the members' common step is gathered once, outside the members' vmap, so they share it. The state
    and the ``[P, L]`` configurations are sharded over ``mesh``'s population axis, the feed replicated; the state is
    donated.
    """
    members, replicated = member_sharding(mesh), replicated_sharding(mesh)
    step = _members_step(model)

    def fed_step(state, run, bits, widths, weight_decay):
        x, y, rate = feed.batch(run, state.step[0], augmentation)
        return step(state, x, y, bits, widths, rate, weight_decay)

    return jax.jit(fed_step, in_shardings=(members, replicated, members, members, replicated),
                   out_shardings=(members, members), donate_argnums=0)


@functools.lru_cache(maxsize=32)
def scanned_steps(model: Model, mesh: Mesh, augmentation: str | None = None, chunk: int = 1):
    """The jitted ``lax.scan`` of ``chunk`` population steps (`vmapped_fed_step`'s computation), for the ``"scan"``
    strategy: ``(state, feed, bits, widths, weight_decay) -> (state, losses[chunk, P])``.
    """
    members, replicated = member_sharding(mesh), replicated_sharding(mesh)
    step = _members_step(model)

    def steps(state, run, bits, widths, weight_decay):
        def body(carry, _):
            x, y, rate = feed.batch(run, carry.step[0], augmentation)
            return step(carry, x, y, bits, widths, rate, weight_decay)

        return jax.lax.scan(body, state, length=chunk)

    losses = NamedSharding(mesh, PartitionSpec(None, AXIS))
    return jax.jit(steps, in_shardings=(members, replicated, members, members, replicated),
                   out_shardings=(members, losses), donate_argnums=0)


@functools.lru_cache(maxsize=32)
def _vmapped_forward(model: Model, mesh: Mesh):
    members, replicated = member_sharding(mesh), replicated_sharding(mesh)
    forward = jax.vmap(train.forward_function(model), in_axes=(0, None, 0, 0))
    return jax.jit(forward, in_shardings=(members, replicated, members, members), out_shardings=members)


@functools.lru_cache(maxsize=32)
def _vmapped_calibration(model: Model, mesh: Mesh, method: str):
    members, replicated = member_sharding(mesh), replicated_sharding(mesh)
    stats = jax.vmap(train.calibration_function(model, method), in_axes=(0, None, 0, 0))
    return jax.jit(stats, in_shardings=(members, replicated, members, members), out_shardings=members)


def scan_chunk(steps_per_epoch: int) -> int:
    """Steps per ``lax.scan`` of the ``"scan"`` strategy: the largest divisor of the epoch's steps up to 32, so every
    chunk has one shape (one compilation) and no step is dropped."""
    return max(d for d in range(1, min(MAX_SCAN_CHUNK, steps_per_epoch) + 1) if steps_per_epoch % d == 0)


# -- fine-tune and evaluate ---------------------------------------------------------------------------------------


def train_population(key, model: Model, variables, data: Dataset | Split, *, bits, widths, epochs: int,
                     batch_size: int = 64, learning_rate: float = 1e-3, weight_decay: float = 1e-4,
                     strategy: str = "vmap", mesh: Mesh | None = None):
    """Train every member of a population from its own variables on the same batches.

    Member i is `mpqjax.training.train.train` of ``variables[i]`` at ``bits[i]``, ``widths[i]``.

    Args:
        key: PRNG key of the data order and augmentation (shared by the members).
        model: a masked zoo model.
        variables: stacked variables, every leaf ``[P, ...]`` (e.g. from `finetune`'s calibration).
        data, epochs, batch_size, learning_rate, weight_decay: as `mpqjax.training.train.train`.
        bits, widths: ``[P, L]`` configurations (`config_arrays`; any numeric dtype, used as float32).
        strategy: ``"vmap"`` or ``"scan"`` (``"sequential"`` runs `mpqjax.training.train.train` per member).
        mesh: devices of the population axis (default `population_mesh`); P must be a multiple of its size.

    Returns:
        ``(variables, losses)``: stacked trained variables (global arrays sharded over ``mesh``) and the losses
        ``[P, steps]`` (NumPy).
    """
    check_strategy(strategy)
    mesh = population_mesh() if mesh is None else mesh
    size = len(bits)
    if size % mesh.devices.size:
        raise ValueError(f"population of {size} does not divide over {mesh.devices.size} devices; pad it "
                         f"(mpqjax.training.devices.padded_size)")
    if strategy == "sequential":
        trained, losses = [], []
        for index in range(size):
            member = jax.tree.map(lambda leaf, i=index: to_host(leaf)[i], variables)
            member, member_losses = train.train(key, model, member, data, epochs=epochs, batch_size=batch_size,
                                                learning_rate=learning_rate, weight_decay=weight_decay,
                                                bits=bits[index], widths=widths[index])
            trained.append(member)
            losses.append(member_losses)
        stacked = jax.tree.map(lambda *leaves: place(np.stack([np.asarray(v) for v in leaves]), member_sharding(mesh)),
                               *trained)
        return stacked, np.stack(losses)
    members, replicated = member_sharding(mesh), replicated_sharding(mesh)
    state = init_state(variables, mesh)
    # float32 whatever was given (int lists, int64): one compiled step for every form
    bits_placed, widths_placed = place(train.as_float32(bits), members), place(train.as_float32(widths), members)
    run = feed.plan(key, data, epochs=epochs, batch_size=batch_size, learning_rate=learning_rate)
    run = jax.tree.map(lambda leaf: place(leaf, replicated), run)  # the examples stay on the device
    augmentation = data.augmentation if isinstance(data, Dataset) else None
    decay = place(np.float32(weight_decay), replicated)
    losses = []
    if strategy == "vmap":
        step_fn = vmapped_fed_step(model, mesh, augmentation)
        for _ in range(run.steps):
            state, loss = step_fn(state, run, bits_placed, widths_placed, decay)
            losses.append(loss)
        losses = to_host(jax.numpy.stack(losses, axis=1))
    else:
        chunk = scan_chunk(run.steps // epochs)
        scan_fn = scanned_steps(model, mesh, augmentation, chunk)
        for _ in range(0, run.steps, chunk):
            state, loss = scan_fn(state, run, bits_placed, widths_placed, decay)
            losses.append(loss)
        losses = to_host(jax.numpy.concatenate(losses, axis=0)).T
    return train.state_variables(state), np.asarray(losses, np.float32)


def calibrate(model: Model, variables, x, *, bits, widths, method: str = "mse", batch_size: int = 256,
              num_batches: int = 4, mesh: Mesh | None = None):
    """`mpqjax.training.train.calibrate` of every member of a population, each at its own bits and widths.

    Args:
        model: the masked quantised model.
        variables: stacked variables, every leaf ``[P, ...]``.
        x: the examples to calibrate on.
        bits, widths: ``[P, L]`` configurations (`config_arrays`; any numeric dtype, used as float32).
        method, batch_size, num_batches: as `mpqjax.training.train.calibrate`.
        mesh: devices of the population axis (default every device).

    Returns:
        The stacked variables with every member's clips.
    """
    if method not in train.CALIBRATION_COLUMNS:
        raise ValueError(f"calibration method must be one of {tuple(train.CALIBRATION_COLUMNS)}, got {method!r}")
    if not model.quantize:
        return variables
    mesh = population_mesh() if mesh is None else mesh
    members, replicated = member_sharding(mesh), replicated_sharding(mesh)
    clips_fn = _vmapped_calibration(model, mesh, method)
    return train.calibrate_with(
        lambda v, batch, b, w: clips_fn(v, place(batch, replicated), b, w), model, variables, x,
        place(train.as_float32(bits), members), place(train.as_float32(widths), members), batch_size=batch_size,
        num_batches=num_batches, to_device=lambda clips: place(clips, members))


def finetune(key, float_model: Model, float_variables, model: Model, data: Dataset, *, bits, widths,
             epochs: int = 4, batch_size: int = 64, learning_rate: float = 1e-3, calibration: str = "mse",
             weight_decay: float = 1e-4, strategy: str = "vmap", mesh: Mesh | None = None, timed: bool = False):
    """`mpqjax.training.train.finetune` of every configuration of a population, together.

    The float weights are transferred once (a masked model's transfer does not depend on the widths), every member
    is calibrated at its own bits and widths, and the members are trained on the same batches. Member i equals
    ``train.finetune(key, float_model, float_variables, model, data, bits=bits[i], widths=widths[i], ...)`` to
    float tolerance, whatever the strategy.

    Args:
        key: PRNG key (shared by the members, as one `mpqjax.training.train.finetune` call).
        float_model, float_variables: the trained width-1 float model.
        model: the masked quantised model.
        data: the dataset (its train split).
        bits, widths: ``[P, L]`` per-member bit-widths and width multipliers. P is padded to a multiple of the
            mesh's device count with copies of the last member (dropped from the results).
        epochs, batch_size, learning_rate, calibration, weight_decay: as `mpqjax.training.train.finetune`.
        strategy: ``"sequential"``, ``"vmap"`` or ``"scan"`` (see the module docstring).
        mesh: devices of the population axis (default: every device).
        timed: also return the seconds spent in training steps (the rest is transfer and calibration).

    Returns:
        ``(variables, losses)``: stacked variables of the P members (leading axis P, NumPy) and losses ``[P, steps]``;
        ``(variables, losses, training_seconds)`` when ``timed``.

    Raises:
        ValueError: a bad strategy or calibration method, bits/widths that are not valid ``[P, L]`` configurations
            of ``model`` (see `config_arrays`).
    """
    check_strategy(strategy)
    mesh = population_mesh() if mesh is None else mesh
    bits, widths = config_arrays(model, bits, widths, data.input_shape)
    size = len(bits)
    padded = padded_size(size, mesh)
    bits, widths = _pad(bits, padded), _pad(widths, padded)
    training_seconds = 0.0
    if strategy == "sequential":  # exactly the one-by-one path
        runs = []
        for member_bits, member_widths in zip(bits[:size], widths[:size], strict=True):
            start, train_key = train.finetune_start(key, float_model, float_variables, model, data, bits=member_bits,
                                                    widths=member_widths, calibration=calibration)
            started = time.perf_counter()
            runs.append(train.train(train_key, model, start, data, epochs=epochs, batch_size=batch_size,
                                    learning_rate=learning_rate, weight_decay=weight_decay, bits=member_bits,
                                    widths=member_widths))
            training_seconds += time.perf_counter() - started
        stacked = jax.tree.map(lambda *leaves: np.stack([np.asarray(leaf) for leaf in leaves]), *[v for v, _ in runs])
        losses = np.stack([member_losses for _, member_losses in runs])
    else:
        transfer_key, train_key = jax.random.split(key)
        base = transfer_variables(transfer_key, model, float_model, float_variables, input_shape=data.input_shape)
        variables = stack(base, padded, mesh)
        variables = calibrate(model, variables, data.train.x, bits=bits, widths=widths, method=calibration,
                              mesh=mesh)
        started = time.perf_counter()
        variables, losses = train_population(train_key, model, variables, data, bits=bits, widths=widths,
                                             epochs=epochs, batch_size=batch_size, learning_rate=learning_rate,
                                             weight_decay=weight_decay, strategy=strategy, mesh=mesh)
        training_seconds = time.perf_counter() - started  # the losses are on the host: the steps are done
        stacked, losses = jax.tree.map(lambda leaf: to_host(leaf)[:size], variables), losses[:size]
    return (stacked, losses, training_seconds) if timed else (stacked, losses)


def predict(model: Model, variables, x, *, bits, widths, batch_size: int = 512, mesh: Mesh | None = None):
    """Logits ``[P, N, C]`` of every member of a population for ``x`` (batch norm in inference mode)."""
    mesh = population_mesh() if mesh is None else mesh
    bits, widths = config_arrays(model, bits, widths, x.shape[1:])
    size = len(bits)
    padded = padded_size(size, mesh)
    members, replicated = member_sharding(mesh), replicated_sharding(mesh)
    variables = jax.tree.map(lambda leaf: place(_pad(to_host(leaf), padded), members), variables)
    forward = _vmapped_forward(model, mesh)
    logits = train.logits_in_batches(lambda v, batch, b, w: forward(v, place(batch, replicated), b, w), variables,
                                     x, place(_pad(bits, padded), members), place(_pad(widths, padded), members),
                                     batch_size=batch_size, to_host=to_host)
    return logits[:size]


def evaluate(model: Model, variables, split: Split, *, bits, widths, batch_size: int = 512,
             mesh: Mesh | None = None) -> np.ndarray:
    """Top-1 accuracy ``[P]`` of every member of a population on ``split``."""
    logits = predict(model, variables, split.x, bits=bits, widths=widths, batch_size=batch_size, mesh=mesh)
    return np.mean(np.argmax(logits, axis=-1) == np.asarray(split.y)[None], axis=1)
