"""Specification of mpqjax.cli.options: options generated from SearchConfig's metadata (one default, one help, one
rule per setting), the parsers of their text (units, lists, groups), and configs built from what was given."""

import argparse
import dataclasses

import pytest

from mpqjax.cli import options
from mpqjax.search import SearchConfig


def _parser(fields, **kwargs):
    parser = argparse.ArgumentParser()
    options.add_config_options(parser, fields, **kwargs)
    return parser


@pytest.mark.parametrize("text, expected", [
    ("20000", 20000.0), ("16kB", 16e3), ("0.5MB", 5e5), ("64KiB", 65536.0), ("1 gb", 1e9), ("1e3b", 1e3),
])
def test_sizes_take_units(text, expected):
    assert options.size_bytes(text) == pytest.approx(expected)


@pytest.mark.parametrize("text, expected", [("0.01", 0.01), ("1.5ms", 1.5e-3), ("2us", 2e-6), ("40ns", 4e-8)])
def test_durations_take_units(text, expected):
    assert options.seconds(text) == pytest.approx(expected)


@pytest.mark.parametrize("text", ["-3kB", "0", "soon", "16 parsecs", "nan", ""])
def test_a_quantity_must_be_positive_with_a_known_unit(text):
    with pytest.raises(argparse.ArgumentTypeError, match="expected a positive number with an optional unit"):
        options.size_bytes(text)


def test_lists_and_groups():
    assert options.int_list("8,6,4") == (8, 6, 4)
    assert options.float_list("0.75,1") == (0.75, 1.0)
    assert options.number_list("8, 3.5") == (8.0, 3.5)
    assert options.bit_sets("8,6;4,3,2") == ((8, 6), (4, 3, 2))
    assert options.fixed_bits("head=8, conv1=8,") == (("conv1", 8), ("head", 8))
    assert options.fixed_bits("") == ()
    assert options.fixed_bits("conv1=8,conv1=4") == (("conv1", 4), ("conv1", 8))  # kept twice: validate refuses
    assert options.population("auto") == "auto" and options.population("4") == 4
    for parse, text, message in [(options.int_list, "8,x", "comma-separated integers"),
                                 (options.float_list, "1,x", "comma-separated numbers"),
                                 (options.number_list, "8,x", "'x' is not a number"),
                                 (options.bit_sets, "8,6;", "groups of integers"),
                                 (options.fixed_bits, "conv1:8", "'layer=bits' items"),
                                 (options.population, "many", "positive integer or 'auto'")]:
        with pytest.raises(argparse.ArgumentTypeError, match=message):
            parse(text)


@pytest.mark.parametrize("field", [f for f in dataclasses.fields(SearchConfig) if f.type != "bool"],
                         ids=lambda f: f.name)
def test_every_default_reads_back_as_itself(field):
    text = options.format_default(field.default)
    if text is None:
        return
    parsed = _parser([field.name]).parse_args([options.option_names([field.name])[field.name], text])
    assert getattr(parsed, field.name) == field.default


def test_every_setting_becomes_an_option_with_its_help_and_default():
    parser = _parser([field.name for field in dataclasses.fields(SearchConfig)])
    text = parser.format_help()
    for field in dataclasses.fields(SearchConfig):
        assert options.option_names([field.name])[field.name] in text
    assert "--max-size MAX_SIZE" in text and "--params PARAMS, --float-checkpoint PARAMS" in text
    assert "(default 8,6;6,4,3;4,3,2;3,2)" in text and "--no-prune" in text
    assert parser.parse_args([]).config_options["trials"] == "--trials"


def test_options_not_given_keep_the_configs_defaults():
    parser = _parser(["model", "trials", "max_size_bytes", "prune", "soft_limits", "fixed_bits"])
    assert options.config_from_args(parser.parse_args([])) == SearchConfig()
    args = parser.parse_args(["--trials", "30", "--max-size", "16kB", "--no-prune", "--soft-limits",
                              "--fix-bits", "conv1=8"])
    config = options.config_from_args(args, min_size_reduction=None)
    assert config == SearchConfig(trials=30, max_size_bytes=16e3, prune=False, soft_limits=True,
                                  fixed_bits=(("conv1", 8),), min_size_reduction=None)


def test_a_command_may_spell_a_setting_its_own_way_and_messages_use_that_spelling():
    parser = _parser(["final_epochs", "hessian_tol"], spellings={"final_epochs": ["--epochs"]})
    assert options.config_from_args(parser.parse_args(["--epochs", "3"])).final_epochs == 3
    assert options.config_from_args(parser.parse_args(["--final-epochs", "5"])).final_epochs == 5
    with pytest.raises(ValueError, match="--epochs must be a positive integer, got 0"):
        options.config_from_args(parser.parse_args(["--final-epochs", "0"]))
    with pytest.raises(ValueError, match="--hessian-tol must be a positive number, got 0.0"):
        options.config_from_args(parser.parse_args(["--hessian-tol", "0"]))


def test_unknown_settings_are_refused():
    with pytest.raises(ValueError, match="not SearchConfig fields"):
        _parser(["trials", "epochs"])


def test_the_options_given_are_validated_as_given():
    parser = _parser(["trials", "n_initial", "max_size_bytes", "min_size_reduction", "float_checkpoint",
                      "float_epochs"])
    args = parser.parse_args(["--trials", "10", "--max-size", "16kB"])
    assert options.given_options(args) == {"trials", "max_size_bytes"}
    assert options.config_from_args(args, min_size_reduction=None).trials == 10  # the default n_initial is capped
    for argv, message in [
        (["--max-size", "16kB", "--min-size-reduction", "6"], "--max-size and --min-size-reduction both set the size "
                                                              "limit: give one"),
        (["--trials", "10", "--n-initial", "20"], "--n-initial 20 exceeds --trials=10"),
        (["--params", "f.msgpack", "--float-epochs", "20"], "--float-epochs has no effect with --params"),
    ]:
        with pytest.raises(ValueError, match=message):
            options.config_from_args(parser.parse_args(argv))


def test_a_command_refuses_options_of_its_own_that_would_do_nothing():
    parser = _parser(["batch_size", "weight_decay"], spellings={"batch_size": ["--batch"]})
    options.refuse_unused(parser.parse_args([]), ["batch_size", "weight_decay"], "here")
    with pytest.raises(ValueError, match="^--batch has no effect with --params$"):
        options.refuse_unused(parser.parse_args(["--batch", "8"]), ["batch_size", "weight_decay"], "with --params")
    with pytest.raises(ValueError, match="^--batch and --weight-decay have no effect here$"):
        options.refuse_unused(parser.parse_args(["--batch", "8", "--weight-decay", "0"]), ["batch_size",
                                                                                          "weight_decay"], "here")
