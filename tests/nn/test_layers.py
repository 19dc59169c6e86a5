"""Specification of mpqjax.nn.layers: quantised convolution/dense layers, batch norm, masked widths."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mpqjax.nn import quant
from mpqjax.nn.layers import QConv, QDense, channel_mask


def init(layer, seed, *args, **kwargs):
    """Variables of ``layer`` drawn with NumPy: compiling ``layer.init``'s random draws costs seconds on a CPU."""
    rng = np.random.default_rng(seed)
    abstract = jax.eval_shape(lambda: layer.init(jax.random.key(0), *args, **kwargs))
    abstract = {name: value for name, value in abstract.items() if name != "calibration"}

    def draw(path, leaf):
        name = path[-1].key
        if name in ("scale", "var"):
            return jnp.ones(leaf.shape)
        if name == "act_clip":
            return jnp.full(leaf.shape, 2.0)
        return jnp.asarray(rng.normal(size=leaf.shape) * 0.3, jnp.float32)

    return jax.tree_util.tree_map_with_path(draw, abstract)


@pytest.fixture(scope="module")
def image():
    return jax.random.normal(jax.random.key(0), (2, 5, 5, 5))


def test_float_conv_matches_flax_conv(image):
    layer = QConv(features=4, batch_norm=False, quantize=False)
    variables = init(layer, 1, image)
    reference = nn.Conv(4, (3, 3), use_bias=False).apply({"params": {"kernel": variables["params"]["kernel"]}}, image)
    np.testing.assert_allclose(layer.apply(variables, image), reference, atol=1e-5)


def test_quantised_conv_uses_quantised_weights_and_inputs(image):
    layer = QConv(features=4, batch_norm=False, input_signed=True)
    variables = init(layer, 1, image, 3)
    kernel = variables["params"]["kernel"]
    clip = variables["quant"]["act_clip"]
    reference = nn.Conv(4, (3, 3), use_bias=False).apply(
        {"params": {"kernel": quant.quantize_weights(kernel, 3)}},
        quant.quantize_activations(image, 3, clip, signed=True),
    )
    np.testing.assert_allclose(layer.apply(variables, image, 3), reference, atol=1e-5)
    assert not np.allclose(layer.apply(variables, image, 3), layer.apply(variables, image, 32))


def test_depthwise_conv_against_numpy():
    x = jax.random.normal(jax.random.key(2), (1, 4, 4, 3))
    layer = QConv(features=3, depthwise=True, batch_norm=False, quantize=False)
    variables = init(layer, 3, x)
    kernel = np.asarray(variables["params"]["kernel"])
    assert kernel.shape == (3, 3, 1, 3)
    padded = np.pad(np.asarray(x), ((0, 0), (1, 1), (1, 1), (0, 0)))
    expected = np.zeros((1, 4, 4, 3))
    for i in range(4):
        for j in range(4):
            expected[0, i, j] = np.einsum("hwc,hwc->c", padded[0, i : i + 3, j : j + 3], kernel[:, :, 0])
    np.testing.assert_allclose(layer.apply(variables, x), expected, atol=1e-5)


def test_dense_with_bias():
    x = jax.random.normal(jax.random.key(4), (3, 6))
    layer = QDense(features=2, batch_norm=False, use_bias=True, quantize=False)
    variables = init(layer, 5, x)
    params = variables["params"]
    np.testing.assert_allclose(layer.apply(variables, x), x @ params["kernel"] + params["bias"], atol=1e-6)


@pytest.mark.parametrize("train", (False, True))
def test_masked_conv_equals_materialised_conv(image, train):
    """Max width 6 outputs with 4 active, 5 inputs with 3 active == a 4-output layer on 3 inputs."""
    x = image * channel_mask(5, 3)  # a masked producer leaves its inactive channels at zero
    masked = QConv(features=6)
    variables = init(masked, 6, x, 3)
    variables = jax.tree_util.tree_map(lambda v: v + 0.1 * jnp.arange(v.size).reshape(v.shape) / v.size, variables)
    out, _ = masked.apply(variables, x, 3, in_active=3, out_active=4, train=train, mutable=["batch_stats"])
    kernel = variables["params"]["kernel"][:, :, :3, :4]
    cut = jax.tree_util.tree_map(lambda v: v[:4] if v.ndim == 1 else v, variables)
    cut["params"]["kernel"] = kernel
    narrow = QConv(features=4)
    expected, _ = narrow.apply(cut, x[..., :3], 3, train=train, mutable=["batch_stats"])
    np.testing.assert_allclose(out[..., :4], expected, atol=1e-5)
    assert np.all(out[..., 4:] == 0)


def test_masked_dense_equals_materialised_dense():
    x = jax.random.normal(jax.random.key(7), (4, 6)) * channel_mask(6, 4)
    masked = QDense(features=5, batch_norm=False, use_bias=True)
    variables = init(masked, 8, x, 2)
    out = masked.apply(variables, x, 2, in_active=4, out_active=3)
    cut = {"params": {"kernel": variables["params"]["kernel"][:4, :3], "bias": variables["params"]["bias"][:3]},
           "quant": variables["quant"]}
    expected = QDense(features=3, batch_norm=False, use_bias=True).apply(cut, x[:, :4], 2)
    np.testing.assert_allclose(out[:, :3], expected, atol=1e-6)
    assert np.all(out[:, 3:] == 0)


def test_clip_is_a_parameter_only_when_learned(image):
    calibrated = init(QConv(features=2), 9, image, 4)
    assert "act_clip" in calibrated["quant"] and "act_clip" not in calibrated["params"]
    for mode in ("pact", "lsq"):
        learned = init(QConv(features=2, act_clipping=mode), 9, image, 4)
        assert "act_clip" in learned["params"] and "quant" not in learned
    float_layer = init(QConv(features=2, quantize=False), 9, image)
    assert "quant" not in float_layer and "act_clip" not in float_layer["params"]


def test_calibration_statistics_recorded_only_on_request(image):
    layer = QConv(features=2, input_signed=True)
    variables = init(layer, 10, image, 4)
    _, collected = layer.apply(variables, image, 4, mutable=["calibration"])
    stats = collected["calibration"]["input_stats"][0]
    assert float(stats[0]) == pytest.approx(float(jnp.max(jnp.abs(image))))
    _, nothing = layer.apply(variables, image, 4, mutable=["batch_stats"])
    assert "calibration" not in nothing
