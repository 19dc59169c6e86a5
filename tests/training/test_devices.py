"""Specification of mpqjax.training.devices: the population mesh, multi-process arguments, placement of arrays, and
how many members fit in memory."""

import jax
import numpy as np
import pytest

from mpqjax.training import devices


def test_the_mesh_spans_every_device_on_the_population_axis():
    mesh = devices.population_mesh()
    assert mesh.axis_names == (devices.AXIS,) == ("population",)
    assert mesh.devices.size == jax.device_count()
    assert devices.padded_size(3, mesh) == 3  # one device here; tests/training/test_population.py forces four
    with pytest.raises(ValueError, match="at least one device"):
        devices.population_mesh([])


def test_placed_arrays_round_trip_to_the_host():
    mesh = devices.population_mesh()
    rows = np.arange(6, dtype=np.float32).reshape(3, 2)
    members = devices.place(rows, devices.member_sharding(mesh))
    shared = devices.place(rows, devices.replicated_sharding(mesh))
    assert list(members.sharding.spec) == ["population"] and list(shared.sharding.spec) == []
    np.testing.assert_array_equal(devices.to_host(members), rows)
    np.testing.assert_array_equal(devices.to_host(shared), rows)


def test_max_population_divides_the_memory_by_one_members_need(masked_mlp, digits):
    need = devices.member_memory_bytes(masked_mlp, digits.input_shape, batch_size=128)
    assert need > 0
    fits = devices.max_population(masked_mlp, digits.input_shape, batch_size=128,
                                  memory_bytes=int(10 * need / devices.MEMORY_FRACTION))
    assert fits == 10
    with pytest.raises(ValueError, match="one configuration of mlp at batch size 128 does not fit"):
        devices.max_population(masked_mlp, digits.input_shape, batch_size=128, memory_bytes=need // 2)
    with pytest.raises(ValueError, match="a population of 16 .* holds 10"):
        devices.max_population(masked_mlp, digits.input_shape, batch_size=128,
                               memory_bytes=int(10 * need / devices.MEMORY_FRACTION), minimum=16)


def test_cpu_devices_plan_with_the_hosts_available_memory():
    free, where = devices.free_memory_bytes()
    assert where == "host memory" and free > 0
    assert devices.host_available_bytes() > 0


def test_a_dataset_that_would_crowd_the_accelerator_is_refused(digits, monkeypatch):
    devices.check_resident(digits)  # CPU devices share the host's memory, where the splits already are

    class Accelerator:
        platform = "gpu"

    monkeypatch.setattr(jax, "devices", lambda *args: [Accelerator()])
    needed = sum(split.x.nbytes + split.y.nbytes for split in (digits.train, digits.validation, digits.test))
    monkeypatch.setattr(devices, "population_mesh", lambda device_list=None: None)
    monkeypatch.setattr(devices, "free_memory_bytes", lambda mesh=None: (3 * needed, "memory of 1 GPU device(s)"))
    devices.check_resident(digits)  # a third of the free memory: it fits
    monkeypatch.setattr(devices, "free_memory_bytes", lambda mesh=None: (needed, "memory of 1 GPU device(s)"))
    with pytest.raises(ValueError, match=r"the dataset's splits take 0\.00 GiB, more than 50% of the 0\.00 GiB free "
                                         r"in the memory of 1 GPU device\(s\) that holds them during a search"):
        devices.check_resident(digits)


@pytest.mark.parametrize("arguments, message", [
    (("localhost:1234", None, None), "needs all of"),
    ((None, 2, 0), "needs all of"),
    (("localhost", 2, 0), "host:port"),
    (("localhost:1234", 2, 2), r"process id must be in \[0, 2\)"),
    (("localhost:1234", 0, 0), "at least 1 process"),
])
def test_a_distributed_run_is_refused_before_it_starts_when_its_arguments_are_incomplete(arguments, message):
    # (a two-process run that equals one process with as many devices: tests/cli)
    with pytest.raises(ValueError, match=message):
        devices.initialize_distributed(*arguments)
