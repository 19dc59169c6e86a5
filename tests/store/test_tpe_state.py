"""Specification of `mpqjax.store.tpe_state`: a k-means TPE state as a file, written atomically, read back exactly."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mpqjax.optim import KMeansTPE, SearchSpace, ordinal, run
from mpqjax.store import load_tpe_state, save_tpe_state


def distance_to_corner(x):
    return jnp.sum((x - 3.0) ** 2, axis=-1)


@pytest.fixture(scope="module")
def opt():
    space = SearchSpace([ordinal("a", (2, 3, 4, 6, 8)), ordinal("b", (2, 3, 4, 6, 8))])
    return KMeansTPE(space, capacity=16, n_initial=4, k_initial=3, max_clusters=4, k_interval=2)


def test_a_saved_state_resumes_the_search_exactly(opt, tmp_path):
    whole = run(opt, jax.random.key(0), distance_to_corner, 12)
    half = run(opt, jax.random.key(0), distance_to_corner, 6)
    save_tpe_state(tmp_path / "state.npz", half)
    loaded = load_tpe_state(tmp_path / "state.npz")
    jax.tree.map(np.testing.assert_array_equal, loaded, half)  # every field, the hash multipliers included
    resumed = run(opt, jax.random.key(0), distance_to_corner, 12, state=loaded)
    np.testing.assert_array_equal(np.asarray(resumed.x), np.asarray(whole.x))
    np.testing.assert_array_equal(np.asarray(resumed.y), np.asarray(whole.y))
    assert [p.name for p in tmp_path.iterdir()] == ["state.npz"]  # no temporary file left behind


def test_loading_a_file_that_is_not_a_state_is_a_clear_error(tmp_path):
    np.savez(tmp_path / "other.npz", weights=np.ones(3))
    with pytest.raises(ValueError, match="not a TPE state file"):
        load_tpe_state(tmp_path / "other.npz")
    with pytest.raises(ValueError, match="cannot read a TPE state"):
        load_tpe_state(tmp_path / "missing.npz")
