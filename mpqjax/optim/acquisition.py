"""The pure steps of one k-means TPE proposal: split the history, score candidates, pick new distinct ones.

`mpqjax.optim.tpe.KMeansTPE` composes them (through `mpqjax.optim.program`): `split` divides the told trials into
l(x)'s data (the best k-means cluster) and g(x)'s (the other trials, or the worst cluster only, plus failed
trials); `log_ratio` scores candidates by log l(x) - log g(x); `uniform_pool` draws the random candidates of the
random start and of the model's fallback; `select` keeps the best-scoring candidates that are new, distinct and
feasible; `fingerprint` is the duplicate detection `select` uses. Every function is jittable: static settings are
Python values or NumPy arrays, everything else is traced.

Example:
    >>> y = jnp.array([3.0, 1.0, 2.0, jnp.nan, 5.0, 0.5, 4.0, 2.5])
    >>> good, bad = split(y, count=8, k=3)  # minimising: l(x)'s data are the lowest values
    >>> good.tolist()
    [False, True, False, False, False, True, False, False]
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.scipy.special import ndtri

from mpqjax.optim import parzen
from mpqjax.optim.cluster import NUM_STARTS, kmeans_1d
from mpqjax.optim.space import CONTINUOUS, GRID, LOG_INT, SearchSpace, SpaceSpec, sample_uniform

__all__ = ["BAD_SETS", "CLUSTER_ON", "MAX_ENUMERATED", "enumerate_configurations", "fingerprint", "hash_multipliers",
           "history_order", "log_ratio", "normal_kmeans_thresholds", "select", "split", "trial_outcomes",
           "uniform_pool"]

MAX_ENUMERATED = 4096  # spaces with at most this many configurations are enumerated for the uniform candidates
CLUSTER_ON = ("normal_scores", "values")  # what `split` may cluster
BAD_SETS = ("rest", "worst")  # what `split` may fit g(x) to

_HASH_SEED = 0x5EED  # seed of the fixed hash multipliers (`hash_multipliers` without a key)


def trial_outcomes(y, count, *, maximize: bool = False) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Which history slots hold finite and failed trials, and the values oriented so that higher is better.

    Args:
        y: [capacity] objective values (NaN or infinite for failed trials).
        count: number of trials told (slots past it are unused).
        maximize: whether higher values are better.

    Returns:
        ``(finite, failed, utility)``: masks [capacity] and ``y`` or ``-y``.
    """
    told = jnp.arange(y.shape[0]) < count
    finite = told & jnp.isfinite(y)
    return finite, told & ~jnp.isfinite(y), y if maximize else -y


def history_order(y, count, *, maximize: bool = False) -> jax.Array:
    """The told trials sorted from worst to best, failed and unused slots last: int32 indices [capacity]."""
    finite, _, utility = trial_outcomes(y, count, maximize=maximize)
    return jnp.argsort(jnp.where(finite, utility, jnp.inf)).astype(jnp.int32)


def split(y, count, k, *, order=None, maximize: bool = False, cluster_on: str = "normal_scores", bad: str = "rest",
          max_clusters: int = 8, iterations: int = 100) -> tuple[jax.Array, jax.Array]:
    """The trials l(x) and g(x) are fitted to: the best k-means cluster, and the others (or the worst cluster only).

    Args:
        y: [capacity] objective values (NaN or infinite for failed trials).
        count: number of trials told.
        k: number of clusters (traced, at most ``max_clusters``).
        order: `history_order` of ``y`` if already known (a caller that keeps it saves a sort).
        maximize: whether higher values are better.
        cluster_on: ``"normal_scores"``, k-means on the normal scores of the values' ranks (invariant to monotone
            transforms of the objective; one outlier cannot claim a cluster), or ``"values"``, on the raw values.
        bad: what g(x) is fitted to besides the failed trials: ``"rest"``, every finite trial outside the best
            cluster (the default), or ``"worst"``, the worst cluster only (the paper's Algorithm 1, which leaves
            the middle clusters out).
        max_clusters: static upper bound of k.
        iterations: Lloyd iteration budget.

    Returns:
        ``(good, bad)``: boolean masks [capacity].
    """
    if bad not in BAD_SETS:
        raise ValueError(f"bad must be one of {BAD_SETS}, got {bad!r}")
    finite, failed, utility = trial_outcomes(y, count, maximize=maximize)
    order = history_order(y, count, maximize=maximize) if order is None else order
    if cluster_on == "normal_scores":
        # rank-based Gaussianisation: the i-th worst of m finite values scores ndtri((i + 1/2) / m), so one
        # outlier cannot claim a cluster of its own and the best cluster shrinks steadily as k grows
        capacity = y.shape[0]
        num_finite = jnp.maximum(jnp.sum(finite), 1)
        rank = jnp.zeros(capacity).at[order].set(jnp.arange(capacity, dtype=jnp.float32))
        utility = ndtri(jnp.clip((rank + 0.5) / num_finite, 1e-6, 1 - 1e-6))
        # normal scores follow N(0, 1): start from its optimal k-cluster thresholds (one or two iterations)
        start = dict(initial_thresholds=jnp.asarray(normal_kmeans_thresholds(max_clusters))[k])
    elif cluster_on == "values":
        start = dict(num_starts=NUM_STARTS)
    else:
        raise ValueError(f"cluster_on must be 'normal_scores' or 'values', got {cluster_on!r}")
    clusters = kmeans_1d(utility, k, mask=finite, max_clusters=max_clusters, iterations=iterations, order=order,
                         **start)
    good = finite & (clusters.labels == clusters.num_clusters - 1)
    worse = ~good if bad == "rest" else clusters.labels == 0
    return good, (finite & worse) | failed


def log_ratio(layout: parzen.ParzenLayout, l_model: parzen.Parzen, g_model: parzen.Parzen, x, *,
              joint: bool = True) -> jax.Array:
    """The acquisition log l(x) - log g(x) of encoded candidates [C, D], shape [C] (l and g share their kernels)."""
    if not joint:
        return (parzen.log_prob(layout, l_model, x, joint=False)
                - parzen.log_prob(layout, g_model, x, joint=False))
    per_component = parzen.component_log_probs(layout, l_model.kernels, x)  # computed once for both
    return (jax.nn.logsumexp(l_model.log_weights[None] + per_component, axis=1)
            - jax.nn.logsumexp(g_model.log_weights[None] + per_component, axis=1))


def enumerate_configurations(space: SearchSpace) -> np.ndarray | None:
    """Every encoded configuration [E, D] of a space of index-encoded dimensions with at most `MAX_ENUMERATED`
    configurations, else None."""
    index_encoded = bool(np.all(space.spec().model <= GRID))
    if not index_encoded or space.log10_size() > math.log10(MAX_ENUMERATED):
        return None
    grids = np.meshgrid(*[np.arange(d.num_choices) for d in space.dimensions], indexing="ij")
    return np.stack([g.ravel() for g in grids], axis=1).astype(np.float32)


def uniform_pool(key: jax.Array, spec: SpaceSpec, n: int, enumeration: np.ndarray | None = None,
                 enumerated_rows=None, *, max_depth: int | None = None) -> tuple[jax.Array, jax.Array]:
    """Uniform candidates and a random rank for each (one PRNG call: cheap to compile).

    Args:
        key: PRNG key.
        spec: the space's `SearchSpace.spec`.
        n: proposals the pool must serve.
        enumeration: `enumerate_configurations` of the space (or a padded one, `mpqjax.optim.bucket`), or None.
        enumerated_rows: the real rows of a padded ``enumeration`` (the others rank below all of them).
        max_depth: static bound of the space's depth (`mpqjax.optim.space.active`; None: from ``spec``).

    Returns:
        ``(pool, rank)``: every configuration when ``enumeration`` is given (so a batch never repeats one while
        unseen ones remain), else ``max(4 n, 32)`` random draws; ranks [P] in random order.
    """
    if enumeration is not None:
        rank = jax.random.uniform(key, (enumeration.shape[0],))
        if enumerated_rows is not None:
            rank = jnp.where(jnp.arange(enumeration.shape[0]) < enumerated_rows, rank, -1.0)
        return enumeration, rank
    size = max(4 * n, 32)
    return sample_uniform(key, spec, size, max_depth=max_depth), -jnp.arange(size, dtype=jnp.float32)


def hash_multipliers(key: jax.Array | None, num_dims: int) -> jax.Array:
    """Odd uint32 multipliers [D] of `fingerprint`: drawn from ``key``, or fixed ones when ``key`` is None."""
    if key is None:
        rng = np.random.default_rng(_HASH_SEED)
        return jnp.asarray(rng.integers(1, 2**31, num_dims, dtype=np.uint32) * 2 + 1)
    return jax.random.bits(key, (num_dims,), jnp.uint32) | jnp.uint32(1)


def fingerprint(spec: SpaceSpec, multipliers, x) -> jax.Array:
    """uint32 fingerprints [C] of encoded configurations [C, D]: equal configurations, equal fingerprints.

    Args:
        spec: the space's `SearchSpace.spec`.
        multipliers: `hash_multipliers` [D].
        x: encoded (snapped) configurations [C, D].
    """
    model = spec.model
    missing = jnp.isnan(x)  # an inactive dimension: one code of its own, whatever the kind
    x = jnp.where(missing, 0.0, x)
    codes = jnp.where(model == CONTINUOUS, jax.lax.bitcast_convert_type(x, jnp.uint32),
                      jnp.where(model == LOG_INT, jnp.round(jnp.exp(x)), x).astype(jnp.int32).astype(jnp.uint32))
    codes = jnp.where(missing, jnp.uint32(0x9E3779B9), codes)
    mixed = codes * jnp.asarray(multipliers)
    mixed = mixed ^ (mixed >> 15)
    return jnp.sum(mixed * jnp.uint32(0x2C1B3C6D), axis=-1, dtype=jnp.uint32)


def select(spec: SpaceSpec, multipliers, pool, score, n: int, *, avoid: Sequence[tuple[jax.Array, jax.Array]] = (),
           feasible: Callable[[jax.Array], jax.Array] | None = None) -> jax.Array:
    """The ``n`` best-scoring usable candidates [n, D] of a pool.

    Usable: new (its fingerprint is none of ``avoid``'s), first of its kind in the pool, and feasible. Infeasible
    candidates rank below every feasible one, unusable ones below every usable one; both still fill the batch when
    nothing better is left (an exhausted space).

    Args:
        spec: the space's `SearchSpace.spec`.
        multipliers: `hash_multipliers` [D].
        pool: encoded candidates [P, D].
        score: [P], higher is better.
        n: candidates to return (static).
        avoid: ``(fingerprints [m], mask [m])`` pairs of configurations already taken (the history's told trials,
            a batch's earlier proposals); only entries where the mask is True count.
        feasible: optional ``pool [P, D] -> [P] bool``.
    """
    pool = jnp.asarray(pool)
    pool_hashes = fingerprint(spec, multipliers, pool)
    seen = jnp.zeros(pool.shape[0], bool)
    for hashes, mask in avoid:
        seen = seen | jnp.any((pool_hashes[:, None] == hashes[None, :]) & mask[None, :], axis=1)
    earlier = jnp.arange(pool.shape[0])
    repeated = jnp.any((pool_hashes[:, None] == pool_hashes[None, :]) & (earlier[None, :] < earlier[:, None]), axis=1)
    usable = ~seen & ~repeated
    if feasible is not None:
        # an infeasible candidate is proposed only when nothing feasible is left (then it ranks lowest)
        score = score - jnp.where(feasible(pool), 0.0, 1e9)
    score = jnp.where(usable, score, score - 1e12)
    _, best = jax.lax.top_k(score, n)
    return pool[best]


@functools.lru_cache(maxsize=16)
def normal_kmeans_thresholds(max_clusters: int, grid: int = 4096) -> np.ndarray:
    """Thresholds between the optimal k clusters of the standard normal distribution, for k = 0..max_clusters.

    Row k holds the k - 1 thresholds (Lloyd-Max quantiser of N(0, 1), found by Lloyd's algorithm on ``grid``
    quantiles), padded with +inf to ``max_clusters - 1`` entries. Read-only (cached).
    """
    from scipy.special import ndtri as numpy_ndtri

    quantiles = numpy_ndtri((np.arange(grid) + 0.5) / grid)
    table = np.full((max_clusters + 1, max(max_clusters - 1, 0)), np.inf, dtype=np.float32)
    for k in range(2, max_clusters + 1):
        thresholds = numpy_ndtri(np.arange(1, k) / k)
        for _ in range(500):
            labels = np.searchsorted(thresholds, quantiles)
            centroids = np.array([quantiles[labels == j].mean() for j in range(k)])
            updated = (centroids[:-1] + centroids[1:]) / 2
            if np.allclose(updated, thresholds, atol=1e-7):
                break
            thresholds = updated
        table[k, : k - 1] = thresholds
    table.flags.writeable = False
    return table
