"""Spaces padded to shared shapes, so that one compiled k-means TPE program serves every space of a bucket.

A `SearchSpace` encodes a configuration as one float per dimension, in the order of its dimensions. The optimiser's
compiled programs see a *padded* encoding instead: the tabulated dimensions first (`mpqjax.optim.space.TABLE`),
then the numeric ones (GRID, LOG_INT, CONTINUOUS), each block padded to a bucket size, with every dimension's kind,
number of choices and range as data (a `SpaceSpec` of arrays). Only the block sizes, the largest number of
choices and the size of a small space's enumeration fix array shapes; they make the `Bucket`, and two spaces of one
bucket run the same compiled programs (a search over a new space of a known bucket compiles nothing).

Padding is inert: a padded tabulated dimension has one choice (every kernel puts all its mass on index 0, so it
adds log 1 = 0 to every component), and a padded numeric dimension has the empty range [0, 0], which the Parzen
estimators leave out (`mpqjax.optim.parzen`); both always encode as 0, so they never tell configurations apart.

Example:
    >>> space = SearchSpace([real("lr", 1e-4, 1e-1, log=True), ordinal("bits", (2, 4, 8))])
    >>> padded = pad_space(space)
    >>> padded.bucket
    Bucket(table_dims=2, max_choices=8, numeric_dims=2, enumerated=0)
    >>> to_internal(padded, np.array([[np.log(0.01), 1.0]])).tolist()  # bits first, then lr, padded to 2 + 2
    [[1.0, 0.0, -4.605170249938965, 0.0]]
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from mpqjax.optim.acquisition import enumerate_configurations
from mpqjax.optim.space import CONTINUOUS, TABLE, SearchSpace, SpaceSpec, deactivate

__all__ = ["ENUMERATION_BUCKETS", "MIN_CHOICES", "Bucket", "PaddedSpace", "SpaceData", "bucket_size", "pad_space",
           "to_internal", "to_public"]

MIN_CHOICES = 8  # the smallest bucket of choices per tabulated dimension
ENUMERATION_BUCKETS = (64, 512, 4096)  # rows of a small space's padded enumeration (see `pad_space`)


class Bucket(NamedTuple):
    """What fixes the shapes of a space's padded encoding (static; equal buckets share compiled programs).

    Attributes:
        table_dims: tabulated dimensions, padded (0, or a power of two >= 2).
        max_choices: choices per tabulated dimension, padded (a power of two >= `MIN_CHOICES`; 1 without any).
        numeric_dims: numeric dimensions, padded (0, or a power of two >= 2).
        enumerated: rows of the padded enumeration of every configuration (one of `ENUMERATION_BUCKETS`), or 0 for
            a space too large (or continuous) to enumerate.
        conditional: whether dimensions can be inactive (`mpqjax.optim.space.conditional` or ``optional``).
        depth: the longest chain of conditions (`SearchSpace.depth`).
    """

    table_dims: int
    max_choices: int
    numeric_dims: int
    enumerated: int
    conditional: bool = False
    depth: int = 0

    @property
    def num_dims(self) -> int:
        """Width of the padded encoding."""
        return self.table_dims + self.numeric_dims


class SpaceData(NamedTuple):
    """A space in its bucket, as the arrays a compiled program takes (traced: any space of the bucket fits).

    Attributes:
        spec: the padded `SpaceSpec` (internal order: tabulated block, then numeric block).
        enumeration: [enumerated, num_dims] every configuration in the padded encoding (rows past
            ``enumerated_rows`` repeat the first), or [0, num_dims].
        enumerated_rows: the number of real rows of ``enumeration``.
    """

    spec: SpaceSpec
    enumeration: jax.Array
    enumerated_rows: jax.Array


class PaddedSpace(NamedTuple):
    """A space's padded encoding (see the module docstring).

    Attributes:
        bucket: the `Bucket`.
        data: the `SpaceData` as NumPy arrays.
        positions: [D] the padded column of each of the space's dimensions.
    """

    bucket: Bucket
    data: SpaceData
    positions: np.ndarray


def bucket_size(n: int, minimum: int) -> int:
    """0 for 0, else the smallest power of two >= max(n, minimum)."""
    return 0 if n == 0 else max(minimum, 1 << (int(n) - 1).bit_length())


@functools.lru_cache(maxsize=256)
def pad_space(space: SearchSpace) -> PaddedSpace:
    """The padded encoding of a space (cached per space: read-only arrays)."""
    spec = space.spec()
    model = np.asarray(spec.model)
    table, numeric = np.flatnonzero(model == TABLE), np.flatnonzero(model != TABLE)
    num_table, num_numeric = bucket_size(table.size, 2), bucket_size(numeric.size, 2)
    max_choices = bucket_size(int(spec.num_choices[table].max()), MIN_CHOICES) if table.size else 1
    width = num_table + num_numeric
    positions = np.empty(len(space), np.int64)
    positions[table], positions[numeric] = np.arange(table.size), num_table + np.arange(numeric.size)

    def padded(field, table_pad, numeric_pad):
        values = np.asarray(field)
        out = np.empty((width,) + values.shape[1:], values.dtype)
        out[:num_table], out[num_table:] = table_pad, numeric_pad
        out[positions] = values
        return out

    values = np.full((width, max(max_choices, spec.values.shape[1])), np.nan, np.float32)
    values[:num_table, 0] = 0.0
    values[positions, : spec.values.shape[1]] = spec.values
    when = np.zeros((width, values.shape[1]), bool)
    when[positions, : spec.when.shape[1]] = spec.when
    prior = np.zeros((width, values.shape[1]), np.float32)
    prior[positions, : spec.prior.shape[1]] = spec.prior
    padded_spec = SpaceSpec(
        model=padded(spec.model, TABLE, CONTINUOUS), num_choices=padded(spec.num_choices, 1, 0),
        ordered=padded(spec.ordered, True, True), low=padded(spec.low, -0.5, 0.0), high=padded(spec.high, 0.5, 0.0),
        values=values[:, :max_choices] if table.size else values, value_low=padded(spec.value_low, 0.0, 0.0),
        value_high=padded(spec.value_high, 0.0, 0.0), step=padded(spec.step, 0.0, 0.0),
        log=padded(spec.log, False, False),
        parent=padded(np.where(spec.parent >= 0, positions[np.maximum(spec.parent, 0)], -1), -1, -1),
        when=when[:, :max_choices] if table.size else when, optional=padded(spec.optional, False, False),
        depth=spec.depth, centre=padded(spec.centre, 0.0, 0.0), sigma=padded(spec.sigma, 0.0, 0.0),
        prior=prior[:, :max_choices] if table.size else prior)
    configurations = enumerate_configurations(space)
    if configurations is not None and space.conditional:  # inactive dimensions NaN (repeats are skipped later)
        configurations = np.asarray(deactivate(spec, configurations))
    if configurations is None:
        enumerated, enumeration = 0, np.zeros((0, width), np.float32)
    else:
        enumerated = next(size for size in ENUMERATION_BUCKETS if size >= configurations.shape[0])
        enumeration = np.zeros((enumerated, width), np.float32)
        enumeration[: configurations.shape[0], positions] = configurations
        enumeration[configurations.shape[0]:] = enumeration[0]  # repeats: never proposed while a real row is new
    rows = 0 if configurations is None else configurations.shape[0]
    data = SpaceData(padded_spec, enumeration, np.asarray(rows, np.int32))
    for array in jax.tree.leaves(data):
        array.flags.writeable = False
    bucket = Bucket(num_table, max_choices, num_numeric, enumerated, space.conditional, space.depth())
    return PaddedSpace(bucket, data, positions)


def to_internal(padded: PaddedSpace, x):
    """Encoded configurations [..., D] of the space in the padded encoding [..., num_dims] (padding 0; inactive
    dimensions stay NaN).

    NumPy in, NumPy out; traced or JAX arrays in, JAX arrays out.
    """
    shape = x.shape[:-1] + (padded.bucket.num_dims,)
    if isinstance(x, np.ndarray):
        out = np.zeros(shape, np.float32)
        out[..., padded.positions] = x
        return out
    return jnp.zeros(shape, jnp.float32).at[..., padded.positions].set(jnp.asarray(x, jnp.float32))


def to_public(padded: PaddedSpace, x):
    """Padded configurations [..., num_dims] back in the space's own encoding [..., D]."""
    return x[..., padded.positions]
