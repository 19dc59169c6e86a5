"""Specification of mpqjax.nn.models: the zoo by name (plain Flax modules built by width, wrapped like any user's
model), layer tables found in their traces, traced configurations, narrowed == smaller models, and weight transfer
from a float model."""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util

from mpqjax.nn import config, models

ZOO = ("digits_cnn", "mlp", "resnet20", "resnet32", "resnet56", "resnet18", "resnet50", "mobilenet_v1", "mobilenet_v2")
SMALL_INPUT = {"digits_cnn": (8, 8, 1), "mlp": (64,), "mobilenet_v1": (32, 32, 3), "mobilenet_v2": (32, 32, 3)}


def batch_norm_and_bias_parameters(table):
    """Parameters a weight count leaves out: batch-norm scale and offset, biases."""
    return sum(2 * layer.out_channels * layer.batch_norm + layer.out_channels * layer.use_bias for layer in table)


def test_available_names():
    assert models.available() == ZOO


def test_unknown_model_lists_the_zoo():
    with pytest.raises(ValueError, match="unknown model 'vgg'; available: digits_cnn, mlp, resnet20"):
        models.get("vgg")
    with pytest.raises(ValueError, match="unknown model"):
        models.layer_table("vgg")


def test_unknown_option():
    with pytest.raises(ValueError, match="no option"):
        models.get("resnet20", dropout=0.5)


def test_resnet20_reference_figures_and_structure():
    table = models.layer_table("resnet20")
    kinds = [layer.kind for layer in table]
    assert len(table) == 20 and kinds.count("conv") == 19 and kinds[-1] == "dense"
    assert table.total_weights == 268_336  # 0.27 M: 3*16*9 + stages + 64*10 (hand count)
    assert table.total_macs == pytest.approx(40.6e6, rel=2e-3)
    assert table[0].name == "stem" and table[-1].name == "head" and not table[-1].scalable
    assert table[-1].in_channels == 64 and table[-1].out_channels == 10
    # a layer reads its producer's width group (named by the group's first layer)
    assert [table[layer.input_layer].width_group for layer in table[1:]] == [
        table[index].width_group for index in range(19)]
    stage_outputs = [index for index, layer in enumerate(table) if layer.name.endswith("conv2")]
    groups = {table[index].width_group for index in stage_outputs[:3]} | {table[0].width_group}
    assert len(groups) == 1  # stem and stage-1 block outputs share a width (identity shortcuts)
    assert len({table[index].width_group for index in stage_outputs[3:6]}) == 1
    assert table[stage_outputs[3]].width_group != table[0].width_group  # option A: a new group per stage
    inner = [layer.width_group for layer in table if layer.name.endswith("conv1")]
    assert len(set(inner)) == 9 and not set(inner) & {layer.width_group for layer in table if "conv2" in layer.name}
    assert [layer.out_hw for layer in table[:-1:6]] == [(32, 32), (32, 32), (16, 16), (8, 8)]


def test_deeper_cifar_resnets():
    assert len(models.layer_table("resnet32")) == 32
    assert len(models.layer_table("resnet56")) == 56


def test_resnet18_imagenet_reference_figures():
    table = models.layer_table("resnet18")
    assert table.input_shape == (224, 224, 3) and table[-1].out_channels == 1000
    assert table.total_weights == 11_678_912  # convolution and FC weights
    # 11.69 M: weights plus batch-norm scales/offsets and the FC bias, torchvision's resnet18 parameter count.
    assert table.total_weights + batch_norm_and_bias_parameters(table) == 11_689_512
    assert table[0].kernel == (7, 7) and table[0].stride == (2, 2) and table[1].out_hw == (56, 56)
    downsample = [layer for layer in table if "downsample" in layer.name]
    assert len(table) == 21 and len(downsample) == 3
    for layer in downsample:  # a projection shortcut ties to its stage's block outputs
        conv2 = table.names.index(layer.name.replace("downsample", "conv2"))
        assert layer.width_group == table[conv2].width_group


def test_resnet18_cifar_stem():
    table = models.layer_table("resnet18", stem="cifar", num_classes=100)
    assert table.input_shape == (32, 32, 3) and table[0].kernel == (3, 3) and table[0].out_hw == (32, 32)
    assert table[-1].out_channels == 100 and len(table) == 21


def test_resnet50_parameter_count():
    table = models.layer_table("resnet50")
    assert len(table) == 54
    assert table.total_weights + batch_norm_and_bias_parameters(table) == 25_557_032  # torchvision resnet50
    assert table.total_macs == pytest.approx(4.09e9, rel=1e-2)


def test_mobilenet_v1_reference_figures():
    table = models.layer_table("mobilenet_v1")
    assert len(table) == 28 and table.total_weights == pytest.approx(4.2e6, rel=0.01)
    assert table.total_macs == pytest.approx(569e6, rel=2e-3)
    for layer in table:
        if layer.kind == "depthwise":
            assert layer.width_group == table[layer.input_layer].width_group


def test_mobilenet_v2_figures():
    table = models.layer_table("mobilenet_v2")
    assert len(table) == 53
    assert table.total_weights + batch_norm_and_bias_parameters(table) == 3_504_872  # torchvision mobilenet_v2
    assert table.total_macs == pytest.approx(300e6, rel=0.01)
    projections = [layer for layer in table if layer.name.endswith("project")]
    assert projections[1].width_group == projections[2].width_group  # 24-channel stage adds residuals


def test_table_is_inferred_from_the_input_shape():
    small = models.layer_table("resnet20", input_shape=(16, 16, 3))
    assert small.total_macs * 4 == pytest.approx(models.layer_table("resnet20").total_macs, rel=1e-3)


@pytest.mark.parametrize(
    "name", [pytest.param(name, marks=pytest.mark.slow) if name in ("resnet50", "resnet56", "mobilenet_v2") else name
             for name in ZOO]
)
def test_table_names_are_parameter_paths(name):
    kwargs = {"stem": "cifar"} if name in ("resnet18", "resnet50") else {}
    shape = SMALL_INPUT.get(name, (32, 32, 3))
    model = models.get(name, max_width=1.0, **kwargs)
    table = models.layer_table(model, input_shape=shape)
    params = traverse_util.flatten_dict(model.function.abstract_variables(shape)["params"], sep="/")
    scaled = models.get(name, max_width=1.25, **kwargs)
    scaled_params = traverse_util.flatten_dict(scaled.model_function.abstract_variables(shape)["params"], sep="/")
    assert len([key for key in params if key.endswith("kernel")]) == len(table)
    for layer in table:
        kernel = params[f"{layer.name}/kernel"].shape
        in_channels = 1 if layer.kind == "depthwise" else layer.in_channels
        expected = (in_channels, layer.out_channels) if layer.kind == "dense" else (*layer.kernel, in_channels,
                                                                                    layer.out_channels)
        assert kernel == expected
        widened = scaled_params[f"{layer.name}/kernel"].shape[-1]
        assert widened == (models.scale_channels(layer.out_channels, 1.25) if layer.scalable else layer.out_channels)


def test_zoo_models_are_plain_flax_modules():
    model = models.get("digits_cnn", channels=(8, 16, 16))
    assert isinstance(model, models.Model) and model.factory is not None
    module = model.factory.build(0.5)
    assert isinstance(module, nn.Module) and module.width == 0.5
    variables = module.init(jax.random.key(0), jnp.zeros((1, 8, 8, 1)))
    assert variables["params"]["conv2"]["kernel"].shape == (3, 3, 4, 8)
    assert set(variables["batch_stats"]) == {"conv1_bn", "conv2_bn", "conv3_bn"}


def test_the_zoo_initialises_kernels_from_a_truncated_normal_of_he_or_lecun_variance_drawn_from_the_key():
    model = models.get("resnet20", max_width=1.0)
    draw = functools.partial(model.model_function.initial_variables, input_shape=(32, 32, 3))
    variables, again, other = draw(jax.random.key(3)), draw(jax.random.key(3)), draw(jax.random.key(4))
    assert all(np.array_equal(a, b) for a, b in zip(jax.tree.leaves(variables), jax.tree.leaves(again), strict=True))
    params = traverse_util.flatten_dict(variables["params"])
    for path, leaf in params.items():
        if path[-1] != "kernel":
            continue
        kernel = np.asarray(leaf)
        fan_in = int(np.prod(kernel.shape[:-1]))
        target = np.sqrt((2.0 if kernel.ndim == 4 else 1.0) / fan_in)  # He for convolutions, LeCun for dense
        assert np.max(np.abs(kernel)) <= 2 * target / 0.87962566103423978 * (1 + 1e-6)  # cut at 2 deviations
        if kernel.size > 30_000:
            assert abs(np.std(kernel) / target - 1) < 0.03  # the cut's lost variance restored
        assert not np.array_equal(kernel, traverse_util.flatten_dict(other["params"])[path])
    assert all(np.all(np.asarray(leaf) == 1) for leaf in jax.tree.leaves(
        {path: leaf for path, leaf in traverse_util.flatten_dict(variables).items() if path[-1] in ("scale", "var")}))


def test_the_same_request_gives_the_same_model():
    assert models.get("resnet20") == models.get("resnet20")  # so they share compiled programs
    assert models.get("resnet20") != models.get("resnet20", num_classes=100)
    assert models.get("mlp", hidden=[8, 4]) == models.get("mlp", hidden=(8, 4))  # as a JSON setting gives them


# ------------------------------------------------------------------------------------------ applying configs
@pytest.fixture(scope="module")
def digits_setup():
    """A digits CNN (max width 1.25) with one jitted apply that counts its traces."""
    model = models.get("digits_cnn", channels=(8, 16, 16))
    x = jax.random.normal(jax.random.key(1), (4, 8, 8, 1))
    variables = models.init_variables(jax.random.key(2), model)
    traces = []

    def apply(variables, x, bits, widths):
        traces.append(1)
        return model.apply(variables, x, bits, widths)

    return model, x, variables, jax.jit(apply), traces


def test_changing_bits_and_widths_never_recompiles(digits_setup):
    model, x, variables, apply, traces = digits_setup
    before = len(traces)
    first = apply(variables, x, jnp.array([8, 4, 3, 8]), jnp.array([1.0, 0.75, 1.25, 1.0]))
    second = apply(variables, x, jnp.array([2, 2, 6, 32]), jnp.array([0.875, 1.125, 0.75, 1.0]))
    assert len(traces) - before <= 1 and not np.allclose(first, second)


def test_mixed_precision_takes_bfloat16_operands_and_keeps_float32_outputs(digits_setup):
    model, x, variables, _, _ = digits_setup
    mixed = model.clone(precision="bfloat16")
    bits, widths = jnp.array([8, 8, 8, 8]), jnp.array([1.0, 0.75, 1.25, 1.0])
    exact, narrow = model.apply(variables, x, bits, widths), mixed.apply(variables, x, bits, widths)
    assert narrow.dtype == exact.dtype == jnp.float32
    # at 8 bits the rounded operands move the outputs little (at 2-3 bits they can move codes across a level)
    np.testing.assert_allclose(narrow, exact, atol=0.02 * float(jnp.abs(exact).max()))
    assert not np.array_equal(narrow, exact)  # the operands really were rounded
    traced = str(jax.make_jaxpr(lambda v: mixed.apply(v, x, bits, widths))(variables))
    assert traced.count("conv_general_dilated[") == 3 and "preferred_element_type=float32" in traced
    assert "bf16[4,8,8,1]" in traced  # the first layer's quantised input, in bfloat16
    gradient = jax.grad(lambda params: mixed.apply({**variables, "params": params}, x, bits, widths).sum())(
        variables["params"])
    assert all(leaf.dtype == jnp.float32 and bool(jnp.all(jnp.isfinite(leaf))) for leaf in jax.tree.leaves(gradient))
    with pytest.raises(ValueError, match="precision must be one of float32, bfloat16, got 'float16'"):
        model.clone(precision="float16")


def test_configurations_vmap():
    model = models.get("mlp", hidden=(8, 8))
    x = jax.random.normal(jax.random.key(3), (4, 64))
    variables = models.init_variables(jax.random.key(4), model)
    bits = jnp.array([[8, 4, 16], [2, 3, 6], [4, 4, 4]])
    widths = jnp.array([[1.0, 0.75, 1.0], [1.25, 0.5, 1.0], [1.0, 1.0, 1.0]])
    batched = jax.jit(jax.vmap(model.apply, in_axes=(None, None, 0, 0)))(variables, x, bits, widths)
    for row in range(3):
        np.testing.assert_allclose(batched[row], model.apply(variables, x, bits[row], widths[row]), atol=1e-5)


def test_bits_as_a_list_int64_or_float32_run_the_same_program(compilations):
    model = models.get("mlp", hidden=(8, 4))
    x = jax.random.normal(jax.random.key(7), (4, 64))
    variables = models.init_variables(jax.random.key(8), model)
    widths = np.ones(3, np.float32)
    reference = model.apply(variables, x, np.array([8, 4, 3], np.float32), widths)
    forms = ([8, 4, 3], np.array([8, 4, 3], np.int64), np.array([8, 4, 3], np.int32))
    with compilations() as compiled:
        outputs = [model.apply(variables, x, bits, widths) for bits in forms]
    assert compiled == []  # every form is used as float32: the float32 call's program serves them all
    for output in outputs:
        np.testing.assert_array_equal(output, reference)


def randomise_batch_stats(key, variables):
    """Non-trivial batch-norm statistics, so that channel misalignments show in the outputs."""
    variables = dict(variables)
    variables["batch_stats"] = jax.tree_util.tree_map(
        lambda v: v + jax.random.uniform(key, v.shape), variables["batch_stats"]
    )
    return variables


def leading_channels(small_variables, variables):
    """``variables`` cut to the shapes of ``small_variables``: every array's leading entries."""
    return jax.tree.map(lambda small, big: big[tuple(slice(0, size) for size in small.shape)], small_variables,
                        {name: variables[name] for name in small_variables})


@pytest.mark.parametrize("name, shape, width", [("digits_cnn", (8, 8, 1), 0.75),
                                                 pytest.param("resnet20", (8, 8, 3), 0.75, marks=pytest.mark.slow)])
def test_a_narrowed_model_equals_the_smaller_model(name, shape, width):
    """Switching off the last channels everywhere computes the module built at that width (option-A shortcuts
    included), for any bits."""
    options = {"channels": (8, 16, 16)} if name == "digits_cnn" else {}
    model = models.get(name, input_shape=shape, **options)
    table = model.table()
    variables = randomise_batch_stats(jax.random.key(5), models.init_variables(jax.random.key(6), model))
    small = model.factory.function(width)
    small_variables = leading_channels(small.abstract_variables(shape), variables)
    x = jax.random.normal(jax.random.key(7), (2, *shape))
    bits = np.array([(8, 3, 4, 2, 6)[index % 5] for index in range(len(table))], np.float32)
    widths = np.array([width if layer.scalable else 1.0 for layer in table], np.float32)
    small_model = models.wrap(small.module, input_shape=shape)
    clips = {name: {"act_clip": values["act_clip"]} for name, values in variables["quant"].items()}
    small_variables = small_model.with_quant_variables({**small_variables, "quant": clips})
    np.testing.assert_allclose(model.apply(variables, x, bits, widths), small_model.apply(small_variables, x, bits),
                               atol=1e-4)


@pytest.fixture(scope="module")
def resnet20_setup():
    """A ResNet-20 on 8x8 inputs with one jitted apply (the compilation is shared by the tests below)."""
    shape = (8, 8, 3)
    model = models.get("resnet20", input_shape=shape)
    x = jax.random.normal(jax.random.key(6), (2, *shape))
    return model, model.table(), x, jax.jit(model.apply)


def test_a_narrowed_stage_passes_nothing_of_its_switched_off_channels(resnet20_setup):
    """The zero-padding shortcut into the next stage is masked as it forms: changing the weights of the first
    stage's switched-off channels changes nothing."""
    model, table, x, apply = resnet20_setup
    variables = models.init_variables(jax.random.key(8), model)
    stage1 = [index for index, layer in enumerate(table) if layer.width_group == 0]
    widths = np.ones(len(table), np.float32)
    widths[stage1] = 0.5  # 8 of the 16 channels (of 20 held)
    bits = np.full(len(table), 8.0, np.float32)
    params = jax.tree.map(np.array, variables["params"])
    for index in stage1:
        params[table[index].name]["kernel"][..., 8:] += 3.0
        params[f"{table[index].name}_bn"]["bias"][8:] += 5.0
    changed = apply({**variables, "params": params}, x, bits, widths)
    np.testing.assert_array_equal(changed, apply(variables, x, bits, widths))
    assert not np.allclose(changed, apply({**variables, "params": params}, x, bits, np.ones(len(table))))


# ------------------------------------------------------------------------------------------------ bad input
@pytest.fixture(scope="module")
def small_mlp():
    model = models.get("mlp", hidden=(8, 4))
    x = jnp.zeros((1, 64))
    return model, x, models.init_variables(jax.random.key(6), model)


def test_wrong_length_config(small_mlp):
    model, x, variables = small_mlp
    with pytest.raises(ValueError, match="bits has 2 entries but model 'mlp' has 3 layers"):
        model.apply(variables, x, jnp.array([4, 4]), jnp.ones(3))
    with pytest.raises(ValueError, match="widths has 4 entries"):
        model.apply(variables, x, jnp.full(3, 4), jnp.ones(4))
    with pytest.raises(ValueError, match="widths has 4 entries"):
        config.check_config(models.layer_table(model), 4, np.ones(4))


def test_bits_out_of_range_names_the_layer(small_mlp):
    model, x, variables = small_mlp
    with pytest.raises(ValueError, match="layer 'dense2': bit-width"):
        model.apply(variables, x, jnp.array([4, 1, 4]), jnp.ones(3))
    with pytest.raises(ValueError, match=r"layer 'head': bit-width must be an integer in \[2, 16\]"):
        model.apply(variables, x, jnp.array([4, 4, 32]), jnp.ones(3))


def test_width_rounding_to_zero_names_the_layer(small_mlp):
    model, x, variables = small_mlp
    with pytest.raises(ValueError, match="layer 'dense2': width multiplier 0.1 leaves 4 channels at zero"):
        model.apply(variables, x, jnp.full(3, 4), jnp.array([1.0, 0.1, 1.0]))
    with pytest.raises(ValueError, match="exceeds"):
        model.apply(variables, x, jnp.full(3, 4), jnp.array([1.5, 1.0, 1.0]))
    with pytest.raises(ValueError, match="widths when it is applied"):
        models.get("mlp", hidden=(8, 4), widths=(1.0, 0.5, 1.0))


def test_tied_widths_must_agree():
    table = models.layer_table("resnet20")
    widths = np.ones(20)
    widths[2] = 0.75  # stage1_block0_conv2 is tied to the stem
    with pytest.raises(ValueError, match="layer 'stage1_block0_conv2' must share the width multiplier of layer 'stem'"):
        config.check_config(table, 4, widths)


# ------------------------------------------------------------------------------------------------- transfer
@pytest.fixture(scope="module")
def trained_like_digits():
    """A width-1 float digits CNN with random, non-trivial weights and batch statistics."""
    float_model = models.get("digits_cnn", channels=(8, 16, 16), quantize=False, max_width=1.0)
    variables = randomise_batch_stats(jax.random.key(8), models.init_variables(jax.random.key(7), float_model))
    x = jax.random.normal(jax.random.key(9), (4, 8, 8, 1))
    return float_model, variables, x, float_model.apply(variables, x)


def test_widened_transfer_zeroes_the_consumer_side(trained_like_digits):
    float_model, float_variables, x, expected = trained_like_digits
    wide = models.get("digits_cnn", channels=(8, 16, 16), max_width=1.25)
    variables = models.transfer_variables(jax.random.key(10), wide, float_model, float_variables)
    kernel = variables["params"]["conv2"]["kernel"]
    assert kernel.shape == (3, 3, 10, 20) and np.all(kernel[:, :, 8:, :] == 0)  # consumer side of new channels
    assert np.any(kernel[:, :, :8, 16:] != 0)  # new output channels are freshly initialised, not dead
    assert np.all(variables["params"]["head"]["kernel"][16:] == 0)
    np.testing.assert_array_equal(variables["params"]["conv1"]["kernel"][..., :8],
                                  float_variables["params"]["conv1"]["kernel"])  # old channels keep their places


def test_transfer_preserves_the_function_at_width_one_and_above(trained_like_digits, digits_setup):
    float_model, float_variables, x, expected = trained_like_digits
    model, _, _, apply, _ = digits_setup  # max width 1.25
    variables = models.transfer_variables(jax.random.key(11), model, float_model, float_variables)
    for widths in ([1.0, 1.0, 1.0, 1.0], [1.25, 1.25, 1.125, 1.0]):
        np.testing.assert_allclose(apply(variables, x, jnp.full(4, 32), jnp.array(widths)), expected, atol=1e-5)


def test_narrowed_groups_keep_their_most_important_channels(trained_like_digits):
    float_model, float_variables, x, _ = trained_like_digits
    model = models.get("digits_cnn", channels=(8, 16, 16), max_width=1.0)
    variables = models.transfer_variables(jax.random.key(12), model, float_model, float_variables)
    l1 = np.abs(np.asarray(float_variables["params"]["conv1"]["kernel"])).sum(axis=(0, 1, 2))
    ranks = variables["quant"]["conv1"][models.RANKS]
    np.testing.assert_array_equal(np.argsort(ranks), np.argsort(-l1, kind="stable"))
    # at width 0.75 conv1 keeps its 6 channels of highest L1: the same as zeroing the other 2 in the float model
    dropped = np.argsort(-l1, kind="stable")[6:]
    params = jax.tree.map(np.array, float_variables["params"])
    params["conv2"]["kernel"][:, :, dropped, :] = 0.0
    widths = jnp.array([0.75, 1.0, 1.0, 1.0])
    np.testing.assert_allclose(model.apply(variables, x, jnp.full(4, 16.0), widths),
                               float_model.apply({**float_variables, "params": params}, x), atol=1e-4)


def test_a_transfer_is_one_compiled_program_whose_weights_stay_on_the_device(trained_like_digits, compilations):
    float_model, float_variables, _, _ = trained_like_digits
    wide = models.get("digits_cnn", channels=(8, 16, 16), max_width=1.25)
    on_device = jax.device_put(float_variables)
    first = models.transfer_variables(jax.random.key(18), wide, float_model, on_device)
    other = jax.device_put(jax.tree.map(lambda leaf: 2.0 * np.asarray(leaf), float_variables))
    key = jax.random.key(19)
    with compilations() as compiled:  # other weights of the same shapes: nothing new to compile
        second = models.transfer_variables(key, wide, float_model, other)
    assert compiled == []
    assert all(isinstance(leaf, jax.Array) for leaf in jax.tree.leaves(second))  # nothing comes back to the host
    np.testing.assert_array_equal(second["params"]["conv1"]["kernel"][..., :8],
                                  2.0 * np.asarray(float_variables["params"]["conv1"]["kernel"]))
    np.testing.assert_array_equal(second["quant"]["conv1"][models.RANKS], first["quant"]["conv1"][models.RANKS])


@pytest.mark.slow
def test_transfer_across_zero_padding_shortcuts_preserves_the_function(resnet20_setup):
    model, table, x, apply = resnet20_setup
    shape = (8, 8, 3)
    float_model = models.get("resnet20", quantize=False, max_width=1.0, input_shape=shape)
    float_variables = randomise_batch_stats(jax.random.key(13), models.init_variables(jax.random.key(14), float_model))
    expected = float_model.apply(float_variables, x)
    variables = models.transfer_variables(jax.random.key(15), model, float_model, float_variables, input_shape=shape)
    for width in (1.0, 1.25):
        widths = np.array([width if layer.scalable else 1.0 for layer in table])
        np.testing.assert_allclose(apply(variables, x, jnp.full(20, 32), widths), expected, rtol=1e-4, atol=1e-4)


def test_transfer_needs_a_width_one_float_model(trained_like_digits):
    _, float_variables, _, _ = trained_like_digits
    wide_float = models.get("digits_cnn", channels=(8, 16, 16), quantize=False)  # held at width 1.25
    wide_variables = wide_float.model_function.initial_variables(jax.random.key(16), (8, 8, 1))
    with pytest.raises(ValueError, match="do not fit"):
        models.transfer_variables(jax.random.key(17), models.get("digits_cnn", channels=(8, 16, 16)), wide_float,
                                  wide_variables)
