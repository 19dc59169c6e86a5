"""Fixtures shared by the optimiser's tests."""

import pytest

from mpqjax.optim.space import SearchSpace, ordinal

BITS = (2, 3, 4, 6, 8)


@pytest.fixture(scope="session")
def bits_space():
    """Six ordinal bit-width dimensions with choices (2, 3, 4, 6, 8): 15625 configurations, too many to enumerate."""
    return SearchSpace([ordinal(f"bits/{i}", BITS) for i in range(6)])
