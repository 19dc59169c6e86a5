"""k-means TPE proposals from a whole history, as optuna's and hyperopt's samplers need them.

Both libraries hand their sampler the whole study history on every call and expect one (or a few) new
configurations back. `propose` rebuilds a `KMeansTPE` state from an encoded history in one batch and asks it. The
history is padded to a fixed *capacity bucket* (a power of two), and the compiled program is cached per (space,
bucket, static settings), so a study compiles once per bucket (``log2`` of its length at most) instead of once per
trial, and later studies over the same space reuse it. `cached_proposers` shows what is cached and how often each
program was traced (compiled).

Example:
    >>> space = SearchSpace([real("x", -5.0, 5.0)])
    >>> x = np.array([[0.0], [1.0], [2.0]]); y = np.array([4.0, 1.0, 0.0])
    >>> propose(jax.random.key(0), space, x, y, n=2, n_initial=2).shape
    (2, 1)
"""

from __future__ import annotations

import collections
import dataclasses
import threading
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import numpy as np

from mpqjax.optim.space import SearchSpace, real
from mpqjax.optim.tpe import KMeansTPE, TPEParams

__all__ = ["CACHE_SIZE", "DEFAULT_N_INITIAL", "MIN_CAPACITY", "NUMERIC_SETTINGS", "STATIC_SETTINGS", "ProposerInfo",
           "cached_proposers", "capacity_bucket", "check_settings", "make_optimiser", "propose"]

MIN_CAPACITY = 128  # smallest history bucket: studies of up to 128 trials compile once
DEFAULT_N_INITIAL = 20  # the paper's n0
CACHE_SIZE = 64  # proposers kept (least recently used dropped first, with their compiled programs)

# k-means TPE settings a caller may pass (`KMeansTPE` arguments); the numeric ones are traced, so only
# STATIC_SETTINGS select a compiled optimiser.
NUMERIC_SETTINGS = ("n_initial", "k_initial", "k_interval", "bandwidth", "bandwidth_decay", "min_bandwidth",
                    "prior_weight")
STATIC_SETTINGS = ("max_clusters", "num_candidates", "joint", "kmeans_iterations", "cluster_on")
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


@dataclasses.dataclass(eq=False)
class _Proposer:
    optimiser: KMeansTPE
    program: Callable | None = None
    traces: int = 0


_lock = threading.Lock()
_proposers: collections.OrderedDict[tuple, _Proposer] = collections.OrderedDict()  # least recently used first


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
    """The proposers `propose` has cached, least recently used first, with the times each program was traced."""
    with _lock:
        return [ProposerInfo(space, capacity, settings, entry.optimiser, entry.traces)
                for (space, capacity, settings), entry in _proposers.items()]


def _proposer(space: SearchSpace, capacity: int, static: tuple) -> _Proposer:
    """The cached optimiser and jitted ``(key, x, y, count, params, n) -> [n, D]`` for one space and bucket."""
    cache_key = (space, capacity, static)
    with _lock:
        if cache_key in _proposers:
            _proposers.move_to_end(cache_key)
            return _proposers[cache_key]
    entry = _Proposer(make_optimiser(space, capacity, **dict(static)))
    opt = entry.optimiser

    def propose_padded(key, x, y, count, params, n):
        entry.traces += 1
        # tell the padded history in one call, then shrink the count: padded rows hold NaN, which `tell` sorts
        # with the failed trials at the end of `order`, so the state equals one built from the real rows only
        state = opt.tell(opt.init(params=params), x, y)
        state = state._replace(count=count)
        proposals, _ = opt.ask(key, state, n=n)
        return proposals

    entry.program = jax.jit(propose_padded, static_argnames=("n",))
    with _lock:
        entry = _proposers.setdefault(cache_key, entry)  # another thread may have built it meanwhile
        _proposers.move_to_end(cache_key)
        while len(_proposers) > CACHE_SIZE:
            _proposers.popitem(last=False)
    return entry


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
    program = _proposer(space, capacity, static).program
    x_padded = np.zeros((capacity, len(space)), np.float32)
    y_padded = np.full((capacity,), np.nan, np.float32)
    x_padded[: x.shape[0]], y_padded[: x.shape[0]] = x, y
    numeric = {name: settings.get(name, getattr(KMeansTPE, name)) for name in NUMERIC_SETTINGS}  # class defaults
    numeric["n_initial"] = settings.get("n_initial", DEFAULT_N_INITIAL) + num_pending
    params = TPEParams(**{name: np.asarray(value, np.int32 if name in _INTEGER_SETTINGS else np.float32)
                          for name, value in numeric.items()})
    proposals = program(key, x_padded, y_padded, np.int32(x.shape[0]), params, n=n)
    return np.asarray(proposals)
