"""k-means TPE as an optuna sampler: ``optuna.create_study(sampler=KMeansTPESampler())``.

How the sampler maps optuna's model onto `mpqjax.optim.tpe.KMeansTPE`:

- Relative (joint) sampling over every parameter the study's complete and pruned trials set (while none exists,
  its failed trials): each call encodes the history, rebuilds a k-means TPE state in one batch and asks it once
  (`mpqjax.integrations.proposals.propose`; compiled once per space bucket and power-of-two history bucket, shared
  by every sampler in the process and kept on disk). A parameter only some trials set (a dynamic, conditional one)
  is an `mpqjax.optim.space.optional` dimension, modelled over the trials that have it, as TPE models a
  tree-structured space. The first ``n_initial`` finished trials are uniformly random, and never repeat a
  configuration already tried or pending.
- A parameter no finished trial has set yet, or one set with two distributions (a dynamic range), is sampled
  independently: uniformly at random (optuna's `RandomSampler`) until ``n_initial`` finished trials have the
  parameter, then by a one-dimension k-means TPE over those trials; or by the ``independent_sampler`` you pass.
- Distributions: `FloatDistribution` (``log`` or ``step``), `IntDistribution` (``log`` or ``step``) and
  `CategoricalDistribution`. Anything else raises ValueError naming the parameter; nothing falls back silently.
- Trial states: COMPLETE trials give their value (negated for a maximising study); FAIL and PRUNED trials join
  g(x), the "bad" density (failed configurations are evidence against themselves; pruned ones match optuna's TPE,
  which ranks them below every complete trial). RUNNING trials are *pending* (with ``constant_liar=True``, the
  default): they join g(x) like optuna's constant liar and, being in the history, are never proposed again, so
  several workers sharing a study through any storage do not duplicate each other's configurations. A running
  trial is visible to the others once its parameters reach the storage: relative proposals are written to it at
  once (a trial system attribute, as optuna's TPESampler does), independent ones at each ``suggest_*`` call.
- ``seed`` makes a sequential study reproducible; ``reseed_rng`` (called by optuna for ``n_jobs > 1``) reseeds.

Example:
    >>> import optuna
    >>> from mpqjax.integrations.optuna import KMeansTPESampler
    >>> study = optuna.create_study(sampler=KMeansTPESampler(seed=0))
    >>> study.optimize(lambda t: (t.suggest_float("x", -5, 5) - 2) ** 2, n_trials=40)
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
import numpy as np

try:
    from optuna.distributions import BaseDistribution, CategoricalDistribution, FloatDistribution, IntDistribution
    from optuna.samplers import BaseSampler, RandomSampler
    from optuna.study import Study, StudyDirection
    from optuna.trial import FrozenTrial, TrialState
except ImportError as error:  # pragma: no cover - exercised only without the peers extra
    raise ImportError("mpqjax.integrations.optuna needs optuna: pip install 'mpqjax[peers]'") from error

from mpqjax.integrations.proposals import DEFAULT_N_INITIAL, check_settings, propose
from mpqjax.optim.space import Dimension, SearchSpace, categorical, integer, optional, real

# trial system attribute holding a running trial's relative proposal (internal representation), so that other
# workers see it as pending before the objective has called suggest_*
PENDING_PARAMS_KEY = "mpqjax:kmeans_tpe:relative_params"
_ATTR_CHUNK = 2000  # characters per system attribute (RDB storages limit their length)

_FINISHED = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)


def dimension(name: str, distribution: BaseDistribution) -> Dimension:
    """The `mpqjax.optim.space` dimension of an optuna distribution; ValueError naming ``name`` if unsupported."""
    if isinstance(distribution, FloatDistribution):
        return real(name, distribution.low, distribution.high, step=distribution.step, log=distribution.log)
    if isinstance(distribution, IntDistribution):
        return integer(name, distribution.low, distribution.high, step=distribution.step, log=distribution.log)
    if isinstance(distribution, CategoricalDistribution):
        return categorical(name, distribution.choices)
    raise ValueError(f"parameter {name!r}: KMeansTPESampler supports FloatDistribution, IntDistribution and "
                     f"CategoricalDistribution, not {type(distribution).__name__}")


class KMeansTPESampler(BaseSampler):
    """An optuna sampler running k-means TPE (`mpqjax.optim.tpe.KMeansTPE`); see the module docstring.

    Args:
        seed: seed of the sampler's random numbers (None: nondeterministic).
        n_initial: finished trials sampled at random before the model is used (the paper's n0, like
            `TPESampler`'s ``n_startup_trials``; default 10).
        constant_liar: treat RUNNING trials as pending (in g(x), never proposed again; default True).
        independent_sampler: sampler for parameters outside the relative search space (default: random until
            ``n_initial`` finished trials have the parameter, then a one-dimension k-means TPE).
        **settings: other `KMeansTPE` settings: ``k_initial``, ``max_clusters``, ``k_interval``, ``bandwidth``,
            ``bandwidth_decay``, ``min_bandwidth``, ``prior_weight``, ``num_candidates``, ``joint``,
            ``kmeans_iterations``, ``cluster_on``, ``bad``; defaults as `KMeansTPE`'s (``joint="auto"``: joint
            kernels over a relative search space of up to 20 parameters, independent ones above,
            `mpqjax.optim.tpe.auto_joint`); ``KMeansTPESampler(**mpqjax.optim.PAPER_SETTINGS)`` is the paper's
            algorithm.

    Raises:
        ValueError: an unknown or invalid setting.

    Example:
        >>> sampler = KMeansTPESampler(seed=0, n_initial=10, bandwidth_decay=0.98)
        >>> study = optuna.create_study(direction="maximize", sampler=sampler)
    """

    def __init__(self, *, seed: int | None = None, n_initial: int = DEFAULT_N_INITIAL, constant_liar: bool = True,
                 independent_sampler: BaseSampler | None = None, **settings):
        check_settings({"n_initial": n_initial, **settings})
        self._settings = {"n_initial": int(n_initial), **settings}
        self._n_initial = int(n_initial)
        self._constant_liar = bool(constant_liar)
        self._rng = np.random.RandomState(seed)
        self._random_sampler = RandomSampler(seed=seed)
        self._independent_sampler = independent_sampler
        self._encodings: dict[tuple, _Encoding] = {}
        self._rows: dict[tuple, np.ndarray | None] = {}  # encoded rows of finished trials
        self._dynamic: dict[tuple, frozenset[str]] = {}  # per (study, trial) being asked: its dynamic parameters

    def reseed_rng(self) -> None:
        self._rng.seed()
        self._random_sampler.reseed_rng()
        if self._independent_sampler is not None:
            self._independent_sampler.reseed_rng()

    # -- relative sampling ---------------------------------------------------------------------------------------

    def _union(self, study: Study) -> tuple[dict[str, BaseDistribution], frozenset[str]]:
        """Every parameter the finished trials set with one distribution, and those some of them lack (dynamic
        parameters: `mpqjax.optim.space.optional` dimensions, each modelled over the trials that have it).

        Complete and pruned trials count; while none exists, the failed trials that set parameters (data too).
        A parameter set with two distributions (a dynamic range) is left to `sample_independent`.
        """
        trials = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED))
        if not trials:
            trials = [t for t in study.get_trials(deepcopy=False, states=(TrialState.FAIL,)) if t.distributions]
        seen: dict[str, BaseDistribution] = {}
        conflicting, counts = set(), {}
        for trial in trials:
            for name, distribution in trial.distributions.items():
                counts[name] = counts.get(name, 0) + 1
                if name not in seen:
                    seen[name] = distribution
                elif seen[name] != distribution:
                    conflicting.add(name)
        union = {name: distribution for name, distribution in seen.items() if name not in conflicting}
        return union, frozenset(name for name in union if counts[name] < len(trials))

    def infer_relative_search_space(self, study: Study, trial: FrozenTrial) -> dict[str, BaseDistribution]:
        _check_single_objective(study)
        search_space = {}
        union, dynamic = self._union(study)
        self._dynamic[(study.study_name, trial.number)] = dynamic  # read once by this trial's sample_relative
        for name, distribution in sorted(union.items()):
            if distribution.single():
                continue  # optuna fills single-valued parameters itself
            dimension(name, distribution)  # refuse unsupported distributions here, naming the parameter
            search_space[name] = distribution
        return search_space

    def sample_relative(self, study: Study, trial: FrozenTrial,
                        search_space: dict[str, BaseDistribution]) -> dict[str, Any]:
        dynamic = self._dynamic.pop((study.study_name, trial.number), None)
        if not search_space:
            return {}
        _check_single_objective(study)
        search_space = {name: search_space[name] for name in sorted(search_space)}
        dynamic = (self._union(study)[1] if dynamic is None else dynamic) & set(search_space)
        encoding = self._encoding(search_space, dynamic=dynamic)
        x, y, num_pending = self._history(study, trial, encoding, search_space)
        encoded = propose(self._key(), encoding.space, x, y, n=1, num_pending=num_pending, **self._settings)[0]
        params = encoding.decode(encoded)
        if self._constant_liar:
            _publish_pending(study, trial, params, search_space)
        return params

    # -- independent sampling ------------------------------------------------------------------------------------

    def sample_independent(self, study: Study, trial: FrozenTrial, param_name: str,
                           param_distribution: BaseDistribution) -> Any:
        _check_single_objective(study)
        dimension(param_name, param_distribution)
        if self._independent_sampler is not None:
            return self._independent_sampler.sample_independent(study, trial, param_name, param_distribution)
        search_space = {param_name: param_distribution}
        encoding = self._encoding(search_space, independent=True)
        x, y, num_pending = self._history(study, trial, encoding, search_space)
        if x.shape[0] - num_pending < self._n_initial:
            return self._random_sampler.sample_independent(study, trial, param_name, param_distribution)
        encoded = propose(self._key(), encoding.space, x, y, n=1, num_pending=num_pending, **self._settings)[0]
        return encoding.decode(encoded)

    def before_trial(self, study: Study, trial: FrozenTrial) -> None:
        (self._independent_sampler or self._random_sampler).before_trial(study, trial)

    def after_trial(self, study: Study, trial: FrozenTrial, state: TrialState,
                    values: Sequence[float] | None) -> None:
        (self._independent_sampler or self._random_sampler).after_trial(study, trial, state, values)

    # -- helpers -------------------------------------------------------------------------------------------------

    def _key(self) -> jax.Array:
        return jax.random.key(int(self._rng.randint(0, 2**31 - 1)))

    def _encoding(self, search_space: dict[str, BaseDistribution], independent: bool = False,
                  dynamic: frozenset[str] = frozenset()) -> _Encoding:
        """How a search space is encoded for k-means TPE (cached per search space); ``dynamic`` parameters are
        optional dimensions (NaN in the rows of trials without them)."""
        signature = (independent, tuple(sorted(dynamic))) + tuple(
            (name, repr(distribution)) for name, distribution in search_space.items())
        if signature not in self._encodings:
            if independent:
                (name, distribution), = search_space.items()
                self._encodings[signature] = _independent_encoding(signature, name, distribution)
            else:
                space = SearchSpace([optional(dimension(n, d)) if n in dynamic else dimension(n, d)
                                     for n, d in search_space.items()])
                self._encodings[signature] = _Encoding(signature, space, _row_encoder(search_space, dynamic),
                                                       space.decode, dynamic)
        return self._encodings[signature]

    def _history(self, study: Study, trial: FrozenTrial, encoding: _Encoding,
                 search_space: dict[str, BaseDistribution]) -> tuple[np.ndarray, np.ndarray, int]:
        """Encoded configurations [m, D], minimised values [m] (NaN: failed, pruned, pending) and the number of
        pending rows (last), of the trials that set every parameter of ``search_space``."""
        states = _FINISHED + ((TrialState.RUNNING,) if self._constant_liar else ())
        sign = -1.0 if study.direction == StudyDirection.MAXIMIZE else 1.0
        finished, pending = [], []
        for other in study.get_trials(deepcopy=False, states=states):
            if other.number == trial.number:
                continue
            if other.state == TrialState.RUNNING:
                row = _encode_trial(encoding.encode_row, _pending_params(other, search_space), other, search_space,
                                    encoding.dynamic, True)
                if row is not None:
                    pending.append(row)
                continue
            # a finished trial never changes: encode it once (the start time tells studies apart)
            cache_key = (encoding.signature, study.study_name, other.number, other.datetime_start)
            if cache_key not in self._rows:
                self._rows[cache_key] = _encode_trial(encoding.encode_row, other.params, other, search_space,
                                                      encoding.dynamic, False)
            row = self._rows[cache_key]
            if row is not None:
                value = other.value if other.state == TrialState.COMPLETE else None
                finished.append((row, sign * value if value is not None and math.isfinite(value) else math.nan))
        rows = [row for row, _ in finished] + pending
        x = np.stack(rows) if rows else np.zeros((0, len(encoding.space)), np.float32)
        y = np.asarray([value for _, value in finished] + [math.nan] * len(pending), np.float32)
        return x, y, len(pending)


class _Encoding(NamedTuple):
    signature: tuple  # the search space's distributions, as a hashable key
    space: SearchSpace
    encode_row: Callable[[dict[str, Any]], np.ndarray]  # trial parameters -> encoded row
    decode: Callable[[np.ndarray], Any]  # encoded row -> parameters (relative) or the parameter's value
    dynamic: frozenset = frozenset()  # parameters some trials lack (optional dimensions)


def _independent_encoding(signature: tuple, name: str, distribution: BaseDistribution) -> _Encoding:
    """A one-dimension encoding on a canonical space shared by many distributions (one compilation for all
    continuous parameters, one per number of choices or grid points): continuous values are mapped to [0, 1]
    (after the log for log-scaled ones), grids to their index, categorical choices to theirs."""
    if isinstance(distribution, CategoricalDistribution):
        space = SearchSpace([categorical("value", tuple(range(len(distribution.choices))))])
        return _Encoding(signature, space, lambda params: np.float32([distribution.to_internal_repr(params[name])]),
                         lambda encoded: distribution.choices[space.decode(encoded)["value"]])
    if isinstance(distribution, IntDistribution) and distribution.log:  # its kernel depends on the values
        space = SearchSpace([dimension("value", distribution)])
        return _Encoding(signature, space, lambda params: np.float32([math.log(params[name])]),
                         lambda encoded: space.decode(encoded)["value"])
    if distribution.step is not None:  # a grid of n points: its index
        low, step = distribution.low, distribution.step
        space = SearchSpace([integer("value", 0, int(round((distribution.high - low) / step)))])

        def decode_grid(encoded):
            value = low + step * space.decode(encoded)["value"]
            return int(value) if isinstance(distribution, IntDistribution) else min(round(value, 12), distribution.high)

        return _Encoding(signature, space, lambda params: np.float32([round((params[name] - low) / step)]),
                         decode_grid)
    scale = math.log if distribution.log else float
    low, high = scale(distribution.low), scale(distribution.high)
    space = SearchSpace([real("value", 0.0, 1.0)])

    def decode_unit(encoded):
        value = low + float(space.decode(encoded)["value"]) * (high - low)
        return min(max(math.exp(value) if distribution.log else value, distribution.low), distribution.high)

    return _Encoding(signature, space, lambda params: np.float32([(scale(params[name]) - low) / (high - low)]),
                     decode_unit)


def _row_encoder(search_space: dict[str, BaseDistribution], dynamic: frozenset[str] = frozenset()):
    """``params -> encoded row`` for a search space, matching `mpqjax.optim.space` (index of a categorical choice or of
    a grid step, log of a log-scaled value, the value otherwise; NaN for a missing ``dynamic`` parameter); raises
    KeyError or ValueError for a trial that does not fit."""
    transforms = []
    for name, distribution in search_space.items():
        if isinstance(distribution, CategoricalDistribution):
            transforms.append((name, distribution.to_internal_repr))
        elif distribution.log:
            transforms.append((name, math.log))
        elif distribution.step is not None:
            transforms.append((name, lambda value, low=distribution.low, step=distribution.step:
                               float(round((value - low) / step))))
        else:
            transforms.append((name, float))

    def encode_row(params: dict[str, Any]) -> np.ndarray:
        return np.asarray([transform(params[name]) if name in params or name not in dynamic else np.nan
                           for name, transform in transforms], np.float32)

    return encode_row


def _encode_trial(encode_row, params: dict[str, Any], trial: FrozenTrial, search_space: dict[str, BaseDistribution],
                  dynamic: frozenset[str], running: bool) -> np.ndarray | None:
    """The trial's encoded row, or None when it did not set every parameter (but the ``dynamic`` ones) with the
    search space's distribution (a running trial's published proposal has no recorded distribution yet)."""
    if not _same_distributions(trial, search_space, dynamic, allow_missing=running):
        return None
    try:
        return encode_row(params)
    except (KeyError, ValueError):
        return None


def _check_single_objective(study: Study) -> None:
    if len(study.directions) > 1:
        raise ValueError("KMeansTPESampler supports single-objective studies only "
                         f"(this study has {len(study.directions)} objectives)")


def _same_distributions(trial: FrozenTrial, search_space: dict[str, BaseDistribution], dynamic: frozenset[str],
                        allow_missing: bool) -> bool:
    recorded_distributions = trial.distributions
    for name, distribution in search_space.items():
        recorded = recorded_distributions.get(name)
        if recorded is None:
            if not allow_missing and name not in dynamic:
                return False
        elif recorded is not distribution and recorded != distribution:
            return False
    return True


def _pending_params(trial: FrozenTrial, search_space: dict[str, BaseDistribution]) -> dict[str, Any]:
    """A running trial's parameters: those suggested so far, completed by its published relative proposal."""
    params = dict(trial.params)
    chunks, index = [], 0
    while (chunk := trial.system_attrs.get(f"{PENDING_PARAMS_KEY}:{index}")) is not None:
        chunks.append(chunk)
        index += 1
    try:
        published = json.loads("".join(chunks)) if chunks else {}
    except json.JSONDecodeError:  # another worker is still writing its chunks
        published = {}
    for name, internal in published.items():
        if name in search_space and name not in params:
            params[name] = search_space[name].to_external_repr(internal)
    return params


def _publish_pending(study: Study, trial: FrozenTrial, params: dict[str, Any],
                     search_space: dict[str, BaseDistribution]) -> None:
    # optuna has no public way for a sampler to annotate the trial being sampled; its own TPESampler writes
    # system attributes through the study's storage the same way
    internal = {name: search_space[name].to_internal_repr(value) for name, value in params.items()}
    text = json.dumps(internal)
    for index, start in enumerate(range(0, len(text), _ATTR_CHUNK)):
        study._storage.set_trial_system_attr(trial._trial_id, f"{PENDING_PARAMS_KEY}:{index}",
                                             text[start:start + _ATTR_CHUNK])


__all__ = ["KMeansTPESampler", "dimension"]
