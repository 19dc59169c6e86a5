"""Specification of mpqjax.search.config: every setting has its default, help, group and rule in one place, and
`SearchConfig.validate` refuses bad settings by name."""

import dataclasses
import json
import re

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
    (dict(precision="float16"), "precision must be one of float32, bfloat16, got 'float16'"),
    (dict(learning_rate_scaling="cubic"), "learning_rate_scaling must be one of none, linear, sqrt, got 'cubic'"),
    (dict(bits=(8, 1)), "bits: bit-width must be an integer in [2, 16]"),
    (dict(baseline_bits=(17,)), "baseline_bits: bit-width must be an integer in [2, 16]"),
    (dict(bit_sets=((8, 6), (3, 1))), "bit_sets: bit-width must be an integer in [2, 16]"),
    (dict(population=0), "population must be a positive integer or 'auto', got 0"),
    (dict(population=61), "population 61 exceeds trials=60: every population is evaluated whole"),
    (dict(strategy="pmap"), "strategy must be auto or one of sequential, vmap, scan, got 'pmap'"),
    (dict(seed=-1), "seed must be an integer in [0, 2**32 - 1], got -1"),
    (dict(seed=2**32), "seed must be an integer in [0, 2**32 - 1], got 4294967296"),
    (dict(seed=1.5), "seed must be an integer in [0, 2**32 - 1], got 1.5"),
    (dict(fixed_bits=(("conv1", 99),)), "fixed_bits: layer 'conv1': bit-width must be an integer in [2, 16]"),
    (dict(fixed_bits=(("conv1", 8), ("conv1", 4))), "fixed_bits: layers fixed twice: conv1"),
    (dict(fixed_bits=("conv1",)), "fixed_bits must be (layer name, bits) pairs"),
    (dict(bits=(8, 8, 4)), "bits must name one or more distinct bit-widths, got [8, 8, 4]"),
    (dict(bit_sets=((8, 6), (4, 4))), "bit_sets: a set names a bit-width twice, got [4, 4]"),
    (dict(bit_sets=((8, 6), ())), "bit_sets must be one or more non-empty sets of bit-widths"),
    (dict(widths=(1.0, 1.0)), "widths must name distinct width multipliers, got [1.0, 1.0]"),
    (dict(widths=(0.0, 1.0)), "widths must be positive numbers, got [0.0, 1.0]"),
    (dict(max_size_bytes=16e3, min_size_reduction=4.0), "max_size_bytes and min_size_reduction both set the size "
                                                        "limit: give one"),
    (dict(max_latency_seconds=2e-6, min_speedup=3.0), "max_latency_seconds and min_speedup both set the latency "
                                                      "limit: give one"),
    (dict(trials=5, n_initial=100), "n_initial 100 exceeds trials=5: every trial would be random"),
])
def test_validate_names_the_bad_setting(settings, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        SearchConfig(**settings).validate()


def test_validate_accepts_the_limits_unset_and_population_auto():
    SearchConfig(min_size_reduction=None, population="auto", strategy="vmap", weight_decay=0).validate()


def test_validate_names_settings_as_the_caller_spells_them():
    with pytest.raises(ValueError, match="--max-probes must be a positive integer, got 0"):
        SearchConfig(hessian_max_probes=0).validate(names={"hessian_max_probes": "--max-probes"})
    with pytest.raises(ValueError, match="--population 8 exceeds --trials=4"):
        SearchConfig(population=8, trials=4).validate(names={"population": "--population", "trials": "--trials"})



def test_the_python_api_keeps_its_documented_defaults_next_to_what_is_set():
    # the default reduction applies with a size limit (the stricter wins; min_size_reduction=None drops it), and the
    # default n_initial is capped at a smaller number of trials (every trial random)
    SearchConfig(max_size_bytes=16e3).validate()
    SearchConfig(max_size_bytes=16e3, min_size_reduction=None).validate()
    SearchConfig(trials=5).validate()
    SearchConfig(trials=5, n_initial=5).validate()


def test_the_command_line_refuses_what_it_was_given_two_ways_or_in_vain():
    names = {"max_size_bytes": "--max-size", "min_size_reduction": "--min-size-reduction", "n_initial": "--n-initial",
             "float_checkpoint": "--params", "float_epochs": "--float-epochs", "prune": "--no-prune",
             "hessian_tol": "--hessian-tol", "bit_sets": "--bit-sets", "baseline": "--baseline",
             "baseline_bits": "--baseline-bits", "strategy": "--strategy", "population": "--population",
             "cost_strength": "--cost-strength",
             "method": "--method", "trials": "--trials", "rd_examples": "--rd-examples",
             "hessian_max_probes": "--hessian-max-probes"}
    cases = [
        # given explicitly, even at the default value: refused
        (dict(max_size_bytes=16e3), {"max_size_bytes", "min_size_reduction"},
         "--max-size and --min-size-reduction both set the size limit: give one"),
        (dict(trials=10, n_initial=20), {"trials", "n_initial"}, "--n-initial 20 exceeds --trials=10"),
        (dict(float_checkpoint="float.msgpack", float_epochs=3), {"float_checkpoint", "float_epochs"},
         "--float-epochs has no effect with --params: the float model is read from it, not trained"),
        (dict(prune=False, hessian_tol=0.1, bit_sets=((8,), (2,))), {"prune", "hessian_tol", "bit_sets"},
         "--bit-sets and --hessian-tol have no effect with --no-prune: there is no Hessian and no pruning"),
        (dict(baseline_bits=(8, 4)), {"baseline_bits"}, "--baseline-bits has no effect without --baseline"),
        (dict(strategy="vmap"), {"strategy"}, "--strategy has no effect with a population of 1"),
        # what a search method does not use
        (dict(method="hawq_ilp", trials=10), {"method", "trials"},
         "--trials has no effect with a one-shot --method (uniform, hawq_ilp, rd_layers, rd_channels, mixprec, dnas)"),
        (dict(method="random", n_initial=5), {"method", "n_initial"},
         "--n-initial has no effect with --method random: every trial is random"),
        (dict(method="rd_layers", hessian_max_probes=8), {"method", "hessian_max_probes"},
         "--hessian-max-probes has no effect with --method uniform, rd_layers, rd_channels, mixprec or dnas: it reads "
         "no Hessian"),
        (dict(method="hawq_ilp", cost_strength=2.0), {"method", "cost_strength"},
         "--cost-strength has no effect without --method mixprec or dnas"),
        (dict(method="dnas", supernet_epochs=3, trials=5), {"method", "supernet_epochs", "trials"},
         "--trials has no effect with a one-shot --method"),
        (dict(rd_examples=64), {"rd_examples"}, "--rd-examples has no effect without --method rd_layers or "
                                                "rd_channels"),
    ]
    for settings, given, message in cases:
        with pytest.raises(ValueError, match=re.escape(message)):
            SearchConfig(**settings).validate(names=names, given=given)
    # not given (a shared settings dict of the Python API), or in use: accepted
    SearchConfig(prune=False, hessian_tol=0.1).validate()
    SearchConfig(trials=10).validate(names=names, given={"trials"})
    SearchConfig(baseline=True, baseline_bits=(8, 4)).validate(given={"baseline", "baseline_bits"})
    SearchConfig(population=4, strategy="vmap").validate(given={"population", "strategy"})
    SearchConfig(strategy="sequential").validate(given={"strategy"})
    SearchConfig(method="hawq_ilp", hessian_max_probes=8).validate(given={"method", "hessian_max_probes"})
    SearchConfig(method="rd_channels", rd_examples=64).validate(given={"method", "rd_examples"})


def test_model_and_dataset_help_list_their_choices():
    from mpqjax import data
    from mpqjax.nn import models

    fields = {field.name: field for field in dataclasses.fields(SearchConfig)}
    assert all(name in fields["model"].metadata["help"] for name in models.available())
    assert all(name in fields["dataset"].metadata["help"] for name in data.LOADERS)
