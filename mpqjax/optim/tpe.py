"""k-means TPE: a tree-structured Parzen estimator whose good/bad split comes from k-means on objective values.

Section III.B and Algorithm 1 of Azizi et al. Each model-based step:

1. cluster the observed objective values with 1-D k-means into k clusters (`mpqjax.optim.cluster.kmeans_1d`),
   sorted by centroid;
2. fit l(x) to the configurations of the best cluster and g(x) to every other trial (the paper fits g(x) to the
   worst cluster only: ``bad="worst"``; failed trials, NaN or infinite, always join g);
3. draw candidates from l and propose the one maximising l(x) / g(x). A batch of q is q such proposals in turn,
   each made once the previous ones joined the history as pending trials (a constant liar; see ``batch``).

The pure pieces of a step live in `mpqjax.optim.acquisition`; `KMeansTPE` composes them. The first ``n_initial``
trials are uniformly random. Two schedules anneal the search:

- k grows by one every ``k_interval`` model-based trials, from ``k_initial`` up to ``max_clusters``: the best and
  worst clusters get tighter, narrowing "desirable" to the very best configurations (the paper's annealing);
- c, the kernel bandwidth scale (`mpqjax.optim.parzen`), starts at ``bandwidth`` (the paper's c = 0.25) and is
  multiplied by ``bandwidth_decay`` (0.96; the paper's alpha = 0.98) after every model-based trial, down to
  ``min_bandwidth``: wide kernels explore early, narrow ones refine late. ``experiments/bench_tpe.py --ablation``
  compares this choice of c's role with a fixed bandwidth (docs/results.md, Ablation).

The API has the shape of optax and evosax: ``state = opt.init(key)``, ``x, state = opt.ask(key, state, n)``,
``state = opt.tell(state, x, y)``, pure functions over an explicit state. The static settings (space, capacity,
candidate count, k's upper bound, joint or independent kernels, feasibility function) live in the object; every
number that only changes values lives in the state (`TPEParams`), so it can change, or be vmapped over, without
recompiling. What is compiled is the object's `KMeansTPE.program` (`mpqjax.optim.program`): the space's bucket and
the static settings, not the space itself, so optimisers over different spaces of one bucket share their programs.

The defaults depart from the paper's Algorithm 1 where `experiments/convergence.py` measured a gain (docs/results.md,
Convergence): g(x) from every trial outside the best cluster, 10 random trials, alpha = 0.96 with a floor of 0.05,
k-means on normal scores; `PAPER_SETTINGS` (`KMeansTPE.paper`) is the algorithm as the paper states it.

Example:
    >>> space = SearchSpace([ordinal("bits", (2, 3, 4, 6, 8)), real("lr", 1e-4, 1e-1, log=True)])
    >>> opt = KMeansTPE(space, capacity=64, maximize=True)
    >>> state = opt.init(jax.random.key(0))
    >>> x, state = opt.ask(jax.random.key(1), state, n=4)
    >>> state = opt.tell(state, x, jnp.array([0.1, 0.5, 0.3, 0.2]))
    >>> config = space.decode(x[0])
"""

from __future__ import annotations

import dataclasses
import functools
import operator
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

from mpqjax.optim import acquisition, bucket
from mpqjax.optim.bucket import SpaceData
from mpqjax.optim.program import Feasibility, Program, TPEParams, TPEState, device_data
from mpqjax.optim.space import CONTINUOUS, SearchSpace

__all__ = ["AUTO_JOINT_MAX_DIMS", "BATCH_STRATEGIES", "PAPER_SETTINGS", "KMeansTPE", "TPEParams", "TPEState",
           "auto_batch", "auto_joint", "run"]

AUTO_JOINT_MAX_DIMS = 20  # joint="auto": joint kernels up to this many dimensions, independent mixtures above
BATCH_STRATEGIES = ("auto", "liar", "neutral_liar", "top_q")  # KMeansTPE(batch=...): how a batch ask proposes
# the paper's Algorithm 1 (`KMeansTPE.paper`): n0 = 20, k = 4, c = 0.25 annealed by alpha = 0.98 (no floor within
# its budgets), k-means on the raw objective values, g(x) fitted to the worst cluster only
PAPER_SETTINGS = dict(n_initial=20, k_initial=4, bandwidth=0.25, bandwidth_decay=0.98, min_bandwidth=1e-3,
                      cluster_on="values", bad="worst", kmeans_iterations=100)


@dataclasses.dataclass(frozen=True, eq=False)
class KMeansTPE:
    """k-means tree-structured Parzen estimator over a `SearchSpace` (see the module docstring).

    Its jitted ask and tell are those of its `program` (the space's bucket, the capacity and the structural
    settings), compiled once and shared with every optimiser of an equal program, whatever its space.

    Args:
        space: the search space.
        capacity: history size (static): the most trials one state can hold.
        maximize: True to maximise the objective, False to minimise it.
        n_initial: the paper's n0, random trials first (default 10; the paper's 20 in `PAPER_SETTINGS`).
        k_initial: the paper's initial k (>= 3, default 4).
        max_clusters: upper bound of k (static; default 8).
        k_interval: model-based trials between increments of k (default 25).
        bandwidth: the paper's c (default 0.25), initial kernel bandwidth scale.
        bandwidth_decay: the paper's alpha, decay of c per model-based trial (default 0.96; the paper's 0.98).
        min_bandwidth: floor of c (default 0.05), so late proposals can still move.
        prior_weight: prior kernel weight (default 1.0).
        num_candidates: candidates drawn from l(x) per proposal (static; default 24; a ``"top_q"`` batch ask of q
            draws ``max(num_candidates, 2 q)``).
        joint: how l(x) and g(x) combine the dimensions (static): True, one product kernel per observation;
            False, an independent mixture per dimension; ``"auto"`` (default), `auto_joint`: joint for spaces of
            up to `AUTO_JOINT_MAX_DIMS` dimensions, independent above. `joint_kernels` is the resolved choice.
        feasible: optional jittable ``values[D] -> bool`` on `SearchSpace.values` of a candidate; infeasible
            candidates are never proposed while a feasible one is available.
        kmeans_iterations: the paper's maxiters (default 100), Lloyd iteration budget.
        cluster_on: what k-means clusters: ``"normal_scores"`` (default), the normal scores of the objective's
            ranks, or ``"values"``, the raw objective values as in the paper. Raw values let a single outlier
            (a diverged run, a heavy penalty) form the worst cluster alone and leave almost every trial in the
            best one; normal scores keep the clusters' shape (small tail clusters, large middle ones) whatever the
            objective's scale, and are invariant to monotone transforms of it. ``bench_tpe.py --ablation``
            compares the two.
        bad: what g(x) is fitted to besides failed trials: ``"rest"`` (default), every trial outside the best
            cluster, or ``"worst"``, the worst cluster only, as in the paper (`mpqjax.optim.acquisition.split`).
        batch: how a batch ask (n > 1) proposes (static): ``"liar"``, one at a time inside the jitted ask, each
            after the earlier proposals joined the history as pending failed trials (in g(x): a constant liar with
            the worst value, which spreads the batch); ``"neutral_liar"``, one at a time with the pending trials in
            neither l(x) nor g(x) (each proposal a fresh single ask of the same model, never a repeat);
            ``"top_q"``, the n best of one candidate pool by l(x)/g(x) (loses quality per evaluation as n grows);
            ``"auto"`` (default, `auto_batch`): the neutral liar when every dimension is continuous, the liar
            otherwise. `batch_strategy` is the resolved choice. A single ask (n = 1) is the same under all of them.

    Raises:
        ValueError: k_initial < 3, k_initial > max_clusters, capacity < 1 or < n_initial, other bad settings.
    """

    space: SearchSpace
    capacity: int = 1000
    maximize: bool = False
    n_initial: int = 10
    k_initial: int = 4
    max_clusters: int = 8
    k_interval: int = 25
    bandwidth: float = 0.25
    bandwidth_decay: float = 0.96
    min_bandwidth: float = 0.05
    prior_weight: float = 1.0
    num_candidates: int = 24
    joint: bool | str = "auto"
    feasible: Callable[[jax.Array], jax.Array] | None = None
    kmeans_iterations: int = 100
    cluster_on: str = "normal_scores"
    bad: str = "rest"
    batch: str = "auto"

    def __post_init__(self):
        if not isinstance(self.space, SearchSpace):
            raise ValueError(f"space must be a SearchSpace, got {type(self.space).__name__}")
        if self.capacity < 1:
            raise ValueError(f"capacity must be >= 1, got {self.capacity}")
        if self.n_initial < 1:
            raise ValueError(f"n_initial must be >= 1, got {self.n_initial}")
        if self.n_initial > self.capacity:
            raise ValueError(f"capacity {self.capacity} is smaller than n_initial {self.n_initial}")
        if self.k_initial < 3:
            raise ValueError(f"k_initial must be >= 3 (the paper's k >= 3), got {self.k_initial}")
        if self.k_initial > self.max_clusters:
            raise ValueError(f"k_initial {self.k_initial} exceeds max_clusters {self.max_clusters}")
        if self.k_interval < 1:
            raise ValueError(f"k_interval must be >= 1, got {self.k_interval}")
        if not 0 < self.min_bandwidth <= self.bandwidth:
            raise ValueError(f"need 0 < min_bandwidth <= bandwidth, got {self.min_bandwidth}, {self.bandwidth}")
        if not 0 < self.bandwidth_decay <= 1:
            raise ValueError(f"bandwidth_decay must be in (0, 1], got {self.bandwidth_decay}")
        if self.prior_weight <= 0:
            raise ValueError(f"prior_weight must be > 0, got {self.prior_weight}")
        if not (isinstance(self.joint, bool) or self.joint == "auto"):
            raise ValueError(f"joint must be True, False or 'auto', got {self.joint!r}")
        if self.cluster_on not in acquisition.CLUSTER_ON:
            raise ValueError(f"cluster_on must be 'normal_scores' or 'values', got {self.cluster_on!r}")
        if self.bad not in acquisition.BAD_SETS:
            raise ValueError(f"bad must be one of {acquisition.BAD_SETS}, got {self.bad!r}")
        if self.batch not in BATCH_STRATEGIES:
            raise ValueError(f"batch must be one of {BATCH_STRATEGIES}, got {self.batch!r}")
        if self.num_candidates < 1 or self.kmeans_iterations < 1:
            raise ValueError("num_candidates and kmeans_iterations must be >= 1")

    # -- resolved settings and the compiled structure (computed once, on first use) -----------------------------

    @property
    def num_dims(self) -> int:
        """D, the number of dimensions of the space."""
        return len(self.space)

    @property
    def joint_kernels(self) -> bool:
        """The kernel mode in force: ``joint``, with ``"auto"`` resolved by `auto_joint`."""
        return auto_joint(self.space) if self.joint == "auto" else self.joint

    @property
    def batch_strategy(self) -> str:
        """The batch strategy in force: ``batch``, with ``"auto"`` resolved by `auto_batch`."""
        return auto_batch(self.space) if self.batch == "auto" else self.batch

    @functools.cached_property
    def program(self) -> Program:
        """The static structure the jitted ask and tell are compiled for (`mpqjax.optim.program.Program`).

        Optimisers with equal programs share their compiled code: any two spaces of one `mpqjax.optim.bucket`
        bucket, with equal capacity and structural settings and no feasibility function.
        """
        return Program(
            bucket=self._padded.bucket, capacity=self.capacity, maximize=self.maximize,
            max_clusters=self.max_clusters, num_candidates=self.num_candidates, joint=self.joint_kernels,
            kmeans_iterations=self.kmeans_iterations, cluster_on=self.cluster_on, bad=self.bad,
            batch=self.batch,
            feasible=None if self.feasible is None else Feasibility(self.space, self.feasible))

    @functools.cached_property
    def _padded(self) -> bucket.PaddedSpace:
        return bucket.pad_space(self.space)

    @functools.cached_property
    def space_data(self) -> SpaceData:
        """The space as its program takes it: its padded encoding's arrays (`mpqjax.optim.bucket.SpaceData`)."""
        return device_data(self._padded.data)

    # -- init, schedule ------------------------------------------------------------------------------------------

    def default_params(self) -> TPEParams:
        """The object's numeric settings as a `TPEParams`."""
        return TPEParams(
            n_initial=jnp.asarray(self.n_initial, jnp.int32),
            k_initial=jnp.asarray(self.k_initial, jnp.int32),
            k_interval=jnp.asarray(self.k_interval, jnp.int32),
            bandwidth=jnp.asarray(self.bandwidth, jnp.float32),
            bandwidth_decay=jnp.asarray(self.bandwidth_decay, jnp.float32),
            min_bandwidth=jnp.asarray(self.min_bandwidth, jnp.float32),
            prior_weight=jnp.asarray(self.prior_weight, jnp.float32),
        )

    def init(self, key: jax.Array | None = None, params: TPEParams | None = None) -> TPEState:
        """An empty search state.

        Args:
            key: PRNG key of the fingerprints' hash multipliers (duplicate detection only: two searches differ in
                their proposals only through a rare hash collision); None: fixed multipliers.
            params: traced settings (default: `default_params`).

        Returns:
            A `TPEState` with no trial told.
        """
        params = self.default_params() if params is None else params
        return self.program.init(params, acquisition.hash_multipliers(key, self._padded.bucket.num_dims))

    def schedule(self, state: TPEState) -> tuple[jax.Array, jax.Array]:
        """``(k, c)`` in force for the next proposal: clusters and bandwidth scale after the told trials."""
        return self.program.schedule(state)

    # -- ask, tell -----------------------------------------------------------------------------------------------

    def ask(self, key: jax.Array, state: TPEState, n: int = 1) -> tuple[jax.Array, TPEState]:
        """Propose ``n`` distinct encoded configurations [n, D]; the state is returned unchanged.

        Random while fewer than ``n_initial`` trials are told, model-based afterwards. Candidates already in the
        history, repeated within the batch, or infeasible are skipped while others are available. A batch (n > 1)
        is made as the ``batch`` setting says (see the class docstring). Every call form (``ask(key, state)``,
        ``ask(key, state, 4)``, ``n=np.int64(4)``) runs the one program compiled for its n.

        Args:
            key: PRNG key.
            state: the search state.
            n: configurations to propose (a positive integer; static).

        Returns:
            ``(x, state)``: proposals [n, D] and the unchanged state.
        """
        try:
            size = operator.index(n)
        except TypeError:
            size = 0
        if size < 1:
            raise ValueError(f"n must be a positive int, got {n!r}")
        return _from_padded(self._padded, self.program.ask(key, state, self.space_data, size)), state

    def tell(self, state: TPEState, x, y) -> TPEState:
        """Record evaluated configurations ``x`` [q, D] (or [D]) and their objective values ``y`` [q] (or scalar).

        NaN or infinite values mark failed trials (they join g(x)). Trials past the capacity are dropped; the
        eager `check_capacity` (used by `run`) refuses them before they are evaluated.

        Args:
            state: the search state.
            x: encoded configurations (snapped to valid values here).
            y: their objective values.

        Returns:
            The new state.
        """
        x, y = ((value if isinstance(value, jax.core.Tracer) else np.asarray(value, np.float32)) for value in (x, y))
        if x.ndim == 1:
            x = x[None]
        if y.ndim == 0:
            y = y[None]
        if x.ndim != 2 or x.shape[1] != self.num_dims:
            raise ValueError(f"tell: x must have shape [q, {self.num_dims}], got {x.shape}")
        if y.shape != (x.shape[0],):
            raise ValueError(f"tell: y must have shape ({x.shape[0]},) to match x, got {y.shape}")
        return self.program.tell(state, self.space_data, bucket.to_internal(self._padded, x), y)

    # -- reading a state -----------------------------------------------------------------------------------------

    def check_capacity(self, state: TPEState, extra: int) -> None:
        """Raise ValueError if ``extra`` more trials would not fit in the state's history (eager only)."""
        if int(state.count) + extra > self.capacity:
            raise ValueError(f"capacity {self.capacity} is smaller than the requested trials "
                             f"({int(state.count)} told + {extra} more)")

    def history(self, state: TPEState) -> tuple[jax.Array, jax.Array]:
        """Every slot of the history in the space's encoding: ``(x [capacity, D], y [capacity])``.

        Slots past ``state.count`` are unused (y NaN). The state itself keeps configurations in the padded
        encoding of the space's bucket.
        """
        return _from_padded(self._padded, state.x), state.y

    def best(self, state: TPEState) -> tuple[jax.Array, jax.Array]:
        """The best finite trial so far: ``(x [D], y)`` (y is NaN before any finite trial)."""
        x, y = self.program.best(state)
        return _from_padded(self._padded, x), y

    @classmethod
    def paper(cls, space: SearchSpace, **settings) -> KMeansTPE:
        """The paper's Algorithm 1 (`PAPER_SETTINGS`), with any other settings as given."""
        return cls(space, **{**PAPER_SETTINGS, **settings})


def _from_padded(padded: bucket.PaddedSpace, x):
    """Padded configurations back in the space's encoding: a JAX array (a host gather outside a trace)."""
    if isinstance(x, jax.core.Tracer):
        return bucket.to_public(padded, x)
    return jax.device_put(bucket.to_public(padded, np.asarray(x)))  # device_put compiles nothing

def auto_batch(space: SearchSpace) -> str:
    """The batch strategy of ``KMeansTPE(batch="auto")``: ``"neutral_liar"`` when every dimension is continuous,
    ``"liar"`` otherwise.

    On discrete grids (every mixed-precision space) draws from l(x) pile up on a few configurations, and the
    worst-value liar's repulsion spreads a batch usefully; on continuous spaces g(x), the worst k-means cluster of a
    few trials, is outweighed by the batch's pending "failed" trials, which push it away from every good region.
    Measured with ``experiments/population_quality.py``: docs/results.md (Batch proposals).

    Args:
        space: the search space.

    Returns:
        ``"neutral_liar"`` or ``"liar"``.
    """
    return "neutral_liar" if bool(np.all(np.asarray(space.spec().model) == CONTINUOUS)) else "liar"


def auto_joint(space: SearchSpace) -> bool:
    """The kernel mode of ``KMeansTPE(joint="auto")``: joint for spaces of up to `AUTO_JOINT_MAX_DIMS` dimensions.

    In a few dimensions a product kernel per observation keeps each good trial's coordinates together, so separate
    good regions stay separate (independent per-dimension mixtures mix them and propose points between the modes).
    In many dimensions the few trials of the best cluster cannot cover the space with product kernels around
    themselves, and recombining their coordinates dimension by dimension is what moves the search. Measured with
    ``experiments/convergence.py``: docs/results.md (Kernel mode).

    Args:
        space: the search space.

    Returns:
        True for joint kernels, False for independent per-dimension mixtures.
    """
    return len(space) <= AUTO_JOINT_MAX_DIMS


def run(opt: KMeansTPE, key: jax.Array, objective: Callable[[jax.Array], jax.Array], num_trials: int, *,
        batch_size: int = 1, state: TPEState | None = None) -> TPEState:
    """Run ask -> evaluate -> tell until ``num_trials`` trials are told (continuing ``state`` if given).

    A fresh state is ``opt.init(key)``, and the key of each round is ``fold_in(key, count)``, so a search resumed
    from a saved state makes exactly the proposals of an uninterrupted one.

    Args:
        opt: the optimiser.
        key: PRNG key of the whole search.
        objective: maps encoded configurations [q, D] to values [q] (use ``opt.space.decode`` inside for dicts).
        num_trials: total trials the returned state holds.
        batch_size: configurations per ask (q).
        state: a state to continue (default: a fresh one).

    Returns:
        The final state.

    Example:
        >>> state = run(opt, jax.random.key(0), lambda x: jnp.sum(x, axis=-1), 30, batch_size=2)
    """
    state = opt.init(key) if state is None else state
    if num_trials < 1 or batch_size < 1:
        raise ValueError(f"num_trials and batch_size must be >= 1, got {num_trials}, {batch_size}")
    opt.check_capacity(state, num_trials - int(state.count))
    while int(state.count) < num_trials:
        q = min(batch_size, num_trials - int(state.count))
        x, state = opt.ask(jax.random.fold_in(key, int(state.count)), state, n=q)
        state = opt.tell(state, x, jnp.asarray(objective(x), jnp.float32).reshape(q))
    return state
