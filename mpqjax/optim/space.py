"""Search spaces: named dimensions, their numeric encoding, random sampling and validation.

A `SearchSpace` is an ordered list of dimensions. A configuration is a ``dict`` of Python values
(``{"bits/conv1": 4, "width/stage1": 0.875}``); the optimiser works on its *encoding*, a fixed-length float vector
with one entry per dimension:

| kind | constructor | encoded value |
| --- | --- | --- |
| ordinal | `ordinal(name, choices)` | index of the choice (choices keep their order) |
| categorical | `categorical(name, choices)` | index of the choice (no order) |
| integer | `integer(name, low, high, step=1)` | grid index ``(value - low) / step`` |
| integer, log | `integer(name, low, high, log=True)` | ``log(value)`` |
| float | `real(name, low, high)` | value |
| float, stepped | `real(name, low, high, step=s)` | grid index ``(value - low) / s`` |
| float, log | `real(name, low, high, log=True)` | ``log(value)`` |
| float, normal prior | `normal(name, mu, sigma)` | value (unbounded) |
| float, log-normal prior | `normal(name, mu, sigma, log=True)` | ``log(value)`` (unbounded) |

`SearchSpace.spec()` gives the static arrays the optimiser is compiled with; `SearchSpace.values(x)` maps encoded
vectors to numeric values (bit-widths, multipliers, ...) inside jitted code, for feasibility functions.

Tree-structured spaces: `conditional(dimension, parent, when)` makes a dimension exist only while its parent (an
earlier ordinal or categorical dimension, itself active) takes one of the choices ``when`` (a model's own
parameters under the choice of model); `optional(dimension)` makes one that a configuration may simply leave out
(optuna's dynamic parameters). A configuration names exactly its active dimensions; an inactive dimension encodes as
NaN.

Example:
    >>> space = SearchSpace([ordinal("bits", (2, 3, 4, 6, 8)), real("lr", 1e-4, 1e-1, log=True)])
    >>> x = space.encode({"bits": 4, "lr": 0.01})
    >>> space.decode(x)["bits"]
    4
"""

from __future__ import annotations

import functools
import math
from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.scipy.special import ndtri

# the dimensions are re-exported: a space and its dimensions are imported together
from mpqjax.optim.dimensions import (
    CATEGORICAL,
    CONTINUOUS,
    GRID,
    INTEGER,
    LOG_INT,
    MAX_TABLE_CHOICES,
    ORDINAL,
    REAL,
    TABLE,
    UNBOUNDED_SPREAD,
    Dimension,
    categorical,
    conditional,
    integer,
    normal,
    optional,
    ordinal,
    real,
    same_choice,
)

__all__ = ["CATEGORICAL", "CONTINUOUS", "GRID", "INTEGER", "LOG_INT", "MAX_TABLE_CHOICES", "ORDINAL", "REAL", "TABLE",
           "UNBOUNDED_SPREAD", "Dimension", "SearchSpace", "SpaceSpec", "active", "categorical", "conditional",
           "deactivate", "encoded_values", "integer", "normal", "optional", "ordinal", "real", "sample_uniform", "snap"]


class SpaceSpec(NamedTuple):
    """Static description of a space's encoding, as arrays (one entry per dimension) for the optimiser.

    Attributes:
        model: TABLE, GRID, LOG_INT or CONTINUOUS per dimension.
        num_choices: number of indices for TABLE and GRID dimensions (0 otherwise).
        ordered: True for dimensions whose indices are ordered (all but categorical).
        low, high: bounds of the encoded scale (index range for TABLE/GRID, log or linear bounds otherwise).
        values: [D, max_choices] numeric value of each index of TABLE dimensions (NaN beyond the dimension's
            choices; the index itself for categorical dimensions), used by `SearchSpace.values`.
        value_low, value_high: bounds on the natural scale (integer bounds of LOG_INT dimensions).
        step: grid step of GRID dimensions (0 otherwise); value = value_low + step * index.
        log: True where the encoded value is the log of the natural value.
        parent: [D] index of a conditional dimension's parent (-1: none).
        when: [D, max_choices] True for the parent's choices (indices) under which the dimension is active.
        optional: [D] True for optional dimensions (active where their value is not NaN).
        depth: [] the longest chain of conditions (0 for a flat space), as an array.
        centre, sigma: [D] the prior kernel of numeric dimensions: the range's middle and width, or a `normal`
            dimension's mu and sigma (its ``low`` and ``high`` are infinite).
        prior: [D, max_choices] prior probabilities of the choices of categorical dimensions (uniform unless given
            ``weights``; 0 elsewhere).
    """

    model: np.ndarray
    num_choices: np.ndarray
    ordered: np.ndarray
    low: np.ndarray
    high: np.ndarray
    values: np.ndarray
    value_low: np.ndarray
    value_high: np.ndarray
    step: np.ndarray
    log: np.ndarray
    parent: np.ndarray
    when: np.ndarray
    optional: np.ndarray
    depth: np.ndarray
    centre: np.ndarray
    sigma: np.ndarray
    prior: np.ndarray


class SearchSpace:
    """An ordered collection of named dimensions with a fixed-length numeric encoding.

    Args:
        dimensions: the dimensions, built with `ordinal`, `categorical`, `integer` and `real`.

    Raises:
        ValueError: for an empty space or duplicate names.
    """

    def __init__(self, dimensions: Sequence[Dimension]):
        dimensions = tuple(dimensions)
        if not dimensions:
            raise ValueError("a search space needs at least one dimension")
        for dimension in dimensions:
            if not isinstance(dimension, Dimension):
                raise ValueError(f"expected Dimension objects (ordinal, categorical, integer, real), got {dimension!r}")
        names = [d.name for d in dimensions]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"duplicate dimension names: {duplicates}")
        self.dimensions = dimensions
        self._index = {d.name: i for i, d in enumerate(dimensions)}
        self._check_conditions()
        self._spec = self._build_spec()
        self._values = jax.jit(functools.partial(encoded_values, self._spec))

    def __len__(self) -> int:
        return len(self.dimensions)

    def __repr__(self) -> str:
        return f"SearchSpace({[d.name for d in self.dimensions]})"

    def __eq__(self, other) -> bool:
        return isinstance(other, SearchSpace) and self.dimensions == other.dimensions

    def __hash__(self) -> int:
        return hash(self.dimensions)

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(d.name for d in self.dimensions)

    def __getitem__(self, name: str) -> Dimension:
        return self.dimensions[self._index[name]]

    def _check_conditions(self) -> None:
        for position, d in enumerate(self.dimensions):
            if d.parent is None:
                continue
            parent = self.dimensions[self._index[d.parent]] if d.parent in self._index else None
            if parent is None or self._index[d.parent] >= position:
                raise ValueError(f"dimension {d.name!r}: its parent {d.parent!r} must be an earlier dimension")
            if parent.kind not in (ORDINAL, CATEGORICAL) or parent.model != TABLE:
                raise ValueError(f"dimension {d.name!r}: its parent {d.parent!r} must be ordinal or categorical (of "
                                 f"at most {MAX_TABLE_CHOICES} choices)")
            for choice in d.when:
                parent.encode(choice)  # raises naming the parent when the choice is not one of its own

    @property
    def conditional(self) -> bool:
        """Whether any dimension can be inactive (a tree-structured space)."""
        return any(d.conditional for d in self.dimensions)

    def depth(self) -> int:
        """The longest chain of conditions (0 for a space without `conditional` dimensions)."""
        depths: dict[str, int] = {}
        for d in self.dimensions:
            depths[d.name] = 0 if d.parent is None else depths[d.parent] + 1
        return max(depths.values())

    def active(self, config: Mapping[str, Any]) -> list[str]:
        """Names of the dimensions active in ``config``: conditions met, optional ones present."""
        active: set[str] = set()
        for d in self.dimensions:
            if d.parent is not None:
                on = d.parent in active and d.parent in config and any(
                    same_choice(choice, config[d.parent]) for choice in d.when)
            else:
                on = not d.optional or d.name in config
            if on:
                active.add(d.name)
        return [d.name for d in self.dimensions if d.name in active]

    def log10_size(self) -> float:
        """log10 of the number of configurations (inf when a dimension is continuous)."""
        sizes = [d.num_choices for d in self.dimensions]
        return math.inf if any(s is None for s in sizes) else float(sum(math.log10(s) for s in sizes))

    def validate(self, config: Mapping[str, Any]) -> None:
        """Raise ValueError naming the problem unless ``config`` names every dimension once with a valid value."""
        if not isinstance(config, Mapping):
            raise ValueError(f"a configuration must be a mapping from dimension name to value, got {type(config)}")
        unknown = sorted(set(config) - set(self._index))
        if unknown:
            raise ValueError(f"unknown dimension names: {unknown}")
        for dimension in self.dimensions:  # parents first: a bad parent value is named before its children
            if dimension.name in config:
                dimension.encode(config[dimension.name])
        active = self.active(config)
        missing = [n for n in active if n not in config]
        if missing:
            raise ValueError(f"configuration is missing dimensions: {missing}")
        inactive = [n for n in config if n not in active]
        if inactive:
            raise ValueError(f"configuration sets inactive dimensions (their condition is not met): {inactive}")

    def encode(self, config: Mapping[str, Any]) -> np.ndarray:
        """Encoded float32 vector of a configuration (validated; inactive dimensions are NaN)."""
        self.validate(config)
        return np.asarray([d.encode(config[d.name]) if d.name in config else np.nan for d in self.dimensions],
                          dtype=np.float32)

    def decode(self, encoded) -> dict[str, Any]:
        """Configuration (name -> Python value) of one encoded vector; inactive (and NaN) dimensions are left out."""
        encoded = np.asarray(encoded, dtype=np.float64)
        if encoded.shape != (len(self),):
            raise ValueError(f"expected an encoded vector of shape ({len(self)},), got {encoded.shape}")
        config = {d.name: d.decode(v) for d, v in zip(self.dimensions, encoded, strict=True) if not np.isnan(v)}
        if not self.conditional:
            return config
        active = set(self.active(config))
        return {name: value for name, value in config.items() if name in active}

    def decode_batch(self, encoded) -> list[dict[str, Any]]:
        """Configurations of a batch of encoded vectors, shape [n, len(space)]."""
        encoded = np.asarray(encoded)
        if encoded.ndim != 2:
            raise ValueError(f"expected a batch of encoded vectors [n, {len(self)}], got shape {encoded.shape}")
        return [self.decode(row) for row in encoded]

    def spec(self) -> SpaceSpec:
        """Static arrays describing the encoding (see `SpaceSpec`)."""
        return self._spec

    def sample(self, key: jax.Array, n: int) -> jax.Array:
        """``n`` uniformly random encoded configurations, shape [n, len(space)] (jittable, ``n`` static).

        Log-scaled dimensions are uniform on the log scale; index dimensions uniform over their indices; inactive
        conditional dimensions are NaN.
        """
        return sample_uniform(key, self._spec, n)

    def values(self, encoded: jax.Array) -> jax.Array:
        """Numeric value of every dimension of encoded vectors [..., D] (jittable).

        Ordinal choices give their value (a bit-width, a multiplier), categorical ones their index, integers and
        floats their value.
        """
        return self._values(jnp.asarray(encoded, jnp.float32))

    def _build_spec(self) -> SpaceSpec:
        dims = self.dimensions
        max_values = max([d.num_choices for d in dims if d.model == TABLE] + [1])
        parent = np.asarray([-1 if d.parent is None else self._index[d.parent] for d in dims], np.int32)
        prior = np.zeros((len(dims), max_values), np.float32)
        for i, d in enumerate(dims):
            if d.kind == CATEGORICAL:
                prior[i, : len(d.choices)] = d.weights or np.full(len(d.choices), 1.0 / len(d.choices))
        when = np.zeros((len(dims), max_values), bool)
        for i, d in enumerate(dims):
            for choice in d.when:
                when[i, int(self.dimensions[parent[i]].encode(choice))] = True
        values = np.full((len(dims), max_values), np.nan, dtype=np.float32)
        low, high = np.zeros(len(dims)), np.zeros(len(dims))
        for i, d in enumerate(dims):
            if d.model in (TABLE, GRID):
                low[i], high[i] = -0.5, d.num_choices - 0.5
            elif d.model == LOG_INT:
                low[i], high[i] = math.log(d.low - 0.5) if d.low > 0.5 else math.log(0.5), math.log(d.high + 0.5)
            elif d.mu is not None:
                low[i], high[i] = -math.inf, math.inf
            else:
                low[i], high[i] = (math.log(d.low), math.log(d.high)) if d.log else (d.low, d.high)
            if d.model == TABLE:
                if d.kind == ORDINAL:
                    values[i, : len(d.choices)] = d.choices
                elif d.kind == CATEGORICAL:
                    values[i, : len(d.choices)] = np.arange(len(d.choices))
                else:
                    values[i, : d.num_choices] = d.low + d.step * np.arange(d.num_choices)
        return SpaceSpec(
            model=np.asarray([d.model for d in dims], dtype=np.int32),
            num_choices=np.asarray([d.num_choices if d.model in (TABLE, GRID) else 0 for d in dims], dtype=np.int32),
            ordered=np.asarray([d.kind != CATEGORICAL for d in dims]),
            low=low.astype(np.float32),
            high=high.astype(np.float32),
            values=values,
            value_low=np.asarray([d.low for d in dims], dtype=np.float32),
            value_high=np.asarray([d.high for d in dims], dtype=np.float32),
            step=np.asarray([d.step if d.model == GRID else 0.0 for d in dims], dtype=np.float32),
            log=np.asarray([d.log and d.model in (LOG_INT, CONTINUOUS) for d in dims]),
            parent=parent,
            when=when,
            optional=np.asarray([d.optional for d in dims]),
            depth=np.asarray(self.depth(), np.int32),
            centre=np.asarray([d.mu if d.mu is not None else (lo + hi) / 2
                               for d, lo, hi in zip(dims, low, high, strict=True)], np.float32),
            sigma=np.asarray([d.sigma if d.sigma is not None else hi - lo
                              for d, lo, hi in zip(dims, low, high, strict=True)], np.float32),
            prior=prior,
        )


def snap(spec: SpaceSpec, encoded: jax.Array) -> jax.Array:
    """Snap encoded vectors [..., D] to valid values: indices rounded and clipped, log-integers to integers."""
    index = jnp.clip(jnp.round(encoded), 0, jnp.maximum(spec.num_choices - 1, 0))
    log_int = jnp.log(jnp.clip(jnp.round(jnp.exp(encoded)), spec.value_low, spec.value_high))
    clipped = jnp.clip(encoded, spec.low, spec.high)
    return jnp.where(spec.model <= GRID, index, jnp.where(spec.model == LOG_INT, log_int, clipped))


def sample_uniform(key: jax.Array, spec: SpaceSpec, n: int, *, max_depth: int | None = None) -> jax.Array:
    """``n`` uniformly random encoded vectors of a space described by ``spec`` (snapped to valid values; inactive
    conditional dimensions NaN; ``max_depth``: see `deactivate`)."""
    u = jax.random.uniform(key, (n, len(spec.model)), minval=1e-7, maxval=1 - 1e-7)
    unbounded = jnp.isinf(spec.low) | jnp.isinf(spec.high)  # a `normal` dimension: drawn from its prior
    drawn = jnp.where(unbounded, spec.centre + spec.sigma * ndtri(u),
                      jnp.where(unbounded, 0.0, spec.low) + u * jnp.where(unbounded, 0.0, spec.high - spec.low))
    # categorical choices follow their prior (uniform unless weighted): the inverse of its cumulative sum
    weighted = jnp.sum(jnp.cumsum(jnp.asarray(spec.prior), axis=-1) < u[..., None], axis=-1).astype(jnp.float32)
    drawn = jnp.where(jnp.asarray(spec.ordered), drawn, weighted)
    return deactivate(spec, snap(spec, drawn), max_depth=max_depth)


def active(spec: SpaceSpec, encoded: jax.Array, *, max_depth: int | None = None) -> jax.Array:
    """Which dimensions of encoded vectors [..., D] are active: [..., D] bool (jittable).

    A conditional dimension is active while its parent is active and takes one of its choices ``when``; any other
    dimension while its value is not NaN.

    Args:
        spec: the space's `SearchSpace.spec`.
        encoded: encoded vectors.
        max_depth: a static bound on the space's depth (`SearchSpace.depth`), as many passes as conditions chain;
            None: ``spec.depth`` (which must then be concrete).
    """
    present = ~jnp.isnan(encoded)
    passes = int(spec.depth) if max_depth is None else max_depth
    if passes == 0:
        return present
    parent = jnp.maximum(jnp.asarray(spec.parent), 0)
    parent_index = jnp.clip(jnp.nan_to_num(encoded[..., parent]), 0, spec.when.shape[1] - 1).astype(jnp.int32)
    allowed = jnp.take_along_axis(jnp.broadcast_to(jnp.asarray(spec.when), encoded.shape + spec.when.shape[1:]),
                                  parent_index[..., None], axis=-1)[..., 0]
    is_child = jnp.asarray(spec.parent) >= 0
    result = jnp.where(is_child, True, present)
    for _ in range(passes):  # each pass settles one more level of the tree
        result = jnp.where(is_child, result[..., parent] & allowed, present)
    return result


def deactivate(spec: SpaceSpec, encoded: jax.Array, *, max_depth: int | None = None) -> jax.Array:
    """Encoded vectors with their inactive conditional dimensions set to NaN (see `active`)."""
    return jnp.where(active(spec, encoded, max_depth=max_depth), encoded, jnp.nan)


def encoded_values(spec: SpaceSpec, encoded: jax.Array) -> jax.Array:
    """See `SearchSpace.values`."""
    index = jnp.clip(jnp.round(encoded), 0, spec.values.shape[1] - 1).astype(jnp.int32)
    table = jnp.broadcast_to(jnp.asarray(spec.values), encoded.shape + spec.values.shape[1:])
    table_value = jnp.take_along_axis(table, index[..., None], axis=-1)[..., 0]
    grid_value = spec.value_low + spec.step * encoded
    natural = jnp.where(spec.log, jnp.exp(encoded), encoded)
    return jnp.where(spec.model == TABLE, table_value, jnp.where(spec.model == GRID, grid_value, natural))
