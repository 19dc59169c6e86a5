"""Deterministic k-means (Lloyd's algorithm with a fixed iteration budget), jittable, on 1-D and n-D data.

`kmeans_1d` is what the k-means TPE and the Hessian sensitivity analysis use: it clusters scalars, returns clusters
sorted by centroid (cluster 0 has the smallest), never leaves a cluster empty (ties and constant data are split by
rank), accepts a validity mask and a traced number of clusters up to a static maximum, so it runs inside `jit`,
`vmap` and `lax.scan` without recompiling when k changes.

In one dimension every Lloyd cluster is an interval of the sorted data, so each iteration only moves k - 1
boundaries (a binary search each) and reads cluster sums from prefix sums: O(n log n) to sort, then O(k log n) per
iteration instead of O(n k). Lloyd's algorithm stops at a local optimum; on heavy-tailed data (log-normal, say)
the best of the deterministic starts can still have a markedly higher inertia than scikit-learn's ten k-means++
restarts. The k-means TPE only needs a stable ranking of clusters, which this gives.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp

__all__ = ["NUM_STARTS", "KMeansResult", "kmeans", "kmeans_1d"]

NUM_STARTS = 8  # deterministic Lloyd starts per 1-D clustering (a local optimum per start; the best is kept)


class KMeansResult(NamedTuple):
    """Result of a k-means run.

    Attributes:
        centroids: [max_clusters]; 1-D: ascending, entries past ``num_clusters`` repeat the last centroid.
            n-D: [max_clusters, features].
        labels: cluster of each point, -1 for masked points.
        counts: points per cluster, 0 for clusters past ``num_clusters``.
        num_clusters: clusters actually used, min(k, number of valid points) (at least 1).
    """

    centroids: jax.Array
    labels: jax.Array
    counts: jax.Array
    num_clusters: jax.Array


def kmeans_1d(values, num_clusters, *, mask=None, max_clusters: int | None = None,
              iterations: int = 100, order=None, num_starts: int = NUM_STARTS,
              initial_thresholds=None) -> KMeansResult:
    """Cluster scalars into ``num_clusters`` intervals by Lloyd's algorithm, deterministically.

    Lloyd's algorithm runs from `NUM_STARTS` deterministic starts (blends of k groups of equal count and k
    intervals of equal width) and the partition with the lowest inertia is returned; each run stops when no
    boundary moves or after ``iterations``. With k > number of valid points, each point is its own cluster.

    Args:
        values: [n] data; entries where ``mask`` is False are ignored (they may be NaN).
        num_clusters: k, a Python int or a traced integer <= ``max_clusters``.
        mask: [n] booleans, True for points to cluster (default: all finite values).
        max_clusters: static upper bound on k (default: ``num_clusters``, which must then be a Python int).
        iterations: maximum number of Lloyd iterations (static).
        order: optional precomputed ``argsort`` of the values with masked entries last (a caller that keeps its
            data sorted incrementally saves the sort, the most expensive step for small k).
        num_starts: deterministic Lloyd starts (static); 1 uses only the equal-count start, enough for data that
            is not heavy-tailed and the fastest (the starts run one after another).
        initial_thresholds: optional [max_clusters - 1] ascending values between the initial clusters (entries
            past k - 1 are ignored); when given, Lloyd's algorithm starts from them alone. A caller that knows the
            data's distribution (normal scores, say) converges in an iteration or two from its optimal thresholds.

    Returns:
        A `KMeansResult`; cluster 0 has the smallest centroid.

    Example:
        >>> result = kmeans_1d(jnp.array([0.0, 0.1, 5.0, 5.2, 9.0]), 3)
        >>> result.labels.tolist()
        [0, 0, 1, 1, 2]
    """
    values = jnp.asarray(values, dtype=jnp.float32)
    if values.ndim != 1:
        raise ValueError(f"kmeans_1d expects a 1-D array, got shape {values.shape}")
    if max_clusters is None:
        if not isinstance(num_clusters, int):
            raise ValueError("max_clusters is required when num_clusters is traced")
        max_clusters = num_clusters
    if max_clusters < 1:
        raise ValueError(f"the number of clusters must be >= 1, got {max_clusters}")
    if num_starts < 1:
        raise ValueError(f"num_starts must be >= 1, got {num_starts}")
    if initial_thresholds is not None and jnp.shape(initial_thresholds) != (max_clusters - 1,):
        raise ValueError(f"initial_thresholds must have shape ({max_clusters - 1},), got "
                         f"{jnp.shape(initial_thresholds)}")
    return _kmeans_1d(values, num_clusters, mask, order, initial_thresholds, max_clusters=max_clusters,
                      iterations=iterations, num_starts=num_starts)


# One program per static setting: called eagerly, the clustering would otherwise run op by op (seconds the first time).
@functools.partial(jax.jit, static_argnames=("max_clusters", "iterations", "num_starts"))
def _kmeans_1d(values, num_clusters, mask, order, initial_thresholds, *, max_clusters: int, iterations: int,
               num_starts: int) -> KMeansResult:
    mask = jnp.isfinite(values) if mask is None else jnp.asarray(mask, bool) & jnp.isfinite(values)
    data = _sort(values, mask, num_clusters, max_clusters, order)
    bounds = _best_partition(data, iterations, num_starts, initial_thresholds)
    centroids, counts = _centroids(data, bounds)
    sorted_labels = jnp.searchsorted(bounds[1:max_clusters], jnp.arange(values.shape[0]), side="right",
                                     method="compare_all")
    labels = jnp.zeros(values.shape[0], jnp.int32).at[data.order].set(sorted_labels.astype(jnp.int32))
    return KMeansResult(centroids, jnp.where(mask, labels, -1), counts, data.k)


# In one dimension a partition into k intervals of the sorted data is its k + 1 boundaries b_0 = 0 <= b_1 <= ...
# <= b_k = num_valid (indices into the sorted values); entries past k stay at num_valid, up to max_clusters.


class _Sorted(NamedTuple):
    """The data of a 1-D clustering, sorted once: what every Lloyd iteration reads."""

    order: jax.Array  # [n] argsort of the values, masked entries last
    values: jax.Array  # [n] sorted values, masked entries +inf
    finite: jax.Array  # [n] sorted values, masked entries 0
    prefix: jax.Array  # [n + 1] prefix sums of the finite sorted values minus ``shift``
    shift: jax.Array  # the smallest value: centring keeps prefix sums accurate in float32
    num_valid: jax.Array
    k: jax.Array  # clusters in use, min(k, num_valid), at least 1
    max_clusters: int  # static


def _sort(values, mask, num_clusters, max_clusters: int, order) -> _Sorted:
    n = values.shape[0]
    num_valid = jnp.sum(mask).astype(jnp.int32)
    k = jnp.clip(jnp.minimum(jnp.asarray(num_clusters, jnp.int32), num_valid), 1, max_clusters)
    order = jnp.argsort(jnp.where(mask, values, jnp.inf)) if order is None else jnp.asarray(order, jnp.int32)
    sorted_values = jnp.where(mask, values, jnp.inf)[order]
    finite_sorted = jnp.where(jnp.arange(n) < num_valid, sorted_values, 0.0)
    shift = jnp.where(num_valid > 0, finite_sorted[0], 0.0)
    prefix = jnp.concatenate([jnp.zeros(1), jnp.cumsum(finite_sorted - shift)])
    return _Sorted(order, sorted_values, finite_sorted, prefix, shift, num_valid, k, max_clusters)


def _boundaries(data: _Sorted, raw) -> jax.Array:
    """Valid boundaries [max_clusters + 1] nearest ``raw``: b_0 = 0, b_k.. = num_valid, every cluster non-empty."""
    inner = jnp.arange(data.max_clusters + 1)
    raw = jnp.where(inner == 0, 0, jnp.where(inner >= data.k, data.num_valid, raw))
    spare = jnp.maximum(data.num_valid - data.k, 0)
    fixed = jnp.clip(jax.lax.cummax(raw - inner), 0, spare) + inner
    return jnp.where(inner >= data.k, data.num_valid, fixed).astype(jnp.int32)


def _centroids(data: _Sorted, bounds) -> tuple[jax.Array, jax.Array]:
    """Centroids [max_clusters] (past k: the last one repeated) and counts of a partition, from prefix sums."""
    counts = bounds[1:] - bounds[:-1]
    sums = data.prefix[bounds[1:]] - data.prefix[bounds[:-1]]
    means = sums / jnp.maximum(counts, 1) + data.shift
    last = means[jnp.maximum(data.k - 1, 0)]
    return jnp.where(jnp.arange(data.max_clusters) < data.k, means, last), counts


def _lloyd(data: _Sorted, initial, iterations: int) -> jax.Array:
    """Lloyd's algorithm from raw boundaries ``initial``: the boundaries when none moves, or after ``iterations``."""

    def step(carry):
        bounds, _, iteration = carry
        centroids, _ = _centroids(data, bounds)
        midpoints = 0.5 * (centroids[:-1] + centroids[1:])
        # points strictly above the midpoint between clusters j-1 and j go to cluster j
        moved = jnp.searchsorted(data.values, midpoints, side="right", method="compare_all").astype(jnp.int32)
        new_bounds = _boundaries(data, jnp.concatenate([jnp.zeros(1, jnp.int32), moved, jnp.zeros(1, jnp.int32)]))
        return new_bounds, jnp.any(new_bounds != bounds), iteration + 1

    bounds, _, _ = jax.lax.while_loop(lambda c: c[1] & (c[2] < iterations), step,
                                      (_boundaries(data, initial), jnp.asarray(True), jnp.asarray(0)))
    return bounds


def _inertia(data: _Sorted, bounds) -> jax.Array:
    """The within-cluster sum of squares of a partition, up to a constant (the data's own sum of squares)."""
    counts = bounds[1:] - bounds[:-1]
    sums = data.prefix[bounds[1:]] - data.prefix[bounds[:-1]]
    return -jnp.sum(jnp.where(counts > 0, sums**2 / jnp.maximum(counts, 1), 0.0))


def _best_partition(data: _Sorted, iterations: int, num_starts: int, initial_thresholds) -> jax.Array:
    """The boundaries of the lowest-inertia Lloyd run among the starts (see `kmeans_1d`)."""
    # Lloyd's algorithm finds a local optimum; deterministic starts blending k groups of equal count with k
    # intervals of equal width cover balanced and skewed data, and the lowest inertia wins.
    inner = jnp.arange(data.max_clusters + 1)
    top = data.finite[jnp.maximum(data.num_valid - 1, 0)]
    quantile_start = (inner * data.num_valid) // jnp.maximum(data.k, 1)
    edges = data.finite[0] + (top - data.finite[0]) * inner / jnp.maximum(data.k, 1)
    width_start = jnp.searchsorted(data.values, edges, side="right", method="compare_all")
    if initial_thresholds is not None:
        thresholds = jnp.asarray(initial_thresholds, jnp.float32)
        inner_bounds = jnp.searchsorted(data.values, thresholds, side="right", method="compare_all")
        zero = jnp.zeros(1, jnp.int32)
        return _lloyd(data, jnp.concatenate([zero, inner_bounds.astype(jnp.int32), zero]), iterations)
    if num_starts == 1:
        return _lloyd(data, quantile_start.astype(jnp.int32), iterations)
    blend = jnp.linspace(0.0, 1.0, num_starts)[:, None]
    starts = ((1 - blend) * quantile_start + blend * width_start).astype(jnp.int32)
    # lax.map: one compiled body, unlike vmap of a while loop (slow to compile)
    candidates = jax.lax.map(lambda start: _lloyd(data, start, iterations), starts)
    return candidates[jnp.argmin(jax.vmap(lambda bounds: _inertia(data, bounds))(candidates))]


def kmeans(points, num_clusters: int, *, mask=None, iterations: int = 100) -> KMeansResult:
    """Cluster points [n, features] by Lloyd's algorithm with deterministic farthest-point initialisation.

    The first centroid is the valid point nearest the mean, each next one the point farthest from the chosen ones.
    A cluster that empties keeps its previous centroid. Clusters are not sorted (use `kmeans_1d` for scalars).

    Args:
        points: [n, features].
        num_clusters: k (static).
        mask: [n] booleans, True for points to cluster (default: all rows without NaN).
        iterations: number of Lloyd iterations (static).

    Returns:
        A `KMeansResult` with centroids [k, features].
    """
    points = jnp.asarray(points, dtype=jnp.float32)
    if points.ndim != 2:
        raise ValueError(f"kmeans expects points of shape [n, features], got {points.shape}")
    if num_clusters < 1:
        raise ValueError(f"the number of clusters must be >= 1, got {num_clusters}")
    return _kmeans(points, mask, num_clusters=num_clusters, iterations=iterations)


@functools.partial(jax.jit, static_argnames=("num_clusters", "iterations"))
def _kmeans(points, mask, *, num_clusters: int, iterations: int) -> KMeansResult:
    valid = jnp.all(jnp.isfinite(points), axis=1)
    mask = valid if mask is None else jnp.asarray(mask, bool) & valid
    clean = jnp.where(mask[:, None], points, 0.0)
    mean = jnp.sum(clean, 0) / jnp.maximum(jnp.sum(mask), 1)

    def squared_distances(centroids):
        return jnp.sum((clean[:, None, :] - centroids[None, :, :]) ** 2, axis=-1)

    first = jnp.argmin(jnp.where(mask, jnp.sum((clean - mean) ** 2, 1), jnp.inf))
    centroids = jnp.broadcast_to(clean[first], (num_clusters, points.shape[1]))

    def add_farthest(j, centroids):
        nearest = jnp.min(jnp.where(jnp.arange(num_clusters) < j, squared_distances(centroids), jnp.inf), axis=1)
        farthest = jnp.argmax(jnp.where(mask, nearest, -1.0))
        return centroids.at[j].set(clean[farthest])

    centroids = jax.lax.fori_loop(1, num_clusters, add_farthest, centroids)

    def lloyd(_, centroids):
        labels = jnp.argmin(squared_distances(centroids), axis=1)
        one_hot = jax.nn.one_hot(labels, num_clusters) * mask[:, None]
        counts = one_hot.sum(0)
        sums = one_hot.T @ clean
        return jnp.where(counts[:, None] > 0, sums / jnp.maximum(counts, 1)[:, None], centroids)

    centroids = jax.lax.fori_loop(0, iterations, lloyd, centroids)
    labels = jnp.argmin(squared_distances(centroids), axis=1).astype(jnp.int32)
    counts = jnp.sum(jax.nn.one_hot(labels, num_clusters) * mask[:, None], 0).astype(jnp.int32)
    used = jnp.clip(jnp.sum(mask), 1, num_clusters).astype(jnp.int32)
    return KMeansResult(centroids, jnp.where(mask, labels, -1), counts, used)
