"""Specification of mpqjax.search.steps: the keys of a search, the float model (checkpoint, cache, training), the
masked quantised model, the final training's checks and the sensitivity step's input checks."""

import jax
import numpy as np
import pytest

from mpqjax import store
from mpqjax.search import steps
from mpqjax.search.config import SearchConfig
from mpqjax.training import train


def test_the_keys_of_a_search_are_folded_from_its_seed():
    keys = steps.search_keys(3)
    assert len(keys) == 5
    for index, name in enumerate(("float", "probe", "ask", "trial", "final")):
        np.testing.assert_array_equal(jax.random.key_data(getattr(keys, name)),
                                      jax.random.key_data(jax.random.fold_in(jax.random.key(3), index)))
    assert not np.array_equal(jax.random.key_data(keys.float), jax.random.key_data(steps.search_keys(4).float))


def test_the_cache_folder_follows_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("MPQJAX_CACHE_DIR", str(tmp_path))
    assert steps.default_cache_dir() == str(tmp_path)


def test_the_float_model_is_trained_once_then_cached_and_a_checkpoint_is_read(digits, tmp_path):
    key = steps.search_keys(0).float
    trained = steps.float_model(key, "mlp", digits, epochs=1, cache_dir=str(tmp_path))
    assert trained.source.startswith("trained 1 epochs (cached at ")
    assert set(trained.variables) <= {"params", "batch_stats"} and not trained.model.quantize
    cached = steps.float_model(key, "mlp", digits, epochs=1, cache_dir=str(tmp_path))
    assert cached.source.startswith("cache ")
    for a, b in zip(jax.tree.leaves(cached.variables), jax.tree.leaves(trained.variables), strict=True):
        np.testing.assert_array_equal(a, b)
    other_seed = steps.float_model(steps.search_keys(1).float, "mlp", digits, epochs=1, cache_dir=str(tmp_path))
    assert other_seed.source.startswith("trained")  # the cache key holds the key's data

    path = tmp_path / "float.msgpack"
    store.save_variables(path, trained.variables)
    loaded = steps.float_model(key, "mlp", digits, checkpoint=str(path))
    assert loaded.source == f"checkpoint {path}"
    with pytest.raises(ValueError, match="expected a float digits_cnn at width 1 for digits"):
        steps.float_model(key, "digits_cnn", digits, checkpoint=str(path))


def test_float_model_of_uses_the_search_key_and_settings(digits, tmp_path):
    config = SearchConfig(model="mlp", float_epochs=1)
    direct = steps.float_model(steps.search_keys(0).float, "mlp", digits, epochs=1, cache_dir=str(tmp_path))
    cached_at = direct.source.removeprefix("trained 1 epochs (cached at ").removesuffix(")")
    assert steps.float_model_of(config, digits, cache_dir=str(tmp_path)).source == f"cache {cached_at}"


def test_a_diverged_float_training_is_an_error(digits, tmp_path, monkeypatch):
    monkeypatch.setattr(train, "train_float", lambda *args, **kwargs: ({"params": {}}, np.array([np.nan])))
    with pytest.raises(ValueError, match="training the float mlp diverged"):
        steps.float_model(steps.search_keys(0).float, "mlp", digits, epochs=1, cache_dir=str(tmp_path))


def test_the_quantised_model_is_wide_enough_for_every_width():
    assert steps.quantized_model(SearchConfig(model="mlp"), 10).max_width == 1.25
    assert steps.quantized_model(SearchConfig(model="mlp", widths=(1.0, 1.5)), 10).max_width == 1.5
    assert steps.quantized_model(SearchConfig(model="mlp"), 10, widths=(2.0,)).max_width == 2.0


def test_a_diverged_final_training_is_an_error(digits, monkeypatch):
    monkeypatch.setattr(steps, "finetune_configuration", lambda *args, **kwargs: (None, np.array([1.0, np.nan])))
    float_net = steps.FloatModel(None, None, "test")
    with pytest.raises(ValueError, match="the final training of the best configuration diverged .* lower "
                                         "final_learning_rate"):
        steps.final_training(SearchConfig(model="mlp"), digits, float_net, None, [8, 8, 8], [1.0, 1.0, 1.0])


def test_the_sensitivity_batch_must_fit_the_training_split(digits, trained_float_mlp):
    model, variables, _ = trained_float_mlp(1)
    with pytest.raises(ValueError, match="the Hessian batch size 100000 exceeds the"):
        steps.analyze_sensitivity(jax.random.key(0), model, variables, digits, batch_size=100_000)


def test_the_dataset_of_a_search_refuses_batches_larger_than_its_training_split():
    with pytest.raises(ValueError, match="batch_size 5000 exceeds the 1257 training examples of digits"):
        steps.load_dataset(SearchConfig(batch_size=5000))
    with pytest.raises(ValueError, match="hessian_batch_size 2000 exceeds the 1257 training examples of digits"):
        steps.load_dataset(SearchConfig(hessian_batch_size=2000))
    # without pruning there is no Hessian: its batch size does not matter
    assert len(steps.load_dataset(SearchConfig(hessian_batch_size=2000, prune=False)).train) == 1257

