"""Specification of `mpqjax.optim.cluster`: deterministic, jittable k-means on 1-D and n-D data."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from sklearn.cluster import KMeans

from mpqjax.optim.cluster import kmeans, kmeans_1d


def _inertia(values, labels, centroids):
    return float(np.sum((values - centroids[labels]) ** 2))


def test_separated_1d_clusters_match_scikit_learn():
    rng = np.random.default_rng(0)
    values = np.concatenate([rng.normal(c, 0.1, 30) for c in (-5.0, 0.0, 3.0, 10.0)]).astype(np.float32)
    rng.shuffle(values)
    ours = kmeans_1d(values, 4)
    reference = KMeans(4, n_init=10, random_state=0).fit(values[:, None])
    np.testing.assert_allclose(np.asarray(ours.centroids), np.sort(reference.cluster_centers_.ravel()), rtol=1e-4)
    # same partition, up to the order of the labels
    order = np.argsort(reference.cluster_centers_.ravel())
    relabel = np.empty(4, int)
    relabel[order] = np.arange(4)
    np.testing.assert_array_equal(np.asarray(ours.labels), relabel[reference.labels_])


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("distribution, k", [("normal", 4), ("normal", 6), ("uniform", 5), ("exponential", 4)])
def test_inertia_is_close_to_scikit_learn_on_unstructured_data(seed, distribution, k):
    values = getattr(np.random.default_rng(seed), distribution)(size=200).astype(np.float32)
    ours = kmeans_1d(values, k)
    reference = KMeans(k, n_init=10, random_state=0).fit(values[:, None])
    ours_inertia = _inertia(values, np.asarray(ours.labels), np.asarray(ours.centroids))
    assert ours_inertia <= reference.inertia_ * 1.05


def test_result_is_a_lloyd_fixed_point_with_sorted_centroids():
    values = np.random.default_rng(1).normal(size=500).astype(np.float32)
    result = kmeans_1d(values, 5)
    centroids, labels = np.asarray(result.centroids), np.asarray(result.labels)
    assert np.all(np.diff(centroids) > 0)
    np.testing.assert_array_equal(labels, np.argmin(np.abs(values[:, None] - centroids[None]), axis=1))
    for j in range(5):
        assert centroids[j] == pytest.approx(values[labels == j].mean(), rel=1e-5, abs=1e-6)


def test_ties_and_constant_data_leave_no_cluster_empty():
    for values in (np.ones(9), np.array([0.0, 0.0, 0.0, 0.0, 1.0, 1.0, 1.0, 1.0]), np.array([2.0, 2.0, 2.0, 5.0])):
        result = kmeans_1d(values, 4)
        assert np.all(np.asarray(result.counts) >= 1)
        assert np.all(np.isfinite(np.asarray(result.centroids)))
        assert sorted(set(np.asarray(result.labels).tolist())) == [0, 1, 2, 3]


def test_masked_and_non_finite_values_are_ignored():
    values = jnp.array([1.0, jnp.nan, 2.0, jnp.inf, 10.0, 11.0, 7.0])
    result = kmeans_1d(values, 2, mask=jnp.array([True, True, True, True, True, True, False]))
    np.testing.assert_array_equal(np.asarray(result.labels), [0, -1, 0, -1, 1, 1, -1])
    np.testing.assert_allclose(np.asarray(result.centroids), [1.5, 10.5])


def test_more_clusters_than_points_gives_one_point_per_cluster():
    result = kmeans_1d(jnp.array([3.0, 1.0]), 4)
    assert int(result.num_clusters) == 2
    np.testing.assert_array_equal(np.asarray(result.labels), [1, 0])
    np.testing.assert_array_equal(np.asarray(result.counts), [1, 1, 0, 0])


def test_traced_k_compiles_once_and_matches_static_k():
    values = np.random.default_rng(2).normal(size=64).astype(np.float32)
    traces = []

    @jax.jit
    def cluster(values, k):
        traces.append(k)
        return kmeans_1d(values, k, max_clusters=8)

    for k in (3, 8):
        traced = cluster(values, k)
        static = kmeans_1d(values, k)
        np.testing.assert_array_equal(np.asarray(traced.labels), np.asarray(static.labels))
        np.testing.assert_allclose(np.asarray(traced.centroids[:k]), np.asarray(static.centroids), rtol=1e-6)
    assert len(traces) == 1


def test_precomputed_order_gives_the_same_result():
    values = np.random.default_rng(3).normal(size=50).astype(np.float32)
    with_order = kmeans_1d(values, 4, order=np.argsort(values))
    without = kmeans_1d(values, 4)
    np.testing.assert_array_equal(np.asarray(with_order.labels), np.asarray(without.labels))


def test_vmap_over_datasets():
    batch = np.random.default_rng(4).normal(size=(3, 40)).astype(np.float32)
    def labels(values):
        return kmeans_1d(values, 3).labels

    vmapped = jax.vmap(labels)(batch)
    one_at_a_time = jax.jit(labels)
    for row, row_labels in zip(batch, np.asarray(vmapped), strict=True):
        np.testing.assert_array_equal(row_labels, np.asarray(one_at_a_time(row)))


def test_nd_kmeans_recovers_blobs_like_scikit_learn():
    rng = np.random.default_rng(5)
    centres = np.array([[0.0, 0.0], [5.0, 5.0], [-5.0, 5.0]])
    points = np.concatenate([rng.normal(c, 0.3, (40, 2)) for c in centres]).astype(np.float32)
    ours = kmeans(points, 3)
    reference = KMeans(3, n_init=10, random_state=0).fit(points)
    found = np.asarray(ours.centroids)
    for centre in reference.cluster_centers_:
        assert np.min(np.linalg.norm(found - centre, axis=1)) < 1e-3
    assert np.asarray(ours.counts).tolist() == [40, 40, 40]


@pytest.mark.parametrize("call, message", [
    (lambda: kmeans_1d(np.ones((2, 2)), 2), "1-D array"),
    (lambda: kmeans_1d(np.ones(3), 0), "must be >= 1"),
    (lambda: kmeans_1d(np.ones(3), jnp.asarray(2)), "max_clusters is required"),
    (lambda: kmeans(np.ones(3), 2), "shape \\[n, features\\]"),
])
def test_bad_input_raises(call, message):
    with pytest.raises(ValueError, match=message):
        call()
