"""Specification of mpqjax.search.config: every setting has its default, help, group and rule in one place, and
`SearchConfig.validate` refuses bad settings by name."""

import dataclasses
import json

import pytest

from mpqjax.search.config import DEFAULT_SIZE_REDUCTION, GROUPS, SearchConfig


def test_every_setting_has_a_help_text_and_a_group():
    for field in dataclasses.fields(SearchConfig):
        assert field.metadata["help"], field.name
        assert field.metadata["group"] in GROUPS, field.name


def test_defaults_are_the_embedded_digits_job_and_valid():
    config = SearchConfig()
    config.validate()
    assert (config.model, config.dataset, config.target) == ("digits_cnn", "digits", "fpga")
    assert config.min_size_reduction == DEFAULT_SIZE_REDUCTION and config.max_size_bytes is None
    assert (config.trials, config.n_initial, config.final_epochs) == (60, 20, 90)


def test_to_dict_is_json_with_lists_and_keeps_the_field_order():
    settings = SearchConfig(fixed_bits=(("conv1", 8),)).to_dict()
    assert list(settings) == [field.name for field in dataclasses.fields(SearchConfig)]
    assert settings["bit_sets"] == [[8, 6], [6, 4, 3], [4, 3, 2], [3, 2]]
    assert settings["fixed_bits"] == [["conv1", 8]]
    assert json.loads(json.dumps(settings)) == settings


@pytest.mark.parametrize("settings, message", [
    (dict(model="no_such_model"), "unknown model 'no_such_model'; available: digits_cnn"),
    (dict(dataset="mnist"), "unknown dataset 'mnist'; available: digits"),
    (dict(max_size_bytes=-5.0), "max_size_bytes must be a positive number, got -5.0"),
    (dict(min_speedup=float("inf")), "min_speedup must be a positive number"),
    (dict(penalty=True), "penalty must be a positive number, got True"),
    (dict(trials=0), "trials must be a positive integer, got 0"),
    (dict(hessian_max_probes=2.5), "hessian_max_probes must be a positive integer, got 2.5"),
    (dict(weight_decay=-1e-4), "weight_decay must be a non-negative number"),
    (dict(calibration="median"), "calibration must be one of max, percentile, mse, got 'median'"),
    (dict(bits=(8, 1)), "bits: bit-width must be an integer in [2, 16]"),
    (dict(baseline_bits=(17,)), "baseline_bits: bit-width must be an integer in [2, 16]"),
    (dict(bit_sets=((8, 6), (3, 1))), "bit_sets: bit-width must be an integer in [2, 16]"),
    (dict(population=0), "population must be a positive integer or 'auto', got 0"),
    (dict(population=61), "population 61 exceeds trials=60: every population is evaluated whole"),
    (dict(strategy="pmap"), "strategy must be auto or one of sequential, vmap, scan, got 'pmap'"),
])
def test_validate_names_the_bad_setting(settings, message):
    with pytest.raises(ValueError, match=message.replace("[", r"\[").replace("(", r"\(").replace(")", r"\)")):
        SearchConfig(**settings).validate()


def test_validate_accepts_the_limits_unset_and_population_auto():
    SearchConfig(min_size_reduction=None, population="auto", strategy="vmap", weight_decay=0).validate()


def test_validate_names_settings_as_the_caller_spells_them():
    with pytest.raises(ValueError, match="--max-probes must be a positive integer, got 0"):
        SearchConfig(hessian_max_probes=0).validate(names={"hessian_max_probes": "--max-probes"})
    with pytest.raises(ValueError, match="--population 8 exceeds --trials=4"):
        SearchConfig(population=8, trials=4).validate(names={"population": "--population", "trials": "--trials"})

