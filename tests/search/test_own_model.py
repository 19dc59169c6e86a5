"""Specification of a search on a user's own, unmodified Flax model from Python: ``mpqjax.run(config, out,
model=..., variables=..., dataset=...)`` with a flax.linen or flax.nnx module and `mpqjax.data.from_arrays` data.

What a user gets: a complete run folder naming the model's own layers, an exported program that runs without Flax
and scores the recorded test accuracy, given float variables used as they are (or refused, naming the leaf, with
nothing written), width multipliers kept at most 1, layer rules obeyed in every trial, a resume that needs the
objects again, the same trials for the same seed, and one compiled training step per search.
"""

import json
import os
import shutil
import subprocess
import sys

import flax.linen as nn
import jax
import numpy as np
import optax
import pytest
from flax import nnx
from sklearn.datasets import load_digits

import mpqjax
from mpqjax import data, search, store
from mpqjax.nn.models import wrap
from mpqjax.training.train import train_float

# Tiny but complete: two trials of one population, one fine-tune epoch each, no Hessian unless a test needs it.
SMALL = dict(trials=2, n_initial=2, population=2, strategy="sequential", float_epochs=3, float_learning_rate=3e-2,
             batch_size=32, finetune_epochs=1, final_epochs=2, prune=False)
HESSIAN = dict(prune=True, hessian_batch_size=64, hessian_batches=1, hessian_max_probes=4)
LAYERS = ["Conv_0", "Conv_1", "Conv_2", "Conv_3", "Dense_0"]
RUN_FILES = ["search.json", "trials.jsonl", "trials.csv", "tpe_state.npz", "float_params.msgpack", "hessian.json",
             "hessian.png", "best_config.json", "model.npz", "pareto.png", "report.md"]


class CNN(nn.Module):
    """A user's residual CNN with batch norm, written for Flax alone (default Flax layer names; batch statistics
    with momentum 0.9, so that a few dozen steps train them)."""

    @nn.compact
    def __call__(self, x, train: bool = False):
        norm = lambda: nn.BatchNorm(use_running_average=not train, momentum=0.9)  # noqa: E731
        x = nn.relu(norm()(nn.Conv(8, (3, 3))(x)))
        y = nn.relu(norm()(nn.Conv(8, (3, 3))(x)))
        x = nn.relu(x + norm()(nn.Conv(8, (3, 3))(y)))
        x = nn.relu(nn.Conv(16, (3, 3), strides=2)(x))
        return nn.Dense(10)(x.mean(axis=(1, 2)))


class NnxCNN(nnx.Module):
    """The same kind of model written with flax.nnx."""

    def __init__(self, rngs: nnx.Rngs):
        self.conv = nnx.Conv(1, 8, (3, 3), rngs=rngs)
        self.norm = nnx.BatchNorm(8, momentum=0.9, rngs=rngs)
        self.down = nnx.Conv(8, 16, (3, 3), strides=2, rngs=rngs)
        self.head = nnx.Linear(16, 10, rngs=rngs)

    def __call__(self, x):
        x = nnx.relu(self.norm(self.conv(x)))
        return self.head(nnx.relu(self.down(x)).mean(axis=(1, 2)))


@pytest.fixture(scope="module")
def digits():
    """scikit-learn's digits as a user passes them: 1000 training examples (100 held out), 297 test examples."""
    images, labels = load_digits(return_X_y=True)
    x = (images.reshape(-1, 8, 8, 1) / 16.0).astype(np.float32)
    return data.from_arrays(train=(x[:1000], labels[:1000]), test=(x[1500:], labels[1500:]))


def read_trials(folder) -> list[dict]:
    """The trial records of a run folder, without their timing (the only field that differs between runs)."""
    return [{key: value for key, value in record.items() if key not in search.TIME_FIELDS}
            for record in store.read_jsonl(os.path.join(folder, "trials.jsonl"))]


def read_json(folder, name: str) -> dict:
    with open(os.path.join(folder, name)) as handle:
        return json.load(handle)


def nothing_written(folder) -> bool:
    return not os.path.exists(folder) or os.listdir(folder) == []


# -- a linen model end to end ----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def own_run(digits, tmp_path_factory):
    """The user's whole search: their linen model, their arrays, every phase (float training, Hessian, trials)."""
    out = tmp_path_factory.mktemp("own") / "run"
    cache = tmp_path_factory.mktemp("float-cache")
    config = mpqjax.SearchConfig(**{**SMALL, **HESSIAN})
    result = mpqjax.run(config, out, model=CNN(), dataset=digits, cache_dir=str(cache))
    return result, out, cache


@pytest.mark.slow
def test_a_linen_model_search_writes_a_complete_folder_named_by_its_layers(own_run):
    result, out, _ = own_run
    assert sorted(os.listdir(out)) == sorted(RUN_FILES)  # every result, no lock or temporary file left
    meta = read_json(out, "search.json")
    assert meta["status"] == "finished"
    assert meta["model"] == "python:CNN" and meta["dataset"] == "python:arrays"
    assert [layer["name"] for layer in meta["layers"]] == LAYERS
    assert [row["name"] for row in read_json(out, "hessian.json")["layers"]] == LAYERS
    best = read_json(out, "best_config.json")
    assert best == result.best
    assert [row["name"] for row in best["layers"]] == LAYERS
    assert [record["trial"] for record in result.trials] == [0, 1]
    assert all(record["status"] == "ok" and record["feasible"] for record in result.trials)
    assert 0.3 < meta["float"]["test_accuracy"] <= 1 and 0.3 < best["test_accuracy"] <= 1  # it learned


@pytest.mark.slow
def test_the_searched_model_given_again_lowers_to_integers_that_agree(own_run, digits):
    _, out, _ = own_run
    with pytest.raises(ValueError, match="export from Python"):
        mpqjax.export.integer_program_of_run(out)
    program, run = mpqjax.export.integer_program_of_run(out, model=CNN(), dataset=digits)
    assert program.input_dtype == np.float32  # arrays given by the user: no pixel statistics
    reference = run.fake_quantised.predict(digits.test.x)
    assert np.mean(program(digits.test.x).argmax(-1) == reference.argmax(-1)) >= 0.999


PROGRAM_ACCURACY = """
import json, sys
import numpy as np
from mpqjax.export import load_program

program = load_program(sys.argv[1])
examples = np.load(sys.argv[2])
accuracy = float(np.mean(program.predict(examples["x"]).argmax(axis=-1) == examples["y"]))
loaded = sorted(name for name in sys.modules if name.split(".")[0] == "flax" or "own_model" in name)
print(json.dumps({"accuracy": accuracy, "loaded": loaded, "metadata": program.metadata}))
"""


@pytest.mark.slow
def test_the_exported_program_runs_without_flax_and_scores_the_recorded_test_accuracy(own_run, digits, tmp_path):
    _, out, _ = own_run
    examples = tmp_path / "test_split.npz"
    np.savez(examples, x=digits.test.x, y=digits.test.y)
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    done = subprocess.run([sys.executable, "-c", PROGRAM_ACCURACY, str(out / "model.npz"), str(examples)],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    loaded = json.loads(done.stdout.strip().splitlines()[-1])
    assert loaded["loaded"] == []  # neither Flax nor the model's code
    best = read_json(out, "best_config.json")
    assert loaded["accuracy"] == best["test_accuracy"]  # the same examples, the same predictions
    assert loaded["metadata"]["layers"] == LAYERS
    assert loaded["metadata"]["bits"] == [row["bits"] for row in best["layers"]]
    assert loaded["metadata"]["widths"] == [row["width"] for row in best["layers"]]


# -- widths ------------------------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_default_widths_are_cut_to_at_most_one_for_a_plain_module(own_run):
    _, out, _ = own_run
    meta = read_json(out, "search.json")
    assert meta["settings"]["widths"] == [0.75, 0.875, 1.0]
    width_choices = [d["choices"] for d in meta["space"]["dimensions"] if d["name"].startswith("width/")]
    assert width_choices and all(max(choices) <= 1 for choices in width_choices)
    assert all(record["config"][name] <= 1 for record in read_trials(out) for name in record["config"]
               if name.startswith("width/"))


@pytest.mark.parametrize("widths", [(0.75, 1.0, 1.25), (2.0,)])
def test_widths_above_one_are_refused_for_a_plain_module(digits, tmp_path, widths):
    config = mpqjax.SearchConfig(**{**SMALL, "widths": widths})
    with pytest.raises(ValueError, match="'CNN' is a plain module: width multipliers above 1 are unavailable"):
        mpqjax.run(config, tmp_path / "run", model=CNN(), dataset=digits)
    assert nothing_written(tmp_path / "run")


# -- given float variables -------------------------------------------------------------------------------------------


def train_nnx(module: NnxCNN, split, steps: int = 60) -> None:
    """A few Adam steps on batches of 64, as a user trains an NNX model."""
    optimizer = nnx.Optimizer(module, optax.adam(1e-2), wrt=nnx.Param)

    @nnx.jit
    def step(module, optimizer, x, y):
        def loss_fn(module):
            return optax.softmax_cross_entropy_with_integer_labels(module(x), y).mean()

        grads = nnx.grad(loss_fn)(module)
        optimizer.update(module, grads)

    module.train()
    for index in range(steps):
        start = (index * 64) % (len(split) - 64)
        step(module, optimizer, split.x[start:start + 64], split.y[start:start + 64])
    module.eval()


def nnx_accuracy(module: NnxCNN, split) -> float:
    logits = np.asarray(nnx.jit(lambda module, x: module(x))(module, split.x))
    return float(np.mean(np.argmax(logits, axis=-1) == split.y))


@pytest.mark.slow
def test_given_nnx_variables_are_the_float_model(digits, tmp_path):
    module = NnxCNN(nnx.Rngs(0))
    initial = nnx_accuracy(module, digits.test)
    train_nnx(module, digits.train)
    expected = {split: nnx_accuracy(module, getattr(digits, split)) for split in ("validation", "test")}
    assert expected["test"] > initial + 0.2  # the user's training changed the model

    mpqjax.run(mpqjax.SearchConfig(**SMALL), tmp_path / "run", model=module, variables=nnx.state(module),
               dataset=digits, cache_dir=str(tmp_path / "cache"))
    meta = read_json(tmp_path / "run", "search.json")
    assert meta["model"] == "python:NnxCNN"
    assert meta["float"]["source"] == "variables given to the search"
    assert meta["float"]["validation_accuracy"] == expected["validation"]
    assert meta["float"]["test_accuracy"] == expected["test"]
    assert [layer["name"] for layer in meta["layers"]] == ["conv", "down", "head"]  # the module's attributes


def linen_variables() -> dict:
    """The linen model's variables as initialised: ``{"params", "batch_stats"}`` of NumPy arrays."""
    variables = CNN().init(jax.random.key(0), np.zeros((1, 8, 8, 1), np.float32))
    return jax.tree.map(np.asarray, {name: dict(value) for name, value in variables.items()})


def with_wrong_kernel(variables):
    variables["params"]["Conv_1"] = {**variables["params"]["Conv_1"], "kernel": np.zeros((3, 3, 8, 9), np.float32)}
    return variables, "'params/Conv_1/kernel' has shape (3, 3, 8, 9), the model's is (3, 3, 8, 8)"


def without_a_mean(variables):
    variables["batch_stats"]["BatchNorm_2"] = {"var": variables["batch_stats"]["BatchNorm_2"]["var"]}
    return variables, "'batch_stats/BatchNorm_2/mean' is missing"


def with_a_stranger(variables):
    variables["params"]["Dense_1"] = {"kernel": np.zeros((16, 10), np.float32)}
    return variables, "'params/Dense_1/kernel' is not one of its variables"


@pytest.mark.parametrize("spoil", [with_wrong_kernel, without_a_mean, with_a_stranger])
def test_variables_that_do_not_fit_are_refused_naming_the_leaf_and_nothing_is_written(digits, tmp_path, spoil):
    variables, message = spoil(linen_variables())
    with pytest.raises(ValueError, match="variables do not fit model 'CNN'") as raised:
        mpqjax.run(mpqjax.SearchConfig(**SMALL), tmp_path / "run", model=CNN(), variables=variables,
                   dataset=digits, cache_dir=str(tmp_path / "cache"))
    assert message in str(raised.value)
    assert nothing_written(tmp_path / "run")


# -- layer rules, resume, determinism and compilation: one wrapped model, its variables given -------------------------


def ruled_model():
    """The user's CNN with rules: the first and last layers pinned at 8 bits, the residual's second conv in float."""
    return wrap(CNN(), input_shape=(8, 8, 1), bits={"Conv_0|Dense_0": 8}, exclude=["Conv_2"])


RULED_LAYERS = ["Conv_0", "Conv_1", "Conv_3", "Dense_0"]
RULED = dict(min_size_reduction=4.0)  # two layers pinned at 8 bits: a looser size limit than the default 6x


@pytest.fixture(scope="module")
def trained_variables(digits):
    """The user's CNN trained in float for three epochs: what a user passes as ``variables=``."""
    model = wrap(CNN(), input_shape=(8, 8, 1)).clone(quantize=False)
    variables, _ = train_float(jax.random.key(1), model, digits, epochs=3, learning_rate=3e-2, batch_size=32)
    return jax.tree.map(np.asarray, variables)


@pytest.fixture(scope="module")
def ruled(digits, trained_variables, tmp_path_factory, compilations):
    """Factory ``name -> (folder, compiled programs)``: a search of the ruled model from the trained variables,
    ``"two"`` and ``"four"`` trials, ``"again"`` four trials, each once per module."""
    runs = {}

    def search(name: str):
        if name not in runs:
            out = tmp_path_factory.mktemp(f"ruled-{name}") / "run"
            config = mpqjax.SearchConfig(**{**SMALL, **RULED, "trials": 2 if name == "two" else 4})
            variables = jax.tree.map(np.copy, trained_variables)  # before the block: eager ops compile programs
            with compilations() as compiled:
                mpqjax.run(config, out, model=ruled_model(), variables=variables, dataset=digits)
            runs[name] = (out, compiled)
        return runs[name]

    return search


@pytest.mark.slow
def test_pinned_layers_keep_their_bits_in_every_trial(ruled):
    out, _ = ruled("four")
    meta = read_json(out, "search.json")
    assert dict(map(tuple, meta["settings"]["fixed_bits"])) == {"Conv_0": 8, "Dense_0": 8}
    trials = read_trials(out)
    assert len(trials) == 4
    for record in trials:
        bits = dict(zip(RULED_LAYERS, record["bits"], strict=True))
        assert bits["Conv_0"] == 8 and bits["Dense_0"] == 8, record
        assert record["config"]["bits/Conv_0"] == record["config"]["bits/Dense_0"] == 8
    assert any(bits != 8 for record in trials for bits in record["bits"])  # the other layers are searched
    best = read_json(out, "best_config.json")
    assert {row["name"]: row["bits"] for row in best["layers"] if row["name"] in ("Conv_0", "Dense_0")} == {
        "Conv_0": 8, "Dense_0": 8}


@pytest.mark.slow
def test_an_excluded_layer_is_neither_searched_nor_costed(ruled):
    out, _ = ruled("four")
    assert [layer["name"] for layer in read_json(out, "search.json")["layers"]] == RULED_LAYERS
    assert [row["name"] for row in read_json(out, "best_config.json")["layers"]] == RULED_LAYERS
    for record in read_trials(out):
        assert not any(name.endswith("/Conv_2") for name in record["config"])
        assert len(record["bits"]) == len(record["widths"]) == len(RULED_LAYERS)


@pytest.mark.slow
def test_the_same_seed_gives_the_same_trials(ruled):
    first, second = read_trials(ruled("four")[0]), read_trials(ruled("again")[0])
    assert [(r["config"], r["objective"]) for r in first] == [(r["config"], r["objective"]) for r in second]
    assert first == second
    assert len({record["objective"] for record in first}) > 1  # trials that differ, not one score for all
    assert read_json(ruled("four")[0], "best_config.json") == read_json(ruled("again")[0], "best_config.json")


@pytest.mark.slow
def test_the_training_step_compiles_once_per_search_whatever_the_trials(ruled):
    # `mpqjax.training.train.train_step` jits the step function named `step`; the float model is given, not trained
    steps = {name: [program for program in ruled(name)[1] if program == "jit(step)"] for name in ("two", "four")}
    assert steps == {"two": ["jit(step)"], "four": ["jit(step)"]}


def resume_copy(ruled, tmp_path):
    """A copy of the finished two-trial search, to resume with more trials."""
    folder = tmp_path / "resumed"
    shutil.copytree(ruled("two")[0], folder)
    return folder


@pytest.mark.slow
def test_a_search_resumed_from_python_with_its_objects_continues_exactly(ruled, digits, tmp_path):
    folder = resume_copy(ruled, tmp_path)
    config = mpqjax.SearchConfig(**{**SMALL, **RULED, "trials": 4})
    result = mpqjax.run(config, folder, resume=True, model=ruled_model(), dataset=digits)
    trials = read_trials(folder)
    assert [record["trial"] for record in result.trials] == [0, 1, 2, 3]
    assert trials[:2] == read_trials(ruled("two")[0])  # the logged trials are kept as they were
    assert trials == read_trials(ruled("four")[0])  # and the search ends as an uninterrupted one
    assert read_json(folder, "search.json")["float"]["source"] == "variables given to the search"


def recorded_config(folder, **changes) -> mpqjax.SearchConfig:
    """The settings a run folder records, as a `SearchConfig` (lists as tuples)."""
    as_tuples = lambda value: tuple(map(as_tuples, value)) if isinstance(value, list) else value  # noqa: E731
    settings = {name: as_tuples(value) for name, value in read_json(folder, "search.json")["settings"].items()}
    return mpqjax.SearchConfig(**{**settings, **changes})


@pytest.mark.slow
def test_a_resume_without_the_model_object_says_to_pass_it_again(ruled, digits, tmp_path):
    folder = resume_copy(ruled, tmp_path)
    before = {name: (folder / name).read_bytes() for name in os.listdir(folder)}
    with pytest.raises(ValueError, match=r"the model 'python:CNN' was given to mpqjax.run as a Python object: pass "
                                         r"it again \(run\(\.\.\., model=\.\.\.\)\)"):
        mpqjax.run(recorded_config(folder, trials=4), folder, resume=True, dataset=digits)
    assert {name: (folder / name).read_bytes() for name in os.listdir(folder)} == before


@pytest.mark.slow
@pytest.mark.parametrize("model", ["digits_cnn", "python:CNN"], ids=["config-as-before", "config-naming-python"])
def test_a_resume_with_the_users_own_config_without_the_model_says_to_pass_it_again(ruled, digits, tmp_path, model):
    folder = resume_copy(ruled, tmp_path)
    config = mpqjax.SearchConfig(**{**SMALL, **RULED, "trials": 4, "model": model})
    with pytest.raises(ValueError, match="pass it again"):
        mpqjax.run(config, folder, resume=True, dataset=digits)


# -- the float-model cache -------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_a_search_on_other_arrays_does_not_reuse_the_float_model_of_the_first(own_run, digits, tmp_path):
    # the same class name, dataset name, shapes and settings: only the labels differ (shifted by one)
    _, first, cache = own_run
    shifted = data.from_arrays(train=(digits.train.x, (digits.train.y + 1) % 10),
                               validation=(digits.validation.x, (digits.validation.y + 1) % 10),
                               test=(digits.test.x, (digits.test.y + 1) % 10))
    config = mpqjax.SearchConfig(**{**SMALL, "trials": 1, "n_initial": 1, "population": 1})
    mpqjax.run(config, tmp_path / "run", model=CNN(), dataset=shifted, cache_dir=str(cache))
    first_float, second_float = (read_json(folder, "search.json")["float"] for folder in (first, tmp_path / "run"))
    assert second_float["source"] != first_float["source"]
    assert second_float["test_accuracy"] > 0.5  # trained on the shifted labels, not the first search's


@pytest.mark.parametrize("saved_as", ["orbax state", "msgpack pure dict"])
def test_a_checkpoint_of_an_nnx_state_is_the_float_model(digits, tmp_path, saved_as):
    import orbax.checkpoint as ocp

    from mpqjax.search import inputs, steps

    module = NnxCNN(nnx.Rngs(0))
    train_nnx(module, digits.train, steps=10)
    path = tmp_path / "float"
    if saved_as == "orbax state":
        checkpointer = ocp.StandardCheckpointer()
        checkpointer.save(path, nnx.state(module))
        checkpointer.wait_until_finished()
    else:
        store.save_variables(path, nnx.to_pure_dict(nnx.state(module)))
    wrapped = wrap(module, input_shape=digits.input_shape)
    with inputs.given(model=wrapped, dataset=digits):
        float_net = steps.float_model(jax.random.key(0), "python:NnxCNN", digits, checkpoint=str(path))
    assert float_net.source == f"checkpoint {path}"
    assert set(float_net.variables) == {"params", "batch_stats"}
    expected = jax.tree.map(np.asarray, nnx.to_pure_dict(nnx.state(module, nnx.Param)))
    jax.tree.map(np.testing.assert_array_equal, float_net.variables["params"], expected)


# -- the gradient-based methods on a user's model ---------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("method", ["mixprec", "dnas"])
def test_a_relaxed_method_searches_a_users_model_through_its_own_layers(digits, tmp_path, method):
    out = tmp_path / "run"
    config = mpqjax.SearchConfig(method=method, supernet_epochs=1, float_epochs=3, float_learning_rate=3e-2,
                                 batch_size=32, finetune_epochs=1, final_epochs=1)
    result = mpqjax.run(config, out, model=CNN(), dataset=digits)
    (trial,) = result.trials
    assert trial["status"] == "ok" and trial["feasible"] and result.best["size_reduction_vs_fip16"] >= 6.0
    halves = 2 if method == "dnas" else 1  # dnas trains its weights on one half of the training split
    assert read_json(out, "search.json")["method"]["supernet"]["steps"] == len(digits.train) // halves // 32
    if method == "mixprec":
        assert list(trial["channel_bits"]) == LAYERS
        # the residual stream (Conv_0, Conv_2) and the classes (Dense_0) keep every channel
        assert all(0 not in trial["channel_bits"][name] for name in ("Conv_0", "Conv_2", "Dense_0"))
    else:
        assert set(trial["widths"]) <= {0.75, 0.875, 1.0}  # a plain module only narrows
