"""Specification of `mpqjax.sensitivity.candidates`: normalised traces -> k-means -> candidate bit-widths ->
SearchSpace."""

import math

import jax
import numpy as np
import pytest

from mpqjax.nn.models import LayerSpec, LayerTable, layer_table
from mpqjax.sensitivity.candidates import (
    ALL_BITS,
    DEFAULT_BIT_SETS,
    DEFAULT_WIDTHS,
    bits_dimension,
    layer_space,
    prune_space,
    width_dimension,
)
from mpqjax.sensitivity.hessian import LayerTraces


@pytest.fixture(scope="module")
def table():
    """Eight layers: a stem, three residual-style layers tied to the stem's width, two free ones, a head."""
    specs = [
        LayerSpec("stem", "conv", 3, 8, kernel=(3, 3), width_group=0),
        LayerSpec("block/conv1", "conv", 8, 8, kernel=(3, 3), input_layer=0, width_group=1),
        LayerSpec("block/conv2", "conv", 8, 8, kernel=(3, 3), input_layer=1, width_group=0),
        LayerSpec("down/conv1", "conv", 8, 16, kernel=(3, 3), input_layer=2, width_group=2),
        LayerSpec("down/conv2", "conv", 16, 16, kernel=(3, 3), input_layer=3, width_group=3),
        LayerSpec("down/conv3", "conv", 16, 16, kernel=(3, 3), input_layer=4, width_group=3),
        LayerSpec("tail", "dense", 16, 16, input_layer=5, width_group=4),
        LayerSpec("head", "dense", 16, 10, input_layer=6, width_group=5, scalable=False, use_bias=True),
    ]
    return LayerTable(tuple(specs), input_shape=(8, 8, 3), model="toy")


# four well separated groups of traces per weight, in no particular layer order
TRACES = np.array([9.0, 0.11, 4.1, 1.0, 0.1, 3.9, 10.0, 1.1])


def test_clusters_sorted_by_centroid_get_the_papers_bit_sets(table):
    result = prune_space(table, TRACES)
    assert result.cluster.tolist() == [0, 3, 1, 2, 3, 1, 0, 2]
    np.testing.assert_allclose(result.centroids, [9.5, 4.0, 1.05, 0.105], rtol=1e-6)
    expected = {0: (8, 6), 1: (6, 4, 3), 2: (4, 3, 2), 3: (3, 2)}
    assert result.candidate_bits == tuple(expected[c] for c in result.cluster)
    assert DEFAULT_BIT_SETS == ((8, 6), (6, 4, 3), (4, 3, 2), (3, 2))
    for name, bits in zip(table.names, result.candidate_bits, strict=True):
        assert result.space[bits_dimension(name)].choices == tuple(sorted(bits))


def test_widths_are_never_pruned_and_follow_width_groups(table):
    result = prune_space(table, TRACES)
    width_names = [name for name in result.space.names if name.startswith("width/")]
    # one per group with a scalable layer, named after its first layer; the unscalable head has none
    assert width_names == [width_dimension(n) for n in ("stem", "block/conv1", "down/conv1", "down/conv2", "tail")]
    for name in width_names:
        assert result.space[name].choices == DEFAULT_WIDTHS == (0.75, 0.875, 1.0, 1.125, 1.25)


def test_sizes_before_and_after_are_log10_of_configuration_counts(table):
    result = prune_space(table, TRACES)
    groups = 5
    assert result.log10_size_before == pytest.approx((len(table) + groups) * math.log10(5))
    pruned_counts = [len(bits) for bits in result.candidate_bits]
    assert result.log10_size_after == pytest.approx(math.log10(math.prod(pruned_counts) * 5**groups))
    assert result.space.log10_size() == pytest.approx(result.log10_size_after)
    assert result.log10_size_after < result.log10_size_before


def test_fixed_layers_get_one_choice_and_stay_out_of_the_clustering(table):
    extreme = TRACES.copy()
    extreme[[0, 7]] = [1e4, -5.0]  # would take clusters of their own if they were clustered
    result = prune_space(table, extreme, fixed_bits={"stem": 8, "head": 8})
    assert result.candidate_bits[0] == (8,) and result.candidate_bits[-1] == (8,)
    assert result.cluster[0] == -1 and result.cluster[-1] == -1
    free = prune_space(table, TRACES, fixed_bits={"stem": 8, "head": 8})
    assert result.cluster.tolist() == free.cluster.tolist()
    assert set(result.cluster[1:-1]) == {0, 1, 2, 3}
    assert result.space[bits_dimension("stem")].choices == (8,)
    every_bit = prune_space(table, TRACES, fixed_bits={name: 4 for name in table.names})
    assert every_bit.cluster.tolist() == [-1] * len(table) and len(every_bit.centroids) == 0


def test_bit_sets_are_configurable_and_fix_k(table):
    result = prune_space(table, TRACES, bit_sets=[(8,), (4, 2)])
    assert set(result.cluster) == {0, 1}
    assert result.candidate_bits == tuple([(8,), (4, 2)][c] for c in result.cluster)
    # every layer of the sensitive cluster has a larger trace per weight than every layer of the other
    assert TRACES[result.cluster == 0].min() > TRACES[result.cluster == 1].max()
    with pytest.raises(ValueError, match="num_clusters"):
        prune_space(table, TRACES, num_clusters=3)


def test_fewer_free_layers_than_clusters_take_the_first_sets(table):
    result = prune_space(table, TRACES, fixed_bits={name: 8 for name in table.names[2:]})
    assert result.cluster.tolist()[:2] == [0, 1]
    assert result.candidate_bits[:2] == ((8, 6), (6, 4, 3))


def test_log_scale_clusters_the_log_of_the_traces(table):
    spread = np.array([100.0, 1.0, 0.9, 0.5, 0.4, 0.1, 0.05, 0.01])
    logarithmic = prune_space(table, spread, log_scale=True)
    on_log_values = prune_space(table, np.log10(spread))
    assert logarithmic.cluster.tolist() == on_log_values.cluster.tolist()
    np.testing.assert_allclose(logarithmic.centroids, 10.0**on_log_values.centroids, rtol=1e-5)
    assert logarithmic.cluster.tolist() != prune_space(table, spread).cluster.tolist()
    with pytest.raises(ValueError, match="positive"):
        prune_space(table, -spread, log_scale=True)


def test_same_traces_same_space(table):
    first, second = prune_space(table, TRACES), prune_space(table, TRACES)
    assert first.space == second.space and first.cluster.tolist() == second.cluster.tolist()


def test_accepts_layer_traces_by_name_or_a_mapping(table):
    # LayerTraces may list layers in another order and hold extra ones; trace per weight = trace / weights
    names = tuple(reversed(table.names)) + ("extra",)
    weights = np.array([10] * len(names))
    traces = LayerTraces(
        names=names,
        trace=np.append(TRACES[::-1], 1.0) * weights,
        std_error=np.zeros(len(names)),
        weights=weights,
        probes=np.full(len(names), 8),
        batches=1,
        converged=True,
    )
    from_traces = prune_space(table, traces)
    from_mapping = prune_space(table, dict(zip(table.names, TRACES, strict=True)))
    np.testing.assert_allclose(from_traces.trace_per_weight, TRACES)
    assert from_traces.cluster.tolist() == from_mapping.cluster.tolist() == prune_space(table, TRACES).cluster.tolist()


@pytest.mark.parametrize(
    "traces, options, message",
    [
        (TRACES[:-1], {}, "8 layers"),
        ({"stem": 1.0}, {}, "no Hessian trace"),
        (np.where(np.arange(8) == 2, np.nan, TRACES), {}, "finite"),
        (TRACES, {"fixed_bits": {"conv9": 8}}, "unknown layers"),
        (TRACES, {"fixed_bits": {"stem": 0}}, "positive integers"),
        (TRACES, {"bit_sets": []}, "at least one"),
        (TRACES, {"bit_sets": [(8, 6), ()]}, "at least one choice"),
        (TRACES, {"bit_sets": [(8, 8)]}, "distinct"),
        (TRACES, {"widths": (1.0, -0.5)}, "positive numbers"),
    ],
)
def test_bad_input_raises_a_clear_value_error(table, traces, options, message):
    with pytest.raises(ValueError, match=message):
        prune_space(table, traces, **options)


# -- from configurations to per-layer arrays and back --------------------------------------------------------------


def test_config_maps_to_per_layer_arrays_and_back(table):
    space = prune_space(table, TRACES).layer_space
    config = space.space.decode(np.asarray(space.space.sample(jax.random.key(0), 1))[0])
    bits, widths = space.to_arrays(config)
    assert bits.dtype == np.int32 and bits.shape == widths.shape == (len(table),)
    assert bits.tolist() == [config[bits_dimension(name)] for name in table.names]
    # tied layers share their group's width, the unscalable head stays at 1
    assert widths[0] == widths[2] == config["width/stem"] and widths[4] == widths[5] == config["width/down/conv2"]
    assert widths[-1] == 1.0
    assert space.to_config(bits, widths) == config


def test_encoded_configs_map_to_arrays_inside_jit(table):
    space = prune_space(table, TRACES).layer_space
    encoded = space.space.sample(jax.random.key(1), 16)
    bits, widths = jax.jit(space.encoded_to_arrays)(encoded)
    for row, row_bits, row_widths in zip(np.asarray(encoded), np.asarray(bits), np.asarray(widths), strict=True):
        expected_bits, expected_widths = space.to_arrays(space.space.decode(row))
        np.testing.assert_array_equal(row_bits, expected_bits)
        np.testing.assert_allclose(row_widths, expected_widths)


def test_arrays_outside_the_space_are_rejected(table):
    result = prune_space(table, TRACES)
    bits = np.array([bits[-1] for bits in result.candidate_bits])
    widths = np.ones(len(table))
    result.layer_space.to_config(bits, widths)
    with pytest.raises(ValueError, match="not among the choices"):
        result.layer_space.to_config(np.where(result.cluster == 0, 2, bits), widths)
    with pytest.raises(ValueError, match="different widths"):
        result.layer_space.to_config(bits, np.where(np.arange(len(table)) == 2, 0.75, 1.0))
    with pytest.raises(ValueError, match="one per layer"):
        result.layer_space.to_config(bits[:-1], widths[:-1])


def test_unpruned_space_of_a_zoo_model():
    table = layer_table("resnet20")
    space = layer_space(table)
    groups = sum(any(table[i].scalable for i in group) for group in table.width_groups())
    assert len(space.space) == len(table) + groups
    assert space.space.log10_size() == pytest.approx((len(table) + groups) * math.log10(5))
    assert all(space.space[bits_dimension(name)].choices == tuple(sorted(ALL_BITS)) for name in table.names)
