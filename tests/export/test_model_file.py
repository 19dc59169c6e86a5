"""Specification of mpqjax.export.model_file: the ``mpqjax-export/1`` file of a quantised model, and loading it back."""

import json
import os
import zipfile

import jax
import numpy as np
import pytest

from mpqjax import export
from mpqjax.nn import models
from mpqjax.training import train

BITS = (8, 4, 3, 8)
WIDTHS = (0.75, 1.25, 0.875, 1.0)
# Narrower than the default, for speed; also checks that constructor options survive the JSON round trip.
MODEL_KWARGS = {"channels": (16, 32, 32)}


# ------------------------------------------------------------------------------------------------ a trained model
@pytest.fixture(scope="module")
def searched(digits):
    """digits_cnn as the search leaves it: float-trained, then fine-tuned in masked mode at a mixed configuration."""
    float_model = models.get("digits_cnn", quantize=False, widths=(1.0,) * 4, **MODEL_KWARGS)
    float_variables, _ = train.train_float(jax.random.key(0), float_model, digits, epochs=1)
    model = models.get("digits_cnn", **MODEL_KWARGS)
    variables, _ = train.finetune(jax.random.key(1), float_model, float_variables, model, digits, bits=BITS,
                                  widths=WIDTHS, epochs=1)
    logits = train.predict(model, variables, digits.test.x, bits=BITS, widths=WIDTHS)
    return model, variables, logits


def export_searched(path, searched, **overrides):
    _, variables, _ = searched
    options = dict(model_name="digits_cnn", model_kwargs=MODEL_KWARGS, variables=variables, bits=BITS, widths=WIDTHS,
                   input_shape=(8, 8, 1), num_classes=10, metadata={"test_accuracy": 0.9, "note": "fixture"})
    options.update(overrides)
    return export.export_model(path, **options)


@pytest.fixture(scope="module")
def exported(searched, tmp_path_factory):
    path = tmp_path_factory.mktemp("export") / "best.npz"
    config = export_searched(path, searched)
    return path, config, export.load_model(path)


def read_npz(path):
    with np.load(path, allow_pickle=False) as archive:
        return {name: archive[name] for name in archive.files}


def test_file_holds_integer_codes_of_the_real_channel_counts(exported):
    path, config, _ = exported
    arrays = read_npz(path)
    assert json.loads(str(arrays["__config__"])) == config
    assert config["format"] == export.FORMAT_VERSION == "mpqjax-export/1" and config["model"] == "digits_cnn"
    assert config["batch_norm_epsilon"] == export.BATCH_NORM_EPSILON and export.CONFIG_ENTRY == "__config__"
    assert config["input_shape"] == [8, 8, 1] and config["num_classes"] == 10
    assert config["metadata"] == {"test_accuracy": 0.9, "note": "fixture"}
    assert config["model_kwargs"] == {"channels": [16, 32, 32], "num_classes": 10}
    table = models.layer_table("digits_cnn", **MODEL_KWARGS)
    assert [layer["name"] for layer in config["layers"]] == list(table.names)
    assert [layer["bits"] for layer in config["layers"]] == list(BITS)
    assert [layer["width"] for layer in config["layers"]] == list(WIDTHS)
    channels = [models.scale_channels(layer.out_channels, width) if layer.scalable else layer.out_channels
                for layer, width in zip(table, WIDTHS, strict=True)]
    assert channels == [12, 40, 28, 10]
    in_channels = 1
    for layer, bits, out_channels in zip(config["layers"], BITS, channels, strict=True):
        name = layer["name"]
        weight = arrays[f"{name}/weight"]
        assert weight.dtype == np.int8 and layer["weight_dtype"] == "int8"
        assert weight.shape[-2:] == (in_channels, out_channels) and layer["out_channels"] == out_channels
        limit = 2 ** (bits - 1) - 1
        assert np.abs(weight.astype(np.int32)).max() <= limit
        assert int(arrays[f"{name}/bits"]) == bits and arrays[f"{name}/bits"].dtype == np.int32
        assert arrays[f"{name}/weight_scale"].shape == (out_channels,)
        assert arrays[f"{name}/weight_scale"].dtype == np.float32 and arrays[f"{name}/act_clip"].dtype == np.float32
        levels = 2 ** (bits - 1) - 1 if layer["input_signed"] else 2**bits - 1
        assert float(arrays[f"{name}/act_scale"]) == pytest.approx(float(arrays[f"{name}/act_clip"]) / levels)
        has_bn = name != "head"
        assert layer["batch_norm"] == has_bn and layer["use_bias"] == (not has_bn)
        for entry in ("bn_scale", "bn_bias", "bn_mean", "bn_var"):
            assert (f"{name}/{entry}" in arrays) == has_bn
        in_channels = out_channels
    assert [layer["input_signed"] for layer in config["layers"]] == [True, False, False, False]


def test_weights_are_exactly_the_fake_quantised_active_channels(exported, searched, jitted_quantize_weights):
    path, config, _ = exported
    model, variables, _ = searched
    arrays = read_npz(path)
    _, narrow_variables = models.materialize(model, variables, WIDTHS)
    for layer, bits in zip(config["layers"], BITS, strict=True):
        name = layer["name"]
        masked_kernel = np.asarray(variables["params"][name]["kernel"])
        active = masked_kernel[..., : layer["in_channels"], : layer["out_channels"]]
        np.testing.assert_array_equal(active, np.asarray(narrow_variables["params"][name]["kernel"]))
        fake_quantised = np.asarray(jitted_quantize_weights(active, np.float32(bits)))
        np.testing.assert_array_equal(export.dequantize(arrays[f"{name}/weight"], arrays[f"{name}/weight_scale"]),
                                      fake_quantised)
        if layer["batch_norm"]:
            running_var = np.asarray(variables["batch_stats"][name]["bn"]["var"])[: layer["out_channels"]]
            np.testing.assert_array_equal(arrays[f"{name}/bn_var"], running_var)
        np.testing.assert_array_equal(arrays[f"{name}/act_clip"], np.asarray(variables["quant"][name]["act_clip"]))


def test_loaded_model_reproduces_the_searched_model(exported, searched, digits):
    _, _, loaded = exported
    model, variables, masked_logits = searched
    assert loaded.model == models.get("digits_cnn", widths=WIDTHS, **MODEL_KWARGS)
    assert loaded.bits.tolist() == list(BITS) and loaded.widths.tolist() == list(WIDTHS)
    assert loaded.input_shape == (8, 8, 1) and loaded.num_classes == 10 and loaded.metadata["note"] == "fixture"
    loaded_logits = train.predict(loaded.model, loaded.variables, digits.test.x, bits=loaded.bits)
    # Masked and materialised convolutions sum in different orders: equal up to float rounding.
    np.testing.assert_array_equal(loaded_logits.argmax(-1), masked_logits.argmax(-1))
    np.testing.assert_allclose(loaded_logits, masked_logits, rtol=0, atol=1e-5)
    assert train.evaluate(loaded.model, loaded.variables, digits.test, bits=loaded.bits) == train.evaluate(
        model, variables, digits.test, bits=BITS, widths=WIDTHS)
    # Against the same materialised computation the loaded model is bit-identical.
    narrow_model, narrow_variables = models.materialize(model, variables, WIDTHS)
    narrow_logits = train.predict(narrow_model, narrow_variables, digits.test.x, bits=BITS)
    np.testing.assert_array_equal(loaded_logits, narrow_logits)


def numpy_forward(path, x):
    """digits_cnn run from the file alone with NumPy, following the module docstring's recipe."""
    arrays = read_npz(path)
    config = json.loads(str(arrays["__config__"]))

    def quantise_input(h, layer):
        name = layer["name"]
        clip, step = arrays[f"{name}/act_clip"], arrays[f"{name}/act_scale"]
        return np.round(np.clip(h, -clip if layer["input_signed"] else 0.0, clip) / step) * step

    def conv_same(h, kernel, stride):
        _, height, width, _ = h.shape
        kh, kw = kernel.shape[:2]
        out_h, out_w = -(-height // stride), -(-width // stride)
        pad_h, pad_w = max((out_h - 1) * stride + kh - height, 0), max((out_w - 1) * stride + kw - width, 0)
        h = np.pad(h, [(0, 0), (pad_h // 2, pad_h - pad_h // 2), (pad_w // 2, pad_w - pad_w // 2), (0, 0)])
        return sum(np.einsum("nhwc,co->nhwo", h[:, i : i + stride * out_h : stride, j : j + stride * out_w : stride],
                             kernel[i, j]) for i in range(kh) for j in range(kw))

    h = x
    for layer in config["layers"]:
        name = layer["name"]
        kernel = arrays[f"{name}/weight"].astype(np.float32) * arrays[f"{name}/weight_scale"]
        h = quantise_input(h, layer)
        if layer["kind"] == "dense":
            h = h @ kernel + arrays[f"{name}/bias"]
            continue
        h = conv_same(h, kernel, layer["stride"][0])
        h = (h - arrays[f"{name}/bn_mean"]) / np.sqrt(arrays[f"{name}/bn_var"] + config["batch_norm_epsilon"])
        h = np.maximum(h * arrays[f"{name}/bn_scale"] + arrays[f"{name}/bn_bias"], 0.0)
        if name == "conv3":
            h = h.mean(axis=(1, 2))
    return h


def test_a_numpy_forward_pass_from_the_file_alone_matches(exported, searched, digits):
    path, _, _ = exported
    _, _, masked_logits = searched
    logits = numpy_forward(path, digits.test.x)
    # A different float summation order can move an activation across a rounding boundary (one step, large at
    # 3 bits) on a rare example; the bulk must agree to float precision (measured: every example within 3e-7).
    assert np.mean(logits.argmax(-1) == masked_logits.argmax(-1)) >= 0.99
    assert np.mean(np.abs(logits - masked_logits).max(axis=-1) < 1e-5) >= 0.97


def test_exporting_the_materialised_model_writes_the_same_arrays(exported, searched, tmp_path):
    path, _, _ = exported
    model, variables, _ = searched
    narrow_model, narrow_variables = models.materialize(model, variables, WIDTHS)
    again = tmp_path / "materialised.npz"
    export_searched(again, searched, model_kwargs={**MODEL_KWARGS, "widths": WIDTHS}, variables=narrow_variables,
                    widths=None)
    first, second = read_npz(path), read_npz(again)
    assert first.keys() == second.keys()
    for name in first:
        np.testing.assert_array_equal(first[name], second[name])


def test_a_16_bit_layer_is_exported_as_int16_with_float_activations(searched, digits, tmp_path):
    model, variables, _ = searched
    bits = (16, 4, 3, 8)
    path = tmp_path / "fip16_stem.npz"
    config = export_searched(path, searched, bits=bits)
    assert config["layers"][0]["weight_dtype"] == "int16" and not config["layers"][0]["act_quantized"]
    loaded = export.load_model(path)
    assert read_npz(path)["conv1/weight"].dtype == np.int16
    original = train.predict(model, variables, digits.test.x, bits=bits, widths=WIDTHS)
    reloaded = train.predict(loaded.model, loaded.variables, digits.test.x, bits=loaded.bits)
    # Only the stem's weights moved, by at most half a 16-bit step; on a few examples that moves an activation of a
    # low-bit layer across a rounding boundary (measured: 6 of 360 examples differ by more than 1e-4).
    per_example = np.abs(reloaded - original).max(axis=-1)
    assert np.mean(original.argmax(-1) == reloaded.argmax(-1)) >= 0.99
    assert np.median(per_example) < 1e-5 and np.mean(per_example < 1e-4) >= 0.9


def test_learned_clips_and_a_dense_model_round_trip(digits, tmp_path):
    """An MLP with PACT clips (parameters, not "quant" variables), one bit-width for every layer."""
    model = models.get("mlp", hidden=(16, 8), act_clipping="pact")
    variables = models.init_variables(jax.random.key(3), model)
    variables = jax.tree_util.tree_map_with_path(  # training would move batch statistics and clips off their init
        lambda path, leaf: leaf * 0.7 if getattr(path[-1], "key", "") in ("var", "act_clip") else leaf, variables)
    x = digits.test.x[:64].reshape(64, -1)
    widths = (1.25, 0.75, 1.0)
    path = tmp_path / "mlp.npz"
    config = export.export_model(path, model_name="mlp", model_kwargs={"hidden": (16, 8), "act_clipping": "pact"},
                                 variables=variables, bits=3, widths=widths, input_shape=(64,), num_classes=10)
    assert [layer["bits"] for layer in config["layers"]] == [3, 3, 3]
    assert [layer["out_channels"] for layer in config["layers"]] == [20, 6, 10]
    loaded = export.load_model(path)
    assert float(loaded.variables["params"]["dense2"]["act_clip"]) == pytest.approx(0.7 * 4.0)
    original = train.predict(model, variables, x, bits=3, widths=widths)
    reloaded = train.predict(loaded.model, loaded.variables, x, bits=loaded.bits)
    np.testing.assert_array_equal(reloaded.argmax(-1), original.argmax(-1))
    np.testing.assert_allclose(reloaded, original, rtol=0, atol=1e-5)


# ------------------------------------------------------------------------------------------------ bad input
def assert_nothing_written(folder):
    assert os.listdir(folder) == []


@pytest.mark.parametrize("bits, message", [
    ((32, 4, 3, 8), r"layer 'conv1': bit-width must be an integer in \[2, 16\] \(16: not quantised\), got 32"),
    ((8, 4, 17, 8), "layer 'conv3': bit-width must be an integer in .* got 17"),
    ((8, 1, 3, 8), "layer 'conv2': bit-width must be an integer"),
])
def test_bits_the_integer_format_cannot_hold_are_refused(searched, tmp_path, bits, message):
    with pytest.raises(ValueError, match=message):
        export_searched(tmp_path / "model.npz", searched, bits=bits)
    assert_nothing_written(tmp_path)


def test_export_refuses_inconsistent_arguments(searched, tmp_path):
    _, variables, _ = searched
    path = tmp_path / "model.npz"
    with pytest.raises(ValueError, match="must be JSON values"):
        export_searched(path, searched, metadata={"accuracy": object()})
    masked_as_materialised = dict(model_kwargs={**MODEL_KWARGS, "widths": WIDTHS}, widths=None)
    with pytest.raises(ValueError, match=r"variable '.*conv1.*' has shape \(20,\), the model at these widths needs"):
        export_searched(path, searched, **masked_as_materialised)
    with pytest.raises(ValueError, match="num_classes 7 differs"):
        export_searched(path, searched, model_kwargs={**MODEL_KWARGS, "num_classes": 10}, num_classes=7)
    with pytest.raises(ValueError, match="unknown model"):
        export_searched(path, searched, model_name="lenet")
    with pytest.raises(ValueError, match="quantize=True"):
        export_searched(path, searched, model_kwargs={"quantize": False})
    with pytest.raises(ValueError, match="does not exist"):
        export_searched(tmp_path / "absent" / "model.npz", searched)
    assert_nothing_written(tmp_path)


def test_a_failed_write_leaves_the_previous_file(searched, tmp_path, monkeypatch):
    path = tmp_path / "model.npz"
    path.write_bytes(b"previous")

    def failing_savez(handle, **arrays):
        handle.write(b"PK half an archive")
        raise OSError("disk full")

    monkeypatch.setattr(np, "savez_compressed", failing_savez)
    with pytest.raises(OSError, match="disk full"):
        export_searched(path, searched)
    assert path.read_bytes() == b"previous" and os.listdir(tmp_path) == ["model.npz"]


def rewrite(path, arrays):
    with open(path, "wb") as handle:
        np.savez(handle, **arrays)


def test_load_refuses_foreign_truncated_and_tampered_files(exported, tmp_path):
    good, config, _ = exported
    content = good.read_bytes()
    arrays = read_npz(good)
    expected = {"missing.npz": "is not a readable mpqjax export"}
    (tmp_path / "text.npz").write_text("hello\n")
    expected["text.npz"] = "is not a readable mpqjax export"
    np.save(tmp_path / "array.npy", np.zeros(3))
    expected["array.npy"] = "not an .npz archive"
    rewrite(tmp_path / "foreign.npz", {"weights": np.zeros(3)})
    expected["foreign.npz"] = "no __config__ entry"
    newer = json.dumps({**config, "format": "mpqjax-export/2"})
    rewrite(tmp_path / "version.npz", {**arrays, "__config__": np.asarray(newer)})
    expected["version.npz"] = "has format 'mpqjax-export/2'; this version of mpqjax reads 'mpqjax-export/1'"
    (tmp_path / "truncated.npz").write_bytes(content[: len(content) // 2])
    expected["truncated.npz"] = "is not a readable mpqjax export"
    with zipfile.ZipFile(good) as source, zipfile.ZipFile(tmp_path / "corrupt.npz", "w") as archive:
        for name in source.namelist():  # the right names, one member cut short
            member = source.read(name)
            archive.writestr(name, member[: len(member) // 2] if name == "conv2/weight.npy" else member)
    expected["corrupt.npz"] = "is a damaged mpqjax export"
    rewrite(tmp_path / "range.npz", {**arrays, "conv3/weight": np.full_like(arrays["conv3/weight"], 4)})
    expected["range.npz"] = r"layer 'conv3': weights exceed \+-3"  # 3 bits hold -3..3
    rewrite(tmp_path / "dtype.npz", {**arrays, "conv1/weight": arrays["conv1/weight"].astype(np.int32)})
    expected["dtype.npz"] = "entry 'conv1/weight' has dtype int32, expected int8"
    rewrite(tmp_path / "lacking.npz", {key: value for key, value in arrays.items() if key != "head/bias"})
    expected["lacking.npz"] = "entry 'head/bias' is missing"
    for name, message in expected.items():
        path = tmp_path / name
        with pytest.raises(ValueError, match=message) as caught:
            export.load_model(path)
        text = str(caught.value)
        assert text.startswith(repr(str(path))) and "\n" not in text, text
