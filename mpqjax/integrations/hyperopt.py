"""k-means TPE as a hyperopt algorithm: ``fmin(fn, space, algo=mpqjax.integrations.hyperopt.suggest, ...)``.

`suggest` has the signature of hyperopt's ``tpe.suggest`` and ``rand.suggest``: it reads the history from the
``Trials`` object, rebuilds a k-means TPE state from it in one batch (`mpqjax.integrations.proposals.propose`,
compiled once per space, power-of-two history bucket and number of new ids), proposes one distinct configuration
per new trial id in one batch, and returns the new trial documents.

Supported labels: ``hp.choice`` (an unordered choice; its options may be any constants, and may hold labels of
their own: a tree-structured space, modelled as `mpqjax.optim.space.conditional` dimensions, each fitted over the
trials where it is active), ``hp.randint`` (ordered integers), ``hp.uniform``, ``hp.quniform``, ``hp.uniformint``,
``hp.loguniform``, ``hp.qloguniform``, and the unbounded ``hp.normal``, ``hp.lognormal`` and their ``q`` forms
(`mpqjax.optim.space.normal`, kernels on the unbounded scale; the ``q`` forms are modelled continuous and quantised
on output), and ``hp.pchoice`` (its probabilities are the choice's prior: random draws and the prior kernel follow
them). Refused with a ValueError naming the label: a label under two different choices, and computed arguments.

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
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import numpy as np

try:
    from hyperopt.base import JOB_STATE_DONE, JOB_STATE_NEW, JOB_STATE_RUNNING, STATUS_OK, miscs_update_idxs_vals
except ImportError as error:  # pragma: no cover - exercised only without the peers extra
    raise ImportError("mpqjax.integrations.hyperopt needs hyperopt: pip install 'mpqjax[peers]'") from error

from mpqjax.integrations.proposals import check_settings, propose
from mpqjax.optim.space import Dimension, SearchSpace, categorical, conditional, integer, normal, real

SUPPORTED = ("hp.choice and hp.pchoice (with labels inside their options), hp.randint, hp.uniform, hp.quniform, "
             "hp.uniformint, hp.loguniform, hp.qloguniform, hp.normal, hp.qnormal, hp.lognormal, hp.qlognormal")


def suggest(new_ids, domain, trials, seed, **settings) -> list[dict]:
    """Propose one configuration per id of ``new_ids`` with k-means TPE (a hyperopt ``algo``).

    Args:
        new_ids: ids of the trials to create.
        domain: the ``hyperopt.base.Domain`` (search space and objective).
        trials: the ``hyperopt.Trials`` history.
        seed: integer seed (``fmin`` draws it from its ``rstate``, so ``fmin(..., rstate=...)`` is reproducible).
        **settings: `KMeansTPE` settings: ``n_initial`` (random trials first, default 10), ``k_initial``,
            ``max_clusters``, ``k_interval``, ``bandwidth``, ``bandwidth_decay``, ``min_bandwidth``,
            ``prior_weight``, ``num_candidates``, ``joint``, ``kmeans_iterations``, ``cluster_on``, ``bad``;
            defaults as `KMeansTPE`'s (``joint="auto"``: joint kernels for spaces of up to 20 labels, independent
            ones above, `mpqjax.optim.tpe.auto_joint`); the paper's algorithm is
            ``functools.partial(suggest, **mpqjax.optim.PAPER_SETTINGS)``. Bind them with ``functools.partial``.

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
    space = SearchSpace([label.dimension for label in labels])
    x, y, num_pending = _history(trials, space, labels)
    encoded = propose(jax.random.key(int(seed) % 2**32), space, x, y, n=len(new_ids), num_pending=num_pending,
                      **settings)
    docs = []
    for new_id, row in zip(new_ids, encoded, strict=True):
        config = space.decode(row)  # the active labels only: the others get empty lists, as hyperopt stores them
        idxs = {label.name: [new_id] if label.name in config else [] for label in labels}
        vals = {label.name: [label.to_hyperopt(config[label.name])] if label.name in config else []
                for label in labels}
        misc = dict(tid=new_id, cmd=domain.cmd, workdir=domain.workdir)
        miscs_update_idxs_vals([misc], idxs, vals)
        docs.extend(trials.new_trial_docs([new_id], [None], [domain.new_result()], [misc]))
    return docs


class Label(NamedTuple):
    """One label of a hyperopt space, as k-means TPE sees it.

    Attributes:
        name: the label.
        dimension: its `mpqjax.optim.space` dimension (`conditional` when it lies inside an option of hp.choice).
        to_hyperopt: maps the dimension's decoded value to the value hyperopt stores in a trial's ``misc.vals``
            (the option's index for ``hp.choice``, the quantised number for the ``q`` forms).
        from_hyperopt: maps a stored value back to the dimension's value.
    """

    name: str
    dimension: Dimension
    to_hyperopt: Callable[[Any], Any]
    from_hyperopt: Callable[[Any], Any]


def parse_space(domain) -> list[Label]:
    """The labels of a hyperopt domain, parents before the labels inside their options (then by name).

    A label inside option i of an ``hp.choice`` is `mpqjax.optim.space.conditional` on that choice taking option i
    (or any of the options it appears in), to any depth of nesting.

    Raises:
        ValueError: an unsupported distribution, a label under two different choices, or a computed argument,
            naming the label.
    """
    contexts: dict[str, set] = {}
    choices: dict[str, int] = {}
    visited: set = set()

    def visit(node, context):
        if (id(node), context) in visited:
            return
        visited.add((id(node), context))
        if node.name == "hyperopt_param":
            contexts.setdefault(node.arg["label"].obj, set()).add(context)
            return
        if node.name == "switch" and node.pos_args[0].name == "hyperopt_param":
            label = node.pos_args[0].arg["label"].obj
            choices[label] = len(node.pos_args) - 1
            visit(node.pos_args[0], context)
            for index, option in enumerate(node.pos_args[1:]):
                visit(option, (label, index))
            return
        for child in node.inputs():
            visit(child, context)

    visit(domain.expr, None)
    labels = {}
    for label in domain.params:
        found = contexts.get(label, {None})
        parents = {context[0] if context else None for context in found}
        if len(parents) > 1:
            raise ValueError(f"hyperopt space: label {label!r} appears under different choices "
                             f"({sorted(map(str, parents))}); mpqjax.integrations.hyperopt.suggest needs one parent "
                             "per label")
        entry = _label(label, domain.params[label], choices.get(label))
        parent = parents.pop()
        if parent is not None:
            when = sorted(context[1] for context in found)
            entry = entry._replace(dimension=conditional(entry.dimension, parent, when))
        labels[label] = entry
    return sorted(labels.values(), key=lambda entry: (_depth(entry.name, labels), entry.name))


def _depth(name: str, labels: dict[str, Label]) -> int:
    parent = labels[name].dimension.parent
    return 0 if parent is None else 1 + _depth(parent, labels)


_KINDS = ("randint", "categorical", "uniform", "loguniform", "quniform", "qloguniform", "normal", "lognormal",
          "qnormal", "qlognormal")


def _label(label: str, node, num_options: int | None) -> Label:
    kind = node.name
    if kind not in _KINDS:
        raise ValueError(f"hyperopt space: label {label!r} uses {kind!r}, which mpqjax.integrations.hyperopt.suggest "
                         f"does not support (supported: {SUPPORTED})")
    try:
        if kind == "categorical":  # hp.pchoice: the options' probabilities
            args = [[arg.obj for arg in node.pos_args[0].pos_args]]
        else:
            args = [arg.obj for arg in node.pos_args] + [arg.obj for _, arg in node.named_args]
    except AttributeError:
        raise ValueError(f"hyperopt space: label {label!r} has a computed argument; use constant bounds") from None
    if kind == "categorical":  # the option's index, unordered, with the prior weights of hp.pchoice
        return Label(label, categorical(label, tuple(range(len(args[0]))), weights=args[0]), int, int)
    if kind == "randint" and num_options is not None:  # hp.choice: the option's index, unordered
        return Label(label, categorical(label, tuple(range(num_options))), int, int)
    if kind == "randint":  # hp.randint(label, upper) or hp.randint(label, low, upper): integers in [low, upper)
        low, high = (0, args[0]) if len(args) == 1 else args[:2]
        return Label(label, integer(label, int(low), int(high) - 1), int, int)
    if kind == "uniform":
        return Label(label, real(label, float(args[0]), float(args[1])), float, float)
    if kind == "quniform":  # round(uniform(low, high) / q) * q
        low, high, q = (float(a) for a in args[:3])
        return Label(label, real(label, round(low / q) * q, round(high / q) * q, step=q), float, float)
    if kind in ("loguniform", "qloguniform"):  # bounds on the log scale
        dimension = real(label, math.exp(args[0]), math.exp(args[1]), log=True)
    else:  # normal, lognormal, qnormal, qlognormal: mu and sigma (of the log for the log-normal forms)
        dimension = normal(label, float(args[0]), float(args[1]), log="lognormal" in kind)
    if not kind.startswith("q"):
        return Label(label, dimension, float, functools.partial(_inside, dimension=dimension, smallest=0.0))
    # round(value / q) * q: modelled continuous and quantised on output; a stored 0 of a log form is read as q / 2
    q = float(args[2])
    return Label(label, dimension, functools.partial(_quantise, q=q),
                 functools.partial(_inside, dimension=dimension, smallest=q / 2))


def _quantise(value: float, q: float) -> float:
    return float(round(value / q) * q)


def _inside(value, dimension: Dimension, smallest: float) -> float:
    """A stored float inside the dimension (quantised values can round past a bound, log ones to 0)."""
    value = min(max(float(value), dimension.low), dimension.high)
    return max(value, smallest) if dimension.log else value


def _history(trials, space: SearchSpace, labels: list[Label]) -> tuple[np.ndarray, np.ndarray, int]:
    """Encoded configurations [m, D], losses [m] (NaN: failed or pending) and the number of pending rows (last)."""
    finished, pending = [], []
    for doc in trials.trials:
        vals = doc["misc"].get("vals", {})
        try:  # a label a trial does not have (inactive in its branch) is stored as an empty list
            config = {label.name: label.from_hyperopt(vals[label.name][0]) for label in labels
                      if vals.get(label.name)}
            row = space.encode(config)
        except (KeyError, IndexError, ValueError, TypeError):
            continue  # a trial from another space
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


@functools.lru_cache(maxsize=32)
def _check_settings(settings: tuple) -> None:
    check_settings(dict(settings))


__all__ = ["Label", "parse_space", "suggest"]
