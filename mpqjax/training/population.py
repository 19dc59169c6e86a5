"""Many configurations at once: fine-tune and evaluate a population of configurations of one model together.

A search's cost is almost all in its evaluations (a short quantisation-aware fine-tune each). A population of P
configurations of one masked model (bits traced, widths through the masked mode) shares the data batches, so it can
be trained as one program: every member has its own parameters, batch statistics, clips and optimiser state, stacked
on a leading population axis. Three strategies run the same computation:

* ``"sequential"``: the members one after another, each a Python loop over one jitted step (`mpqjax.training.train`);
* ``"vmap"``: all members at once, a Python loop over one jitted step vmapped over the population axis;
* ``"scan"``: all members at once, ``lax.scan`` over chunks of steps of the vmapped step (fewer dispatches).

They agree to float tolerance: member i of a population equals ``train.finetune(key, ..., bits=bits[i],
widths=widths[i])``. Which is fastest depends on the backend and the model: on a 2-core CPU a Python loop over a
jitted step beat ``lax.scan`` about 11x and vmapping convolutional configurations was slower than running them in
turn, while a GPU runs small models far below its capacity one at a time. `choose` measures instead of assuming
(``mpqjax search --population auto``).

Devices: the population axis is sharded over a 1-D `jax.sharding.Mesh` of every device (`population_mesh`; after
`initialize_distributed` that is every device of every process, and each process feeds the same batches and gathers
every result). A population whose size is not a multiple of the device count is padded with copies of its last
member, whose results are dropped (`padded_size`). `max_population` computes how many members fit in device
memory from the compiled training step.

Example:
    >>> variables, losses = finetune(key, float_model, float_variables, model, dataset, bits=bits, widths=widths,
    ...                              epochs=4, strategy="vmap")          # bits, widths: [P, L]
    >>> accuracies = evaluate(model, variables, dataset.validation, bits=bits, widths=widths)   # [P]
"""

from __future__ import annotations

import dataclasses
import functools
import os
import time
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from mpqjax.data import Dataset, Split
from mpqjax.nn.models import QModel, init_variables, transfer_variables
from mpqjax.nn.models.core import trace
from mpqjax.training import train

STRATEGIES = ("sequential", "vmap", "scan")
AXIS = "population"
MEMORY_FRACTION = 0.8  # of the free device memory a population may take (XLA needs room of its own)
MAX_SCAN_CHUNK = 32


# -- devices ------------------------------------------------------------------------------------------------------


def population_mesh(devices: Sequence[jax.Device] | None = None) -> Mesh:
    """A 1-D mesh with axis ``"population"`` over ``devices`` (default: every device of every process)."""
    devices = list(jax.devices() if devices is None else devices)
    if not devices:
        raise ValueError("population_mesh needs at least one device")
    return Mesh(np.asarray(devices), (AXIS,))


def initialize_distributed(coordinator_address: str | None = None, num_processes: int | None = None,
                           process_id: int | None = None) -> tuple[int, int]:
    """Join a multi-process run (`jax.distributed.initialize`) before any JAX computation; returns
    ``(process_index, process_count)``.

    With no arguments the cluster is detected (Slurm, Open MPI, Cloud TPU, Kubernetes); elsewhere give all three:
    process 0 runs the coordinator at ``coordinator_address`` ("host:port") and every process gets its index. After
    it, `population_mesh` spans every process's devices. On CPU devices the processes exchange arrays through Gloo
    (JAX's default CPU collectives).

    Example (two processes on one machine, one per shell)::

        initialize_distributed("localhost:12355", 2, 0)      # and ("localhost:12355", 2, 1) in the other

    Raises:
        ValueError: only some of the three arguments, a process id outside ``[0, num_processes)``, an address
            without a port, no cluster detected, or a failed start (JAX's message on one line).
    """
    given = [value is not None for value in (coordinator_address, num_processes, process_id)]
    if any(given) and not all(given):
        raise ValueError("a distributed run needs all of coordinator address, number of processes and process id, "
                         "or none of them (cluster auto-detection)")
    if all(given):
        host, _, port = str(coordinator_address).rpartition(":")
        if not host or not port.isdigit():
            raise ValueError(f"coordinator address must be host:port, got {coordinator_address!r}")
        if int(num_processes) < 1 or not 0 <= int(process_id) < int(num_processes):
            raise ValueError(f"process id must be in [0, {num_processes}) with at least 1 process, got process "
                             f"{process_id} of {num_processes}")
    try:
        jax.distributed.initialize(coordinator_address, num_processes, process_id)
    except (RuntimeError, ValueError) as error:
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        hint = "" if all(given) else " (no cluster detected: give the coordinator address, process count and id)"
        raise ValueError(f"jax.distributed.initialize failed: {first_line}{hint}") from None
    return jax.process_index(), jax.process_count()


def padded_size(size: int, mesh: Mesh) -> int:
    """The population size actually run: ``size`` rounded up to a multiple of the mesh's device count."""
    devices = mesh.devices.size
    return -(-size // devices) * devices


def _members(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec(AXIS))


def _replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec())


def _place(value, sharding: NamedSharding) -> jax.Array:
    """A host value as a global array with ``sharding`` (every process holds the whole value: multi-host safe)."""
    value = np.asarray(value)
    return jax.make_array_from_callback(value.shape, sharding, lambda index: value[index])


def _to_host(array) -> np.ndarray:
    """A (possibly multi-host) global array as one NumPy array on every process."""
    if jax.process_count() > 1 and isinstance(array, jax.Array) and not array.is_fully_addressable:
        from jax.experimental import multihost_utils

        return np.asarray(multihost_utils.process_allgather(array, tiled=True))
    return np.asarray(array)


# -- configurations -----------------------------------------------------------------------------------------------


def config_arrays(model: QModel, bits, widths, input_shape) -> tuple[np.ndarray, np.ndarray]:
    """Validated ``[P, L]`` float32 bits and widths of a population (each row checked like one configuration).

    Raises:
        ValueError: not 2-D, rows of another length than the model's layer table, a population of 0, rows of
            different lengths (mixed model shapes), or any invalid bit-width or width.
    """
    if model.widths is not None:
        raise ValueError("a population needs a masked model (widths=None); materialised models have one width")
    length = len(trace(model, input_shape=input_shape)[0])
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
    rows = [train._config_arrays(model, b, w, input_shape) for b, w in zip(*arrays, strict=True)]
    return (np.stack([np.asarray(b) for b, _ in rows]).astype(np.float32),
            np.stack([np.asarray(w) for _, w in rows]).astype(np.float32))


def _pad(rows: np.ndarray, size: int) -> np.ndarray:
    """``rows`` [P, ...] padded to ``size`` with copies of the last row."""
    return np.concatenate([rows, np.repeat(rows[-1:], size - len(rows), axis=0)]) if size > len(rows) else rows


# -- compiled programs (one per model, mesh and shape) ------------------------------------------------------------


@functools.lru_cache(maxsize=32)
def _vmapped_step(model: QModel, mesh: Mesh):
    members, replicated = _members(mesh), _replicated(mesh)
    step = jax.vmap(train.step_function(model), in_axes=(0, None, None, 0, 0, None, None))
    return jax.jit(step, in_shardings=(members, replicated, replicated, members, members, replicated, replicated),
                   out_shardings=(members, members), donate_argnums=0)


@functools.lru_cache(maxsize=32)
def _scanned_steps(model: QModel, mesh: Mesh):
    """``(state, xs[S, B...], ys[S, B], bits, widths, rates[S], weight_decay) -> (state, losses[S, P])``."""
    members, replicated = _members(mesh), _replicated(mesh)
    step = jax.vmap(train.step_function(model), in_axes=(0, None, None, 0, 0, None, None))

    def steps(state, xs, ys, bits, widths, rates, weight_decay):
        def body(carry, inputs):
            x, y, rate = inputs
            return step(carry, x, y, bits, widths, rate, weight_decay)

        return jax.lax.scan(body, state, (xs, ys, rates))

    losses = NamedSharding(mesh, PartitionSpec(None, AXIS))
    return jax.jit(steps, in_shardings=(members, replicated, replicated, members, members, replicated, replicated),
                   out_shardings=(members, losses), donate_argnums=0)


@functools.lru_cache(maxsize=32)
def _vmapped_forward(model: QModel, mesh: Mesh):
    members, replicated = _members(mesh), _replicated(mesh)
    forward = jax.vmap(train.forward_function(model), in_axes=(0, None, 0, 0))
    return jax.jit(forward, in_shardings=(members, replicated, members, members), out_shardings=members)


@functools.lru_cache(maxsize=32)
def _vmapped_calibration(model: QModel, mesh: Mesh):
    members, replicated = _members(mesh), _replicated(mesh)
    stats = jax.vmap(train.calibration_function(model), in_axes=(0, None, 0, 0))
    return jax.jit(stats, in_shardings=(members, replicated, members, members), out_shardings=members)


def scan_chunk(steps_per_epoch: int) -> int:
    """Steps per ``lax.scan`` of the ``"scan"`` strategy: the largest divisor of the epoch's steps up to 32, so every
    chunk has one shape (one compilation) and no step is dropped."""
    return max(d for d in range(1, min(MAX_SCAN_CHUNK, steps_per_epoch) + 1) if steps_per_epoch % d == 0)


# -- fine-tune and evaluate ---------------------------------------------------------------------------------------


def _check_strategy(strategy: str) -> None:
    if strategy not in STRATEGIES:
        raise ValueError(f"strategy must be one of {', '.join(STRATEGIES)}, got {strategy!r}")


def _stack(variables, size: int, sharding: NamedSharding):
    """One variables tree repeated ``size`` times along a new leading axis, placed with ``sharding``."""
    return jax.tree.map(lambda leaf: _place(np.broadcast_to(np.asarray(leaf), (size, *np.shape(leaf))), sharding),
                        variables)


def train_population(key, model: QModel, variables, data: Dataset | Split, *, bits, widths, epochs: int,
                     batch_size: int = 64, learning_rate: float = 1e-3, weight_decay: float = 1e-4,
                     strategy: str = "vmap", mesh: Mesh | None = None):
    """Train every member of a population from its own variables on the same batches (`mpqjax.training.train.train`
    each).

    Args:
        key: PRNG key of the data order and augmentation (shared by the members).
        model: a masked zoo model.
        variables: stacked variables, every leaf ``[P, ...]`` (e.g. from `finetune`'s calibration).
        data, epochs, batch_size, learning_rate, weight_decay: as `mpqjax.training.train.train`.
        bits, widths: ``[P, L]`` configurations (`config_arrays`).
        strategy: ``"vmap"`` or ``"scan"`` (``"sequential"`` runs `mpqjax.training.train.train` per member).
        mesh: devices of the population axis (default `population_mesh`); P must be a multiple of its size.

    Returns:
        ``(variables, losses)``: stacked trained variables (global arrays sharded over ``mesh``) and the losses
        ``[P, steps]`` (NumPy).
    """
    _check_strategy(strategy)
    mesh = population_mesh() if mesh is None else mesh
    size = len(bits)
    if size % mesh.devices.size:
        raise ValueError(f"population of {size} does not divide over {mesh.devices.size} devices; pad it "
                         f"(population.padded_size)")
    if strategy == "sequential":
        trained, losses = [], []
        for index in range(size):
            member = jax.tree.map(lambda leaf, i=index: _to_host(leaf)[i], variables)
            member, member_losses = train.train(key, model, member, data, epochs=epochs, batch_size=batch_size,
                                                learning_rate=learning_rate, weight_decay=weight_decay,
                                                bits=bits[index], widths=widths[index])
            trained.append(member)
            losses.append(member_losses)
        stacked = jax.tree.map(lambda *leaves: _place(np.stack([np.asarray(v) for v in leaves]), _members(mesh)),
                               *trained)
        return stacked, np.stack(losses)
    members, replicated = _members(mesh), _replicated(mesh)
    state = _population_state(variables, members)
    bits_placed, widths_placed = _place(bits, members), _place(widths, members)
    steps = list(train.schedule(key, data, epochs=epochs, batch_size=batch_size, learning_rate=learning_rate))
    losses = []
    if strategy == "vmap":
        step_fn = _vmapped_step(model, mesh)
        for x, y, rate in steps:
            state, loss = step_fn(state, _place(x, replicated), _place(y, replicated), bits_placed, widths_placed,
                                  rate, weight_decay)
            losses.append(loss)
        losses = np.stack([_to_host(loss) for loss in losses], axis=1)
    else:
        split = data.train if isinstance(data, Dataset) else data
        chunk = scan_chunk(len(split) // batch_size)
        scan_fn = _scanned_steps(model, mesh)
        for start in range(0, len(steps), chunk):
            xs, ys, rates = (np.stack(column) for column in zip(*steps[start : start + chunk], strict=True))
            state, loss = scan_fn(state, _place(xs, replicated), _place(ys, replicated), bits_placed, widths_placed,
                                  _place(rates.astype(np.float32), replicated), weight_decay)
            losses.append(loss)
        losses = np.concatenate([_to_host(loss) for loss in losses], axis=0).T
    return train.state_variables(state), np.asarray(losses, np.float32)


def _population_state(variables, sharding: NamedSharding) -> train.TrainState:
    """`mpqjax.training.train.init_state` of every member (stacked ``variables``), placed with ``sharding``.

    The arrays are fresh copies, so the donating steps never consume the caller's variables.
    """
    stacked = jax.tree.map(_to_host, variables)
    params = stacked["params"]
    model_state = {name: value for name, value in stacked.items() if name != "params"}
    opt_state = jax.vmap(train.optimizer().init)(params)
    size = len(jax.tree.leaves(params)[0])
    state = train.TrainState(params, model_state, opt_state, np.zeros(size, np.int32))
    return jax.tree.map(lambda leaf: _place(_to_host(leaf), sharding), state)


def calibrate(model: QModel, variables, x, *, bits, widths, method: str = "mse", batch_size: int = 256,
              num_batches: int = 4, mesh: Mesh | None = None):
    """`mpqjax.training.train.calibrate` for every member of a population (stacked ``variables``, ``[P, L]``
    bits/widths)."""
    if method not in train.CALIBRATION_COLUMNS:
        raise ValueError(f"calibration method must be one of {tuple(train.CALIBRATION_COLUMNS)}, got {method!r}")
    if not model.quantize:
        return variables
    mesh = population_mesh() if mesh is None else mesh
    members, replicated = _members(mesh), _replicated(mesh)
    stats_fn = _vmapped_calibration(model, mesh)
    return train.calibrate_with(
        lambda v, batch, b, w: stats_fn(v, _place(batch, replicated), b, w), model, variables, x,
        _place(bits, members), _place(widths, members), method=method, batch_size=batch_size,
        num_batches=num_batches, to_host=_to_host, to_device=lambda clips: _place(clips, members))


def finetune(key, float_model: QModel, float_variables, model: QModel, data: Dataset, *, bits, widths,
             epochs: int = 4, batch_size: int = 64, learning_rate: float = 1e-3, calibration: str = "mse",
             weight_decay: float = 1e-4, strategy: str = "vmap", mesh: Mesh | None = None):
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

    Returns:
        ``(variables, losses)``: stacked variables of the P members (leading axis P, NumPy) and losses ``[P, steps]``.

    Raises:
        ValueError: a bad strategy or calibration method, bits/widths that are not valid ``[P, L]`` configurations
            of ``model`` (see `config_arrays`).
    """
    _check_strategy(strategy)
    mesh = population_mesh() if mesh is None else mesh
    bits, widths = config_arrays(model, bits, widths, data.input_shape)
    size = len(bits)
    padded = padded_size(size, mesh)
    bits, widths = _pad(bits, padded), _pad(widths, padded)
    if strategy == "sequential":  # exactly the one-by-one path
        runs = [train.finetune(key, float_model, float_variables, model, data, bits=b, widths=w, epochs=epochs,
                               batch_size=batch_size, learning_rate=learning_rate, calibration=calibration,
                               weight_decay=weight_decay) for b, w in zip(bits[:size], widths[:size], strict=True)]
        stacked = jax.tree.map(lambda *leaves: np.stack([np.asarray(leaf) for leaf in leaves]), *[v for v, _ in runs])
        return stacked, np.stack([losses for _, losses in runs])
    transfer_key, train_key = jax.random.split(key)
    base = transfer_variables(transfer_key, model, float_model, float_variables, input_shape=data.input_shape)
    variables = _stack(base, padded, _members(mesh))
    variables = calibrate(model, variables, data.train.x, bits=bits, widths=widths, method=calibration, mesh=mesh)
    variables, losses = train_population(train_key, model, variables, data, bits=bits, widths=widths, epochs=epochs,
                                         batch_size=batch_size, learning_rate=learning_rate,
                                         weight_decay=weight_decay, strategy=strategy, mesh=mesh)
    return jax.tree.map(lambda leaf: _to_host(leaf)[:size], variables), losses[:size]


def predict(model: QModel, variables, x, *, bits, widths, batch_size: int = 512, mesh: Mesh | None = None):
    """Logits ``[P, N, C]`` of every member of a population for ``x`` (batch norm in inference mode)."""
    mesh = population_mesh() if mesh is None else mesh
    bits, widths = config_arrays(model, bits, widths, x.shape[1:])
    size = len(bits)
    padded = padded_size(size, mesh)
    members, replicated = _members(mesh), _replicated(mesh)
    variables = jax.tree.map(lambda leaf: _place(_pad(_to_host(leaf), padded), members), variables)
    forward = _vmapped_forward(model, mesh)
    logits = train.logits_in_batches(lambda v, batch, b, w: forward(v, _place(batch, replicated), b, w), variables,
                                     x, _place(_pad(bits, padded), members), _place(_pad(widths, padded), members),
                                     batch_size=batch_size, to_host=_to_host)
    return logits[:size]


def evaluate(model: QModel, variables, split: Split, *, bits, widths, batch_size: int = 512,
             mesh: Mesh | None = None) -> np.ndarray:
    """Top-1 accuracy ``[P]`` of every member of a population on ``split``."""
    logits = predict(model, variables, split.x, bits=bits, widths=widths, batch_size=batch_size, mesh=mesh)
    return np.mean(np.argmax(logits, axis=-1) == split.y[None], axis=1)


# -- memory ---------------------------------------------------------------------------------------------------------


def member_memory_bytes(model: QModel, input_shape, *, batch_size: int) -> int:
    """Device memory one configuration's training step needs: arguments + outputs + temporaries of the compiled
    step (XLA's own accounting; the same compilation serves the sequential strategy afterwards)."""
    table = trace(model, input_shape=input_shape)[0]
    state = train.init_state(_initial_variables(model, tuple(input_shape)))
    abstract = jax.tree.map(lambda leaf: jax.ShapeDtypeStruct(leaf.shape, leaf.dtype), state)
    x = jax.ShapeDtypeStruct((batch_size, *input_shape), jnp.float32)
    y = jax.ShapeDtypeStruct((batch_size,), jnp.int32)
    config = jax.ShapeDtypeStruct((len(table),), jnp.float32)
    compiled = train.train_step(model).lower(abstract, x, y, config, config, 1e-3, 1e-4).compile()
    stats = compiled.memory_analysis()
    if stats is None:  # a backend without memory accounting: count the state and assume 8x it in temporaries
        return int(9 * sum(leaf.size * leaf.dtype.itemsize for leaf in jax.tree.leaves(abstract)))
    return int(stats.argument_size_in_bytes + stats.output_size_in_bytes + stats.temp_size_in_bytes)


def _initial_variables(model: QModel, input_shape: tuple[int, ...]):
    """Variables of the right shapes for measuring (values do not matter)."""
    return init_variables(jax.random.key(0), model, input_shape)


def free_memory_bytes(mesh: Mesh | None = None) -> tuple[int, str]:
    """Free memory for a population over ``mesh`` and where it is: the sum over accelerators of their free memory,
    or the host's available memory when the devices are CPUs (they share it)."""
    mesh = population_mesh() if mesh is None else mesh
    devices = list(mesh.devices.flat)
    if devices[0].platform == "cpu":
        return _host_available_bytes(), "host memory"
    total = 0
    for device in devices:
        stats = device.memory_stats() or {}
        if "bytes_limit" not in stats:
            return _host_available_bytes(), "host memory (the device reports none)"
        total += stats["bytes_limit"] - stats.get("bytes_in_use", 0)
    return total, f"memory of {len(devices)} {devices[0].platform.upper()} device(s)"


def _host_available_bytes() -> int:
    try:
        with open("/proc/meminfo") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES")


def max_population(model: QModel, input_shape, *, batch_size: int, mesh: Mesh | None = None,
                   memory_bytes: int | None = None, minimum: int = 1) -> int:
    """The largest population that fits: ``MEMORY_FRACTION`` of the free memory over one member's need, rounded down
    to a multiple of the device count.

    Args:
        model, input_shape, batch_size: the training step (`member_memory_bytes`).
        mesh: the devices (default every device).
        memory_bytes: the memory to plan with (default `free_memory_bytes`).
        minimum: the population that must fit (padded to the device count).

    Raises:
        ValueError: fewer than ``minimum`` configurations fit (at P = 1: not even one), with the figures and what to
            lower.
    """
    mesh = population_mesh() if mesh is None else mesh
    where = "the given memory"
    if memory_bytes is None:
        memory_bytes, where = free_memory_bytes(mesh)
    need = member_memory_bytes(model, input_shape, batch_size=batch_size)
    devices = mesh.devices.size
    fits = int(MEMORY_FRACTION * memory_bytes // need) // devices * devices
    required = padded_size(minimum, mesh)
    if fits < required:
        what = "one configuration" if required == 1 else f"a population of {required}"
        raise ValueError(f"{what} of {model.zoo_name} at batch size {batch_size} does not fit: each needs "
                         f"{need / 2**20:.1f} MiB and {MEMORY_FRACTION:.0%} of {where} ({memory_bytes / 2**20:.1f} "
                         f"MiB over {devices} device(s)) holds {fits}; lower the population or the batch size")
    return fits


# -- choosing a strategy ------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Choice:
    """What `choose` picked and why.

    Attributes:
        population: members trained together.
        strategy: ``"sequential"``, ``"vmap"`` or ``"scan"``.
        measurements: one dict per candidate: ``population``, ``strategy``, ``seconds_per_step`` (the whole
            population's) and ``configurations_per_hour`` at the calibration's fine-tune length.
        max_population: the memory bound (`max_population`).
    """

    population: int
    strategy: str
    measurements: tuple[dict, ...]
    max_population: int

    def to_dict(self) -> dict:
        return {"population": self.population, "strategy": self.strategy, "max_population": self.max_population,
                "measurements": [dict(m) for m in self.measurements]}


def _time_steps(run_steps, repeats: int) -> float:
    """Median seconds of ``run_steps()`` (which blocks) after one warm-up call (the compilation)."""
    run_steps()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run_steps()
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def choose(model: QModel, data: Dataset, *, batch_size: int, steps_per_configuration: int,
           populations: Sequence[int] | None = None, strategies: Sequence[str] = STRATEGIES,
           max_size: int | None = None,
           mesh: Mesh | None = None, memory_bytes: int | None = None, tolerance: float = 0.1,
           repeats: int = 3) -> Choice:
    """Measure the strategies on a few training steps and pick the population size and strategy of the highest
    configurations-per-hour throughput (the smallest population within ``tolerance`` of the best: a smaller
    population is proposed by a better-informed optimiser).

    Args:
        model: the masked quantised model; ``data`` the dataset (its first batches are used).
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
    """
    for strategy in strategies:
        _check_strategy(strategy)
    mesh = population_mesh() if mesh is None else mesh
    fit = max_population(model, data.input_shape, batch_size=batch_size, mesh=mesh, memory_bytes=memory_bytes)
    cap = fit if max_size is None else min(fit, max_size)
    if populations is None:
        populations = sorted({min(size, cap) for size in (1, 4, 16)})
    populations = sorted({padded_size(size, mesh) for size in populations if size >= 1 and size <= max(cap, 1)})
    table = trace(model, input_shape=data.input_shape)[0]
    split = data.train
    steps_per_epoch = len(split) // batch_size
    chunk = scan_chunk(steps_per_epoch)
    x, y = split.x[:batch_size], split.y[:batch_size]
    base = _initial_variables(model, data.input_shape)
    # sequential runs one member at a time on one device; vmap of a single member is the sequential program
    candidates = [(1, "sequential")] if "sequential" in strategies else []
    candidates += [(size, strategy) for size in populations for strategy in strategies
                   if strategy == "scan" or strategy == "vmap" and size > 1]
    measurements = []
    for size, strategy in candidates:
        bits = np.full((size, len(table)), 8.0, np.float32)
        widths = np.ones((size, len(table)), np.float32)
        seconds = _step_seconds(model, base, x, y, bits, widths, strategy, chunk, mesh, repeats)
        per_hour = 3600.0 * size / (seconds * steps_per_configuration)
        measurements.append({"population": size, "strategy": strategy, "seconds_per_step": seconds,
                             "configurations_per_hour": per_hour})
    if not measurements:
        raise ValueError("no strategy to measure: give at least one population size and strategy")
    best = max(m["configurations_per_hour"] for m in measurements)
    good = [m for m in measurements if m["configurations_per_hour"] >= (1 - tolerance) * best]
    pick = min(good, key=lambda m: (m["population"], -m["configurations_per_hour"]))
    return Choice(pick["population"], pick["strategy"], tuple(measurements), fit)


def _step_seconds(model, base, x, y, bits, widths, strategy, chunk, mesh, repeats) -> float:
    """Median seconds of one training step of a whole population under ``strategy``."""
    if strategy == "sequential":
        step_fn = train.train_step(model)
        holder = {"state": train.init_state(base)}
        b, w = jnp.asarray(bits[0]), jnp.asarray(widths[0])

        def run_steps():
            holder["state"], loss = step_fn(holder["state"], x, y, b, w, 1e-4, 1e-4)
            jax.block_until_ready(loss)

        return _time_steps(run_steps, repeats)
    members, replicated = _members(mesh), _replicated(mesh)
    holder = {"state": _population_state(_stack(base, len(bits), members), members)}
    b, w = _place(bits, members), _place(widths, members)
    if strategy == "vmap":
        step_fn = _vmapped_step(model, mesh)
        xp, yp = _place(x, replicated), _place(y, replicated)

        def run_steps():
            holder["state"], loss = step_fn(holder["state"], xp, yp, b, w, 1e-4, 1e-4)
            jax.block_until_ready(loss)

        return _time_steps(run_steps, repeats)
    scan_fn = _scanned_steps(model, mesh)
    xs = _place(np.broadcast_to(x, (chunk, *x.shape)), replicated)
    ys = _place(np.broadcast_to(y, (chunk, *y.shape)), replicated)
    rates = _place(np.full(chunk, 1e-4, np.float32), replicated)

    def run_chunk():
        holder["state"], loss = scan_fn(holder["state"], xs, ys, b, w, rates, 1e-4)
        jax.block_until_ready(loss)

    return _time_steps(run_chunk, repeats) / chunk
