"""The pipeline's steps, shared by `mpqjax.search.run` and every command: the float model (loaded, cached or
trained), its sensitivity analysis, and the final training of a configuration with its export.

Each ``*_of(config, ...)`` step takes a `SearchConfig` and derives its PRNG key from ``config.seed``
(`search_keys`), so ``mpqjax search``, ``mpqjax hessian`` and ``mpqjax train`` with the same settings compute the
same float model, the same traces and the same trained configuration. The lower-level `float_model` and
`analyze_sensitivity` take explicit keys and settings for pipelines of their own.

Example:
    >>> config = SearchConfig(float_epochs=5)
    >>> dataset = load_dataset(config)
    >>> float_net = float_model_of(config, dataset)
    >>> pruned, summary = sensitivity_of(config, float_net, dataset)
    >>> quant_model = quantized_model(config, dataset.num_classes)
    >>> trained = final_training(config, dataset, float_net, quant_model, bits, widths)
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import os
from collections.abc import Mapping, Sequence
from typing import NamedTuple

import jax
import numpy as np
import optax

from mpqjax import data, sensitivity, store
from mpqjax.nn import models
from mpqjax.search import channels, inputs
from mpqjax.search.config import SearchConfig
from mpqjax.sensitivity import hessian
from mpqjax.store.compilation_cache import default_cache_dir, enable_compilation_cache
from mpqjax.training import feed, train

__all__ = ["FloatModel", "SearchKeys", "Trained", "analyze_sensitivity", "default_cache_dir",
           "enable_compilation_cache", "export_trained", "final_training", "finetune_configuration", "finetune_start",
           "float_model", "float_model_of", "layer_space_from_summary", "load_dataset", "quantized_model",
           "search_keys", "sensitivity_of", "train_configuration"]


class SearchKeys(NamedTuple):
    """The PRNG keys of a search, one per use, all folded from ``jax.random.key(seed)``."""

    float: jax.Array  # the float model's initialisation and training
    probe: jax.Array  # the Hessian probes
    ask: jax.Array  # the optimiser's proposals (folded with the trial index)
    trial: jax.Array  # the trials' fine-tunes (folded with the trial index)
    final: jax.Array  # the final training of the best configuration


def search_keys(seed: int) -> SearchKeys:
    """The keys of a search of ``seed``: ``fold_in(key(seed), i)`` for i = 0 .. 4, in `SearchKeys`' order."""
    key = jax.random.key(seed)
    return SearchKeys(*(jax.random.fold_in(key, index) for index in range(len(SearchKeys._fields))))


def load_dataset(config: SearchConfig) -> data.Dataset:
    """The dataset of a search, split by ``config.seed`` (from ``config.data_dir`` when given).

    Raises:
        ValueError: a batch size of the settings exceeds the training split (found here, before any training,
            rather than at the first batch of a training or of the Hessian).
    """
    dataset = inputs.dataset_named(config.dataset, seed=config.seed,
                                   **({"data_dir": config.data_dir} if config.data_dir else {}))
    examples = len(dataset.train)
    sizes = {"batch_size": config.batch_size, **({"hessian_batch_size": config.hessian_batch_size}
                                                 if config.prune else {})}
    for setting, size in sizes.items():
        if size > examples:
            raise ValueError(f"{setting} {size} exceeds the {examples} training examples of {dataset.name}")
    return dataset


# -- the float model -----------------------------------------------------------------------------------------------


class FloatModel(NamedTuple):
    """A trained float model at width 1: the module, its ``{'params', 'batch_stats'}`` and where they came from."""

    model: models.Model
    variables: dict
    source: str


def float_model(key, name: str, dataset: data.Dataset, *, checkpoint: str | None = None,
                epochs: int = SearchConfig.float_epochs, learning_rate: float = SearchConfig.float_learning_rate,
                batch_size: int = SearchConfig.batch_size, weight_decay: float = SearchConfig.weight_decay,
                cache_dir: str | None = None) -> FloatModel:
    """The trained float model at width 1: loaded from ``checkpoint``, else from the cache, else trained and cached.

    Args:
        key: PRNG key of the initialisation and the training.
        name: the model's setting (`mpqjax.search.inputs.model_named`); variables given with a model object
            (`mpqjax.search.inputs.given`) are used as they are.
        dataset: the data (its train split trains the model).
        checkpoint: a flax msgpack file or orbax folder of ``{'params', 'batch_stats'}`` at width 1 (for a user's
            NNX model, also of ``nnx.state(module)``).
        epochs, learning_rate, batch_size, weight_decay: the training without checkpoint.
        cache_dir: cache folder (default `default_cache_dir`); the cache key holds every setting above and the
            key's data, so a different seed or schedule trains a new model.

    Returns:
        A `FloatModel` ``(model, variables, source)``: the float `Model`, its ``{'params', 'batch_stats'}`` and a
        description of where they came from.

    Raises:
        ValueError: the checkpoint is missing, unreadable or of another model, or the training diverged.
    """
    # the model at width 1, so its parameters are exactly the table's layers
    model = inputs.model_named(name, quantize=False, num_classes=dataset.num_classes, max_width=1.0,
                               input_shape=dataset.input_shape)
    given = inputs.given_variables(model) if checkpoint is None else None
    if given is not None:
        return FloatModel(model, model.check_variables(given, dataset.input_shape), "variables given to the search")
    if checkpoint is not None:
        try:
            variables = models.as_variables(model, store.read_checkpoint(checkpoint))
            return FloatModel(model, model.check_variables(variables, dataset.input_shape), f"checkpoint {checkpoint}")
        except ValueError as error:
            raise ValueError(f"{error} (expected a float {name} at width 1 for {dataset.name})") from None
    key_data = "-".join(str(int(v)) for v in np.asarray(jax.random.key_data(key)).reshape(-1))
    # the entry is keyed by what the model computes and, for data given as arrays, by what they hold
    label = f"{name}-{dataset.name}".replace(":", "-").replace("/", "-") + "-" + _fingerprint(model, dataset)
    cache_name = (f"{label}-{'x'.join(map(str, dataset.input_shape))}-{dataset.num_classes}-k{key_data}"
                  f"-e{epochs}-lr{learning_rate:g}-b{batch_size}-wd{weight_decay:g}.msgpack")
    cached = os.path.join(cache_dir or default_cache_dir(), "float", cache_name)
    if os.path.isfile(cached):
        try:
            variables = model.check_variables(store.read_checkpoint(cached), dataset.input_shape)
            return FloatModel(model, variables, f"cache {cached}")
        except (ValueError, OSError):
            pass  # a stale or damaged cache entry: train again and overwrite it
    variables, losses = train.train_float(key, model, dataset, epochs=epochs, learning_rate=learning_rate,
                                          batch_size=batch_size, weight_decay=weight_decay)
    if not np.all(np.isfinite(losses)):
        raise ValueError(f"training the float {name} diverged (non-finite loss); lower the float learning rate")
    variables = {name: variables[name] for name in ("params", "batch_stats") if name in variables}
    with contextlib.suppress(OSError):  # a read-only cache only costs the next run a retraining
        os.makedirs(os.path.dirname(cached), exist_ok=True)
        store.save_variables(cached, variables)
    return FloatModel(model, jax.tree.map(np.asarray, variables), f"trained {epochs} epochs (cached at {cached})")


def _fingerprint(model, dataset: data.Dataset) -> str:
    """A digest of what a model computes (its traced program) and, for data given as arrays, of its examples."""
    digest = hashlib.sha256()
    digest.update(model.fingerprint(dataset.input_shape).encode())
    if inputs.given_dataset() is dataset:
        for array in (dataset.train.x, dataset.train.y):
            digest.update(np.ascontiguousarray(array).tobytes())
    return digest.hexdigest()[:16]


def float_model_of(config: SearchConfig, dataset: data.Dataset, *, checkpoint: str | None = None,
                   cache_dir: str | None = None) -> FloatModel:
    """`float_model` of a search: its key and float training settings.

    Args:
        config: the settings (``float_checkpoint``, ``float_epochs``, ``float_learning_rate``, ``batch_size``,
            ``weight_decay``, ``seed``).
        dataset: `load_dataset`'s.
        checkpoint: read this checkpoint instead of ``config.float_checkpoint`` (a resumed search's own copy).
        cache_dir: the float-model cache (default `default_cache_dir`).
    """
    return float_model(search_keys(config.seed).float, config.model, dataset,
                       checkpoint=checkpoint or config.float_checkpoint, epochs=config.float_epochs,
                       learning_rate=feed.scaled_learning_rate(config.float_learning_rate, config.batch_size,
                                                                config.learning_rate_scaling),
                       batch_size=config.batch_size, weight_decay=config.weight_decay, cache_dir=cache_dir)


# -- the sensitivity analysis --------------------------------------------------------------------------------------


def analyze_sensitivity(key, model: models.Model, variables, dataset: data.Dataset, *,
                        batch_size: int = SearchConfig.hessian_batch_size,
                        num_batches: int = SearchConfig.hessian_batches,
                        max_probes: int = SearchConfig.hessian_max_probes, tol: float = SearchConfig.hessian_tol,
                        chunk_size: int | None = None, probing: str = "shared",
                        bit_sets: Sequence[Sequence[int]] = SearchConfig.bit_sets,
                        fixed_bits: dict[str, int] | None = None, widths: Sequence[float] = SearchConfig.widths,
                        all_bits: Sequence[int] = SearchConfig.bits,
                        log_scale: bool = False) -> tuple[sensitivity.Sensitivity, dict]:
    """Per-layer Hessian traces of a float model's training loss and the pruned search space.

    Args:
        key: PRNG key of the probes.
        model: the width-1 float model; ``variables`` its ``{'params', 'batch_stats'}``.
        dataset: its train split supplies ``num_batches`` batches of ``batch_size`` (in order, not shuffled).
        max_probes, tol, chunk_size, probing: see `mpqjax.sensitivity.hessian.layer_traces`.
        bit_sets, fixed_bits, widths, all_bits, log_scale: see `mpqjax.sensitivity.candidates.prune_space`.

    Returns:
        ``(sensitivity, summary)``: the `Sensitivity` (with ``.layer_space``) and a JSON-ready dict (layers with
        trace, standard error, trace per weight, cluster and candidate bits; centroids; sizes before and after).
    """
    table = models.layer_table(model, input_shape=dataset.input_shape)
    split = dataset.train
    if len(split) < batch_size:
        raise ValueError(f"the Hessian batch size {batch_size} exceeds the {len(split)} training examples")
    others = {name: value for name, value in variables.items() if name != "params"}

    def loss_fn(params, batch):
        logits = model.apply({"params": params, **others}, batch[0], None, None, train=False)
        return optax.softmax_cross_entropy_with_integer_labels(logits, batch[1]).mean()

    batch_list = list(itertools.islice(data.batches(None, split, batch_size, shuffle=False), num_batches))
    weights = {layer.name: (layer.weight_path,) for layer in table}
    traces = hessian.layer_traces(key, loss_fn, variables["params"], batch_list, layers=weights,
                                  max_probes=max_probes, tol=tol, chunk_size=chunk_size, probing=probing)
    pruned = sensitivity.prune_space(table, traces, bit_sets=bit_sets, fixed_bits=fixed_bits, widths=widths,
                                     all_bits=all_bits, log_scale=log_scale)
    rows = [
        {**row, "cluster": int(pruned.cluster[index]), "candidate_bits": list(pruned.candidate_bits[index])}
        for index, row in enumerate(traces.to_dict()["layers"])
    ]
    summary = {
        "model": table.model,
        "dataset": dataset.name,
        "hessian": {"examples": sum(len(batch[1]) for batch in batch_list), "batches": len(batch_list),
                    "probes": int(traces.probes[0]), "converged": bool(traces.converged), "tol": tol,
                    "probing": probing},
        "layers": rows,
        "centroids": [float(c) for c in pruned.centroids],
        "bit_sets": [list(s) for s in bit_sets],
        "fixed_bits": dict(fixed_bits or {}),
        "log10_size_before": pruned.log10_size_before,
        "log10_size_after": pruned.log10_size_after,
    }
    return pruned, summary


def sensitivity_of(config: SearchConfig, float_net: FloatModel, dataset: data.Dataset, *,
                   chunk_size: int | None = None, probing: str = "shared") -> tuple[sensitivity.Sensitivity, dict]:
    """`analyze_sensitivity` of a search: its probe key, Hessian settings and candidate bits.

    Args:
        config: the settings (``hessian_*``, ``bit_sets``, ``fixed_bits``, ``widths``, ``bits``, ``log_scale``,
            ``seed``).
        float_net: `float_model_of`'s.
        dataset: `load_dataset`'s.
        chunk_size, probing: how the probes run (`mpqjax.sensitivity.hessian.layer_traces`; not results).
    """
    return analyze_sensitivity(
        search_keys(config.seed).probe, float_net.model, float_net.variables, dataset,
        batch_size=config.hessian_batch_size, num_batches=config.hessian_batches,
        max_probes=config.hessian_max_probes, tol=config.hessian_tol, chunk_size=chunk_size, probing=probing,
        bit_sets=config.bit_sets, fixed_bits=dict(config.fixed_bits), widths=config.widths, all_bits=config.bits,
        log_scale=config.log_scale)


def layer_space_from_summary(table: models.LayerTable, summary: dict, widths: Sequence[float]
                             ) -> sensitivity.LayerSpace:
    """The pruned space recorded in a ``hessian.json`` summary (a resumed search does not recompute the traces)."""
    by_name = {row["name"]: tuple(row["candidate_bits"]) for row in summary["layers"]}
    return sensitivity.layer_space(table, [by_name[name] for name in table.names], widths=widths)


# -- training and export of a configuration ------------------------------------------------------------------------


def quantized_model(config: SearchConfig, num_classes: int, widths: Sequence[float] = ()) -> models.Model:
    """The masked quantised model of a search: wide enough for every width multiplier of ``config.widths`` (and
    of ``widths``), so all its configurations share one compiled training step; its layers compute in
    ``config.precision``."""
    model = inputs.model_named(config.model, num_classes=num_classes,
                               max_width=max(models.DEFAULT_MAX_WIDTH, *config.widths, *widths))
    return model if config.precision == model.precision else model.clone(precision=config.precision)


def finetune_configuration(key, config: SearchConfig, dataset: data.Dataset, float_model: models.Model,
                           float_variables, quant_model: models.Model, bits, widths, *, epochs: int,
                           learning_rate: float, channel_bits: Mapping[str, Sequence[int]] | None = None):
    """Train a configuration from the float model with the search's batch size, calibration and weight decay;
    returns ``(variables, losses)`` (`mpqjax.training.train.finetune`). A trial and the final training differ only
    in their key, epochs and learning rate. ``channel_bits``: a channel-wise configuration's per-channel weight
    bit-widths at width 1, 0 for a pruned channel (`mpqjax.search.channels`)."""
    variables, train_key = finetune_start(key, config, dataset, float_model, float_variables, quant_model, bits,
                                          widths, channel_bits=channel_bits)
    return train_configuration(train_key, config, dataset, quant_model, variables, bits, widths, epochs=epochs,
                               learning_rate=learning_rate)


def finetune_start(key, config: SearchConfig, dataset: data.Dataset, float_model: models.Model, float_variables,
                   quant_model: models.Model, bits, widths, *,
                   channel_bits: Mapping[str, Sequence[int]] | None = None):
    """`finetune_configuration` up to its training steps: ``(variables, train_key)``, the float weights transferred,
    any channel-wise bit-widths set and the clips calibrated (`mpqjax.training.train.finetune_start`)."""
    weight_bits = ranks = None
    if channel_bits:
        weight_bits = channels.weight_bits_of(quant_model, channel_bits, bits, dataset.input_shape)
        table = models.layer_table(quant_model, input_shape=dataset.input_shape)
        ranks = channels.channel_layout(table, channel_bits).ranks
    return train.finetune_start(key, float_model, float_variables, quant_model, dataset, bits=bits, widths=widths,
                                calibration=config.calibration, weight_bits=weight_bits, ranks=ranks)


def train_configuration(key, config: SearchConfig, dataset: data.Dataset, quant_model: models.Model, variables,
                        bits, widths, *, epochs: int, learning_rate: float):
    """`finetune_configuration`'s training steps from `finetune_start`'s variables: ``(variables, losses)``, at the
    search's batch size (the learning rate scaled to it as ``config.learning_rate_scaling`` says) and weight
    decay."""
    rate = feed.scaled_learning_rate(learning_rate, config.batch_size, config.learning_rate_scaling)
    return train.train(key, quant_model, variables, dataset, epochs=epochs, batch_size=config.batch_size,
                       learning_rate=rate, weight_decay=config.weight_decay, bits=bits, widths=widths)


class Trained(NamedTuple):
    """A configuration after its final training: its variables and accuracies."""

    variables: dict
    validation_accuracy: float
    test_accuracy: float


def final_training(config: SearchConfig, dataset: data.Dataset, float_net: FloatModel, quant_model: models.Model,
                   bits, widths, *, what: str = "the best configuration",
                   channel_bits: Mapping[str, Sequence[int]] | None = None) -> Trained:
    """The final training of a configuration (``final_epochs`` at ``final_learning_rate``, the search's final key)
    and its validation and test accuracies.

    Args:
        config: the settings.
        dataset, float_net, quant_model: `load_dataset`'s, `float_model_of`'s and `quantized_model`'s.
        bits, widths: the configuration, per layer.
        what: the configuration in the error message.
        channel_bits: per-channel weight bit-widths of a channel-wise configuration (`finetune_configuration`).

    Raises:
        ValueError: the training diverged (a non-finite loss).
    """
    variables, losses = finetune_configuration(search_keys(config.seed).final, config, dataset, float_net.model,
                                               float_net.variables, quant_model, bits, widths,
                                               epochs=config.final_epochs, learning_rate=config.final_learning_rate,
                                               channel_bits=channel_bits)
    if not np.all(np.isfinite(losses)):
        raise ValueError(f"the final training of {what} diverged (non-finite loss); lower final_learning_rate")
    exact = quant_model.clone(precision="float32")  # the accuracies of what is exported
    validation = train.evaluate(exact, variables, dataset.validation, bits=bits, widths=widths)
    test = train.evaluate(exact, variables, dataset.test, bits=bits, widths=widths)
    return Trained(variables, validation, test)


def export_trained(path: str, config: SearchConfig, dataset: data.Dataset, quant_model: models.Model,
                   trained: Trained, bits, widths, channel_bits: Mapping[str, Sequence[int]] | None = None) -> None:
    """Export a trained configuration as a self-contained program (`mpqjax.export.export_program`) with its
    configuration (per-channel weight bit-widths included: they are in the trained variables too), dataset and
    accuracies."""
    from mpqjax import export  # the top of the house: imported when used, so the steps stay light

    quant_model = quant_model.clone(precision="float32")  # a mixed-precision search exports the exact model
    table = models.layer_table(quant_model, input_shape=dataset.input_shape)
    bits_array, widths_array = train.config_arrays(quant_model, bits, widths, dataset.input_shape)
    export.export_program(
        path, lambda variables, x: quant_model.apply(variables, x, bits_array, widths_array),
        trained.variables, input_shape=dataset.input_shape,
        metadata={"model": config.model, "dataset": config.dataset, "num_classes": dataset.num_classes,
                  "layers": list(table.names), "bits": [int(b) for b in np.asarray(bits)],
                  "widths": [float(w) for w in np.asarray(widths)], "test_accuracy": trained.test_accuracy,
                  "validation_accuracy": trained.validation_accuracy, "seed": config.seed,
                  "data_dir": config.data_dir, "max_width": quant_model.max_width,
                  **({"channel_bits": {name: [int(b) for b in row] for name, row in channel_bits.items()}}
                     if channel_bits else {})})
