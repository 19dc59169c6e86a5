"""Fixtures shared by the export tests."""

import jax
import pytest

from mpqjax.nn import quant


@pytest.fixture(scope="session")
def jitted_quantize_weights():
    """The fake quantiser as a model runs it: bit-width traced."""
    return jax.jit(quant.quantize_weights)
