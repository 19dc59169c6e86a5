"""k-means TPE proposals from a whole history, as optuna's and hyperopt's samplers need them.

Both libraries hand their sampler the whole study history on every call and expect one (or a few) new
configurations back. `propose` rebuilds a `KMeansTPE` state from an encoded history in one batch and asks it. The
history is padded to a fixed *capacity bucket* (a power of two), and the space to its `mpqjax.optim.bucket` bucket,
so one compiled program serves every space of a bucket and every history length of a capacity bucket: a study
compiles at most once per capacity bucket, and a study over a new space of a known bucket compiles nothing.
`cached_proposers` shows the optimisers in use and how often their programs were traced (compiled).

Example:
    >>> space = SearchSpace([real("x", -5.0, 5.0)])
    >>> x = np.array([[0.0], [1.0], [2.0]]); y = np.array([4.0, 1.0, 0.0])
    >>> propose(jax.random.key(0), space, x, y, n=2, n_initial=2).shape
    (2, 1)
"""

from __future__ import annotations

import collections
import functools
import threading
from typing import Any, NamedTuple

import jax
import numpy as np

from mpqjax.optim import bucket, program
from mpqjax.optim.space import SearchSpace, real
from mpqjax.optim.tpe import KMeansTPE, TPEParams
from mpqjax.store.compilation_cache import enable_default_compilation_cache

__all__ = ["CACHE_SIZE", "DEFAULT_N_INITIAL", "MIN_CAPACITY", "NUMERIC_SETTINGS", "STATIC_SETTINGS", "ProposerInfo",
           "cached_proposers", "capacity_bucket", "check_settings", "make_optimiser", "propose"]

MIN_CAPACITY = 128  # smallest history bucket: studies of up to 128 trials compile once
DEFAULT_N_INITIAL = KMeansTPE.n_initial  # random trials first, as KMeansTPE
CACHE_SIZE = 64  # proposers kept (least recently used dropped first, with their compiled programs)

# k-means TPE settings a caller may pass (`KMeansTPE` arguments); the numeric ones are traced, so only
# STATIC_SETTINGS select a compiled optimiser.
NUMERIC_SETTINGS = ("n_initial", "k_initial", "k_interval", "bandwidth", "bandwidth_decay", "min_bandwidth",
                    "prior_weight")
STATIC_SETTINGS = ("max_clusters", "num_candidates", "joint", "kmeans_iterations", "cluster_on", "bad")
_INTEGER_SETTINGS = ("n_initial", "k_initial", "k_interval")


class ProposerInfo(NamedTuple):
    """One cached proposer (see `cached_proposers`).

    Attributes:
        space: the search space.
        capacity: its history bucket (`capacity_bucket`).
        settings: the static settings that select it, as sorted ``(name, value)`` pairs (``()``: the defaults).
        optimiser: the `KMeansTPE` that proposes.
        traces: times its program was traced, each a compilation (one per distinct number of proposals n).
    """

    space: SearchSpace
    capacity: int
    settings: tuple
    optimiser: KMeansTPE
    traces: int


_lock = threading.Lock()
_optimisers: collections.OrderedDict[tuple, KMeansTPE] = collections.OrderedDict()  # least recently used first


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
    n_initial = settings.get("n_initial", DEFAULT_N_INITIAL)
    KMeansTPE(SearchSpace([real("x", 0.0, 1.0)]), capacity=max(int(n_initial), 1), **settings)


def make_optimiser(space: SearchSpace, capacity: int, **static_settings) -> KMeansTPE:
    """The `KMeansTPE` that `propose` asks for a space, history bucket and static settings (`STATIC_SETTINGS`).

    The numeric settings are traced (`propose` passes them as `TPEParams`); k_initial only has to be valid for the
    object here, so a caller's smaller max_clusters (with a matching k_initial) is accepted.
    """
    k_initial = min(KMeansTPE.k_initial, static_settings.get("max_clusters", KMeansTPE.max_clusters))
    return KMeansTPE(space, capacity=capacity, n_initial=1, k_initial=k_initial, **static_settings)


def cached_proposers() -> list[ProposerInfo]:
    """The optimisers `propose` has cached, least recently used first, with the times each program was traced."""
    with _lock:
        return [ProposerInfo(space, capacity, settings, opt, program.traces(opt.program))
                for (space, capacity, settings), opt in _optimisers.items()]


def _optimiser(space: SearchSpace, capacity: int, static: tuple) -> KMeansTPE:
    """The cached optimiser of one space, bucket and static settings (its compiled program is shared by value)."""
    cache_key = (space, capacity, static)
    with _lock:
        if cache_key not in _optimisers:
            _optimisers[cache_key] = make_optimiser(space, capacity, **dict(static))
            while len(_optimisers) > CACHE_SIZE:
                _optimisers.popitem(last=False)
        _optimisers.move_to_end(cache_key)
        return _optimisers[cache_key]


@functools.cache
def _enable_cache_once() -> None:
    """Keep the compiled proposers across processes (`mpqjax.store.compilation_cache`): a new study or script
    over a known bucket loads its program instead of compiling it."""
    enable_default_compilation_cache()


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
    _enable_cache_once()
    capacity = capacity_bucket(x.shape[0])
    opt = _optimiser(space, capacity, static)
    padded = bucket.pad_space(space)
    x_padded = np.zeros((capacity, padded.bucket.num_dims), np.float32)
    y_padded = np.full((capacity,), np.nan, np.float32)
    x_padded[: x.shape[0]], y_padded[: x.shape[0]] = bucket.to_internal(padded, x), y
    numeric = {name: settings.get(name, getattr(KMeansTPE, name)) for name in NUMERIC_SETTINGS}  # class defaults
    numeric["n_initial"] = settings.get("n_initial", DEFAULT_N_INITIAL) + num_pending
    params = TPEParams(**{name: np.asarray(value, np.int32 if name in _INTEGER_SETTINGS else np.float32)
                          for name, value in numeric.items()})
    proposals = opt.program.propose(key, x_padded, y_padded, np.int32(x.shape[0]), params, opt.space_data, n=n)
    return bucket.to_public(padded, np.asarray(proposals))
