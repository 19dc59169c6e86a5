"""Specification of mpqjax.nn.models.model: wrapping a user's linen or NNX model, their variables, layer rules, models
named by a factory, the zoo's functions and the training loop taking a wrapped model as they take a zoo model."""

import pathlib
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from mpqjax.nn import models
from mpqjax.nn.models import Model, Rules, as_variables, from_factory, wrap
from mpqjax.nn.quant import DEFAULT_ACT_CLIP
from mpqjax.training import train

USER_MODELS_DIR = pathlib.Path(__file__).parent.parent  # tests/nn


user_models = sys.modules["user_models"]  # loaded by tests/nn/conftest.py


def host_init(model, seed=0):
    """`user_models.random_variables`: stands in for a trained model's variables."""
    return user_models.random_variables(model, seed)


def forward(model):
    return jax.jit(model.apply)


def assert_trees_equal(actual, expected):
    assert jax.tree.structure(actual) == jax.tree.structure(expected)
    jax.tree.map(np.testing.assert_array_equal, actual, expected)


@pytest.fixture
def factory_path(monkeypatch):
    """tests/nn on sys.path, user_models imported afresh from there by whoever asks for it."""
    monkeypatch.syspath_prepend(str(USER_MODELS_DIR))
    monkeypatch.delitem(sys.modules, "user_models", raising=False)


# -- wrapping ---------------------------------------------------------------------------------------------------------


def test_wrap_a_linen_model():
    model = wrap(user_models.ResidualCNN(), input_shape=(8, 8, 1), num_classes=10)
    assert isinstance(model, Model)
    assert model.name == "ResidualCNN" and model.input_shape() == (8, 8, 1) and model.num_classes == 10
    assert model.max_width == 1.0 and model.quantize
    assert model.table().names == ("Conv_0", "ResidualBlock_0/Conv_0", "ResidualBlock_0/Conv_1", "Conv_1", "Dense_0")
    assert wrap(model, input_shape=(8, 8, 1)) is model
    assert wrap(user_models.ResidualCNN(), input_shape=(8, 8, 1), name="mine").table().model == "mine"


def test_wrap_an_nnx_model_whose_variables_are_its_state():
    module = user_models.NnxCNN()
    model = wrap(module, input_shape=(8, 8, 1))
    assert model.name == "NnxCNN" and model.table().names == ("stem", "conv", "head")
    variables = model.init_variables(jax.random.key(0))
    state = nnx.state(module)
    assert_trees_equal(variables["params"], nnx.to_pure_dict(nnx.state(module, nnx.Param)))
    assert_trees_equal(variables["batch_stats"], nnx.to_pure_dict(nnx.state(module, nnx.BatchStat)))
    assert_trees_equal({key: value for key, value in variables.items() if key != "quant"}, as_variables(model, state))
    assert {name: quant["act_clip"] for name, quant in variables["quant"].items()} == dict.fromkeys(
        ("stem", "conv", "head"), DEFAULT_ACT_CLIP)
    # channels in order until a transfer ranks them; the logits' layer has no ranks (its channels are fixed)
    assert variables["quant"]["conv"][models.RANKS].tolist() == list(range(16)) and "channel_rank" not in variables[
        "quant"]["head"]


def test_as_variables_turns_an_nnx_state_into_params_and_batch_stats():
    module = user_models.NnxCNN(seed=3)
    model = wrap(module, input_shape=(8, 8, 1))
    variables = as_variables(model, nnx.state(module))
    assert sorted(variables) == ["batch_stats", "params"]
    assert sorted(variables["params"]) == ["conv", "conv_norm", "head", "stem", "stem_norm"]
    assert sorted(variables["batch_stats"]) == ["conv_norm", "stem_norm"]
    x = jax.random.normal(jax.random.key(0), (2, 8, 8, 1))
    module.eval()
    np.testing.assert_allclose(forward(model)(model.with_quant_variables(variables), x), module(x), atol=1e-6)
    linen_variables = {"params": {"Dense_0": {"kernel": jnp.ones((2, 2))}}}
    assert as_variables(model, linen_variables) == linen_variables
    with pytest.raises(ValueError, match="variables of model 'NnxCNN' must be a dict with 'params'"):
        as_variables(model, [1, 2])


def test_with_quant_variables_adds_one_clip_per_layer_and_ranks_per_width_group_where_there_are_none():
    model = wrap(user_models.PlainMLP(), input_shape=(64,))
    variables = host_init(model)
    float_variables = {"params": variables["params"]}
    clipped = model.with_quant_variables(float_variables)
    assert {name: quant["act_clip"] for name, quant in clipped["quant"].items()} == dict.fromkeys(
        ("Dense_0", "Dense_1", "Dense_2"), DEFAULT_ACT_CLIP)
    assert {name: quant[models.RANKS].tolist() for name, quant in clipped["quant"].items() if models.RANKS in quant} \
        == {"Dense_0": list(range(16)), "Dense_1": list(range(8))}  # in order; the logits' layer has none
    ranked = model.with_quant_variables(float_variables, ranks={"Dense_1": np.array([3, 2, 1, 0, 4, 5, 6, 7])})
    assert ranked["quant"]["Dense_1"][models.RANKS].tolist() == [3, 2, 1, 0, 4, 5, 6, 7]
    assert model.with_quant_variables(ranked)["quant"]["Dense_1"][models.RANKS].tolist()[0] == 3  # kept
    learned = wrap(user_models.PlainMLP(), input_shape=(64,), act_clipping="pact").with_quant_variables(float_variables)
    assert set(learned["quant"]) == {"Dense_0", "Dense_1"} and learned["params"]["Dense_2"]["act_clip"] == 4.0
    assert model.clone(quantize=False).with_quant_variables(float_variables) == float_variables


def test_with_quant_variables_keeps_calibrated_clips():
    model = wrap(user_models.PlainMLP(), input_shape=(64,))
    clipped = model.with_quant_variables({"params": host_init(model)["params"]})
    calibrated = {**clipped, "quant": {**clipped["quant"], "Dense_1": {"act_clip": jnp.float32(1.5)}}}
    assert model.with_quant_variables(calibrated)["quant"]["Dense_1"]["act_clip"] == 1.5


@pytest.mark.parametrize("call, message", [
    (lambda: wrap("a string", input_shape=(8,)), "expected a flax.linen or flax.nnx module, got str"),
    (lambda: wrap(user_models.NoLayer(), input_shape=(8, 8, 1)), "model 'NoLayer' has no quantisable layer"),
    (lambda: wrap(user_models.PlainMLP(), input_shape=(0,)), "input_shape must be one example's positive sizes"),
    (lambda: wrap(user_models.PlainMLP(), input_shape=(64,), act_clipping="max"), "act_clipping must be one of"),
    (lambda: wrap(user_models.PlainCNN(), input_shape=(8, 8, 1), train_argument="mode"),
     "train_argument must be one of"),
])
def test_wrap_refuses_what_it_cannot_quantise(call, message):
    with pytest.raises(ValueError, match=message):
        call()


def test_a_model_wrapped_without_an_input_shape_takes_it_later():
    model = wrap(user_models.PlainMLP(), input_shape=None)
    with pytest.raises(ValueError, match="model 'PlainMLP' .*input.shape"):
        model.table()
    assert [layer.in_channels for layer in model.table((64,))] == [64, 16, 8]
    assert [layer.in_channels for layer in model.table((4, 8))] == [32, 16, 8]  # the model flattens its input
    variables = host_init(wrap(user_models.PlainMLP(), input_shape=(64,)))
    x = jax.random.normal(jax.random.key(0), (2, 64))
    assert forward(model)(variables, x, jnp.full(3, 8.0), jnp.ones(3)).shape == (2, 10)


def test_clone_makes_the_float_model_and_refuses_widths_at_build_time():
    model = wrap(user_models.PlainMLP(), input_shape=(64,))
    variables = host_init(model)
    x = jax.random.normal(jax.random.key(0), (2, 64))
    float_model = model.clone(quantize=False)
    expected = user_models.PlainMLP().apply({"params": variables["params"]}, x)
    np.testing.assert_allclose(float_model.apply(variables, x, jnp.full(3, 2.0), jnp.ones(3)), expected, atol=1e-6)
    assert "quant" not in float_model.init_variables(jax.random.key(0))
    assert model.clone(max_width=1.25).max_width == 1.0  # a plain module cannot grow
    assert model.clone(widths=(1.0, 1.0, 1.0)).table() == model.table()
    with pytest.raises(ValueError, match="takes widths when it is applied, not when it is built"):
        model.clone(widths=(0.5, 1.0, 1.0))


def test_bits_of_the_wrong_length_are_refused_naming_the_model():
    model = wrap(user_models.PlainCNN(), input_shape=(8, 8, 1), exclude=["Conv_1"])
    variables = host_init(model)
    with pytest.raises(ValueError, match="bits.*'PlainCNN'|'PlainCNN'.*bits"):
        model.apply(variables, jnp.ones((1, 8, 8, 1)), jnp.full(3, 8.0), jnp.ones(2))


def test_a_model_with_dropout_runs_in_training_mode():
    model = wrap(user_models.DropoutMLP(), input_shape=(64,))
    variables = host_init(model)
    out, _ = model.apply(variables, jnp.ones((2, 64)), jnp.full(2, 8.0), jnp.ones(2), train=True,
                         mutable=["batch_stats"])
    assert out.shape == (2, 10) and np.all(np.isfinite(out))


# -- rules ------------------------------------------------------------------------------------------------------------


def test_include_keeps_only_the_matching_layers():
    model = wrap(user_models.ResidualCNN(), input_shape=(8, 8, 1), include=["ResidualBlock_0/.*"])
    assert model.table().names == ("ResidualBlock_0/Conv_0", "ResidualBlock_0/Conv_1")
    convs = wrap(user_models.ResidualCNN(), input_shape=(8, 8, 1), include="Conv_.")  # one pattern as a string
    assert convs.table().names == ("Conv_0", "Conv_1")


def test_exclude_leaves_a_layer_in_float_and_out_of_the_table():
    module = user_models.PlainCNN()
    full = wrap(module, input_shape=(8, 8, 1))
    partial = wrap(module, input_shape=(8, 8, 1), exclude=["Conv_1"])
    assert partial.table().names == ("Conv_0", "Dense_0")
    variables = host_init(full)  # Conv_1's clip stays in them: a clip of no layer is left alone
    x = jax.random.normal(jax.random.key(0), (4, 8, 8, 1))
    expected = forward(full)(variables, x, jnp.array([3.0, 16.0, 4.0]), jnp.ones(3))  # Conv_1 at 16 bits: float
    np.testing.assert_allclose(forward(partial)(variables, x, jnp.array([3.0, 4.0]), jnp.ones(2)), expected,
                               atol=1e-6)
    assert float(jnp.abs(forward(full)(variables, x, jnp.array([3.0, 2.0, 4.0]), jnp.ones(3)) - expected).max()) > 1e-3


def test_a_layer_feeding_an_excluded_layer_narrows_as_removal_or_not_at_all():
    model = wrap(user_models.PlainCNN(), input_shape=(8, 8, 1), exclude=["Conv_1"])
    variables = host_init(model)
    x = jax.random.normal(jax.random.key(0), (4, 8, 8, 1))
    bits = jnp.array([6.0, 5.0])
    narrowed = forward(model)(variables, x, bits, jnp.array([0.5, 1.0]))
    removed = jax.tree.map(lambda value: value, variables)
    removed["params"]["Conv_1"]["kernel"] = variables["params"]["Conv_1"]["kernel"].at[:, :, 4:, :].set(0.0)
    reference = forward(model)(removed, x, bits, jnp.ones(2))
    assert not model.table()[0].scalable or np.allclose(narrowed, reference, atol=1e-5)


def test_bits_rules_pin_the_matching_layers():
    model = wrap(user_models.ResidualCNN(), input_shape=(8, 8, 1), bits={"Conv_0|Dense_0": 8, "Conv_1": 6})
    assert model.pinned_bits() == {"Conv_0": 8, "Dense_0": 8, "Conv_1": 6}
    assert model.rules == Rules(bits=(("Conv_0|Dense_0", 8), ("Conv_1", 6)))


@pytest.mark.parametrize("rules, message", [
    (dict(include=["Dense_[0-9]+", "Attention.*"]), "include rule 'Attention.*' matches no layer; the layers are: "
                                                    "Conv_0, ResidualBlock_0/Conv_0"),
    (dict(exclude=["conv_0"]), "exclude rule 'conv_0' matches no layer"),  # names match case-sensitively, in full
    (dict(exclude=["Conv"]), "exclude rule 'Conv' matches no layer"),
    (dict(bits={"Head": 8}), "bits rule 'Head' matches no layer"),
    (dict(include=["Conv_(0"]), "include rule 'Conv_\\(0' is not a regular expression"),
    (dict(bits={"[": 8}), "bits rule '\\[' is not a regular expression"),
    (dict(bits={"Conv_0": 1}), "rule 'Conv_0'.*bit-width must be an integer in \\[2, 16\\]"),
    (dict(include=["Dense_0"], exclude=["Dense_0"]), "the rules leave model 'ResidualCNN' no layer to quantise"),
])
def test_bad_rules_are_refused_with_the_rule_named(rules, message):
    with pytest.raises(ValueError, match=message):
        wrap(user_models.ResidualCNN(), input_shape=(8, 8, 1), **rules)


# -- factories --------------------------------------------------------------------------------------------------------


def test_from_factory_builds_and_wraps_the_users_model(factory_path):
    model = from_factory("user_models:make_cnn", input_shape=(8, 8, 1))
    assert model.source == model.name == "user_models:make_cnn"
    assert model.table().names[-1] == "Dense_0" and model.table()[-1].out_channels == 10
    assert from_factory("user_models:make_cnn", input_shape=(8, 8, 1)).function is model.function  # one model
    assert not from_factory("user_models:make_cnn", input_shape=(8, 8, 1), quantize=False).quantize
    five = from_factory("user_models:make_cnn", input_shape=(8, 8, 1), num_classes=5)  # the factory takes it
    assert five.table()[-1].out_channels == 5 and five.num_classes == 5
    assert from_factory("user_models:make_nnx_cnn", input_shape=(8, 8, 1)).table().names == ("stem", "conv", "head")
    zoo_route = models.get("user_models:make_cnn", input_shape=(8, 8, 1), num_classes=5)
    assert zoo_route.table() == five.table()


@pytest.mark.parametrize("spec, message", [
    ("user_models", "model 'user_models': expected a zoo name or package.module:factory"),
    ("user models:make_cnn", "expected a zoo name or package.module:factory"),
    ("user_models:", "expected a zoo name or package.module:factory"),
    ("no_such_module_here:make", "model 'no_such_module_here:make': cannot import 'no_such_module_here' "
                                 "\\(ModuleNotFoundError"),
    ("user_models:make_resnet", "'user_models' has no attribute 'make_resnet'"),
    ("user_models:NOT_CALLABLE", "'NOT_CALLABLE' is not callable"),
    ("user_models:make_failing", "model factory 'user_models:make_failing' raised RuntimeError: no weights here"),
    ("user_models:make_number", "expected a flax.linen or flax.nnx module, got int"),
])
def test_from_factory_errors_name_the_spec_and_the_cause(factory_path, spec, message):
    with pytest.raises(ValueError, match=message):
        from_factory(spec, input_shape=(8, 8, 1))


# -- the zoo's functions and the training loop ------------------------------------------------------------------------


def test_the_zoos_functions_take_a_wrapped_model():
    model = wrap(user_models.PlainMLP(), input_shape=(64,))
    assert models.layer_table(model) == model.table()
    assert models.layer_table(model, input_shape=(64,)) == model.table()
    assert models.layer_table(model, input_shape=(4, 16)) == model.table((4, 16))
    variables = models.init_variables(jax.random.key(0), model)
    assert_trees_equal(variables, model.init_variables(jax.random.key(0)))
    assert variables["quant"]["Dense_0"]["act_clip"] == DEFAULT_ACT_CLIP
    float_model = model.clone(quantize=False)
    float_variables = {"params": variables["params"]}
    transferred = models.transfer_variables(jax.random.key(1), model, float_model, float_variables, input_shape=(64,))
    ranks = models.channel_ranks(model, float_variables)
    assert set(ranks) == {"Dense_0", "Dense_1"}  # every width group's first layer; the logits' layer is fixed
    assert_trees_equal(transferred, model.with_quant_variables(float_variables, ranks=ranks))
    other = wrap(user_models.PlainMLP(hidden=(8, 8)), input_shape=(64,))
    with pytest.raises(ValueError, match="have different layers"):
        models.transfer_variables(jax.random.key(1), other, float_model, float_variables, input_shape=(64,))


def test_train_calibrate_and_evaluate_run_on_a_wrapped_model(digits, factory_path):
    model = models.get("user_models:make_mlp", input_shape=(8, 8, 1), num_classes=10)
    variables = models.init_variables(jax.random.key(0), model)
    with pytest.raises(ValueError, match="width"):  # a plain module cannot grow
        train.evaluate(model, variables, digits.validation, bits=8, widths=1.25)
    variables, losses = train.train(jax.random.key(0), model, variables, digits, epochs=1, learning_rate=1e-2,
                                    bits=6)
    assert len(losses) == len(digits.train.x) // 64 and np.all(np.isfinite(losses))
    assert losses[-5:].mean() < losses[:5].mean()
    calibrated = train.calibrate(model, variables, digits.train.x, bits=6, num_batches=2)
    clips = {name: float(calibrated["quant"][name]["act_clip"]) for name in model.table().names}
    assert all(0.0 < clip and clip != DEFAULT_ACT_CLIP for clip in clips.values()), clips
    accuracy = train.evaluate(model, calibrated, digits.validation, bits=6)
    assert accuracy > 0.3, accuracy  # chance is 0.1


# -- width factories: models that grow -------------------------------------------------------------------------------


def test_a_width_factory_model_is_its_width_one_module_and_runs_its_wider_one():
    model = wrap(user_models.make_width_cnn, input_shape=(8, 8, 1))
    plain = wrap(user_models.WidthCNN(1.0), input_shape=(8, 8, 1))
    assert model.table().layers == plain.table().layers
    wide = model.clone(max_width=1.25)
    assert wide.max_width == 1.25 and wide.table() == model.table()
    params = wide.init_variables(jax.random.key(0))["params"]
    assert params["Conv_0"]["kernel"].shape == (3, 3, 1, 10) and params["Conv_2"]["kernel"].shape == (3, 3, 10, 20)


def test_a_plain_module_cannot_grow_and_a_factory_can():
    assert wrap(user_models.PlainCNN(), input_shape=(8, 8, 1)).clone(max_width=1.25).max_width == 1.0
    assert wrap(user_models.make_width_cnn, input_shape=(8, 8, 1)).clone(max_width=1.5).max_width == 1.5


def test_widening_transfer_keeps_the_float_function_at_every_width():
    float_model = wrap(user_models.make_width_cnn, input_shape=(8, 8, 1)).clone(quantize=False)
    float_variables = host_init(float_model, seed=3)
    wide = wrap(user_models.make_width_cnn, input_shape=(8, 8, 1)).clone(max_width=1.25)
    variables = models.transfer_variables(jax.random.key(1), wide, float_model, float_variables, input_shape=(8, 8, 1))
    x = jnp.asarray(np.random.default_rng(0).standard_normal((4, 8, 8, 1)), jnp.float32)
    expected = float_model.apply(float_variables, x)
    apply = forward(wide)
    for width in (1.0, 1.125, 1.25):
        widths = jnp.asarray([width, width, width, 1.0], jnp.float32)
        np.testing.assert_allclose(apply(variables, x, jnp.full(4, 16.0), widths), expected, atol=1e-5)
    # the new channels are computed (their producing weights are the wider model's initialisation), and the weights
    # that read them start at zero
    params = jax.tree.map(np.asarray, variables["params"])
    assert np.any(params["Conv_0"]["kernel"][..., 8:] != 0)
    assert np.all(params["Conv_1"]["kernel"][:, :, 8:, :] == 0) and np.any(params["Conv_1"]["kernel"][..., 8:] != 0)
    assert np.all(params["Conv_2"]["kernel"][:, :, 8:, :] == 0) and np.all(params["Dense_0"]["kernel"][16:] == 0)


def test_a_wider_model_gets_gradient_in_its_new_channels():
    float_model = wrap(user_models.make_width_cnn, input_shape=(8, 8, 1)).clone(quantize=False)
    wide = wrap(user_models.make_width_cnn, input_shape=(8, 8, 1)).clone(max_width=1.25)
    variables = models.transfer_variables(jax.random.key(1), wide, float_model, host_init(float_model),
                                          input_shape=(8, 8, 1))
    x = jnp.asarray(np.random.default_rng(1).standard_normal((4, 8, 8, 1)), jnp.float32)
    widths = jnp.asarray([1.25, 1.25, 1.25, 1.0], jnp.float32)

    def loss(params):
        logits = wide.apply({**variables, "params": params}, x, jnp.full(4, 8.0), widths)
        return jnp.mean(logits ** 2)

    grads = jax.jit(jax.grad(loss))(variables["params"])
    assert np.any(np.asarray(grads["Conv_1"]["kernel"])[:, :, 8:, :] != 0)  # the weights reading new channels
    assert np.any(np.asarray(grads["Dense_0"]["kernel"])[16:] != 0)


def test_a_width_factory_without_room_for_the_wider_layers_is_refused():
    model = wrap(user_models.make_narrow_at_any_width, input_shape=(8, 8, 1)).clone(max_width=1.25)
    with pytest.raises(ValueError, match=r"layer 'Conv_0': the width factory gives it 8 channels at width 1.25, "
                                         r"fewer than the 10"):
        model.table()


def test_a_width_factory_that_raises_names_the_width():
    def factory(width):
        if width > 1:
            raise RuntimeError("too wide")
        return user_models.WidthCNN(width)

    model = wrap(factory, input_shape=(8, 8, 1)).clone(max_width=1.25)
    with pytest.raises(ValueError, match=r"raised RuntimeError at width 1.25: too wide"):
        model.table()


def test_from_factory_with_a_width_argument_is_a_width_factory(monkeypatch):
    monkeypatch.syspath_prepend(str(USER_MODELS_DIR))
    model = from_factory("user_models:make_width_cnn", input_shape=(8, 8, 1), max_width=1.25)
    assert model.factory is not None and model.max_width == 1.25
    assert model.init_variables(jax.random.key(0))["params"]["Conv_0"]["kernel"].shape[-1] == 10


def test_a_layer_inside_a_loop_or_a_branch_is_refused_by_name():
    import flax.linen as nn

    class Block(nn.Module):
        @nn.compact
        def __call__(self, x, _):
            return nn.relu(nn.Dense(8)(x)), None

    class Scanned(nn.Module):
        @nn.compact
        def __call__(self, x):
            x = nn.Dense(8)(x)
            scan = nn.scan(Block, variable_axes={"params": 0}, split_rngs={"params": True}, length=3)
            x, _ = scan(name="blocks")(x, None)
            return nn.Dense(10)(x)

    class Branched(nn.Module):
        @nn.compact
        def __call__(self, x):
            kernel = self.param("kernel", nn.initializers.lecun_normal(), (4, 10))
            return jax.lax.cond(x.sum() > 0, lambda v: v @ kernel, lambda v: -(v @ kernel), x)

    with pytest.raises(ValueError, match=r"layer 'blocks/Dense_0' runs inside scan .* write the loop as a Python"):
        wrap(Scanned(), input_shape=(4,))
    with pytest.raises(ValueError, match=r"layer 'kernel' runs inside cond"):
        wrap(Branched(), input_shape=(4,))
