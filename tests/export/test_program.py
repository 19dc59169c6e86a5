"""Specification of mpqjax.export.program: any JAX model's forward pass as a self-contained ``mpqjax-program/1``
file."""

import dataclasses
import json
import os
import subprocess
import sys
import textwrap

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest

from mpqjax import export

INPUT_SHAPE = (8, 8, 1)


class SmallCNN(nn.Module):
    """A user's model that mpqjax knows nothing of: conv, batch norm, ReLU, spatial mean, dense head."""

    @nn.compact
    def __call__(self, x):
        x = nn.Conv(6, (3, 3))(x)
        x = nn.BatchNorm(use_running_average=True)(x)
        x = nn.relu(x)
        return nn.Dense(5)(x.mean(axis=(1, 2)))


def forward(variables, x):
    return SmallCNN().apply(variables, x)


@pytest.fixture(scope="module")
def variables():
    """Random values for every variable (running variances positive), so no layer is an identity."""
    initial = SmallCNN().init(jax.random.key(0), jnp.zeros((1, *INPUT_SHAPE)))
    leaves, treedef = jax.tree_util.tree_flatten(initial)
    keys = jax.random.split(jax.random.key(1), len(leaves))
    randomised = [jax.random.normal(key, leaf.shape, leaf.dtype) for key, leaf in zip(keys, leaves, strict=True)]
    variables = jax.tree_util.tree_unflatten(treedef, randomised)
    variables["batch_stats"] = jax.tree_util.tree_map(lambda var: jnp.abs(var) + 0.5, variables["batch_stats"])
    return variables


def examples(count, seed=0):
    return np.random.default_rng(seed).normal(size=(count, *INPUT_SHAPE)).astype(np.float32)


@pytest.fixture(scope="module")
def program_file(variables, tmp_path_factory):
    path = tmp_path_factory.mktemp("program") / "model.npz"
    export.export_program(path, forward, variables, input_shape=INPUT_SHAPE,
                          metadata={"accuracy": 0.93, "bits": [8, 4, 3], "model": {"name": "small_cnn"}})
    return path


def read_npz(path):
    with np.load(path, allow_pickle=False) as archive:
        return {name: archive[name] for name in archive.files}


def write_npz(path, entries):
    with open(path, "wb") as handle:
        np.savez(handle, **entries)


# ------------------------------------------------------------------------------------------------ round trip
@pytest.mark.parametrize("batch", [1, 3, 8])
def test_loaded_program_computes_the_forward_pass_for_any_batch(program_file, variables, batch):
    program = export.load_program(program_file)
    x = examples(batch, seed=batch)
    logits = program(x)
    assert isinstance(logits, np.ndarray) and logits.shape == (batch, 5)
    np.testing.assert_allclose(logits, np.asarray(forward(variables, x)), rtol=1e-6, atol=1e-6)


def test_file_holds_the_program_config_and_named_variables_without_pickles(program_file, variables):
    entries = read_npz(program_file)
    config = json.loads(str(entries.pop("__config__")))
    assert entries.pop("__program__").dtype == np.uint8
    assert config["format"] == export.PROGRAM_FORMAT == "mpqjax-program/1"
    assert config["input_shape"] == [8, 8, 1] and config["input_dtype"] == "float32" and config["batch_size"] is None
    assert config["output_shape"] == ["b", 5] and config["output_dtype"] == "float32"
    assert config["platforms"] == ["cpu"] and config["jax_version"] == jax.__version__
    assert sorted(entries) == sorted(config["variables"])
    np.testing.assert_array_equal(entries["params/Conv_0/kernel"], variables["params"]["Conv_0"]["kernel"])
    np.testing.assert_array_equal(entries["batch_stats/BatchNorm_0/var"],
                                  variables["batch_stats"]["BatchNorm_0"]["var"])


def test_program_offers_its_variables_metadata_and_shapes(program_file, variables):
    program = export.load_program(program_file)
    assert program.metadata == {"accuracy": 0.93, "bits": [8, 4, 3], "model": {"name": "small_cnn"}}
    assert program.input_shape == INPUT_SHAPE and program.config["metadata"] == program.metadata
    stored = jax.tree_util.tree_map(np.asarray, program.variables)
    assert jax.tree_util.tree_structure(stored) == jax.tree_util.tree_structure(jax.tree_util.tree_map(
        np.asarray, dict(variables)))
    jax.tree_util.tree_map(np.testing.assert_array_equal, stored, dict(variables))
    with pytest.raises(dataclasses.FrozenInstanceError):
        program.config = {}


def test_predict_runs_in_batches(program_file, variables):
    program = export.load_program(program_file)
    x = examples(8, seed=5)
    expected = np.asarray(forward(variables, x))
    np.testing.assert_allclose(program.predict(x, batch_size=3), expected, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(program.predict(x), expected, rtol=1e-6, atol=1e-6)


def test_fixed_batch_program_refuses_another_batch_and_predict_pads(variables, tmp_path):
    path = tmp_path / "fixed.npz"
    export.export_program(path, forward, variables, input_shape=INPUT_SHAPE, batch_size=4)
    program = export.load_program(path)
    assert program.config["batch_size"] == 4 and program.config["output_shape"] == [4, 5]
    x = examples(7, seed=2)
    np.testing.assert_allclose(program(x[:4]), np.asarray(forward(variables, x[:4])), rtol=1e-6, atol=1e-6)
    with pytest.raises(ValueError, match=r"runs batches of 4 only .*got 3"):
        program(x[:3])
    np.testing.assert_allclose(program.predict(x), np.asarray(forward(variables, x)), rtol=1e-6, atol=1e-6)
    with pytest.raises(ValueError, match="batch_size 2 must be positive and 4"):
        program.predict(x, batch_size=2)


def test_a_fresh_process_runs_the_file_without_flax_or_the_model(program_file, variables, tmp_path):
    x = examples(3, seed=7)
    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "expected.npy", np.asarray(forward(variables, x)))
    code = textwrap.dedent(f"""
        import sys
        import numpy as np
        from mpqjax.export import load_program
        program = load_program({os.fspath(program_file)!r})
        logits = program(np.load({os.fspath(tmp_path / "x.npy")!r}))
        np.testing.assert_allclose(logits, np.load({os.fspath(tmp_path / "expected.npy")!r}), rtol=1e-6, atol=1e-6)
        imported = sorted(m for m in ("flax", "mpqjax.nn") if m in sys.modules)
        print(imported, program.metadata["accuracy"])
    """)
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip() == "[] 0.93"


def test_cpu_and_cuda_program_runs_here(variables, tmp_path):
    path = tmp_path / "both.npz"
    export.export_program(path, forward, variables, input_shape=INPUT_SHAPE, platforms=("cpu", "cuda"))
    program = export.load_program(path)
    assert program.config["platforms"] == ["cpu", "cuda"]
    x = examples(2, seed=3)
    np.testing.assert_allclose(program(x), np.asarray(forward(variables, x)), rtol=1e-6, atol=1e-6)


def test_bfloat16_and_integer_variables_round_trip(tmp_path):
    variables = {"dense": {"kernel": jnp.asarray(np.arange(12).reshape(4, 3) / 7, jnp.bfloat16),
                           "codes": np.arange(3, dtype=np.int8)}}

    def dense(variables, x):
        layer = variables["dense"]
        return x @ layer["kernel"].astype(jnp.float32) + layer["codes"].astype(jnp.float32)

    path = tmp_path / "dense.npz"
    export.export_program(path, dense, variables, input_shape=(4,))
    program = export.load_program(path)
    assert program.variables["dense"]["kernel"].dtype == ml_dtypes.bfloat16
    assert program.variables["dense"]["codes"].dtype == np.int8
    x = np.ones((2, 4), np.float32)
    np.testing.assert_allclose(program(x), np.asarray(dense(variables, x)), rtol=1e-6)


# ------------------------------------------------------------------------------------------------ bad export
def test_a_forward_that_fails_to_trace_writes_nothing(variables, tmp_path):
    def broken(variables, x):
        raise RuntimeError("the model exploded\nwith a long explanation")

    path = tmp_path / "broken.npz"
    with pytest.raises(ValueError, match=r"forward fails to trace at export \(RuntimeError: the model exploded\)$"):
        export.export_program(path, broken, variables, input_shape=INPUT_SHAPE)
    assert not path.exists() and os.listdir(tmp_path) == []


def test_a_failed_export_leaves_the_previous_file(program_file, variables, tmp_path):
    path = tmp_path / "model.npz"
    path.write_bytes(program_file.read_bytes())
    with pytest.raises(ValueError, match="fails to trace"):
        export.export_program(path, lambda v, x: x @ jnp.ones((3, 2)), variables, input_shape=INPUT_SHAPE)
    assert path.read_bytes() == program_file.read_bytes() and os.listdir(tmp_path) == ["model.npz"]


@pytest.mark.parametrize("options, message", [
    (dict(platforms=("cpu", "gpux")), r"some of \['cpu', 'cuda', 'rocm', 'tpu'\]; jax does not know \['gpux'\]"),
    (dict(platforms=()), "jax does not know an empty list"),
    (dict(metadata={"when": object()}), "metadata must be JSON values"),
    (dict(input_shape=(8, 0, 1)), "must be positive sizes"),
    (dict(batch_size=0), "must be positive sizes"),
])
def test_export_refuses_bad_arguments(variables, tmp_path, options, message):
    arguments = {"input_shape": INPUT_SHAPE, **options}
    with pytest.raises(ValueError, match=message):
        export.export_program(tmp_path / "bad.npz", forward, variables, **arguments)
    assert os.listdir(tmp_path) == []


def test_export_refuses_a_missing_folder_clashing_names_and_several_outputs(variables, tmp_path):
    with pytest.raises(ValueError, match="folder .* does not exist"):
        export.export_program(tmp_path / "nowhere" / "m.npz", forward, variables, input_shape=INPUT_SHAPE)
    with pytest.raises(ValueError, match="must return one array .* got 2 outputs"):
        export.export_program(tmp_path / "m.npz", lambda v, x: (forward(v, x), x), variables, input_shape=INPUT_SHAPE)
    for clashing in ({"a/b": np.zeros(2), "a": {"b": np.ones(2)}}, {"__program__": np.zeros(2)}, {"": np.zeros(2)}):
        with pytest.raises(ValueError, match="is empty, reserved or repeated"):
            export.export_program(tmp_path / "m.npz", lambda v, x: x, clashing, input_shape=INPUT_SHAPE)
    assert os.listdir(tmp_path) == []


# ------------------------------------------------------------------------------------------------ bad load
def test_a_wrong_example_shape_is_refused(program_file):
    program = export.load_program(program_file)
    with pytest.raises(ValueError, match=r"example shape \(8, 8, 3\), expected \(8, 8, 1\)"):
        program(np.zeros((2, 8, 8, 3), np.float32))
    with pytest.raises(ValueError, match=r"example shape \(8, 1\), expected \(8, 8, 1\)"):
        program(np.zeros((8, 8, 1), np.float32))
    with pytest.raises(ValueError, match="no examples"):
        program(np.zeros((0, *INPUT_SHAPE), np.float32))


def test_load_refuses_files_that_are_not_programs(program_file, tmp_path):
    text = tmp_path / "notes.txt"
    text.write_text("hello")
    single = tmp_path / "single.npy"
    np.save(single, np.zeros(3))
    other = tmp_path / "other.npz"
    write_npz(other, {"weights": np.zeros(3)})
    for path in (text, single, other, tmp_path / "missing.npz"):
        with pytest.raises(ValueError, match="is not a readable mpqjax program file"):
            export.load_program(path)


def test_load_refuses_damaged_files_and_other_formats(program_file, tmp_path):
    entries = read_npz(program_file)
    truncated = tmp_path / "truncated.npz"
    truncated.write_bytes(program_file.read_bytes()[: program_file.stat().st_size // 2])
    with pytest.raises(ValueError, match="(is not a readable|is a damaged) mpqjax program file"):
        export.load_program(truncated)

    cut_program = tmp_path / "cut_program.npz"
    write_npz(cut_program, {**entries, "__program__": entries["__program__"][:200]})
    with pytest.raises(ValueError, match=r"damaged mpqjax program file \(its program, written by jax"):
        export.load_program(cut_program)

    config = json.loads(str(entries["__config__"]))
    missing_variable = tmp_path / "missing_variable.npz"
    write_npz(missing_variable, {name: value for name, value in entries.items() if name != "params/Dense_0/bias"})
    with pytest.raises(ValueError, match="damaged .*variable 'params/Dense_0/bias' is missing"):
        export.load_program(missing_variable)

    reshaped = tmp_path / "reshaped.npz"
    write_npz(reshaped, {**entries, "params/Dense_0/bias": np.zeros(4, np.float32)})
    with pytest.raises(ValueError, match=r"damaged .*'params/Dense_0/bias' is float32\[4\], the program takes"):
        export.load_program(reshaped)

    bad_json = tmp_path / "bad_json.npz"
    write_npz(bad_json, {**entries, "__config__": np.asarray("{not json")})
    with pytest.raises(ValueError, match="damaged mpqjax program file .*JSONDecodeError"):
        export.load_program(bad_json)

    newer = tmp_path / "newer.npz"
    write_npz(newer, {**entries, "__config__": np.asarray(json.dumps({**config, "format": "mpqjax-program/2"}))})
    with pytest.raises(ValueError, match="format 'mpqjax-program/2'; this version of mpqjax reads 'mpqjax-program/1'"):
        export.load_program(newer)
