"""The dimensions of a search space: their kinds, constructors, encoding of one value, and conditions.

A dimension is a frozen `Dimension` built by `ordinal`, `categorical`, `integer`, `real` or `normal`; `conditional`
and `optional` make it exist only under a choice of another dimension, or only when a configuration sets it
(tree-structured spaces, `mpqjax.optim.space.SearchSpace`). `Dimension.model` says how the optimiser models it on
its encoded scale (TABLE, GRID, LOG_INT, CONTINUOUS; see `mpqjax.optim.parzen`).

Example:
    >>> bits = ordinal("bits", (8, 2, 4))
    >>> bits.choices, bits.encode(4)
    ((2, 4, 8), 1.0)
"""

from __future__ import annotations

import dataclasses
import math
import numbers
from collections.abc import Sequence
from typing import Any

import numpy as np

__all__ = ["CATEGORICAL", "CONTINUOUS", "GRID", "INTEGER", "LOG_INT", "MAX_TABLE_CHOICES", "ORDINAL", "REAL", "TABLE",
           "UNBOUNDED_SPREAD", "Dimension", "categorical", "conditional", "integer", "normal", "optional", "ordinal",
           "real", "same_choice"]

# Kinds of dimension, as the optimiser sees them.
ORDINAL, CATEGORICAL, INTEGER, REAL = "ordinal", "categorical", "integer", "real"

# How the optimiser models a dimension on its encoded scale.
TABLE = 0  # finite set of indices, kernels as (index x index) probability tables
GRID = 1  # indices 0..n-1 too many to tabulate: truncated Gaussian, integrated over each index's bin
LOG_INT = 2  # integers on a log scale: truncated Gaussian on log(value), integrated over [log(v - .5), log(v + .5)]
CONTINUOUS = 3  # truncated Gaussian density

MAX_TABLE_CHOICES = 64  # grids with more values than this are modelled as GRID instead of TABLE
UNBOUNDED_SPREAD = 4.0  # kernel bandwidths of a `normal` dimension: c * UNBOUNDED_SPREAD * sigma


@dataclasses.dataclass(frozen=True)
class Dimension:
    """One named dimension of a search space; build with `ordinal`, `categorical`, `integer` or `real`."""

    name: str
    kind: str
    choices: tuple = ()
    low: float = 0.0
    high: float = 0.0
    step: float | None = None
    log: bool = False
    weights: tuple | None = None  # `categorical(..., weights=)`: prior probabilities of the choices
    mu: float | None = None  # `normal`: the prior's mean and standard deviation on the encoded scale (unbounded)
    sigma: float | None = None
    parent: str | None = None  # `conditional`: active only while this dimension takes one of the choices ``when``
    when: tuple = ()
    optional: bool = False  # `optional`: a configuration may leave it out

    @property
    def conditional(self) -> bool:
        """Whether the dimension can be inactive (`conditional` or `optional`)."""
        return self.parent is not None or self.optional

    @property
    def num_choices(self) -> int | None:
        """Number of distinct values (None for a continuous dimension)."""
        if self.kind in (ORDINAL, CATEGORICAL):
            return len(self.choices)
        if self.step is not None:
            return int(math.floor((self.high - self.low) / self.step + 1e-9)) + 1
        if self.kind == INTEGER:  # log integers
            return int(self.high - self.low) + 1
        return None

    @property
    def model(self) -> int:
        """How the optimiser models this dimension (TABLE, GRID, LOG_INT or CONTINUOUS)."""
        if self.kind == CATEGORICAL:
            return TABLE
        if self.kind == ORDINAL or self.step is not None:
            return TABLE if self.num_choices <= MAX_TABLE_CHOICES else GRID
        return LOG_INT if self.kind == INTEGER else CONTINUOUS

    def encode(self, value: Any) -> float:
        """Encoded scalar of ``value``; raises ValueError when the value is not in the dimension."""
        if self.kind in (ORDINAL, CATEGORICAL):
            for index, choice in enumerate(self.choices):
                if same_choice(choice, value):
                    return float(index)
            raise ValueError(f"dimension {self.name!r}: {value!r} is not among the choices {list(self.choices)}")
        if not isinstance(value, numbers.Real) or isinstance(value, bool) or not math.isfinite(value):
            raise ValueError(f"dimension {self.name!r}: expected a finite number, got {value!r}")
        if self.kind == INTEGER and float(value) != int(value):
            raise ValueError(f"dimension {self.name!r}: expected an integer, got {value!r}")
        if not self.low <= value <= self.high or (self.log and value <= 0):
            raise ValueError(f"dimension {self.name!r}: {value!r} is outside [{self.low}, {self.high}]"
                             + (" (a log-normal value must be > 0)" if self.mu is not None and self.log else ""))
        if self.step is not None:
            index = (value - self.low) / self.step
            if abs(index - round(index)) > 1e-6:
                raise ValueError(f"dimension {self.name!r}: {value!r} is not on the grid {self.low} + k * {self.step}")
            return float(round(index))
        return math.log(value) if self.log else float(value)

    def decode(self, encoded: float) -> Any:
        """Python value of an encoded scalar (snapped to the nearest valid value)."""
        if self.kind in (ORDINAL, CATEGORICAL):
            return self.choices[int(np.clip(round(float(encoded)), 0, len(self.choices) - 1))]
        if self.step is not None:
            index = int(np.clip(round(float(encoded)), 0, self.num_choices - 1))
            value = self.low + index * self.step
            return int(round(value)) if self.kind == INTEGER else float(min(round(value, 12), self.high))
        value = math.exp(encoded) if self.log else float(encoded)
        if self.kind == INTEGER:
            return int(np.clip(round(value), self.low, self.high))
        return float(np.clip(value, self.low, self.high))


def same_choice(choice: Any, value: Any) -> bool:
    """Whether ``value`` is the choice ``choice``: numbers by value (a boolean is never a number), others by type and
    value."""
    if isinstance(choice, numbers.Number) and isinstance(value, numbers.Number):
        return not isinstance(value, bool) and choice == value
    return type(choice) is type(value) and choice == value


def ordinal(name: str, choices: Sequence[float]) -> Dimension:
    """An ordered set of numeric choices, e.g. bit-widths ``(2, 3, 4, 6, 8)`` or widths ``(0.75, ..., 1.25)``.

    Choices are sorted ascending; neighbours on that order are treated as similar by the optimiser.
    """
    choices = tuple(choices)
    if not choices:
        raise ValueError(f"dimension {name!r}: an ordinal dimension needs at least one choice")
    for choice in choices:
        if not isinstance(choice, numbers.Real) or isinstance(choice, bool) or not math.isfinite(choice):
            raise ValueError(f"dimension {name!r}: ordinal choices must be finite numbers, got {choice!r}")
    if len(set(choices)) != len(choices):
        raise ValueError(f"dimension {name!r}: choices must be distinct, got {list(choices)}")
    return Dimension(name, ORDINAL, choices=tuple(sorted(choices)))


def categorical(name: str, choices: Sequence[Any], *, weights: Sequence[float] | None = None) -> Dimension:
    """An unordered set of choices (strings, numbers, None, booleans: anything hashable).

    ``weights``: prior probabilities of the choices (hyperopt's ``hp.pchoice``; normalised): random draws follow
    them, and the optimiser's prior kernel is this distribution instead of the uniform one.
    """
    choices = tuple(choices)
    if not choices:
        raise ValueError(f"dimension {name!r}: a categorical dimension needs at least one choice")
    if len({(type(c), c) for c in choices}) != len(choices):
        raise ValueError(f"dimension {name!r}: choices must be distinct, got {list(choices)}")
    if weights is not None:
        weights = tuple(float(w) for w in weights)
        if len(weights) != len(choices) or not all(math.isfinite(w) and w >= 0 for w in weights) or not sum(weights):
            raise ValueError(f"dimension {name!r}: weights must be {len(choices)} non-negative numbers, not all 0, "
                             f"got {list(weights)}")
        weights = tuple(w / sum(weights) for w in weights)
    return Dimension(name, CATEGORICAL, choices=choices, weights=weights)


def integer(name: str, low: int, high: int, *, step: int = 1, log: bool = False) -> Dimension:
    """Integers in ``[low, high]`` on a grid of ``step``, or on a log scale (``log=True``, step 1 only)."""
    for bound in (low, high, step):
        if not isinstance(bound, numbers.Integral) or isinstance(bound, bool):
            raise ValueError(f"dimension {name!r}: integer bounds and step must be integers, got {bound!r}")
    _check_range(name, low, high, log)
    if step < 1:
        raise ValueError(f"dimension {name!r}: step must be >= 1, got {step}")
    if log and step != 1:
        raise ValueError(f"dimension {name!r}: a log-scaled integer dimension needs step 1")
    return Dimension(name, INTEGER, low=int(low), high=int(high), step=None if log else int(step), log=log)


def real(name: str, low: float, high: float, *, step: float | None = None, log: bool = False) -> Dimension:
    """Floats in ``[low, high]``: continuous, on a grid of ``step``, or continuous on a log scale."""
    for bound in (low, high):
        if not isinstance(bound, numbers.Real) or isinstance(bound, bool) or not math.isfinite(bound):
            raise ValueError(f"dimension {name!r}: bounds must be finite numbers, got {bound!r}")
    _check_range(name, low, high, log)
    if step is not None and (log or not step > 0):
        raise ValueError(f"dimension {name!r}: step must be > 0 and cannot be combined with log")
    return Dimension(name, REAL, low=float(low), high=float(high), step=step, log=log)


def normal(name: str, mu: float, sigma: float, *, log: bool = False) -> Dimension:
    """Unbounded floats with a normal prior N(mu, sigma), or log-normal (``log=True``: log(value) ~ N(mu, sigma)).

    hyperopt's ``hp.normal`` and ``hp.lognormal``. Random draws follow the prior; the optimiser's kernels live on the
    unbounded (log) scale, with bandwidths scaled by ``UNBOUNDED_SPREAD * sigma``.
    """
    for number in (mu, sigma):
        if not isinstance(number, numbers.Real) or isinstance(number, bool) or not math.isfinite(number):
            raise ValueError(f"dimension {name!r}: mu and sigma must be finite numbers, got {number!r}")
    if sigma <= 0:
        raise ValueError(f"dimension {name!r}: sigma must be > 0, got {sigma}")
    return Dimension(name, REAL, low=0.0 if log else -math.inf, high=math.inf, log=log, mu=float(mu),
                     sigma=float(sigma))


def conditional(dimension: Dimension, parent: str, when: Sequence[Any]) -> Dimension:
    """The dimension, active only while ``parent`` (an earlier ordinal or categorical dimension of the space, itself
    active) takes one of the choices ``when``.

    Example:
        >>> model = categorical("model", ("svm", "forest"))
        >>> space = SearchSpace([model, conditional(real("C", 1e-3, 1e3, log=True), "model", ["svm"])])
        >>> space.decode(space.encode({"model": "forest"}))
        {'model': 'forest'}
    """
    when = tuple(when)
    if not isinstance(parent, str) or not when:
        raise ValueError(f"dimension {dimension.name!r}: a conditional dimension needs a parent name and at least one "
                         "of its choices")
    return dataclasses.replace(dimension, parent=parent, when=when, optional=False)


def optional(dimension: Dimension) -> Dimension:
    """The dimension, which a configuration may leave out (a parameter an objective sets only sometimes)."""
    return dataclasses.replace(dimension, parent=None, when=(), optional=True)


def _check_range(name: str, low: float, high: float, log: bool) -> None:
    if low > high:
        raise ValueError(f"dimension {name!r}: low {low} is above high {high}")
    if log and low <= 0:
        raise ValueError(f"dimension {name!r}: a log-scaled dimension needs low > 0, got {low}")
