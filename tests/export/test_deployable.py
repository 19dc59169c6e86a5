"""Specification of mpqjax.export.deployable: a search's model as one integer-only file with bit-packed weights,
which runs in a fresh process without mpqjax or the model's code."""

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from mpqjax import export
from mpqjax.cost import model as cost_model
from mpqjax.export import bitpack


@pytest.fixture(scope="module")
def lowered(trained_digits_folder):
    return export.integer_program_of_run(trained_digits_folder)


def raw_test_pixels(run):
    return np.clip(np.round(run.dataset.test.x * run.dataset.std + run.dataset.mean), 0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def written(lowered, tmp_path_factory):
    program, run = lowered
    path = tmp_path_factory.mktemp("integer") / "model_int.npz"
    described = export.write_integer_model(path, program, metadata=run.metadata)
    return path, described


def test_the_integer_program_predicts_what_the_fake_quantised_model_does(lowered):
    program, run = lowered
    reference = run.fake_quantised.predict(run.dataset.test.x)
    logits = program(raw_test_pixels(run))
    assert np.mean(logits.argmax(-1) == reference.argmax(-1)) >= 0.999
    assert np.max(np.abs(logits - reference)) < 1e-3
    assert np.mean(logits.argmax(-1) == run.dataset.test.y) == pytest.approx(run.metadata["test_accuracy"], abs=2e-3)


def test_the_file_runs_in_a_fresh_process_without_mpqjax_from_another_folder(lowered, written, tmp_path):
    program, run = lowered
    path, _ = written
    pixels = raw_test_pixels(run)[:50]
    np.save(tmp_path / "pixels.npy", pixels)
    script = textwrap.dedent(f"""
        import json, sys
        import jax, numpy as np
        archive = np.load({str(path)!r}, allow_pickle=False)
        config = json.loads(str(archive["__config__"]))
        program = jax.export.deserialize(bytearray(archive["__program__"].tobytes()))
        arguments = [archive[name] for name in config["variables"]]
        logits = np.asarray(program.call(*arguments, np.load("pixels.npy")))
        assert not any(name.startswith("mpqjax") for name in sys.modules)
        np.save("logits.npy", logits)
    """)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "pixels.npy").write_bytes((tmp_path / "pixels.npy").read_bytes())
    environment = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    subprocess.run([sys.executable, "-c", script], cwd=elsewhere, check=True, env=environment, timeout=300)
    np.testing.assert_array_equal(np.load(elsewhere / "logits.npy"), program(pixels))


def test_the_weight_payload_is_the_cost_models_weight_size(lowered, written):
    program, run = lowered
    path, described = written
    table = run.model.table(run.fake_quantised.input_shape)
    counts = cost_model.layer_counts(table, np.asarray(run.widths, np.float32), exact=True)
    weight_bytes = float(np.sum(np.asarray(counts["weights"]) * np.asarray(run.bits)) / 8)
    assert abs(described["payload_bytes"] - weight_bytes) <= 0.05 * weight_bytes
    with np.load(path, allow_pickle=False) as archive:
        stored = sum(archive[name].nbytes for name in archive.files if name.startswith("weights/"))
    assert stored == described["payload_bytes"]


def test_the_file_describes_the_integer_model(lowered, written):
    program, run = lowered
    path, described = written
    loaded = export.load_program(path)
    integer = loaded.metadata["integer"]
    assert integer == json.loads(json.dumps(described))
    assert integer["format"] == export.INTEGER_FORMAT and integer["input_dtype"] == "uint8"
    assert integer["normalisation"] == {"mean": run.dataset.mean.tolist(), "std": run.dataset.std.tolist()}
    assert [layer["bits"] for layer in integer["layers"]] == [6, 4, 2, 3]
    assert loaded.metadata["test_accuracy"] == run.metadata["test_accuracy"]
    first = integer["layers"][0]
    assert len(first["weight_scale"]) == first["kernel_shape"][-1] and first["kept"][0][0] == 3


def test_the_dsp_layout_runs_the_same_model(lowered, written, tmp_path):
    program, run = lowered
    path, _ = written
    described = export.write_integer_model(tmp_path / "dsp.npz", program, layout="dsp")
    assert described["payload_bytes"] == sum(
        bitpack.packed_bytes(int(layer.block().size), layer.bits, layout="dsp") for layer in program.layers)
    pixels = raw_test_pixels(run)[:40]
    np.testing.assert_array_equal(export.load_program(tmp_path / "dsp.npz")(pixels), export.load_program(path)(pixels))


@pytest.mark.parametrize("layout", bitpack.LAYOUTS)
def test_channel_wise_weights_pack_each_group_at_its_own_bit_width(lowered, tmp_path, layout):
    program, run = lowered
    held = run.model.weight_channels(run.fake_quantised.input_shape)
    rng = np.random.default_rng(0)
    weight_bits = {name: rng.choice([2, 3, 8], count).tolist() for name, count in held.items()}
    variables = run.model.with_weight_bits(run.variables, weight_bits)
    channel_wise = export.lower(run.model, variables, run.bits, run.widths, normalisation=(run.dataset.mean,
                                run.dataset.std), input_shape=run.fake_quantised.input_shape)
    described = export.write_integer_model(tmp_path / "channels.npz", channel_wise, layout=layout)
    expected = 0
    for layer, row in zip(channel_wise.layers, described["layers"], strict=True):
        block = layer.block()
        per_channel = block.size // block.shape[layer.channel_axis]
        kept_bits = np.asarray(weight_bits[layer.name])[dict(layer.kept).get(row["channel_axis"], slice(None))]
        assert [[bits, len(channels)] for bits, channels in row["weight_groups"]] == [
            [bits, int(np.sum(kept_bits == bits))] for bits in (2, 3, 8) if np.any(kept_bits == bits)]
        expected += sum(bitpack.packed_bytes(int(np.sum(kept_bits == bits)) * per_channel, bits, layout=layout)
                        for bits in (2, 3, 8))
    assert described["payload_bytes"] == expected
    loaded = export.load_program(tmp_path / "channels.npz")
    pixels = raw_test_pixels(run)[:60]
    assert np.array_equal(loaded(pixels), channel_wise(pixels))  # the file unpacks every group to its codes


def test_float_inputs_instead_of_raw_pixels(trained_digits_folder):
    program, run = export.integer_program_of_run(trained_digits_folder, raw_pixels=False)
    assert program.input_dtype == np.float32 and program.normalisation is None
    reference = run.fake_quantised.predict(run.dataset.test.x)
    assert np.mean(program(run.dataset.test.x).argmax(-1) == reference.argmax(-1)) >= 0.999


def test_bad_input_writes_nothing(lowered, tmp_path):
    program, _ = lowered
    with pytest.raises(ValueError, match="layout must be one of"):
        export.write_integer_model(tmp_path / "x.npz", program, layout="nibbles")
    with pytest.raises(ValueError, match="does not exist"):
        export.write_integer_model(tmp_path / "missing" / "x.npz", program)
    assert os.listdir(tmp_path) == []
    with pytest.raises(ValueError, match="has no finished model"):
        export.integer_program_of_run(tmp_path)


def with_model_named(folder, model_name, out):
    """A copy of ``folder``'s model.npz in ``out`` whose metadata names another model."""
    with np.load(folder / "model.npz", allow_pickle=False) as archive:
        entries = {name: archive[name] for name in archive.files}
    config = json.loads(str(entries["__config__"]))
    config["metadata"]["model"] = model_name
    entries["__config__"] = np.asarray(json.dumps(config))
    with open(out / "model.npz", "wb") as handle:
        np.savez(handle, **entries)
    return out


def test_a_folder_whose_model_does_not_fit_its_variables_is_refused(trained_digits_folder, tmp_path):
    folder = with_model_named(trained_digits_folder, "mlp", tmp_path)  # not the architecture of the variables
    with pytest.raises(ValueError, match="the stored variables do not fit model 'mlp'"):
        export.run_model(folder)


def test_a_model_given_to_the_search_as_an_object_must_be_given_again(trained_digits_folder, tmp_path):
    folder = with_model_named(trained_digits_folder, "python:MyCNN", tmp_path)
    with pytest.raises(ValueError, match=r"the model 'python:MyCNN' was given to the search as a Python object: "
                                         r"export from Python, mpqjax.export.integer_program_of_run\("):
        export.run_model(folder)
