"""Shared fixtures of the search's tests."""

import pytest


@pytest.fixture(scope="module")
def relaxed_problem(digits, trained_float_mlp, masked_mlp):
    """Factory ``(**settings) -> Problem``: the MLP on digits (float model trained 2 epochs), 6x below FiP16, bit-widths
    8, 4, 2, no pruning, 1-epoch supernets at batch 128; ``settings`` change the `SearchConfig`."""
    from mpqjax import cost as cost_model
    from mpqjax.search.config import SearchConfig
    from mpqjax.search.problem import Problem, config_limits, full_space

    def make(**settings) -> Problem:
        config = SearchConfig(**{**dict(model="mlp", bits=(8, 4, 2), prune=False, min_size_reduction=6.0,
                                        calibration="max", batch_size=128, supernet_epochs=1), **settings})
        table = masked_mlp.table(digits.input_shape)
        target = cost_model.load_target("fpga")
        float_model, float_variables, _ = trained_float_mlp(2)
        return Problem(config, digits, table, target, config_limits(config, table, target), float_model,
                       float_variables, masked_mlp, full_space(config, table))

    return make
