"""Plug k-means TPE into other optimisation libraries: optuna (`mpqjax.integrations.optuna`) and hyperopt
(`mpqjax.integrations.hyperopt`).

Both libraries hand their sampler the whole study history on every call and expect one (or a few) new
configurations back. This module holds the machinery they share: `propose` rebuilds a `KMeansTPE` state from an
encoded history in one batch and asks it. The history is padded to a fixed *capacity bucket* (a power of two), and
the compiled optimiser is cached per (space, bucket, static settings), so a study compiles once per bucket
(``log2`` of its length at most) instead of once per trial, and later studies over the same space reuse it.

Neither optuna nor hyperopt is imported here, so ``import mpqjax`` works without them; they are in the ``peers``
extra (``pip install mpqjax[peers]``).
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import numpy as np

from mpqjax.optim.space import SearchSpace
from mpqjax.optim.tpe import KMeansTPE, TPEParams

MIN_CAPACITY = 128  # smallest history bucket: studies of up to 128 trials compile once
DEFAULT_N_INITIAL = 20  # the paper's n0

# k-means TPE settings a caller may pass (`KMeansTPE` arguments); the numeric ones are traced, so only
# STATIC_SETTINGS select a compiled optimiser.
NUMERIC_SETTINGS = ("n_initial", "k_initial", "k_interval", "bandwidth", "bandwidth_decay", "min_bandwidth",
                    "prior_weight")
STATIC_SETTINGS = ("max_clusters", "num_candidates", "joint", "kmeans_iterations", "cluster_on")
_INTEGER_SETTINGS = ("n_initial", "k_initial", "k_interval")

_trace_counts: dict[tuple, int] = {}  # times each cached proposer was traced (compiled), for tests


def capacity_bucket(num_rows: int) -> int:
    """History capacity for ``num_rows`` trials: the next power of two, at least `MIN_CAPACITY`."""
    return max(MIN_CAPACITY, 1 << max(int(num_rows) - 1, 0).bit_length())


def check_settings(settings: dict[str, Any]) -> None:
    """Raise ValueError for an unknown k-means TPE setting, or a combination `KMeansTPE` refuses."""
    unknown = sorted(set(settings) - set(NUMERIC_SETTINGS) - set(STATIC_SETTINGS))
    if unknown:
        raise ValueError(f"unknown k-means TPE settings {unknown}; expected some of "
                         f"{sorted(NUMERIC_SETTINGS + STATIC_SETTINGS)}")
    # constructing a throw-away optimiser runs KMeansTPE's own validation (n_initial checked against a large
    # capacity: histories grow, so capacity never limits it here)
    from mpqjax.optim.space import real

    n_initial = settings.get("n_initial", DEFAULT_N_INITIAL)
    KMeansTPE(SearchSpace([real("x", 0.0, 1.0)]), capacity=max(int(n_initial), 1), **settings)


@functools.lru_cache(maxsize=64)
def _proposer(space: SearchSpace, capacity: int, static: tuple):
    """The optimiser and a jitted ``(key, x, y, count, params, n) -> [n, D]`` for one space and bucket."""
    settings = dict(static)
    # the numeric settings are traced (`propose` passes them as params); k_initial only has to be valid for the
    # object here, so a caller's smaller max_clusters (with a matching k_initial) is accepted
    k_initial = min(KMeansTPE.k_initial, settings.get("max_clusters", KMeansTPE.max_clusters))
    opt = KMeansTPE(space, capacity=capacity, n_initial=1, k_initial=k_initial, **settings)
    cache_key = (space, capacity, static)

    def propose_padded(key, x, y, count, params, n):
        _trace_counts[cache_key] = _trace_counts.get(cache_key, 0) + 1
        # tell the padded history in one call, then shrink the count: padded rows hold NaN, which `tell` sorts
        # with the failed trials at the end of `order`, so the state equals one built from the real rows only
        state = opt.tell(opt.init(params=params), x, y)
        state = state._replace(count=count)
        proposals, _ = opt.ask(key, state, n=n)
        return proposals

    return opt, jax.jit(propose_padded, static_argnames=("n",))


def propose(key: jax.Array, space: SearchSpace, x: np.ndarray, y: np.ndarray, *, n: int = 1, num_pending: int = 0,
            **settings) -> np.ndarray:
    """Propose ``n`` encoded configurations from a history, with k-means TPE.

    Args:
        key: PRNG key.
        space: the search space the history is encoded in.
        x: [m, D] encoded configurations of every trial to account for (finished and pending).
        y: [m] objective values, minimised; NaN for failed trials and for pending (running) ones, which thus
            join g(x) and are never proposed again (optuna's "constant liar" with the worst value).
        n: configurations to propose (distinct, and distinct from the history while any are left).
        num_pending: how many rows of the history are pending; they do not count toward the random start
            (``n_initial``) or the annealing schedule.
        **settings: `KMeansTPE` settings (``n_initial``, ``k_initial``, ``max_clusters``, ``bandwidth``, ...).

    Returns:
        [n, D] float32 NumPy array of encoded configurations (decode with ``space.decode``).
    """
    x = np.asarray(x, np.float32).reshape(-1, len(space))
    y = np.asarray(y, np.float32).reshape(-1)
    if y.shape[0] != x.shape[0]:
        raise ValueError(f"x has {x.shape[0]} rows but y has {y.shape[0]} values")
    static = tuple(sorted((name, settings[name]) for name in STATIC_SETTINGS if name in settings))
    capacity = capacity_bucket(x.shape[0])
    _, propose_padded = _proposer(space, capacity, static)
    x_padded = np.zeros((capacity, len(space)), np.float32)
    y_padded = np.full((capacity,), np.nan, np.float32)
    x_padded[: x.shape[0]], y_padded[: x.shape[0]] = x, y
    numeric = {name: settings.get(name, getattr(KMeansTPE, name)) for name in NUMERIC_SETTINGS}  # class defaults
    numeric["n_initial"] = settings.get("n_initial", DEFAULT_N_INITIAL) + num_pending
    params = TPEParams(**{name: np.asarray(value, np.int32 if name in _INTEGER_SETTINGS else np.float32)
                          for name, value in numeric.items()})
    proposals = propose_padded(key, x_padded, y_padded, np.int32(x.shape[0]), params, n=n)
    return np.asarray(proposals)


__all__ = ["MIN_CAPACITY", "capacity_bucket", "check_settings", "propose"]
