"""Specification of mpqjax.nn.models: the zoo by name, layer tables derived from the models, traced configurations,
masked == materialised widths, and weight transfer from a float model."""

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
    assert [layer.input_layer for layer in table] == list(range(-1, 19))
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
    model = models.get(name, max_width=1.0, **kwargs)
    shape = SMALL_INPUT.get(name, (32, 32, 3))
    table = models.layer_table(model, input_shape=shape)
    abstract = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, *shape)), None, None))
    params = traverse_util.flatten_dict(abstract["params"], sep="/")
    scaled = models.get(name, max_width=1.25, **kwargs)
    scaled_params = jax.eval_shape(lambda: scaled.init(jax.random.key(0), jnp.zeros((1, *shape)), None, None))
    scaled_params = traverse_util.flatten_dict(scaled_params["params"], sep="/")
    assert len([key for key in params if key.endswith("kernel")]) == len(table)
    for layer in table:
        kernel = params[f"{layer.name}/kernel"].shape
        in_channels = 1 if layer.kind == "depthwise" else layer.in_channels
        expected = (in_channels, layer.out_channels) if layer.kind == "dense" else (*layer.kernel, in_channels,
                                                                                    layer.out_channels)
        assert kernel == expected
        widened = scaled_params[f"{layer.name}/kernel"].shape[-1]
        assert widened == (models.scale_channels(layer.out_channels, 1.25) if layer.scalable else layer.out_channels)


# ------------------------------------------------------------------------------------------ applying configs
@pytest.fixture(scope="module")
def digits_setup():
    """A masked digits CNN (max width 1.25) with one jitted apply that counts its traces."""
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


def test_configurations_vmap():
    model = models.get("mlp", hidden=(8, 8))
    x = jax.random.normal(jax.random.key(3), (4, 64))
    variables = models.init_variables(jax.random.key(4), model)
    bits = jnp.array([[8, 4, 32], [2, 3, 6], [4, 4, 4]])
    widths = jnp.array([[1.0, 0.75, 1.0], [1.25, 0.5, 1.0], [1.0, 1.0, 1.0]])
    apply = jax.jit(model.apply)
    batched = jax.jit(jax.vmap(model.apply, in_axes=(None, None, 0, 0)))(variables, x, bits, widths)
    for row in range(3):
        np.testing.assert_allclose(batched[row], apply(variables, x, bits[row], widths[row]), atol=1e-5)


def test_bits_as_a_list_int64_or_float32_run_the_same_operations(compilations):
    model = models.get("mlp", hidden=(8, 4))
    x = jax.random.normal(jax.random.key(7), (4, 64))
    variables = models.init_variables(jax.random.key(8), model)
    widths = np.ones(3, np.float32)
    reference = model.apply(variables, x, np.array([8, 4, 3], np.float32), widths)
    forms = ([8, 4, 3], np.array([8, 4, 3], np.int64), np.array([8, 4, 3], np.int32))
    with compilations() as compiled:
        outputs = [model.apply(variables, x, bits, widths) for bits in forms]
    assert compiled == []  # every form is used as float32: the float32 call's (eager) operations serve them all
    for output in outputs:
        np.testing.assert_array_equal(output, reference)
    # a list of traced scalars is a traced configuration (checked by its caller), not a concrete one to check here
    traced_list = jax.jit(lambda b0, b1, b2: model.apply(variables, x, [b0, b1, b2], widths))
    np.testing.assert_allclose(traced_list(8, 4, 3), reference, atol=1e-5)


def mixed_config(table):
    """Widths 0.75..1.25 that respect the width groups, bits cycling through 2..8."""
    widths = np.ones(len(table))
    choices = (0.75, 0.875, 1.125, 1.25)
    for position, group in enumerate(table.width_groups()):
        if table[group[0]].scalable:
            widths[group] = choices[position % len(choices)]
    bits = np.array([(8, 3, 4, 2, 6)[index % 5] for index in range(len(table))])
    return bits, widths


def randomise_batch_stats(key, variables):
    """Non-trivial batch-norm statistics, so that channel misalignments show in the outputs."""
    variables = dict(variables)
    variables["batch_stats"] = jax.tree_util.tree_map(
        lambda v: v + jax.random.uniform(key, v.shape), variables["batch_stats"]
    )
    return variables


def test_masked_equals_materialised_digits(digits_setup):
    model, x, variables, apply, _ = digits_setup
    variables = randomise_batch_stats(jax.random.key(5), variables)
    table = models.layer_table(model)
    bits, widths = mixed_config(table)
    narrow_model, narrow_variables = models.materialize(model, variables, widths)
    for layer, width in zip(table, widths, strict=True):
        kernel = narrow_variables["params"][layer.name]["kernel"]
        assert kernel.shape[-1] == (models.scale_channels(layer.out_channels, width) if layer.scalable else 10)
    np.testing.assert_allclose(apply(variables, x, bits, widths), narrow_model.apply(narrow_variables, x, bits),
                               atol=1e-5)


@pytest.fixture(scope="module")
def resnet20_setup():
    """A masked ResNet-20 on 8x8 inputs with one jitted apply (the compilation is shared by the tests below)."""
    shape = (8, 8, 3)
    model = models.get("resnet20")
    table = models.layer_table(model, input_shape=shape)
    x = jax.random.normal(jax.random.key(6), (2, *shape))
    return model, table, x, jax.jit(model.apply)


@pytest.mark.slow
def test_masked_equals_materialised_resnet20(resnet20_setup):
    model, table, x, apply = resnet20_setup
    variables = randomise_batch_stats(jax.random.key(7), models.init_variables(jax.random.key(8), model, (8, 8, 3)))
    bits, widths = mixed_config(table)
    narrow_model, narrow_variables = models.materialize(model, variables, widths, input_shape=(8, 8, 3))
    narrow_out = jax.jit(narrow_model.apply)(narrow_variables, x, bits)
    np.testing.assert_allclose(apply(variables, x, bits, widths), narrow_out, atol=1e-4)


# ------------------------------------------------------------------------------------------------ bad input
@pytest.fixture(scope="module")
def small_mlp():
    model = models.get("mlp", hidden=(8, 4))
    x = jnp.zeros((1, 64))
    return model, x, models.init_variables(jax.random.key(6), model)


def test_wrong_length_config(small_mlp):
    model, x, variables = small_mlp
    with pytest.raises(ValueError, match="bits has 2 entries but model 'mlp' has 3 weight layers"):
        model.apply(variables, x, jnp.array([4, 4]), jnp.ones(3))
    with pytest.raises(ValueError, match="widths has 4 entries"):
        model.apply(variables, x, jnp.full(3, 4), jnp.ones(4))
    with pytest.raises(ValueError, match="widths has 4 entries"):
        config.check_config(models.layer_table(model), 4, np.ones(4))


def test_bits_out_of_range_names_the_layer(small_mlp):
    model, x, variables = small_mlp
    with pytest.raises(ValueError, match="layer 'dense2': bit-width"):
        model.apply(variables, x, jnp.array([4, 1, 4]), jnp.ones(3))
    # 17..32 were float values for the models once; a user's bit-widths are now 2..16 everywhere (16: not quantised)
    with pytest.raises(ValueError, match=r"layer 'head': bit-width must be an integer in \[2, 16\]"):
        model.apply(variables, x, jnp.array([4, 4, 32]), jnp.ones(3))
    with pytest.raises(ValueError, match="layer 'head': bit-width"):
        config.check_config(models.layer_table(model), [4, 4, 64], None)


def test_width_rounding_to_zero_names_the_layer(small_mlp):
    model, x, variables = small_mlp
    with pytest.raises(ValueError, match="layer 'dense2': width multiplier 0.1 leaves 4 channels at zero"):
        model.apply(variables, x, jnp.full(3, 4), jnp.array([1.0, 0.1, 1.0]))
    with pytest.raises(ValueError, match="layer 'dense2': width multiplier 0.1"):
        models.get("mlp", hidden=(8, 4), widths=(1.0, 0.1, 1.0)).init(jax.random.key(0), x)
    with pytest.raises(ValueError, match="exceeds"):
        model.apply(variables, x, jnp.full(3, 4), jnp.array([1.5, 1.0, 1.0]))


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
    float_model = models.get("digits_cnn", channels=(8, 16, 16), quantize=False, widths=(1, 1, 1, 1))
    variables = models.init_variables(jax.random.key(7), float_model)
    variables["batch_stats"] = jax.tree_util.tree_map(
        lambda v: v + jax.random.uniform(jax.random.key(8), v.shape), variables["batch_stats"]
    )
    x = jax.random.normal(jax.random.key(9), (4, 8, 8, 1))
    return float_model, variables, x, jax.jit(float_model.apply)(variables, x)


def test_widened_transfer_zeroes_the_consumer_side(trained_like_digits):
    float_model, float_variables, x, expected = trained_like_digits
    wide = models.get("digits_cnn", channels=(8, 16, 16), widths=(1.25, 1.125, 1.25, 1.0))
    variables = models.transfer_variables(jax.random.key(10), wide, float_model, float_variables)
    kernel = variables["params"]["conv2"]["kernel"]
    assert kernel.shape == (3, 3, 10, 18) and np.all(kernel[:, :, 8:, :] == 0)  # consumer side of new channels
    assert np.any(kernel[:, :, :8, 16:] != 0)  # new output channels are freshly initialised, not dead
    assert np.all(variables["params"]["head"]["kernel"][16:] == 0)


def test_masked_transfer_preserves_the_function_at_width_one_and_above(trained_like_digits, digits_setup):
    float_model, float_variables, x, expected = trained_like_digits
    model, _, _, apply, _ = digits_setup  # masked digits CNN, max width 1.25
    variables = models.transfer_variables(jax.random.key(11), model, float_model, float_variables)
    for widths in ([1.0, 1.0, 1.0, 1.0], [1.25, 1.25, 1.125, 1.0]):
        np.testing.assert_allclose(apply(variables, x, jnp.full(4, 32), jnp.array(widths)), expected, atol=1e-5)


def test_narrowed_layers_keep_the_highest_l1_channels(trained_like_digits):
    float_model, float_variables, _, _ = trained_like_digits
    narrow = models.get("digits_cnn", channels=(8, 16, 16), widths=(0.75, 1.0, 1.0, 1.0))
    variables = models.transfer_variables(jax.random.key(12), narrow, float_model, float_variables)
    source = np.asarray(float_variables["params"]["conv1"]["kernel"])
    l1 = np.abs(source).sum(axis=(0, 1, 2))
    kept = np.argsort(-l1, kind="stable")[:6]
    np.testing.assert_allclose(variables["params"]["conv1"]["kernel"], source[..., kept])
    # Every group is stored in decreasing importance, so conv2's outputs are permuted too.
    consumer = np.asarray(float_variables["params"]["conv2"]["kernel"])
    consumer_order = np.argsort(-np.abs(consumer).sum(axis=(0, 1, 2)), kind="stable")
    np.testing.assert_allclose(variables["params"]["conv2"]["kernel"], consumer[:, :, kept][..., consumer_order])
    np.testing.assert_allclose(variables["batch_stats"]["conv1"]["bn"]["mean"],
                               np.asarray(float_variables["batch_stats"]["conv1"]["bn"]["mean"])[kept])


@pytest.mark.slow
def test_transfer_across_zero_padding_shortcuts_preserves_the_function(resnet20_setup):
    model, table, x, apply = resnet20_setup
    shape = (8, 8, 3)
    float_model = models.get("resnet20", quantize=False, widths=(1.0,) * 20)
    float_variables = randomise_batch_stats(jax.random.key(13), models.init_variables(jax.random.key(14), float_model,
                                                                                       shape))
    float_variables["params"] = jax.tree_util.tree_map(  # distinct channel norms, so channels get reordered
        lambda v: v * (1 + 0.1 * (jnp.arange(v.shape[-1]) % 5)) if v.ndim == 4 else v, float_variables["params"]
    )
    expected = jax.jit(float_model.apply)(float_variables, x)
    variables = models.transfer_variables(jax.random.key(15), model, float_model, float_variables, input_shape=shape)
    stem = variables["params"]["stem"]["kernel"][..., :16]
    assert not np.array_equal(stem, float_variables["params"]["stem"]["kernel"])  # channels were reordered
    for width in (1.0, 1.25):
        widths = np.array([width if layer.scalable else 1.0 for layer in table])
        np.testing.assert_allclose(apply(variables, x, jnp.full(20, 32), widths), expected, rtol=1e-4, atol=1e-4)


def test_transfer_needs_a_width_one_float_model(trained_like_digits):
    _, float_variables, _, _ = trained_like_digits
    wide_float = models.get("digits_cnn", channels=(8, 16, 16), widths=(1.25, 1, 1, 1), quantize=False)
    wide_variables = models.init_variables(jax.random.key(16), wide_float)
    with pytest.raises(ValueError, match="width 1"):
        models.transfer_variables(jax.random.key(17), models.get("digits_cnn", channels=(8, 16, 16)), wide_float,
                                  wide_variables)
