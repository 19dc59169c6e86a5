"""The compiled programs of k-means TPE: one per bucket of spaces and static structure, shared across spaces.

`mpqjax.optim.tpe.KMeansTPE` is what a user configures, a space and settings. What its jitted ask and tell depend
on is smaller, a `Program`: the space's `mpqjax.optim.bucket.Bucket` (the padded shapes), the history's capacity
and the structural switches. A `Program` is hashed by value and is the static argument of its jitted methods, so
optimisers with equal programs (two studies over different spaces of one bucket, an optuna sampler's relative and
independent spaces) share every compiled program; the space itself is an argument, its `SpaceData`, traced like
the state. `traces` counts the compilations of a program.

Every function here works in the padded encoding (`mpqjax.optim.bucket`): the state's configurations and the
proposals are [.., Bucket.num_dims]; `KMeansTPE` converts from and to the space's own encoding.
"""

from __future__ import annotations

import collections
import dataclasses
import functools
from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp

from mpqjax.optim import acquisition, parzen
from mpqjax.optim.bucket import Bucket, SpaceData, pad_space
from mpqjax.optim.space import CONTINUOUS, SearchSpace, deactivate, encoded_values, snap

__all__ = ["Feasibility", "Program", "TPEParams", "TPEState", "device_data", "traces"]

_traces: collections.Counter = collections.Counter()  # (program, method) -> times traced


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
        x: [capacity, W] configurations told so far, in the padded encoding of the space's bucket (rows past
            ``count`` are unused; `mpqjax.optim.tpe.KMeansTPE.history` gives them in the space's own encoding).
        y: [capacity] their objective values (NaN/inf for failed trials).
        hashes: [capacity] uint32 fingerprints of ``x`` for duplicate detection.
        order: [capacity] trials sorted from worst to best (failed and unused slots last), kept by `tell` so that
            `ask` never sorts.
        count: number of trials told (may exceed capacity under jit; extra trials are dropped).
        params: the `TPEParams`.
        hash_multipliers: [W] odd uint32 multipliers of the fingerprints, drawn by `KMeansTPE.init` from its key
            (fixed ones without a key).
    """

    x: jax.Array
    y: jax.Array
    hashes: jax.Array
    order: jax.Array
    count: jax.Array
    params: TPEParams
    hash_multipliers: jax.Array


@dataclasses.dataclass(frozen=True)
class Feasibility:
    """A feasibility function ``values[D] -> bool`` over `SearchSpace.values` of one space (static)."""

    space: SearchSpace
    function: Callable[[jax.Array], jax.Array]

    def __call__(self, pool: jax.Array) -> jax.Array:
        """Feasibility [P] of padded candidates [P, W]."""
        public = pool[:, pad_space(self.space).positions]
        return jax.vmap(self.function)(encoded_values(self.space.spec(), public)).astype(bool)


@dataclasses.dataclass(frozen=True)
class Program:
    """The static structure of a k-means TPE: what its compiled programs depend on (hashed by value).

    Attributes:
        bucket: the space's `Bucket`.
        capacity: history size.
        maximize: whether higher objective values are better.
        max_clusters: upper bound of k.
        num_candidates: candidates drawn from l(x) per proposal.
        joint: joint product kernels (True) or independent per-dimension mixtures.
        kmeans_iterations: Lloyd iteration budget.
        cluster_on: ``"normal_scores"`` or ``"values"`` (`mpqjax.optim.acquisition.split`).
        bad: ``"rest"`` or ``"worst"`` (`mpqjax.optim.acquisition.split`).
        batch: the batch strategy, ``"liar"``, ``"neutral_liar"``, ``"top_q"`` or ``"auto"`` (resolved from the
            space's data, `mpqjax.optim.tpe.auto_batch`, so spaces of one bucket share the program either way).
        feasible: a `Feasibility` (it ties the program to one space), or None.
    """

    bucket: Bucket
    capacity: int
    maximize: bool
    max_clusters: int
    num_candidates: int
    joint: bool
    kmeans_iterations: int
    cluster_on: str
    bad: str
    batch: str
    feasible: Feasibility | None = None

    def init(self, params: TPEParams, hash_multipliers: jax.Array) -> TPEState:
        """An empty state with the traced ``params`` and fingerprint multipliers [W]."""
        return TPEState(
            x=jnp.zeros((self.capacity, self.bucket.num_dims), jnp.float32),
            y=jnp.full((self.capacity,), jnp.nan, jnp.float32),
            hashes=jnp.zeros((self.capacity,), jnp.uint32),
            order=jnp.arange(self.capacity, dtype=jnp.int32),
            count=jnp.asarray(0, jnp.int32),
            params=params,
            hash_multipliers=hash_multipliers,
        )

    def schedule(self, state: TPEState) -> tuple[jax.Array, jax.Array]:
        """``(k, c)`` in force for the next proposal: clusters and bandwidth scale after the told trials."""
        p = state.params
        model_trials = jnp.maximum(state.count - p.n_initial, 0)
        k = jnp.minimum(p.k_initial + model_trials // p.k_interval, self.max_clusters)
        c = jnp.maximum(p.bandwidth * p.bandwidth_decay ** model_trials.astype(jnp.float32), p.min_bandwidth)
        return k, c

    # -- ask -----------------------------------------------------------------------------------------------------

    @functools.partial(jax.jit, static_argnames=("self", "n"))
    def ask(self, key: jax.Array, state: TPEState, data: SpaceData, n: int) -> jax.Array:
        """``n`` padded proposals [n, W] (see `mpqjax.optim.tpe.KMeansTPE.ask`)."""
        _traces[(self, "ask")] += 1
        return self._ask(key, state, data, n)

    @functools.partial(jax.jit, static_argnames=("self", "n"))
    def propose(self, key: jax.Array, x: jax.Array, y: jax.Array, count: jax.Array, params: TPEParams,
                data: SpaceData, n: int) -> jax.Array:
        """``n`` padded proposals from a whole history: padded rows [capacity, W], values, the real row count.

        Rows past ``count`` must hold NaN values: `tell` sorts them with the failed trials at the end of the order,
        so the state equals one told the real rows only.
        """
        _traces[(self, "propose")] += 1
        state = self._tell(self.init(params, acquisition.hash_multipliers(None, self.bucket.num_dims)), data, x, y)
        return self._ask(key, state._replace(count=count), data, n)

    def _ask(self, key, state, data, n):
        if n > 1 and self.batch != "top_q":
            return self._ask_with_liar(key, state, data, n)
        return self._propose(key, state, data, n)

    def _propose(self, key, state, data, n, taken=None, pending_from=None):
        """n proposals from one candidate pool; ``taken``: optional (hashes [m], mask [m]) of configurations to
        avoid besides the history's; ``pending_from``: optional count of real trials, the history's later trials
        being pending ones that join neither l(x) nor g(x) (the neutral liar)."""
        model_key, fallback_key = jax.random.split(key)
        # uniform candidates serve both the random phase and the model's fallback
        enumeration = (data.enumeration, data.enumerated_rows) if self.bucket.enumerated else (None, None)
        fallback, fallback_rank = acquisition.uniform_pool(fallback_key, data.spec, n, *enumeration,
                                                           max_depth=self.bucket.depth)
        use_model = (state.count >= state.params.n_initial) & (state.count >= 2)
        return jax.lax.cond(use_model,
                            lambda: self._model_proposals(model_key, fallback, fallback_rank, state, data, n, taken,
                                                          pending_from),
                            lambda: self._select(fallback, fallback_rank, state, data, n, taken))

    def _ask_with_liar(self, key, state, data, n):
        """n proposals made one at a time, each after the previous ones joined the history as pending trials.

        A pending trial is told as failed (NaN), so it leaves the finite trials' clusters as they are. Under
        ``"liar"`` it joins g(x), so l(x)/g(x) drops around it and the next proposal goes elsewhere (a constant liar
        with the worst value); under ``"neutral_liar"`` it is left out of g(x) too. Either way it is never proposed
        again, and proposal i gets the random/model switch and the schedule (k, c) of trial ``count + i``, as in a
        sequential search. The proposals' own fingerprints are also kept aside, so the batch stays distinct when
        the history is full and a pending trial cannot be recorded.
        """
        if self.batch == "auto":  # the neutral liar when every dimension is continuous (padding is)
            all_continuous = (self.bucket.table_dims == 0) & jnp.all(data.spec.model == CONTINUOUS)
            pending_from = jnp.where(all_continuous, state.count, self.capacity)
        else:
            pending_from = state.count if self.batch == "neutral_liar" else None

        # a loop, not n unrolled copies: the body compiles once whatever n is
        def propose_next(i, carry):
            pending, proposals, proposal_hashes = carry
            x = self._propose(jax.random.fold_in(key, i), pending, data, 1, (proposal_hashes, jnp.arange(n) < i),
                              pending_from)
            pending = self._tell(pending, data, x, jnp.full((1,), jnp.nan, jnp.float32))
            x_hash = acquisition.fingerprint(data.spec, state.hash_multipliers, snap(data.spec, x))[0]
            return pending, proposals.at[i].set(x[0]), proposal_hashes.at[i].set(x_hash)

        start = (state, jnp.zeros((n, self.bucket.num_dims), jnp.float32), jnp.zeros((n,), jnp.uint32))
        return jax.lax.fori_loop(0, n, propose_next, start)[1]

    def _model_proposals(self, model_key, fallback, fallback_rank, state, data, n, taken=None, pending_from=None):
        """n proposals by l(x)/g(x) among draws from l(x), the uniform ``fallback`` ranked below every draw."""
        k, c = self.schedule(state)
        good, bad = acquisition.split(state.y, state.count, k, order=state.order, maximize=self.maximize,
                                      cluster_on=self.cluster_on, bad=self.bad, max_clusters=self.max_clusters,
                                      iterations=self.kmeans_iterations)
        if pending_from is not None:
            # the neutral liar: pending trials (told as failed, so never in l) are taken out of g as well
            bad = bad & (jnp.arange(self.capacity) < pending_from)
        layout = parzen.make_layout(data.spec, num_table=self.bucket.table_dims, max_choices=self.bucket.max_choices,
                                    conditional=self.bucket.conditional)
        kernels = parzen.kernels(layout, state.x, c)  # l and g share kernels; only their weights differ
        l_model = parzen.Parzen(parzen.mixture_log_weights(good, state.params.prior_weight), kernels)
        g_model = parzen.Parzen(parzen.mixture_log_weights(bad, state.params.prior_weight), kernels)
        from_l = parzen.sample(model_key, layout, l_model, max(self.num_candidates, 2 * n), joint=self.joint)
        if self.bucket.conditional:  # a draw's choices decide which of its conditional dimensions exist
            from_l = deactivate(data.spec, from_l, max_depth=self.bucket.depth)
        score = acquisition.log_ratio(layout, l_model, g_model, from_l, joint=self.joint)
        # uniform fallbacks are only used when too few candidates from l(x) are usable
        pool = jnp.concatenate([from_l, fallback])
        rank = jnp.concatenate([score, fallback_rank - 1e6 - jnp.max(jnp.abs(fallback_rank))])
        return self._select(pool, rank, state, data, n, taken)

    def _select(self, pool, score, state, data, n, taken=None):
        """The n best usable candidates: new to the history (and to ``taken``), distinct, feasible."""
        avoid = [(state.hashes, jnp.arange(self.capacity) < state.count)] + ([taken] if taken is not None else [])
        return acquisition.select(data.spec, state.hash_multipliers, pool, score, n, avoid=avoid,
                                  feasible=self.feasible)

    # -- tell ----------------------------------------------------------------------------------------------------

    @functools.partial(jax.jit, static_argnames=("self",))
    def tell(self, state: TPEState, data: SpaceData, x: jax.Array, y: jax.Array) -> TPEState:
        """Record padded configurations [q, W] and their values [q] (see `mpqjax.optim.tpe.KMeansTPE.tell`)."""
        _traces[(self, "tell")] += 1
        return self._tell(state, data, x, y)

    def _tell(self, state, data, x, y):
        x = snap(data.spec, jnp.asarray(x, jnp.float32))
        if self.bucket.conditional:
            x = deactivate(data.spec, x, max_depth=self.bucket.depth)
        slots = state.count + jnp.arange(x.shape[0])
        all_y = state.y.at[slots].set(jnp.asarray(y, jnp.float32), mode="drop")
        count = state.count + x.shape[0]
        return state._replace(
            x=state.x.at[slots].set(x, mode="drop"),
            y=all_y,
            hashes=state.hashes.at[slots].set(acquisition.fingerprint(data.spec, state.hash_multipliers, x),
                                              mode="drop"),
            order=acquisition.history_order(all_y, count, maximize=self.maximize),
            count=count,
        )

    def best(self, state: TPEState) -> tuple[jax.Array, jax.Array]:
        """The best finite trial so far: ``(x [W], y)`` (y is NaN before any finite trial)."""
        told = (jnp.arange(self.capacity) < state.count) & jnp.isfinite(state.y)
        utility = jnp.where(told, state.y if self.maximize else -state.y, -jnp.inf)
        index = jnp.argmax(utility)
        return state.x[index], jnp.where(jnp.any(told), state.y[index], jnp.nan)


def traces(program: Program) -> int:
    """How many times the jitted methods of ``program`` (or any equal program) were traced, i.e. compiled."""
    return sum(count for (traced, _), count in list(_traces.items()) if traced == program)


def device_data(data: SpaceData) -> SpaceData:
    """A `SpaceData` of NumPy arrays as device arrays (what the programs take)."""
    return jax.device_put(data)  # no program compiled, unlike jnp.asarray

