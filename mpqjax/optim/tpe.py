"""k-means TPE: a tree-structured Parzen estimator whose good/bad split comes from k-means on objective values.

Section III.B and Algorithm 1 of Azizi et al. Each model-based step:

1. cluster the observed objective values with 1-D k-means into k clusters (`mpqjax.optim.cluster.kmeans_1d`),
   sorted by centroid;
2. fit l(x) to the configurations of the best cluster and g(x) to those of the worst cluster (the middle clusters
   are left out; failed trials, NaN or infinite, always join g);
3. draw candidates from l and propose the one maximising l(x) / g(x). A batch of q is q such proposals in turn,
   each made once the previous ones joined the history as pending trials (a constant liar; see ``batch``).

The pure pieces of a step live in `mpqjax.optim.acquisition`; `KMeansTPE` composes them. The first ``n_initial``
trials are uniformly random. Two schedules anneal the search:

- k grows by one every ``k_interval`` model-based trials, from ``k_initial`` up to ``max_clusters``: the best and
  worst clusters get tighter, narrowing "desirable" to the very best configurations (the paper's annealing);
- c, the kernel bandwidth scale (`mpqjax.optim.parzen`), starts at ``bandwidth`` (the paper's c = 0.25) and is
  multiplied by ``bandwidth_decay`` (the paper's alpha = 0.98) after every model-based trial, down to
  ``min_bandwidth``: wide kernels explore early, narrow ones refine late. ``experiments/bench_tpe.py --ablation``
  compares this choice of c's role with a fixed bandwidth (docs/results.md, Ablation).

The API has the shape of optax and evosax: ``state = opt.init(key)``, ``x, state = opt.ask(key, state, n)``,
``state = opt.tell(state, x, y)``, pure functions over an explicit state, jitted with the optimiser static. The
static settings (space, capacity, candidate count, k's upper bound, joint or independent kernels, feasibility
function) live in the object; every number that only changes values lives in the state (`TPEParams`), so it can
change, or be vmapped over, without recompiling.

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
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from mpqjax.optim import acquisition, parzen
from mpqjax.optim.space import CONTINUOUS, SearchSpace, snap

__all__ = ["AUTO_JOINT_MAX_DIMS", "BATCH_STRATEGIES", "KMeansTPE", "TPEParams", "TPEState", "auto_batch",
           "auto_joint", "run"]

AUTO_JOINT_MAX_DIMS = 20  # joint="auto": joint kernels up to this many dimensions, independent mixtures above
BATCH_STRATEGIES = ("auto", "liar", "neutral_liar", "top_q")  # KMeansTPE(batch=...): how a batch ask proposes


class TPEParams(NamedTuple):
    """The traced numbers of a k-means TPE (arrays; change them without recompiling).

    Attributes:
        n_initial: random configurations before the first model-based proposal (the paper's n0).
        k_initial: clusters at the first model-based step (k0 >= 3).
        k_interval: model-based trials between two increments of k.
        bandwidth: initial kernel bandwidth scale c (fraction of each dimension's encoded range).
        bandwidth_decay: factor alpha applied to c after each model-based trial.
        min_bandwidth: floor of c.
        prior_weight: weight of the prior kernel in l and g, relative to one observation.
    """

    n_initial: jax.Array
    k_initial: jax.Array
    k_interval: jax.Array
    bandwidth: jax.Array
    bandwidth_decay: jax.Array
    min_bandwidth: jax.Array
    prior_weight: jax.Array


class TPEState(NamedTuple):
    """Search state: a fixed-capacity history with a fill count, and the traced parameters.

    Attributes:
        x: [capacity, D] encoded configurations told so far (rows past ``count`` are unused).
        y: [capacity] their objective values (NaN/inf for failed trials).
        hashes: [capacity] uint32 fingerprints of ``x`` for duplicate detection.
        order: [capacity] trials sorted from worst to best (failed and unused slots last), kept by `tell` so that
            `ask` never sorts.
        count: number of trials told (may exceed capacity under jit; extra trials are dropped).
        params: the `TPEParams`.
        hash_multipliers: [D] odd uint32 multipliers of the fingerprints, drawn by `KMeansTPE.init` from its key
            (fixed ones without a key).
    """

    x: jax.Array
    y: jax.Array
    hashes: jax.Array
    order: jax.Array
    count: jax.Array
    params: TPEParams
    hash_multipliers: jax.Array


@dataclasses.dataclass(frozen=True, eq=False)
class KMeansTPE:
    """k-means tree-structured Parzen estimator over a `SearchSpace` (see the module docstring).

    Hashed by identity: it is the static argument of its jitted methods, so each optimiser compiles its own
    programs once and reuses them for every state of its shape.

    Args:
        space: the search space.
        capacity: history size (static): the most trials one state can hold.
        maximize: True to maximise the objective, False to minimise it.
        n_initial: the paper's n0, random trials first (default 20).
        k_initial: the paper's initial k (>= 3, default 4).
        max_clusters: upper bound of k (static; default 8).
        k_interval: model-based trials between increments of k (default 25).
        bandwidth: the paper's c (default 0.25), initial kernel bandwidth scale.
        bandwidth_decay: the paper's alpha (default 0.98), decay of c per model-based trial.
        min_bandwidth: floor of c (default 0.08), so late proposals can still move.
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
    n_initial: int = 20
    k_initial: int = 4
    max_clusters: int = 8
    k_interval: int = 25
    bandwidth: float = 0.25
    bandwidth_decay: float = 0.98
    min_bandwidth: float = 0.08
    prior_weight: float = 1.0
    num_candidates: int = 24
    joint: bool | str = "auto"
    feasible: Callable[[jax.Array], jax.Array] | None = None
    kmeans_iterations: int = 100
    cluster_on: str = "normal_scores"
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
        if self.batch not in BATCH_STRATEGIES:
            raise ValueError(f"batch must be one of {BATCH_STRATEGIES}, got {self.batch!r}")
        if self.num_candidates < 1 or self.kmeans_iterations < 1:
            raise ValueError("num_candidates and kmeans_iterations must be >= 1")

    # -- resolved settings and static data (computed once, on first use) ----------------------------------------

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
    def _layout(self) -> parzen.ParzenLayout:
        return parzen.make_layout(self.space.spec())

    @functools.cached_property
    def _enumeration(self) -> np.ndarray | None:
        return acquisition.enumerate_configurations(self.space)

    @functools.cached_property
    def _pool_feasibility(self) -> Callable[[jax.Array], jax.Array] | None:
        if self.feasible is None:
            return None
        return lambda pool: jax.vmap(self.feasible)(self.space.values(pool)).astype(bool)

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
        return TPEState(
            x=jnp.zeros((self.capacity, self.num_dims), jnp.float32),
            y=jnp.full((self.capacity,), jnp.nan, jnp.float32),
            hashes=jnp.zeros((self.capacity,), jnp.uint32),
            order=jnp.arange(self.capacity, dtype=jnp.int32),
            count=jnp.asarray(0, jnp.int32),
            params=self.default_params() if params is None else params,
            hash_multipliers=acquisition.hash_multipliers(key, self.num_dims),
        )

    def schedule(self, state: TPEState) -> tuple[jax.Array, jax.Array]:
        """``(k, c)`` in force for the next proposal: clusters and bandwidth scale after the told trials."""
        p = state.params
        model_trials = jnp.maximum(state.count - p.n_initial, 0)
        k = jnp.minimum(p.k_initial + model_trials // p.k_interval, self.max_clusters)
        c = jnp.maximum(p.bandwidth * p.bandwidth_decay ** model_trials.astype(jnp.float32), p.min_bandwidth)
        return k, c

    # -- ask -----------------------------------------------------------------------------------------------------

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
        return self._ask(key, state, size)

    @functools.partial(jax.jit, static_argnames=("self", "n"))
    def _ask(self, key: jax.Array, state: TPEState, n: int) -> tuple[jax.Array, TPEState]:
        if n > 1 and self.batch_strategy in ("liar", "neutral_liar"):
            return self._ask_with_liar(key, state, n), state
        return self._propose(key, state, n), state

    def _propose(self, key, state, n, taken=None, pending_from=None):
        """n proposals from one candidate pool; ``taken``: optional (hashes [m], mask [m]) of configurations to
        avoid besides the history's; ``pending_from``: optional count of real trials, the history's later trials
        being pending ones that join neither l(x) nor g(x) (the neutral liar)."""
        model_key, fallback_key = jax.random.split(key)
        # uniform candidates serve both the random phase and the model's fallback
        fallback, fallback_rank = acquisition.uniform_pool(fallback_key, self.space.spec(), n, self._enumeration)
        use_model = (state.count >= state.params.n_initial) & (state.count >= 2)
        return jax.lax.cond(use_model,
                            lambda: self._model_proposals(model_key, fallback, fallback_rank, state, n, taken,
                                                          pending_from),
                            lambda: self._select(fallback, fallback_rank, state, n, taken))

    def _ask_with_liar(self, key, state, n):
        """n proposals made one at a time, each after the previous ones joined the history as pending trials.

        A pending trial is told as failed (NaN), so it leaves the finite trials' clusters as they are. Under
        ``"liar"`` it joins g(x), so l(x)/g(x) drops around it and the next proposal goes elsewhere (a constant liar
        with the worst value); under ``"neutral_liar"`` it is left out of g(x) too. Either way it is never proposed
        again, and proposal i gets the random/model switch and the schedule (k, c) of trial ``count + i``, as in a
        sequential search. The proposals' own fingerprints are also kept aside, so the batch stays distinct when
        the history is full and a pending trial cannot be recorded.
        """
        pending_from = state.count if self.batch_strategy == "neutral_liar" else None
        spec = self.space.spec()

        # a loop, not n unrolled copies: the body compiles once whatever n is
        def propose_next(i, carry):
            pending, proposals, proposal_hashes = carry
            x = self._propose(jax.random.fold_in(key, i), pending, 1, (proposal_hashes, jnp.arange(n) < i),
                              pending_from)
            pending = self.tell(pending, x, jnp.full((1,), jnp.nan, jnp.float32))
            x_hash = acquisition.fingerprint(spec, state.hash_multipliers, snap(spec, x))[0]
            return pending, proposals.at[i].set(x[0]), proposal_hashes.at[i].set(x_hash)

        start = (state, jnp.zeros((n, self.num_dims), jnp.float32), jnp.zeros((n,), jnp.uint32))
        return jax.lax.fori_loop(0, n, propose_next, start)[1]

    def _model_proposals(self, model_key, fallback, fallback_rank, state, n, taken=None, pending_from=None):
        """n proposals by l(x)/g(x) among draws from l(x), the uniform ``fallback`` ranked below every draw."""
        k, c = self.schedule(state)
        good, bad = acquisition.split(state.y, state.count, k, order=state.order, maximize=self.maximize,
                                      cluster_on=self.cluster_on, max_clusters=self.max_clusters,
                                      iterations=self.kmeans_iterations)
        if pending_from is not None:
            # the neutral liar: pending trials (told as failed, so never in l) are taken out of g as well
            bad = bad & (jnp.arange(self.capacity) < pending_from)
        kernels = parzen.kernels(self._layout, state.x, c)  # l and g share kernels; only their weights differ
        l_model = parzen.Parzen(parzen.mixture_log_weights(good, state.params.prior_weight), kernels)
        g_model = parzen.Parzen(parzen.mixture_log_weights(bad, state.params.prior_weight), kernels)
        from_l = parzen.sample(model_key, self._layout, l_model, max(self.num_candidates, 2 * n),
                               joint=self.joint_kernels)
        score = acquisition.log_ratio(self._layout, l_model, g_model, from_l, joint=self.joint_kernels)
        # uniform fallbacks are only used when too few candidates from l(x) are usable
        pool = jnp.concatenate([from_l, fallback])
        rank = jnp.concatenate([score, fallback_rank - 1e6 - jnp.max(jnp.abs(fallback_rank))])
        return self._select(pool, rank, state, n, taken)

    def _select(self, pool, score, state, n, taken=None):
        """The n best usable candidates: new to the history (and to ``taken``), distinct, feasible."""
        avoid = [(state.hashes, jnp.arange(self.capacity) < state.count)] + ([taken] if taken is not None else [])
        return acquisition.select(self.space.spec(), state.hash_multipliers, pool, score, n, avoid=avoid,
                                  feasible=self._pool_feasibility)

    # -- tell ----------------------------------------------------------------------------------------------------

    @functools.partial(jax.jit, static_argnames=("self",))
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
        x = jnp.asarray(x, jnp.float32)
        y = jnp.asarray(y, jnp.float32)
        if x.ndim == 1:
            x = x[None]
        if y.ndim == 0:
            y = y[None]
        if x.ndim != 2 or x.shape[1] != self.num_dims:
            raise ValueError(f"tell: x must have shape [q, {self.num_dims}], got {x.shape}")
        if y.shape != (x.shape[0],):
            raise ValueError(f"tell: y must have shape ({x.shape[0]},) to match x, got {y.shape}")
        spec = self.space.spec()
        x = snap(spec, x)
        slots = state.count + jnp.arange(x.shape[0])
        all_y = state.y.at[slots].set(y, mode="drop")
        count = state.count + x.shape[0]
        return state._replace(
            x=state.x.at[slots].set(x, mode="drop"),
            y=all_y,
            hashes=state.hashes.at[slots].set(acquisition.fingerprint(spec, state.hash_multipliers, x), mode="drop"),
            order=acquisition.history_order(all_y, count, maximize=self.maximize),
            count=count,
        )

    # -- eager helpers -------------------------------------------------------------------------------------------

    def check_capacity(self, state: TPEState, extra: int) -> None:
        """Raise ValueError if ``extra`` more trials would not fit in the state's history (eager only)."""
        if int(state.count) + extra > self.capacity:
            raise ValueError(f"capacity {self.capacity} is smaller than the requested trials "
                             f"({int(state.count)} told + {extra} more)")

    def best(self, state: TPEState) -> tuple[jax.Array, jax.Array]:
        """The best finite trial so far: ``(x [D], y)`` (y is NaN before any finite trial)."""
        told = (jnp.arange(self.capacity) < state.count) & jnp.isfinite(state.y)
        utility = jnp.where(told, state.y if self.maximize else -state.y, -jnp.inf)
        index = jnp.argmax(utility)
        return state.x[index], jnp.where(jnp.any(told), state.y[index], jnp.nan)


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
