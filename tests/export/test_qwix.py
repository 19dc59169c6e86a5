"""mpqjax's bit-widths as Qwix rules (`mpqjax.export.qwix`): the rules, applied by Qwix to the model they were
made for, quantise each layer at its width and nothing else.

Qwix records what it did in the quantised model's parameters (``qwix.PtqProvider``): each quantised kernel becomes a
``WithAux`` holding a ``qwix.QArray`` (its ``qtype``, integer codes and per-channel scales), each statically quantised
activation a ``<op>_lhs_scale`` parameter. The checks read those records and the codes themselves.

XLA's CPU backend does not compile Qwix's integer products stored in int4 (2 to 4 bits), so models run here at 5 to
8 bits; 2 to 4 bits are checked on weights quantised by ``qwix.quantize_params`` (no product compiled).
"""

import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn
from flax import nnx

from mpqjax.export.qwix import qwix_rules, qwix_rules_source
from mpqjax.nn import models

DIGITS_SHAPE = (8, 8, 1)


@pytest.fixture(scope="module")
def qwix():
    import qwix

    return qwix


@pytest.fixture(scope="module")
def digits():
    """The zoo's digits_cnn (layers conv1, conv2, conv3, head), its linen module at width 1, a batch of inputs."""
    model = models.get("digits_cnn")
    assert model.table().names == ("conv1", "conv2", "conv3", "head")
    x = jax.random.normal(jax.random.key(0), (4, *DIGITS_SHAPE))
    return model, model.function.module, x


# -- what Qwix recorded ---------------------------------------------------------------------------------------------

def _is_recorded(leaf) -> bool:
    # Qwix's PTQ wraps each leaf it quantised or calibrated in its WithAux type, which qwix does not export
    return type(leaf).__name__ == "WithAux"


def _records(params) -> dict:
    """``{'/'-joined path: WithAux}`` of every parameter Qwix quantised (kernels) or calibrated (activation scales)."""
    flat = jax.tree_util.tree_flatten_with_path(params, is_leaf=_is_recorded)[0]
    return {jax.tree_util.keystr(path, simple=True, separator="/"): leaf for path, leaf in flat if _is_recorded(leaf)}


def _module_of(path: str) -> str:
    return path.rpartition("/")[0]


def _check_kernel(record, qwix, bits: int) -> None:
    """A ``bits``-bit kernel with one scale per output channel (the last axis), as mpqjax quantises weights."""
    quantised = record.array
    assert isinstance(quantised, qwix.QArray)
    assert quantised.qtype == f"int{bits}" and record.how.qtype == f"int{bits}"
    shape = quantised.qvalue.shape
    assert quantised.scale.shape == (1,) * (len(shape) - 1) + (shape[-1],)
    codes = np.asarray(quantised.qvalue, np.int32).reshape(-1, shape[-1])
    assert codes.min() >= -(2 ** (bits - 1)) and codes.max() <= 2 ** (bits - 1) - 1
    # Every output channel reaches the end of the b-bit grid: scaled per channel, to b bits and not fewer.
    assert np.all(np.abs(codes).max(axis=0) >= 2 ** (bits - 1) - 1)


def _check_activation(record, bits: int) -> None:
    """A ``bits``-bit activation with one calibrated scale for the whole tensor."""
    assert record.how.qtype == f"int{bits}"
    assert all(size == 1 for size in record.array.shape)
    assert float(np.asarray(record.array).reshape(())) > 0


# -- the zoo's digits_cnn -------------------------------------------------------------------------------------------

def test_digits_cnn_rules_quantise_each_layer_at_its_width(qwix, digits):
    model, module, x = digits
    bits = [8, 6, 5, 7]
    provider = qwix.PtqProvider(qwix_rules(model, bits))
    quantised = qwix.quantize_model(module, provider)
    variables = quantised.init(jax.random.key(1), x)  # PTQ: quantises the kernels, calibrates on x
    records = _records(variables["params"])
    assert provider.get_unused_rules() == []
    assert {_module_of(path) for path in records} == {"conv1", "conv2", "conv3", "head"}
    for layer, width in zip(model.table(), bits, strict=True):
        _check_kernel(records[layer.weight_path], qwix, width)
        (scale,) = [record for path, record in records.items() if path.startswith(f"{layer.name}/") and
                    path.endswith("_lhs_scale")]
        _check_activation(scale, width)
    assert len(records) == 2 * len(bits)  # nothing else (batch norms, the float path) was touched
    out = quantised.apply(variables, x)
    float_out = module.apply(module.init(jax.random.key(1), x), x)
    assert out.shape == (4, 10) and np.all(np.isfinite(out))
    assert 0 < np.abs(out - float_out).max() < 0.5 * np.abs(float_out).max()


def test_digits_cnn_rules_train_in_qwix_as_they_run_post_training(qwix, digits):
    """The same rules in QAT (``QtProvider``) give the PTQ model's outputs, and each rule is in effect."""
    model, module, x = digits
    bits = [8, 6, 5, 7]

    def outputs(provider_type, bits):
        quantised = qwix.quantize_model(module, provider_type(qwix_rules(model, bits)))
        return np.asarray(quantised.apply(quantised.init(jax.random.key(1), x), x))

    qat = outputs(qwix.QtProvider, bits)
    np.testing.assert_allclose(qat, outputs(qwix.PtqProvider, bits), atol=1e-5)
    for index in range(len(bits)):  # each layer's width changes the output: its rule applies
        assert np.abs(outputs(qwix.QtProvider, [*bits[:index], 16, *bits[index + 1:]]) - qat).max() > 1e-4


@pytest.mark.parametrize("bits", [[2, 3, 4, 8], [5, 6, 7, 2]])
def test_narrow_widths_quantise_the_weights(qwix, digits, bits):
    """2 to 8 bits (Qwix's int2 ... int8) quantise the weights at their width (``quantize_params``: no product runs)."""
    model, module, x = digits
    quantised = qwix.quantize_model(module, qwix.PtqProvider(qwix_rules(model, bits)))
    abstract = jax.eval_shape(lambda batch: quantised.init(jax.random.key(1), batch), x)
    params = qwix.quantize_params(module.init(jax.random.key(1), x)["params"], abstract["params"])
    records = _records(params)
    assert sorted(records) == sorted(layer.weight_path for layer in model.table())
    for layer, width in zip(model.table(), bits, strict=True):
        _check_kernel(records[layer.weight_path], qwix, width)


# -- a user's nested linen module, an NNX module -------------------------------------------------------------------

class _Block(nn.Module):
    @nn.compact
    def __call__(self, x):
        return nn.relu(nn.Conv(4, (3, 3), name="conv")(x))


class _Stage(nn.Module):
    @nn.compact
    def __call__(self, x):
        return _Block(name="block1")(_Block(name="block0")(x))


class _Nested(nn.Module):
    """Three modules named "conv" at different depths; "proj.in" and "projxin" tell an escaped '.' from any."""

    @nn.compact
    def __call__(self, x):
        x = nn.Conv(4, (1, 1), name="conv")(_Stage(name="stage")(x))
        x = nn.relu(nn.Dense(4, name="proj.in")(x.mean(axis=(1, 2))))
        return nn.Dense(3, name="projxin")(x)


def test_nested_linen_paths_match_one_module_each(qwix):
    module = _Nested()
    model = models.wrap(module, input_shape=(6, 6, 2))
    assert model.table().names == ("stage/block0/conv", "stage/block1/conv", "conv", "proj.in", "projxin")
    bits = [5, 6, 7, 8, 6]
    rules = qwix_rules(model, bits)
    x = jax.random.normal(jax.random.key(0), (2, 6, 6, 2))
    float_params = module.init(jax.random.key(1), x)["params"]
    paths = {""} | {"/".join(key[:depth]) for key in _flat_keys(float_params) for depth in range(1, len(key))}
    for rule, layer in zip(rules, model.table(), strict=True):
        assert [path for path in paths if _fullmatch(rule.module_path, path)] == [_module_of(layer.weight_path)]
    provider = qwix.PtqProvider(rules)
    quantised = qwix.quantize_model(module, provider)
    records = _records(quantised.init(jax.random.key(1), x)["params"])
    assert provider.get_unused_rules() == []
    assert {path for path in records if path.endswith("/kernel")} == {layer.weight_path for layer in model.table()}
    for layer, width in zip(model.table(), bits, strict=True):
        _check_kernel(records[layer.weight_path], qwix, width)


def _flat_keys(tree) -> list[tuple[str, ...]]:
    return [tuple(str(getattr(key, "key", key)) for key in path) for path, _ in jax.tree_util.tree_flatten_with_path(
        tree)[0]]


def _fullmatch(pattern: str, path: str) -> bool:
    import re

    return re.fullmatch(pattern, path) is not None  # how Qwix matches a rule (qwix/_src/qconfig.py)


class _NnxBlock(nnx.Module):
    def __init__(self, channels_in: int, channels_out: int, rngs: nnx.Rngs):
        self.conv = nnx.Conv(channels_in, channels_out, (3, 3), rngs=rngs)

    def __call__(self, x):
        return nnx.relu(self.conv(x))


class _NnxNet(nnx.Module):
    def __init__(self, rngs: nnx.Rngs):
        self.blocks = nnx.List([_NnxBlock(1, 4, rngs), _NnxBlock(4, 4, rngs)])
        self.head = nnx.Linear(4, 3, rngs=rngs)

    def __call__(self, x):
        for block in self.blocks:
            x = block(x)
        return self.head(x.mean(axis=(1, 2)))


def test_nnx_model(qwix):
    """Qwix quantises NNX models too (``quantize_model`` runs the model once on example inputs)."""
    net = _NnxNet(nnx.Rngs(0))
    model = models.wrap(net, input_shape=(6, 6, 1))
    assert model.table().names == ("blocks/0/conv", "blocks/1/conv", "head")
    bits = [8, 5, 6]
    rules = qwix_rules(model, bits)
    assert [rule.module_path for rule in rules] == ["^blocks/0/conv$", "^blocks/1/conv$", "^head$"]
    x = jax.random.normal(jax.random.key(0), (2, 6, 6, 1))
    provider = qwix.PtqProvider(rules)
    quantised = qwix.quantize_model(net, provider, x)
    assert provider.get_unused_rules() == []
    kernels = {"blocks/0/conv": quantised.blocks[0].conv.kernel, "blocks/1/conv": quantised.blocks[1].conv.kernel,
               "head": quantised.head.kernel}
    for (name, kernel), width in zip(kernels.items(), bits, strict=True):
        assert _is_recorded(kernel), name
        _check_kernel(kernel, qwix, width)
    out = quantised(x)
    assert out.shape == (2, 3) and np.all(np.isfinite(out)) and np.abs(out - net(x)).max() > 0


# -- widths Qwix cannot express ------------------------------------------------------------------------------------

def test_float_layers_get_no_rule(qwix, digits):
    model = digits[0]
    rules = qwix_rules(model, [8, 16, 5, 16])  # 16 bits: mpqjax's unquantised width, not an error
    assert [(rule.module_path, rule.weight_qtype, rule.act_qtype) for rule in rules] == [
        ("^conv1$", "int8", "int8"), ("^conv3$", "int5", "int5")]
    excluded = models.wrap(_Nested(), input_shape=(6, 6, 2), exclude=["stage/.*"])  # left in float by mpqjax
    assert [rule.module_path for rule in qwix_rules(excluded, [8, 8, 8])] == ["^conv$", r"^proj\.in$", "^projxin$"]


@pytest.mark.parametrize("width", [9, 12, 15])
def test_wider_than_qwix_errors_or_rounds_up_to_float(qwix, digits, width):
    model = digits[0]
    with pytest.raises(ValueError, match=rf"^layer 'conv2': Qwix has no {width}-bit type .*round_up") as error:
        qwix_rules(model, [8, width, 5, 8])
    assert "\n" not in str(error.value)
    rules = qwix_rules(model, [8, width, 5, 8], unsupported="round_up")
    assert [(rule.module_path, rule.weight_qtype) for rule in rules] == [
        ("^conv1$", "int8"), ("^conv3$", "int5"), ("^head$", "int8")]


class _TwoWeights(nn.Module):
    """One module, two contractions with its own parameters: two mpqjax layers, one Qwix module (the top one)."""

    @nn.compact
    def __call__(self, x):
        first = self.param("first", nn.initializers.lecun_normal(), (x.shape[-1], 4))
        second = self.param("second", nn.initializers.lecun_normal(), (4, 3))
        return jnp.dot(nn.relu(jnp.dot(x, first)), second)  # Qwix PTQ intercepts jnp.dot (`@` leaks a tracer)


def test_layers_sharing_a_module_at_different_widths(qwix):
    model = models.wrap(_TwoWeights(), input_shape=(5,))
    assert model.table().names == ("first", "second")
    with pytest.raises(ValueError, match=r"^layers 'first' \(8 bits\), 'second' \(4 bits\) share module ''"):
        qwix_rules(model, [8, 4])
    (rule,) = qwix_rules(model, [8, 4], unsupported="round_up")
    assert (rule.module_path, rule.weight_qtype) == ("^$", "int8")
    assert [(rule.module_path, rule.weight_qtype) for rule in qwix_rules(model, [6, 6])] == [("^$", "int6")]
    x = jax.random.normal(jax.random.key(0), (2, 5))
    records = _records(qwix.quantize_model(_TwoWeights(), qwix.PtqProvider([rule])).init(jax.random.key(1), x)[
        "params"])
    for name in ("first", "second"):
        _check_kernel(records[name], qwix, 8)


# -- bad input -----------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("bits, message", [
    ([8, 6, 5], r"^bits has 3 entries but model 'digits_cnn' has 4 layers \(conv1, conv2, conv3, head\)$"),
    ([8, 6, 5, 8, 8], "^bits has 5 entries"),
    ([8, 1, 5, 8], r"^layer 'conv2': bit-width must be an integer in \[2, 16\]"),
    ([8, 6, 17, 8], "^layer 'conv3': bit-width"),
    ([8, 6, 5, 4.5], "^layer 'head': bit-width"),
    ([8, "6", 5, 8], "^layer 'conv2': bit-width"),
    ([True, 6, 5, 8], "^layer 'conv1': bit-width"),
    (8, "^bits must be a sequence of one bit-width per layer"),
    ("8658", "^bits must be a sequence"),
])
def test_bad_bits(digits, bits, message):
    with pytest.raises(ValueError, match=message) as error:
        qwix_rules_source(digits[0], bits)
    assert "\n" not in str(error.value)


def test_bad_mode(digits):
    with pytest.raises(ValueError, match=r"^unsupported must be one of \('error', 'round_up'\), got 'nearest'$"):
        qwix_rules_source(digits[0], [8, 8, 8, 8], unsupported="nearest")


def test_input_shape_for_a_model_wrapped_without_one():
    model = models.wrap(_Nested(), input_shape=None)
    with pytest.raises(ValueError, match="needs one input example's shape"):
        qwix_rules_source(model, [8] * 5)
    assert qwix_rules_source(model, [8] * 5, input_shape=(6, 6, 2)).count("qwix.QtRule(") == 5


def test_missing_qwix(digits, monkeypatch):
    monkeypatch.setitem(sys.modules, "qwix", None)  # import qwix raises ImportError
    with pytest.raises(ImportError, match=r'pip install "mpqjax\[qwix\]"'):
        qwix_rules(digits[0], [8, 8, 8, 8])
    assert "qwix.QtRule(" in qwix_rules_source(digits[0], [8, 8, 8, 8])  # the text needs no qwix


# -- the source text -----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("static", [True, False])
def test_source_gives_the_same_rules(qwix, static):
    model = models.wrap(_Nested(), input_shape=(6, 6, 2))
    bits = [5, 12, 16, 8, 3]
    source = qwix_rules_source(model, bits, unsupported="round_up", act_static_scale=static)
    assert source.startswith("rules = [\n") and "# stage/block1/conv: 12 bits, left in float" in source
    namespace = {"qwix": qwix}
    exec(source, namespace)  # noqa: S102  (what a user does: paste it after `import qwix`)
    rules = qwix_rules(model, bits, unsupported="round_up", act_static_scale=static)
    assert namespace["rules"] == rules
    assert [rule.module_path for rule in rules] == ["^stage/block0/conv$", r"^proj\.in$", "^projxin$"]
    assert {rule.act_static_scale for rule in rules} == {static}
