"""k-means TPE as a hyperopt algorithm: ``fmin(fn, space, algo=mpqjax.integrations.hyperopt.suggest, ...)``.

`suggest` has the signature of hyperopt's ``tpe.suggest`` and ``rand.suggest``: it reads the history from the
``Trials`` object, rebuilds a k-means TPE state from it in one batch (`mpqjax.integrations.proposals.propose`,
compiled once per space, power-of-two history bucket and number of new ids), proposes one distinct configuration
per new trial id in one batch, and returns the new trial documents.

Supported labels: ``hp.choice`` (an unordered choice; its options may be any constants), ``hp.randint`` (ordered
integers), ``hp.uniform``, ``hp.quniform``, ``hp.uniformint``, ``hp.loguniform`` and ``hp.qloguniform``. Refused
with a ValueError naming the label: unbounded distributions (``hp.normal``, ``hp.lognormal`` and their
quantised forms), ``hp.pchoice`` (its prior weights would be ignored) and conditional spaces (a label inside an
option of an ``hp.choice``): the sampler models a flat, fixed-length vector.

Trials: ``ok`` results give their loss (minimised); failed ones, errors and non-finite losses join g(x), the "bad"
density; trials still new or running (parallel ``Trials`` backends) are pending: they join g(x) and are never
proposed again.

Example:
    >>> from hyperopt import fmin, hp
    >>> from mpqjax.integrations.hyperopt import suggest
    >>> best = fmin(lambda p: (p["x"] - 2) ** 2, {"x": hp.uniform("x", -5, 5)}, algo=suggest, max_evals=40)
"""

from __future__ import annotations

import functools
import math
from typing import Any

import jax
import numpy as np

try:
    from hyperopt import pyll
    from hyperopt.base import JOB_STATE_DONE, JOB_STATE_NEW, JOB_STATE_RUNNING, STATUS_OK, miscs_update_idxs_vals
except ImportError as error:  # pragma: no cover - exercised only without the peers extra
    raise ImportError("mpqjax.integrations.hyperopt needs hyperopt: pip install 'mpqjax[peers]'") from error

from mpqjax.integrations.proposals import check_settings, propose
from mpqjax.optim.space import Dimension, SearchSpace, categorical, integer, real

SUPPORTED = "hp.choice, hp.randint, hp.uniform, hp.quniform, hp.uniformint, hp.loguniform, hp.qloguniform"


def suggest(new_ids, domain, trials, seed, **settings) -> list[dict]:
    """Propose one configuration per id of ``new_ids`` with k-means TPE (a hyperopt ``algo``).

    Args:
        new_ids: ids of the trials to create.
        domain: the ``hyperopt.base.Domain`` (search space and objective).
        trials: the ``hyperopt.Trials`` history.
        seed: integer seed (``fmin`` draws it from its ``rstate``, so ``fmin(..., rstate=...)`` is reproducible).
        **settings: `KMeansTPE` settings: ``n_initial`` (random trials first, default 20), ``k_initial``,
            ``max_clusters``, ``k_interval``, ``bandwidth``, ``bandwidth_decay``, ``min_bandwidth``,
            ``prior_weight``, ``num_candidates``, ``joint``, ``kmeans_iterations``, ``cluster_on``; defaults as
            `KMeansTPE`'s (``joint="auto"``: joint kernels for spaces of up to 20 labels, independent ones above,
            `mpqjax.optim.tpe.auto_joint`). Bind them with ``functools.partial(suggest, n_initial=10)``.

    Returns:
        The new trial documents (``trials.new_trial_docs``), as hyperopt's own algorithms return them.

    Raises:
        ValueError: an unsupported label (named in the message) or an invalid setting.
    """
    _check_settings(tuple(sorted(settings.items())))
    new_ids = list(new_ids)
    if not new_ids:
        return []
    labels = parse_space(domain)
    space = SearchSpace([dimension for _, dimension, _ in labels])
    x, y, num_pending = _history(trials, space, labels)
    encoded = propose(jax.random.key(int(seed) % 2**32), space, x, y, n=len(new_ids), num_pending=num_pending,
                      **settings)
    docs = []
    for new_id, row in zip(new_ids, encoded, strict=True):
        config = space.decode(row)
        idxs = {label: [new_id] for label, _, _ in labels}
        vals = {label: [to_hyperopt(config[label])] for label, _, to_hyperopt in labels}
        misc = dict(tid=new_id, cmd=domain.cmd, workdir=domain.workdir)
        miscs_update_idxs_vals([misc], idxs, vals)
        docs.extend(trials.new_trial_docs([new_id], [None], [domain.new_result()], [misc]))
    return docs


def parse_space(domain) -> list[tuple[str, Dimension, Any]]:
    """``(label, dimension, to_hyperopt)`` per label of a hyperopt domain, sorted by label.

    ``to_hyperopt`` maps the dimension's decoded value to the value hyperopt stores in a trial's ``misc.vals``
    (the option's index for ``hp.choice``, the quantised number for ``hp.qloguniform``).

    Raises:
        ValueError: a conditional label or an unsupported distribution, naming the label.
    """
    choices, conditional = {}, {}
    for node in pyll.dfs(domain.expr):
        if node.name == "switch" and node.pos_args[0].name == "hyperopt_param":
            choice_label = node.pos_args[0].arg["label"].obj
            choices[choice_label] = len(node.pos_args) - 1
            for option in node.pos_args[1:]:
                for inner in pyll.dfs(option):
                    if inner.name == "hyperopt_param":
                        conditional.setdefault(inner.arg["label"].obj, choice_label)
    labels = []
    for label in sorted(domain.params):
        if label in conditional:
            raise ValueError(f"hyperopt space: label {label!r} is conditional (inside an option of hp.choice "
                             f"{conditional[label]!r}); mpqjax.integrations.hyperopt.suggest supports flat spaces "
                             "only: move the label out of the choice")
        labels.append(_dimension(label, domain.params[label], choices.get(label)))
    return labels


_KINDS = ("randint", "uniform", "loguniform", "quniform", "qloguniform")


def _dimension(label: str, node, num_options: int | None):
    kind = node.name
    if kind not in _KINDS:
        raise ValueError(f"hyperopt space: label {label!r} uses {kind!r}, which mpqjax.integrations.hyperopt.suggest "
                         f"does not support (supported: {SUPPORTED})")
    try:
        args = [arg.obj for arg in node.pos_args] + [arg.obj for _, arg in node.named_args]
    except AttributeError:
        raise ValueError(f"hyperopt space: label {label!r} has a computed argument; use constant bounds") from None
    if kind == "randint" and num_options is not None:  # hp.choice: the option's index, unordered
        return label, categorical(label, tuple(range(num_options))), int
    if kind == "randint":  # hp.randint(label, upper) or hp.randint(label, low, upper): integers in [low, upper)
        low, high = (0, args[0]) if len(args) == 1 else args[:2]
        return label, integer(label, int(low), int(high) - 1), int
    if kind == "uniform":
        return label, real(label, float(args[0]), float(args[1])), float
    if kind == "loguniform":  # bounds are on the log scale
        return label, real(label, math.exp(args[0]), math.exp(args[1]), log=True), float
    if kind == "quniform":  # round(uniform(low, high) / q) * q
        low, high, q = (float(a) for a in args[:3])
        return label, real(label, round(low / q) * q, round(high / q) * q, step=q), float
    # qloguniform: round(exp(uniform(low, high)) / q) * q, modelled continuous and quantised on output
    low, high, q = (float(a) for a in args[:3])
    return label, real(label, math.exp(low), math.exp(high), log=True), functools.partial(_quantise, q=q)


def _quantise(value: float, q: float) -> float:
    return float(round(value / q) * q)


def _history(trials, space: SearchSpace, labels) -> tuple[np.ndarray, np.ndarray, int]:
    """Encoded configurations [m, D], losses [m] (NaN: failed or pending) and the number of pending rows (last)."""
    finished, pending = [], []
    for doc in trials.trials:
        vals = doc["misc"].get("vals", {})
        try:
            config = {label: _from_hyperopt(dimension, vals[label][0]) for label, dimension, _ in labels}
            row = space.encode(config)
        except (KeyError, IndexError, ValueError, TypeError):
            continue  # a trial from another space (or with an inactive label)
        if doc["state"] in (JOB_STATE_NEW, JOB_STATE_RUNNING):
            pending.append(row)
            continue
        result = doc.get("result", {})
        loss = result.get("loss")
        ok = doc["state"] == JOB_STATE_DONE and result.get("status") == STATUS_OK and loss is not None
        finished.append((row, float(loss) if ok and math.isfinite(float(loss)) else math.nan))
    rows = [row for row, _ in finished] + pending
    x = np.stack(rows) if rows else np.zeros((0, len(space)), np.float32)
    y = np.asarray([loss for _, loss in finished] + [math.nan] * len(pending), np.float32)
    return x, y, len(pending)


def _from_hyperopt(dimension: Dimension, value) -> Any:
    """The dimension's value of a stored hyperopt value (a choice index, an integer, a float)."""
    if dimension.kind == "categorical" or dimension.kind == "integer":
        return int(value)
    value = float(value)
    if dimension.log:  # qloguniform values can round below the range (even to 0)
        return min(max(value, dimension.low), dimension.high)
    return value


@functools.lru_cache(maxsize=32)
def _check_settings(settings: tuple) -> None:
    check_settings(dict(settings))


__all__ = ["parse_space", "suggest"]
