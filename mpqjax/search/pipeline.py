"""Algorithm 1 of the paper end to end: float model -> Hessian sensitivity -> pruned space -> k-means TPE over
quantisation-aware fine-tunes -> final training of the best configuration -> export and report.

`run` is the whole job (what ``mpqjax search`` calls). Its pieces are public so that pipelines can reuse them:

* `float_model`: load a float checkpoint (flax msgpack or orbax) or train one, cached per model/dataset/seed;
* `analyze_sensitivity`: per-layer Hessian traces and the pruned `mpqjax.sensitivity.candidates.LayerSpace`;
* `Problem.evaluate`: one configuration's short fine-tune, validation accuracy, cost and objective.

Everything a search produces goes to one output folder (see ``report.py`` for the files). Every finished trial is
appended to ``trials.jsonl`` and the optimiser state saved to ``tpe_state.npz`` before the next one starts, both
atomically (`mpqjax.store.files`). ``run(..., resume=True)`` continues a killed search: the trials already logged are
kept,
the optimiser state is restored (or rebuilt from the log when the process died between the two writes), and since
every random draw is keyed by the trial index (``fold_in(key, trial)``), the resumed search ends with exactly the
result of an uninterrupted one.

Example:
    >>> result = run(SearchConfig(model="digits_cnn", dataset="digits", trials=40), "runs/digits")
    >>> result.best["size_reduction_vs_fip16"], result.best["test_accuracy"]
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import itertools
import math
import os
import time
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from mpqjax import cost as cost_model
from mpqjax import data, sensitivity, store
from mpqjax.nn import models
from mpqjax.optim import tpe
from mpqjax.search import objective
from mpqjax.sensitivity import hessian
from mpqjax.store import run_folder
from mpqjax.store.run_folder import FILES, FORMAT, PHASES, RESUMABLE_CHANGES
from mpqjax.training import population, train

__all__ = ["DEFAULT_SIZE_REDUCTION", "FILES", "Problem", "SearchConfig", "SearchResult", "analyze_sensitivity",
           "default_cache_dir", "default_out_dir", "enable_compilation_cache", "float_model", "run"]

DEFAULT_SIZE_REDUCTION = 6.0  # the paper's ResNet-20 reached 6.1x against FiP16 at no accuracy loss



@dataclasses.dataclass(frozen=True)
class SearchConfig:
    """Every setting of a search (the CLI's options). Defaults: the embedded digits job.

    Attributes:
        model: zoo model name (`mpqjax.nn.models.available`).
        dataset: dataset name (`mpqjax.data.LOADERS`).
        data_dir: folder of downloaded datasets (tensorflow-datasets or local CIFAR folders).
        target: hardware target: a name (``"fpga"``, ``"generic"``) or a JSON/TOML file.
        max_size_bytes: size limit mu in bytes.
        min_size_reduction: size limit as a reduction against FiP16 (size <= FiP16 size / this); the stricter of
            this and ``max_size_bytes`` applies. Default 6; None for no size limit.
        max_latency_seconds: latency limit tau.
        min_speedup: latency limit as a speed-up against FiP16 (latency <= FiP16 latency / this).
        max_energy_joules: energy limit epsilon.
        min_throughput: throughput limit pi (inferences per second).
        soft_limits: False (default): configurations breaking a limit are never proposed (the cost model masks
            them); True: they are evaluated and penalised by the Lagrangian term only.
        penalty: Lagrangian multiplier of every limit (objective = accuracy - penalty * relative violation).
        trials: configurations evaluated (the paper's n).
        n_initial: random configurations first (the paper's n0).
        seed: seed of everything (data split, float training, probes, optimiser, fine-tunes).
        prune: prune the bit-widths by Hessian sensitivity (False: every layer may take every bit-width).
        bits: the bit-widths of the unpruned space.
        bit_sets: candidate bits per sensitivity cluster, most sensitive first.
        widths: width multipliers of every width group.
        fixed_bits: layers whose bit-width is fixed, ``((name, bits), ...)``.
        log_scale: cluster log10 of the traces per weight.
        float_checkpoint: float model checkpoint (msgpack file or orbax folder); None trains one (cached).
        float_epochs, float_learning_rate: training of the float model when there is no checkpoint.
        batch_size: examples per training step.
        finetune_epochs, finetune_learning_rate: the short quantisation-aware fine-tune of every trial.
        final_epochs, final_learning_rate: the final training of the best configuration (paper: 90, 0.01).
        weight_decay: decoupled weight decay of every training.
        calibration: activation clip calibration (``"mse"``, ``"max"``, ``"percentile"``).
        hessian_batch_size, hessian_batches, hessian_max_probes, hessian_tol: the Hutchinson estimate.
        baseline: also train the uniform-precision baseline (every layer at each of ``baseline_bits``, width 1).
        baseline_bits: bit-widths of the baseline.
        population: configurations proposed and fine-tuned together (ask P -> evaluate P -> tell P), an int >= 1,
            or ``"auto"``: `mpqjax.training.population.choose` measures 1, 4 and 16 (capped by memory and ``trials``)
            before
            the search and keeps the fastest, preferring the smaller within 10% (recorded in ``search.json``).
        strategy: how a population is trained: ``"sequential"``, ``"vmap"``, ``"scan"`` (`mpqjax.training.population`),
        or
            ``"auto"`` (default): measured when ``population`` is ``"auto"`` or above 1, else sequential. Measured
            choices can differ between runs; pass explicit values for bit-identical repeats.
    """

    model: str = "digits_cnn"
    dataset: str = "digits"
    data_dir: str | None = None
    target: str = "fpga"
    max_size_bytes: float | None = None
    min_size_reduction: float | None = DEFAULT_SIZE_REDUCTION
    max_latency_seconds: float | None = None
    min_speedup: float | None = None
    max_energy_joules: float | None = None
    min_throughput: float | None = None
    soft_limits: bool = False
    penalty: float = objective.DEFAULT_MULTIPLIER
    trials: int = 60
    n_initial: int = 20
    seed: int = 0
    prune: bool = True
    bits: tuple[int, ...] = sensitivity.ALL_BITS
    bit_sets: tuple[tuple[int, ...], ...] = sensitivity.DEFAULT_BIT_SETS
    widths: tuple[float, ...] = sensitivity.DEFAULT_WIDTHS
    fixed_bits: tuple[tuple[str, int], ...] = ()
    log_scale: bool = False
    float_checkpoint: str | None = None
    float_epochs: int = 20
    float_learning_rate: float = 3e-3
    batch_size: int = 64
    finetune_epochs: int = 4
    finetune_learning_rate: float = 1e-3
    final_epochs: int = 90
    final_learning_rate: float = 1e-2
    weight_decay: float = 1e-4
    calibration: str = "mse"
    hessian_batch_size: int = 256
    hessian_batches: int = 2
    hessian_max_probes: int = 256
    hessian_tol: float = 1e-2
    baseline: bool = False
    baseline_bits: tuple[int, ...] = (8, 6, 4, 3, 2)
    population: int | str = 1
    strategy: str = "auto"

    def validate(self) -> None:
        """Raise ValueError naming the first bad setting (cheap checks only: nothing is loaded)."""
        if self.model not in models.available():
            raise ValueError(f"unknown model {self.model!r}; available: {', '.join(models.available())}")
        if self.dataset not in data.LOADERS:
            raise ValueError(f"unknown dataset {self.dataset!r}; available: {', '.join(data.LOADERS)}")
        positive_ints = ["trials", "n_initial", "float_epochs", "batch_size", "finetune_epochs", "final_epochs",
                         "hessian_batch_size", "hessian_batches", "hessian_max_probes"]
        for name in positive_ints:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        positive = ["float_learning_rate", "finetune_learning_rate", "final_learning_rate", "hessian_tol", "penalty"]
        optional_positive = ["max_size_bytes", "min_size_reduction", "max_latency_seconds", "min_speedup",
                             "max_energy_joules", "min_throughput"]
        for name in positive + optional_positive:
            value = getattr(self, name)
            if value is None and name in optional_positive:
                continue
            if isinstance(value, bool) or not isinstance(value, (int, float, np.number)) or not math.isfinite(value) \
                    or value <= 0:
                raise ValueError(f"{name} must be a positive number, got {value!r}")
        if not (isinstance(self.weight_decay, (int, float)) and 0 <= self.weight_decay < math.inf):
            raise ValueError(f"weight_decay must be a non-negative number, got {self.weight_decay!r}")
        if self.calibration not in train.CALIBRATION_COLUMNS:
            raise ValueError(f"calibration must be one of {', '.join(train.CALIBRATION_COLUMNS)}, "
                             f"got {self.calibration!r}")
        for name in ("bits", "baseline_bits"):
            for value in getattr(self, name):
                if not isinstance(value, (int, np.integer)) or not 2 <= value <= 16:
                    raise ValueError(f"{name}: bit-widths must be integers from 2 to 16, got {value!r}")
        if self.population != "auto" and (isinstance(self.population, bool)
                                          or not isinstance(self.population, (int, np.integer)) or self.population < 1):
            raise ValueError(f"population must be a positive integer or 'auto', got {self.population!r}")
        if self.population != "auto" and self.population > self.trials:
            raise ValueError(f"population {self.population} exceeds trials={self.trials}: every population is "
                             f"evaluated whole")
        if self.strategy not in ("auto", *population.STRATEGIES):
            raise ValueError(f"strategy must be auto or one of {', '.join(population.STRATEGIES)}, "
                             f"got {self.strategy!r}")
        for group in self.bit_sets:
            for value in group:
                if not isinstance(value, (int, np.integer)) or not 2 <= value <= 16:
                    raise ValueError(f"bit_sets: bit-widths must be integers from 2 to 16, got {value!r}")

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready settings (tuples as lists)."""
        return store.to_json_value(dataclasses.asdict(self))


@dataclasses.dataclass(frozen=True)
class SearchResult:
    """What `run` returns: the output folder, the best configuration (``best_config.json``), every trial record,
    the uniform baseline's records (empty without ``baseline``) and the time split in seconds."""

    out_dir: str
    best: dict
    trials: list
    baseline: list
    timings: dict


def default_out_dir(config: SearchConfig) -> str:
    """A new folder per run: ``runs/search/<model>-<dataset>-<date>-<time>``."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    base = os.path.join("runs", "search", f"{config.model}-{config.dataset}-{stamp}")
    path, suffix = base, 1
    while os.path.exists(path):
        suffix += 1
        path = f"{base}-{suffix}"
    return path


def default_cache_dir() -> str:
    """Where trained float models are cached: ``$MPQJAX_CACHE_DIR``, else ``~/.cache/mpqjax``."""
    return os.environ.get("MPQJAX_CACHE_DIR") or os.path.join(os.path.expanduser("~"), ".cache", "mpqjax")


def enable_compilation_cache(path: str | None = None, *, min_compile_seconds: float = 0.2) -> str:
    """Keep compiled XLA programs on disk (JAX's persistent compilation cache), so a second search of the same
    model skips compiling its training step, Hessian probes and optimiser. The CLI turns it on.

    Args:
        path: cache folder (default ``<default_cache_dir()>/xla``).
        min_compile_seconds: programs that compile faster than this are not stored.

    Returns:
        The cache folder.
    """
    path = path or os.path.join(default_cache_dir(), "xla")
    os.makedirs(path, exist_ok=True)
    jax.config.update("jax_compilation_cache_dir", path)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", min_compile_seconds)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    return path


class _Clock:
    """Seconds spent per phase, accumulated over the sessions of a resumed search."""

    def __init__(self, spent: dict | None = None):
        self.spent = {phase: 0.0 for phase in PHASES}
        self.spent.update({phase: float(value) for phase, value in (spent or {}).items() if phase in PHASES})

    @contextlib.contextmanager
    def __call__(self, phase: str):
        start = time.perf_counter()
        try:
            yield
        finally:
            self.spent[phase] += time.perf_counter() - start

    def to_dict(self) -> dict[str, float]:
        return {**self.spent, "total": sum(self.spent.values())}


# -- the float model and its sensitivity -------------------------------------------------------------------------


def _float_module(name: str, table: models.LayerTable, num_classes: int) -> models.QModel:
    """The width-1 float model (materialised, so its parameters are exactly the table's base layers)."""
    return models.get(name, quantize=False, num_classes=num_classes, widths=(1.0,) * len(table))


def float_model(key, name: str, dataset: data.Dataset, *, checkpoint: str | None = None, epochs: int = 20,
                learning_rate: float = 3e-3, batch_size: int = 64, weight_decay: float = 1e-4,
                cache_dir: str | None = None) -> tuple[models.QModel, dict, str]:
    """The trained float model at width 1: loaded from ``checkpoint``, else from the cache, else trained and cached.

    Args:
        key: PRNG key of the initialisation and the training.
        name: zoo model name.
        dataset: the data (its train split trains the model).
        checkpoint: a flax msgpack file or orbax folder of ``{'params', 'batch_stats'}`` at width 1.
        epochs, learning_rate, batch_size, weight_decay: the training without checkpoint.
        cache_dir: cache folder (default `default_cache_dir`); the cache key holds every setting above and the
            key's data, so a different seed or schedule trains a new model.

    Returns:
        ``(model, variables, source)``: the float `QModel`, its ``{'params', 'batch_stats'}`` and a description of
        where they came from.

    Raises:
        ValueError: the checkpoint is missing, unreadable or of another model.
    """
    table = models.layer_table(name, input_shape=dataset.input_shape)
    model = _float_module(name, table, dataset.num_classes)
    template = models.init_variables(key, model, dataset.input_shape)
    template = {collection: template[collection] for collection in ("params", "batch_stats") if collection in template}
    if checkpoint is not None:
        try:
            return model, store.load_variables(checkpoint, template), f"checkpoint {checkpoint}"
        except ValueError as error:
            raise ValueError(f"{error} (expected a float {name} at width 1 for {dataset.name})") from None
    key_data = "-".join(str(int(v)) for v in np.asarray(jax.random.key_data(key)).reshape(-1))
    cache_name = (f"{name}-{dataset.name}-{'x'.join(map(str, dataset.input_shape))}-{dataset.num_classes}-k{key_data}"
                  f"-e{epochs}-lr{learning_rate:g}-b{batch_size}-wd{weight_decay:g}.msgpack")
    cached = os.path.join(cache_dir or default_cache_dir(), "float", cache_name)
    if os.path.isfile(cached):
        try:
            return model, store.load_variables(cached, template), f"cache {cached}"
        except ValueError:
            pass  # a stale or damaged cache entry: train again and overwrite it
    variables, losses = train.train_float(key, model, dataset, epochs=epochs, learning_rate=learning_rate,
                                          batch_size=batch_size, weight_decay=weight_decay)
    if not np.all(np.isfinite(losses)):
        raise ValueError(f"training the float {name} diverged (non-finite loss); lower the float learning rate")
    variables = {collection: variables[collection] for collection in template}
    with contextlib.suppress(OSError):  # a read-only cache only costs the next run a retraining
        os.makedirs(os.path.dirname(cached), exist_ok=True)
        store.save_variables(cached, variables)
    return model, jax.tree.map(np.asarray, variables), f"trained {epochs} epochs (cached at {cached})"


def analyze_sensitivity(key, model: models.QModel, variables, dataset: data.Dataset, *,
                        batch_size: int = 256, num_batches: int = 2, max_probes: int = 256, tol: float = 1e-2,
                        chunk_size: int | None = None, probing: str = "shared",
                        bit_sets: Sequence[Sequence[int]] = sensitivity.DEFAULT_BIT_SETS,
                        fixed_bits: dict[str, int] | None = None, widths: Sequence[float] = sensitivity.DEFAULT_WIDTHS,
                        all_bits: Sequence[int] = sensitivity.ALL_BITS,
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
    traces = hessian.layer_traces(key, loss_fn, variables["params"], batch_list, layers=list(table.names),
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


def _layer_space_from_summary(table, summary: dict, widths) -> sensitivity.LayerSpace:
    """The pruned space recorded in a ``hessian.json`` (a resumed search does not recompute the traces)."""
    by_name = {row["name"]: tuple(row["candidate_bits"]) for row in summary["layers"]}
    return sensitivity.layer_space(table, [by_name[name] for name in table.names], widths=widths)


# -- one search problem ------------------------------------------------------------------------------------------


def _limits(config: SearchConfig, table, target) -> objective.Limits:
    """The limits in absolute units (reductions and speed-ups are taken against the FiP16 model)."""
    ones = np.ones(len(table), np.float32)
    fip16 = cost_model.cost(table, np.full(len(table), 16), ones, target)
    sizes = [config.max_size_bytes]
    if config.min_size_reduction is not None:
        sizes.append(float(fip16.size_bytes) / config.min_size_reduction)
    latencies = [config.max_latency_seconds]
    if config.min_speedup is not None:
        latencies.append(float(fip16.latency_seconds) / config.min_speedup)
    smallest = lambda values: min((v for v in values if v is not None), default=None)  # noqa: E731
    return objective.make_limits(size_bytes=smallest(sizes), latency_seconds=smallest(latencies),
                                 energy_joules=config.max_energy_joules,
                                 throughput_per_second=config.min_throughput)


def _describe(name: str, value: float) -> str:
    if name == "size_bytes":
        return f"{value / 1e6:.4g} MB" if value >= 1e5 else f"{value / 1e3:.4g} kB"
    if name == "latency_seconds":
        return f"{value * 1e3:.4g} ms" if value >= 1e-3 else f"{value * 1e6:.4g} us"
    if name == "energy_joules":
        return f"{value * 1e3:.4g} mJ"
    return f"{value:.4g} inferences/s"


def _check_attainable(layer_space: sensitivity.LayerSpace, target, limits: objective.Limits, where: str) -> None:
    """Raise ValueError when even the cheapest configuration of the space breaks a limit.

    Size, latency and energy grow with every layer's bits and width in the cost model, so the configuration of the
    smallest bits and widths is the cheapest in every respect at once (throughput is the inverse of latency).
    """
    space = layer_space.space
    cheapest = {dimension.name: min(dimension.choices) for dimension in space.dimensions}
    bits, widths = layer_space.to_arrays(cheapest)
    cheapest_cost = cost_model.cost(layer_space.table, bits, widths, target)
    over = np.asarray(objective.violations(cheapest_cost, limits))
    for index, name in enumerate(objective.LIMIT_NAMES):
        if over[index] > 0:
            value, limit = float(getattr(cheapest_cost, name)), float(getattr(limits, name))
            relation = "below" if name == "throughput_per_second" else "above"
            adjective = "highest" if name == "throughput_per_second" else "smallest"
            what = name.split("_")[0]
            raise ValueError(f"the {adjective} possible {what}{where} is {_describe(name, value)}, {relation} the "
                             f"limit {_describe(name, limit)}: relax the limit or allow fewer bits / narrower widths")


@dataclasses.dataclass
class Problem:
    """Everything fixed during one search: data, float model, space, hardware, limits; `evaluate` scores a
    configuration.

    Build with `Problem.create`. ``quant_model`` is the masked quantised model: every configuration of bits and
    widths shares its one compiled training step.
    """

    config: SearchConfig
    dataset: data.Dataset
    table: models.LayerTable
    target: Any
    limits: objective.Limits
    float_model: models.QModel
    float_variables: dict
    quant_model: models.QModel
    layer_space: sensitivity.LayerSpace

    def cost(self, bits, widths) -> cost_model.Cost:
        """The cost model at per-layer ``bits`` and ``widths``."""
        return _jitted_cost(self.table)(jnp.asarray(bits, jnp.float32), jnp.asarray(widths, jnp.float32),
                                        self.target)

    def feasible_fn(self) -> Callable[[jax.Array], jax.Array]:
        """``values[D] -> bool`` for `KMeansTPE(feasible=...)`: the configuration meets every hard limit."""
        table, target, limits, layer_space = self.table, self.target, self.limits, self.layer_space

        def feasible(values):
            bits, widths = layer_space.values_to_arrays(values)
            return objective.is_feasible(cost_model.cost(table, bits, widths, target), limits)

        return feasible

    def finetune(self, key, bits, widths, *, epochs: int, learning_rate: float):
        """Fine-tune a configuration from the float model; returns ``(variables, losses)``."""
        return train.finetune(key, self.float_model, self.float_variables, self.quant_model, self.dataset,
                              bits=bits, widths=widths, epochs=epochs, batch_size=self.config.batch_size,
                              learning_rate=learning_rate, calibration=self.config.calibration,
                              weight_decay=self.config.weight_decay)

    def evaluate(self, key, bits, widths) -> dict:
        """Short fine-tune, validation accuracy, cost and objective of one configuration (a trial record's fields).

        A run whose loss becomes NaN or infinite is a failed trial (objective None), never an error.
        """
        start = time.perf_counter()
        variables, losses = self.finetune(key, bits, widths, epochs=self.config.finetune_epochs,
                                          learning_rate=self.config.finetune_learning_rate)
        accuracy = math.nan
        if np.all(np.isfinite(losses)):
            accuracy = train.evaluate(self.quant_model, variables, self.dataset.validation, bits=bits, widths=widths)
        return self._trial_fields(bits, widths, losses, accuracy, time.perf_counter() - start)

    def evaluate_population(self, key, bits, widths, *, strategy: str = "vmap", mesh=None) -> list[dict]:
        """`evaluate` of P configurations (``bits``, ``widths``: ``[P, L]``) fine-tuned together with one key
        (`mpqjax.training.population.finetune`): one record each, its ``seconds`` the population's time over P."""
        start = time.perf_counter()
        variables, losses = population.finetune(
            key, self.float_model, self.float_variables, self.quant_model, self.dataset, bits=bits, widths=widths,
            epochs=self.config.finetune_epochs, batch_size=self.config.batch_size,
            learning_rate=self.config.finetune_learning_rate, calibration=self.config.calibration,
            weight_decay=self.config.weight_decay, strategy=strategy, mesh=mesh)
        accuracies = population.evaluate(self.quant_model, variables, self.dataset.validation, bits=bits,
                                         widths=widths, mesh=mesh)
        seconds = (time.perf_counter() - start) / len(bits)
        return [self._trial_fields(bits[i], widths[i], losses[i], float(accuracies[i]), seconds)
                for i in range(len(bits))]

    def _trial_fields(self, bits, widths, losses, accuracy: float, seconds: float) -> dict:
        """A trial's record from its fine-tune losses and validation accuracy (failed when either is not finite)."""
        error = None
        if not np.all(np.isfinite(losses)):
            error, accuracy = "training diverged (non-finite loss)", math.nan
        elif not math.isfinite(accuracy):
            error = "non-finite validation accuracy"
        record = self.cost_record(bits, widths, accuracy)
        record.update(status="ok" if error is None else "failed", seconds=seconds, error=error)
        return record

    def cost_record(self, bits, widths, accuracy: float) -> dict:
        """Bits, widths, cost fields, feasibility and objective of a configuration with a given accuracy."""
        cost = self.cost(bits, widths)
        value = float(objective.objective(accuracy, cost, self.limits, self.config.penalty))
        return {
            "bits": [int(b) for b in np.asarray(bits)],
            "widths": [float(w) for w in np.asarray(widths)],
            "objective": value if math.isfinite(value) else None,
            "validation_accuracy": accuracy if math.isfinite(accuracy) else None,
            **{name: float(getattr(cost, name)) for name in _COST_FIELDS},
            "feasible": bool(objective.is_feasible(cost, self.limits)),
        }


_COST_FIELDS = ("size_bytes", "latency_seconds", "latency_cycles", "energy_joules", "throughput_per_second",
                "speedup_vs_fip16", "size_reduction_vs_fip16", "size_reduction_vs_fp32")


@functools.lru_cache(maxsize=64)
def _jitted_cost(table):
    """The cost model of one layer table, compiled once per table (bits, widths and target are traced)."""
    return jax.jit(lambda bits, widths, target: cost_model.cost(table, bits, widths, target))


# -- the output folder -------------------------------------------------------------------------------------------


def _settings_differences(old: dict, new: dict) -> list[str]:
    return sorted(name for name in set(old) | set(new)
                  if name not in RESUMABLE_CHANGES and old.get(name) != new.get(name))


def _check_out_dir(out_dir: str, config: SearchConfig, resume: bool) -> dict | None:
    """Validate the output folder before anything is written; returns the previous ``search.json`` on resume."""
    search_path = os.path.join(out_dir, FILES["search"])
    if os.path.exists(out_dir) and not os.path.isdir(out_dir):
        raise ValueError(f"output folder {out_dir!r} is a file")
    if resume:
        if not os.path.isfile(search_path):
            raise ValueError(f"--resume: {out_dir!r} holds no search to resume (no {FILES['search']})")
        previous = store.read_json(search_path)
        if not isinstance(previous, dict) or previous.get("format") != FORMAT:
            raise ValueError(f"--resume: {search_path!r} is not an mpqjax search file")
        differences = _settings_differences(previous.get("settings", {}), config.to_dict())
        if differences:
            raise ValueError(f"--resume: settings differ from the interrupted search in {', '.join(differences)}")
        logged = len(store.read_jsonl(os.path.join(out_dir, FILES["trials"])))
        if config.trials < logged:
            raise ValueError(f"--resume: {logged} trials are already logged, more than trials={config.trials}")
        return previous
    if os.path.isfile(search_path):
        raise ValueError(f"output folder {out_dir!r} holds another search: use --resume to continue it, or another "
                         f"--out")
    if os.path.isdir(out_dir) and os.listdir(out_dir):
        raise ValueError(f"output folder {out_dir!r} is not empty; choose a new or empty folder")
    return None


def _restore_state(opt: tpe.KMeansTPE, path: str, records: list[dict], space,
                   population_size: int = 1) -> tpe.TPEState:
    """The optimiser state after the logged trials: the checkpoint, completed from the log if it lags behind.

    The checkpoint is written after the log lines, so it is at most one population behind; `tell` is
    deterministic, so replaying the missing trials as the search told them gives exactly the state of an
    uninterrupted run.
    """
    state = None
    if os.path.isfile(path):
        with contextlib.suppress(ValueError):
            state = store.load_tpe_state(path)
            if state.x.shape != (opt.capacity, opt.num_dims) or int(state.count) > len(records):
                state = None
    if state is None:
        state = opt.init()
    start = int(state.count)
    while start < len(records):  # told in the search's populations (aligned at multiples of its size)
        chunk = records[start : (start // population_size + 1) * population_size]
        x = np.stack([space.encode(record["config"]) for record in chunk])
        y = [math.nan if record["objective"] is None else record["objective"] for record in chunk]
        state = opt.tell(state, x, jnp.asarray(y, jnp.float32))
        start += len(chunk)
    return state


def _layers_of(problem: Problem, bits, widths) -> list[dict]:
    """The per-layer table of a configuration: bits, width, weights at that width, size and cycles."""
    cost = problem.cost(bits, widths)
    return [
        {"name": layer.name, "bits": int(bits[index]), "width": float(widths[index]),
         "weights": int(round(float(cost.layer_weights[index]))), "size_bytes": float(cost.layer_size_bytes[index]),
         "cycles": float(cost.layer_cycles[index])}
        for index, layer in enumerate(problem.table)
    ]


# -- Algorithm 1 -------------------------------------------------------------------------------------------------


def _progress_event(kind: str, **fields) -> dict:
    return {"event": kind, **fields}


def run(config: SearchConfig | None = None, out_dir: str | None = None, *, resume: bool = False,
        progress: Callable[[dict], None] | None = None, cache_dir: str | None = None) -> SearchResult:
    """Run a whole search (Algorithm 1) and write its output folder.

    Args:
        config: the settings (default: the embedded digits job, `SearchConfig()`).
        out_dir: output folder (default: a new folder per run, `default_out_dir`). It must be new or empty,
            unless ``resume``.
        resume: continue the search in ``out_dir`` (same settings; ``trials`` may grow). A finished search is
            not run again: its result is returned and its report regenerated.
        progress: called with a dict after every phase and trial (``event``: ``"phase"``, ``"trial"``,
            ``"done"``; a trial event has ``trial``, ``trials``, ``record``, ``best``, ``elapsed``, ``eta``).
        cache_dir: the float-model cache (default `default_cache_dir`).

    Returns:
        A `SearchResult`.

    Raises:
        ValueError: bad settings, an unknown model, dataset or target, unreadable checkpoint, limits that no
            configuration meets, an output folder holding another search. Raised before anything is written,
            except the limits check after pruning (it needs the trained model).
    """
    from mpqjax import export, report  # the top of the house: imported here so the rest stays light

    config = SearchConfig() if config is None else config
    config.validate()
    notify = progress or (lambda event: None)
    out_dir = os.fspath(out_dir) if out_dir is not None else default_out_dir(config)
    previous = _check_out_dir(out_dir, config, resume)
    if previous is not None and previous.get("status") == "finished" \
            and previous.get("settings", {}).get("trials") == config.trials \
            and os.path.isfile(os.path.join(out_dir, FILES["best"])):
        report.write(out_dir)
        return _result(out_dir)
    clock = _Clock(previous.get("timings") if previous else None)

    key = jax.random.key(config.seed)
    float_key, probe_key, ask_key, trial_key, final_key = (jax.random.fold_in(key, i) for i in range(5))
    dataset = data.load(config.dataset, seed=config.seed, **({"data_dir": config.data_dir} if config.data_dir else {}))
    table = models.layer_table(config.model, input_shape=dataset.input_shape)
    target = cost_model.load_target(config.target)
    limits = _limits(config, table, target)
    fixed_bits = dict(config.fixed_bits)
    unknown = sorted(set(fixed_bits) - set(table.names))
    if unknown:
        raise ValueError(f"fixed_bits names unknown layers {unknown}; layers are {list(table.names)}")
    full_space = sensitivity.layer_space(
        table, [(fixed_bits[name],) if name in fixed_bits else config.bits for name in table.names],
        widths=config.widths)
    _check_attainable(full_space, target, limits, "")
    if full_space.space.log10_size() < math.log10(config.trials):
        raise ValueError(f"the space has only {round(10 ** full_space.space.log10_size())} configurations, fewer "
                         f"than trials={config.trials}")
    checkpoint = config.float_checkpoint
    if resume and os.path.isfile(os.path.join(out_dir, FILES["float"])):
        checkpoint = os.path.join(out_dir, FILES["float"])
    if checkpoint is not None:  # read it now: an unreadable checkpoint must fail before the folder is touched
        with clock("float_model"):
            float_module, float_variables, source = float_model(float_key, config.model, dataset,
                                                                checkpoint=checkpoint)
        if previous is not None:
            source = previous.get("float", {}).get("source", source)

    fp32 = float(cost_model.cost(table, np.full(len(table), 16), np.ones(len(table)), target).size_bytes) * 2
    meta = {
        "format": FORMAT, "status": "running", "model": config.model, "dataset": config.dataset, "seed": config.seed,
        "settings": config.to_dict(), "target": cost_model.target_to_dict(target), "limits": limits.to_dict(),
        "layers": [{"name": layer.name, "kind": layer.kind, "weights": layer.weights, "macs": layer.macs}
                   for layer in table],
        "fip16_size_bytes": cost_model.fip16_size_bytes(table), "fp32_size_bytes": fp32,
        "timings": clock.to_dict(),
    }
    os.makedirs(out_dir, exist_ok=True)
    search_path = os.path.join(out_dir, FILES["search"])
    store.atomic_write_json(search_path, meta)

    if checkpoint is None:
        notify(_progress_event("phase", phase="float_model", message=f"training the float {config.model}"))
        with clock("float_model"):
            float_module, float_variables, source = float_model(
                float_key, config.model, dataset, epochs=config.float_epochs, learning_rate=config.float_learning_rate,
                batch_size=config.batch_size, weight_decay=config.weight_decay, cache_dir=cache_dir)
    with clock("io"):
        if not os.path.isfile(os.path.join(out_dir, FILES["float"])):
            store.save_variables(os.path.join(out_dir, FILES["float"]), float_variables)
    with clock("float_model"):
        float_accuracy = {"validation_accuracy": train.evaluate(float_module, float_variables, dataset.validation),
                          "test_accuracy": train.evaluate(float_module, float_variables, dataset.test),
                          "source": source}
    meta["float"] = float_accuracy

    hessian_path = os.path.join(out_dir, FILES["hessian"])
    if config.prune:
        if resume and os.path.isfile(hessian_path):
            summary = store.read_json(hessian_path)
            layer_space = _layer_space_from_summary(table, summary, config.widths)
        else:
            notify(_progress_event("phase", phase="hessian", message="estimating per-layer Hessian traces"))
            with clock("hessian"):
                pruned, summary = analyze_sensitivity(
                    probe_key, float_module, float_variables, dataset, batch_size=config.hessian_batch_size,
                    num_batches=config.hessian_batches, max_probes=config.hessian_max_probes, tol=config.hessian_tol,
                    bit_sets=config.bit_sets, fixed_bits=fixed_bits, widths=config.widths, all_bits=config.bits,
                    log_scale=config.log_scale)
            layer_space = pruned.layer_space
            with clock("io"):
                store.atomic_write_json(hessian_path, summary)
        _check_attainable(layer_space, target, limits, " after Hessian pruning")
        size_before, size_after = summary["log10_size_before"], summary["log10_size_after"]
    else:
        layer_space = full_space
        size_before = size_after = full_space.space.log10_size()
    meta["space"] = {"dimensions": [{"name": d.name, "choices": list(d.choices)} for d in layer_space.space.dimensions],
                     "pruned": config.prune, "log10_size_before": size_before, "log10_size_after": size_after}

    quant_model = models.get(config.model, num_classes=dataset.num_classes,
                             max_width=max(models.DEFAULT_MAX_WIDTH, *config.widths))
    problem = Problem(config, dataset, table, target, limits, float_module, float_variables, quant_model, layer_space)
    space = layer_space.space
    opt = tpe.KMeansTPE(space, maximize=True, n_initial=min(config.n_initial, config.trials),
                        capacity=config.trials, feasible=None if config.soft_limits else problem.feasible_fn())
    log = store.TrialLog(os.path.join(out_dir, FILES["trials"]))
    records = log.records()
    if previous is not None and "population" in previous:  # a resumed search keeps its measured choice
        choice = previous["population"]
    else:
        with clock("evaluations"):
            choice = _choose_population(problem)
    meta["population"] = choice
    meta["devices"] = {"platform": jax.default_backend(), "count": jax.device_count(),
                       "processes": jax.process_count()}
    size, strategy = choice["population"], choice["strategy"]
    if size > 1 or choice["measured"]:
        measured = ", ".join(f"{m['strategy']} x{m['population']}: {m['configurations_per_hour']:.0f}/h"
                             for m in choice.get("measurements", []))
        notify(_progress_event("phase", phase="population", message=f"population {size}, strategy {strategy}"
                               + (f" (measured {measured})" if measured else "")))
    state_path = os.path.join(out_dir, FILES["state"])
    with clock("optimiser"):
        state = _restore_state(opt, state_path, records, space, size)

    def save_meta():
        meta["timings"] = clock.to_dict()
        store.atomic_write_json(search_path, meta)

    with clock("io"):
        save_meta()
    session_start, session_trials = time.perf_counter(), 0
    mesh = population.population_mesh() if size > 1 else None
    while len(records) < config.trials:
        first = len(records)
        count = min(size, config.trials - first)  # the last population may be smaller
        with clock("optimiser"):
            encoded, _ = opt.ask(jax.random.fold_in(ask_key, first), state, n=size)
            encoded = np.asarray(encoded)[:count]
        points = [space.decode(row) for row in encoded]
        arrays = [layer_space.to_arrays(point) for point in points]
        evaluation_key = jax.random.fold_in(trial_key, first)
        with clock("evaluations"):
            if size == 1:
                fields = [problem.evaluate(evaluation_key, *arrays[0])]
            else:
                fields = problem.evaluate_population(evaluation_key, np.stack([b for b, _ in arrays]),
                                                     np.stack([w for _, w in arrays]), strategy=strategy, mesh=mesh)
        new_records = [{"trial": first + index, "phase": "random" if first + index < opt.n_initial else "model",
                        "config": point, **record}
                       for index, (point, record) in enumerate(zip(points, fields, strict=True))]
        with clock("optimiser"):
            values = [math.nan if record["objective"] is None else record["objective"] for record in new_records]
            state = opt.tell(state, encoded, jnp.asarray(values, jnp.float32))
            jax.block_until_ready(state)
        with clock("io"):
            log.extend(new_records)  # one write: a population is logged whole
            store.save_tpe_state(state_path, state)
            save_meta()
        records.extend(store.to_json_value(record) for record in new_records)
        session_trials += count
        rate = (time.perf_counter() - session_start) / session_trials
        for record in new_records:
            notify(_progress_event("trial", trial=record["trial"] + 1, trials=config.trials, record=record,
                                   best=run_folder.best_trial(records[: record["trial"] + 1]),
                                   elapsed=clock.to_dict()["total"],
                                   eta=rate * (config.trials - first - count)))

    best = run_folder.best_trial(records)
    if best is None:
        raise ValueError(f"all {len(records)} trials failed (training diverged); lower the fine-tune learning rate")
    notify(_progress_event("phase", phase="final_training",
                           message=f"training the best configuration (trial {best['trial']}) for "
                                   f"{config.final_epochs} epochs"))
    best_bits, best_widths = np.asarray(best["bits"]), np.asarray(best["widths"], np.float32)
    with clock("final_training"):
        final_variables, final_losses = problem.finetune(final_key, best_bits, best_widths,
                                                         epochs=config.final_epochs,
                                                         learning_rate=config.final_learning_rate)
        if not np.all(np.isfinite(final_losses)):
            raise ValueError("the final training of the best configuration diverged (non-finite loss); lower "
                             "final_learning_rate")
        final_validation = train.evaluate(quant_model, final_variables, dataset.validation, bits=best_bits,
                                          widths=best_widths)
        test_accuracy = train.evaluate(quant_model, final_variables, dataset.test, bits=best_bits,
                                       widths=best_widths)
    best_config = {
        "trial": best["trial"], "config": best["config"], "objective": best["objective"],
        "validation_accuracy": best["validation_accuracy"], "final_validation_accuracy": final_validation,
        "test_accuracy": test_accuracy, "float_test_accuracy": float_accuracy["test_accuracy"],
        **{name: best[name] for name in _COST_FIELDS},
        "layers": _layers_of(problem, best_bits, best_widths),
        "export": FILES["model"],
    }
    with clock("io"):
        export.export_model(os.path.join(out_dir, FILES["model"]), model_name=config.model,
                            model_kwargs={"num_classes": dataset.num_classes, "max_width": quant_model.max_width},
                            variables=final_variables, bits=best_bits, widths=best_widths,
                            input_shape=dataset.input_shape, num_classes=dataset.num_classes,
                            metadata={"test_accuracy": test_accuracy, "dataset": config.dataset,
                                      "validation_accuracy": final_validation})

    if config.baseline:
        notify(_progress_event("phase", phase="baseline", message="training the uniform-precision baseline"))
        with clock("baseline"):
            _uniform_baseline(problem, os.path.join(out_dir, FILES["baseline"]), trial_key, final_key)

    with clock("io"):
        store.atomic_write_json(os.path.join(out_dir, FILES["best"]), best_config)
        meta["status"] = "finished"
        save_meta()
        report.write(out_dir)
    notify(_progress_event("done", best=best_config, out_dir=out_dir, timings=clock.to_dict()))
    return _result(out_dir)


def _choose_population(problem: Problem) -> dict:
    """The population size and strategy of a search (``search.json``'s ``population``), measured when asked."""
    config = problem.config
    if config.population != "auto" and (config.strategy != "auto" or config.population == 1):
        size = int(config.population)
        strategy = "sequential" if config.strategy == "auto" else config.strategy
        if size > 1:  # refuse a population that cannot fit before any trial runs
            population.max_population(problem.quant_model, problem.dataset.input_shape, batch_size=config.batch_size,
                                      mesh=population.population_mesh(), minimum=size)
        return {"population": size, "strategy": strategy, "measured": False}
    steps = config.finetune_epochs * (len(problem.dataset.train) // config.batch_size)
    choice = population.choose(
        problem.quant_model, problem.dataset, batch_size=config.batch_size, steps_per_configuration=steps,
        populations=None if config.population == "auto" else [int(config.population)],
        strategies=population.STRATEGIES if config.strategy == "auto" else [config.strategy], max_size=config.trials)
    record = {**choice.to_dict(), "measured": True}
    if config.population != "auto":  # the size is the user's: only the strategy is chosen (sequential: in turn)
        fastest = max(choice.measurements, key=lambda m: m["configurations_per_hour"])
        record.update(population=int(config.population), strategy=fastest["strategy"])
    return record


def _uniform_baseline(problem: Problem, path: str, trial_key, final_key) -> None:
    """Every layer at one bit-width, widths 1, for each of ``baseline_bits``: the same short fine-tune as a trial
    (validation accuracy, comparable with the trials) and the same final training as the best configuration (test
    accuracy, comparable with the result). Appended to ``baseline.jsonl``; bit-widths already logged are skipped."""
    log = store.TrialLog(path)
    done = {record["uniform_bits"] for record in log.records()}
    length = len(problem.table)
    for index, uniform_bits in enumerate(problem.config.baseline_bits):
        if uniform_bits in done:
            continue
        bits, widths = np.full(length, uniform_bits), np.ones(length, np.float32)
        # keys disjoint from the trials' (which use indices below `trials`)
        record = problem.evaluate(jax.random.fold_in(trial_key, 1_000_000 + index), bits, widths)
        test_accuracy = None
        if record["status"] == "ok":
            variables, losses = problem.finetune(jax.random.fold_in(final_key, 1_000_000 + index), bits, widths,
                                                 epochs=problem.config.final_epochs,
                                                 learning_rate=problem.config.final_learning_rate)
            if np.all(np.isfinite(losses)):
                test_accuracy = train.evaluate(problem.quant_model, variables, problem.dataset.test, bits=bits,
                                               widths=widths)
        log.append({"trial": index, "phase": "uniform", "uniform_bits": int(uniform_bits),
                    "config": {"bits": int(uniform_bits), "width": 1.0}, **record, "test_accuracy": test_accuracy})


def _result(out_dir: str) -> SearchResult:
    meta = store.read_json(os.path.join(out_dir, FILES["search"]))
    return SearchResult(
        out_dir=out_dir,
        best=store.read_json(os.path.join(out_dir, FILES["best"])),
        trials=store.read_jsonl(os.path.join(out_dir, FILES["trials"])),
        baseline=store.read_jsonl(os.path.join(out_dir, FILES["baseline"])),
        timings=meta.get("timings", {}),
    )
