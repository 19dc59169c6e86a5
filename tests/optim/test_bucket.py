"""Specification of `mpqjax.optim.bucket`: spaces padded to shared shapes, with inert padding."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mpqjax.optim import parzen
from mpqjax.optim.bucket import ENUMERATION_BUCKETS, Bucket, bucket_size, pad_space, to_internal, to_public
from mpqjax.optim.space import SearchSpace, categorical, integer, ordinal, real

MIXED = SearchSpace([real("lr", 1e-4, 1e-1, log=True), ordinal("bits", (2, 4, 8)), integer("units", 1, 1000, log=True),
                     categorical("act", ("relu", "gelu", "tanh")), real("frac", 0.0, 1.0)])


def test_bucket_sizes_are_powers_of_two_from_a_minimum():
    assert [bucket_size(n, 2) for n in (0, 1, 2, 3, 5, 33)] == [0, 2, 2, 4, 8, 64]
    assert bucket_size(3, 8) == 8 and bucket_size(9, 8) == 16


def test_tabulated_dimensions_come_first_then_numeric_ones_each_padded():
    padded = pad_space(MIXED)
    assert padded.bucket == Bucket(table_dims=2, max_choices=8, numeric_dims=4, enumerated=0)
    assert padded.positions.tolist() == [2, 0, 3, 1, 4]
    x = np.asarray(MIXED.sample(jax.random.key(0), 5))
    internal = to_internal(padded, x)
    assert internal.shape == (5, 6) and np.all(internal[:, 5] == 0.0)  # the padded numeric column
    np.testing.assert_array_equal(to_public(padded, internal), x)
    np.testing.assert_array_equal(np.asarray(to_internal(padded, jnp.asarray(x))), internal)  # traced path


def test_spaces_differing_only_in_ranges_and_kinds_share_a_bucket():
    a = SearchSpace([real("x", -5.0, 5.0), real("y", 0.0, 1.0)])
    b = SearchSpace([real("lr", 1e-5, 1.0, log=True), integer("n", 1, 10_000, log=True)])
    assert pad_space(a).bucket == pad_space(b).bucket
    assert pad_space(SearchSpace([ordinal(f"b{i}", (2, 4)) for i in range(20)])).bucket == pad_space(
        SearchSpace([categorical(f"c{i}", "abcde") for i in range(30)])).bucket


def test_a_small_space_is_enumerated_padded_with_repeats():
    small = SearchSpace([ordinal("a", (1, 2, 3)), categorical("b", ("x", "y"))])
    padded = pad_space(small)
    assert padded.bucket.enumerated == ENUMERATION_BUCKETS[0]
    rows = int(padded.data.enumerated_rows)
    enumeration = to_public(padded, padded.data.enumeration)
    assert rows == 6 and len({tuple(row) for row in enumeration[:rows].tolist()}) == 6
    assert np.all(enumeration[rows:] == enumeration[0])


@pytest.mark.parametrize("joint", [True, False])
def test_padding_changes_no_density(joint):
    # the same observations scored in the space's own layout and in the padded one
    padded = pad_space(MIXED)
    observations = np.asarray(MIXED.sample(jax.random.key(1), 7))
    candidates = np.asarray(MIXED.sample(jax.random.key(2), 5))
    weights = jnp.asarray([1.0, 0, 1, 1, 0, 1, 1])
    own = parzen.make_layout(MIXED.spec())
    wide = parzen.make_layout(padded.data.spec, num_table=padded.bucket.table_dims,
                              max_choices=padded.bucket.max_choices)

    def score(layout, observations, candidates):  # one program per layout: op by op takes seconds of dispatch
        return jax.jit(lambda o, c: parzen.log_prob(layout, parzen.fit(layout, o, weights, 0.2), c, joint=joint))(
            observations, candidates)

    expected = score(own, observations, candidates)
    actual = score(wide, to_internal(padded, observations), to_internal(padded, candidates))
    np.testing.assert_allclose(np.asarray(actual), np.asarray(expected), rtol=1e-5, atol=1e-4)
