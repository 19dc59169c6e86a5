"""Devices of a population: the mesh, multi-process runs, placement of arrays, and how many members fit in memory.

The population axis is sharded over a 1-D `jax.sharding.Mesh` of every device (`population_mesh`; after
`initialize_distributed` that is every device of every process, and each process feeds the same batches and gathers
every result). A population whose size is not a multiple of the device count is padded with copies of its last
member, whose results are dropped (`padded_size`). `max_population` computes how many members fit in device memory
from the compiled training step.

Example:
    >>> mesh = population_mesh()                   # every device
    >>> size = padded_size(3, mesh)                # 4 on 2 or 4 devices
    >>> fits = max_population(model, (8, 8, 1), batch_size=128, mesh=mesh)
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from mpqjax.nn.models import Model, init_variables, layer_table
from mpqjax.training import train

__all__ = [
    "AXIS",
    "MEMORY_FRACTION",
    "check_resident",
    "free_memory_bytes",
    "host_available_bytes",
    "initialize_distributed",
    "max_population",
    "member_memory_bytes",
    "member_sharding",
    "padded_size",
    "place",
    "population_mesh",
    "replicated_sharding",
    "to_host",
]

AXIS = "population"
MEMORY_FRACTION = 0.8  # of the free device memory a population may take (XLA needs room of its own)


# -- the mesh -----------------------------------------------------------------------------------------------------


def population_mesh(devices: Sequence[jax.Device] | None = None) -> Mesh:
    """A 1-D mesh with axis ``"population"`` over ``devices`` (default: every device of every process).

    Raises:
        ValueError: an empty ``devices``.
    """
    devices = list(jax.devices() if devices is None else devices)
    if not devices:
        raise ValueError("population_mesh needs at least one device")
    return Mesh(np.asarray(devices), (AXIS,))


def initialize_distributed(coordinator_address: str | None = None, num_processes: int | None = None,
                           process_id: int | None = None) -> tuple[int, int]:
    """Join a multi-process run (`jax.distributed.initialize`) before any JAX computation.

    With no arguments the cluster is detected (Slurm, Open MPI, Cloud TPU, Kubernetes); elsewhere give all three:
    process 0 runs the coordinator at ``coordinator_address`` ("host:port") and every process gets its index. After
    it, `population_mesh` spans every process's devices. On CPU devices the processes exchange arrays through Gloo
    (JAX's default CPU collectives).

    Args:
        coordinator_address: ``"host:port"`` of process 0's coordinator.
        num_processes: processes in the run.
        process_id: this process's index in ``[0, num_processes)``.

    Returns:
        ``(process_index, process_count)``.

    Raises:
        ValueError: only some of the three arguments, a process id outside ``[0, num_processes)``, an address
            without a port, no cluster detected, or a failed start (JAX's message on one line).

    Example (two processes on one machine, one per shell)::

        initialize_distributed("localhost:12355", 2, 0)      # and ("localhost:12355", 2, 1) in the other
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


# -- placement ----------------------------------------------------------------------------------------------------


def member_sharding(mesh: Mesh) -> NamedSharding:
    """Arrays with a leading population axis, split over the mesh's devices."""
    return NamedSharding(mesh, PartitionSpec(AXIS))


def replicated_sharding(mesh: Mesh) -> NamedSharding:
    """Arrays every member shares (batches, learning rates), whole on every device."""
    return NamedSharding(mesh, PartitionSpec())


def place(value, sharding: NamedSharding) -> jax.Array:
    """A value as a global array with ``sharding`` (every process holds the whole value: multi-host safe).

    A device array in a single process moves between devices without a trip through the host.
    """
    if isinstance(value, jax.Array) and jax.process_count() == 1:
        return jax.device_put(value, sharding)
    value = to_host(value)
    return jax.make_array_from_callback(value.shape, sharding, lambda index: value[index])


def to_host(array) -> np.ndarray:
    """A (possibly multi-host) global array as one NumPy array on every process."""
    if jax.process_count() > 1 and isinstance(array, jax.Array) and not array.is_fully_addressable:
        from jax.experimental import multihost_utils

        return np.asarray(multihost_utils.process_allgather(array, tiled=True))
    return np.asarray(array)


# -- memory ---------------------------------------------------------------------------------------------------------


def member_memory_bytes(model: Model, input_shape, *, batch_size: int) -> int:
    """Device memory one configuration's training step needs: arguments + outputs + temporaries of the compiled step.

    XLA's own accounting; the same compilation serves the sequential strategy afterwards. A backend without memory
    accounting gets the state's size times 9 (the state and 8x it in temporaries).
    """
    table = layer_table(model, input_shape=input_shape)
    state = train.init_state(init_variables(jax.random.key(0), model, tuple(input_shape)))  # values do not matter
    abstract = jax.tree.map(lambda leaf: jax.ShapeDtypeStruct(leaf.shape, leaf.dtype), state)
    x = jax.ShapeDtypeStruct((batch_size, *input_shape), jnp.float32)
    y = jax.ShapeDtypeStruct((batch_size,), jnp.int32)
    config = jax.ShapeDtypeStruct((len(table),), jnp.float32)
    compiled = train.train_step(model).lower(abstract, x, y, config, config, 1e-3, 1e-4).compile()
    stats = compiled.memory_analysis()
    if stats is None:
        return int(9 * sum(leaf.size * leaf.dtype.itemsize for leaf in jax.tree.leaves(abstract)))
    return int(stats.argument_size_in_bytes + stats.output_size_in_bytes + stats.temp_size_in_bytes)


def host_available_bytes() -> int:
    """The host's available memory (``MemAvailable`` of /proc/meminfo, else the free pages)."""
    try:
        with open("/proc/meminfo") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES")


def free_memory_bytes(mesh: Mesh | None = None) -> tuple[int, str]:
    """Free memory for a population over ``mesh`` and where it is.

    Returns:
        ``(bytes, where)``: the sum over accelerators of their free memory, or the host's available memory when the
        devices are CPUs (they share it) or an accelerator reports none.
    """
    mesh = population_mesh() if mesh is None else mesh
    devices = list(mesh.devices.flat)
    if devices[0].platform == "cpu":
        return host_available_bytes(), "host memory"
    total = 0
    for device in devices:
        stats = device.memory_stats() or {}
        if "bytes_limit" not in stats:
            return host_available_bytes(), "host memory (the device reports none)"
        total += stats["bytes_limit"] - stats.get("bytes_in_use", 0)
    return total, f"memory of {len(devices)} {devices[0].platform.upper()} device(s)"


def check_resident(dataset, *, fraction: float = 0.5) -> None:
    """Raise ValueError when a dataset's splits would take more than ``fraction`` of the default device's free
    memory: a search places them there once (`mpqjax.data.Dataset.on_device`). CPU devices share the host's memory,
    where the splits already are, and are not checked.

    Raises:
        ValueError: naming the splits' size, the free memory and what to do.
    """
    device = jax.devices()[0]
    if device.platform == "cpu":
        return
    needed = sum(split.x.nbytes + split.y.nbytes for split in (dataset.train, dataset.validation, dataset.test))
    free, where = free_memory_bytes(population_mesh([device]))
    if needed > fraction * free:
        raise ValueError(f"the dataset's splits take {needed / 2**30:.2f} GiB, more than {fraction:.0%} of the "
                         f"{free / 2**30:.2f} GiB free in the {where} that holds them during a search; use fewer "
                         f"examples (the dataset's size options) or smaller images")


def max_population(model: Model, input_shape, *, batch_size: int, mesh: Mesh | None = None,
                   memory_bytes: int | None = None, minimum: int = 1) -> int:
    """The largest population that fits: ``MEMORY_FRACTION`` of the free memory over one member's need.

    Rounded down to a multiple of the device count.

    Args:
        model, input_shape, batch_size: the training step (`member_memory_bytes`).
        mesh: the devices (default every device).
        memory_bytes: the memory to plan with (default `free_memory_bytes`).
        minimum: the population that must fit (padded to the device count).

    Returns:
        The number of members.

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
