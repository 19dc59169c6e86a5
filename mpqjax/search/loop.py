"""Algorithm 1 of the paper end to end: float model -> Hessian sensitivity -> pruned space -> k-means TPE over
quantisation-aware fine-tunes -> final training of the best configuration -> export and report.

`run` is the whole job (what ``mpqjax search`` calls); its phases are the functions below, its steps are shared with
the other commands (`mpqjax.search.steps`), and everything it writes goes through the run folder
(`mpqjax.store.run_folder.RunFolder`). Every finished population of trials is logged before the optimiser state is
saved, both atomically, so ``run(..., resume=True)`` continues a killed search: the logged trials are kept, the
optimiser state is restored (or completed from the log), and since every random draw is keyed by the trial index
(``fold_in(key, trial)``), the resumed search ends with exactly the result of an uninterrupted one.

Example:
    >>> result = run(SearchConfig(model="digits_cnn", dataset="digits", trials=40), "runs/digits")
    >>> result.best["size_reduction_vs_fip16"], result.best["test_accuracy"]
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import os
import time
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from mpqjax import cost as cost_model
from mpqjax import data, sensitivity, store
from mpqjax.nn import models
from mpqjax.nn.config import MAX_BITS
from mpqjax.optim import tpe
from mpqjax.search import objective, steps
from mpqjax.search.config import SearchConfig
from mpqjax.search.problem import COST_FIELDS, Problem, check_attainable, config_limits, full_space
from mpqjax.store import run_folder
from mpqjax.store.run_folder import FILES, PHASES
from mpqjax.training import devices, population, strategy, train

# FILES is the run folder's (mpqjax.store.run_folder), re-exported for the search's users.
__all__ = ["FILES", "SearchResult", "choose_population", "default_out_dir", "run"]

Progress = Callable[[dict], None]


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


def _phase(notify: Progress, phase: str, message: str) -> None:
    notify({"event": "phase", "phase": phase, "message": message})


def _result(out_dir: str) -> SearchResult:
    written = run_folder.load_run(out_dir)
    return SearchResult(out_dir=written.out_dir, best=written.best_config, trials=written.trials,
                        baseline=written.baseline, timings=written.search.get("timings", {}))


def run(config: SearchConfig | None = None, out_dir: str | None = None, *, resume: bool = False,
        progress: Progress | None = None, cache_dir: str | None = None) -> SearchResult:
    """Run a whole search (Algorithm 1) and write its output folder.

    Args:
        config: the settings (default: the embedded digits job, `SearchConfig()`).
        out_dir: output folder (default: a new folder per run, `default_out_dir`). It must be new or empty,
            unless ``resume``.
        resume: continue the search in ``out_dir`` (same settings; ``trials`` may grow). A finished search is
            not run again: its result is returned and its report regenerated.
        progress: called with a dict after every phase and trial (``event``: ``"phase"``, ``"trial"``,
            ``"done"``; a trial event has ``trial``, ``trials``, ``record``, ``best``, ``elapsed``, ``eta``).
        cache_dir: the float-model cache (default `mpqjax.search.steps.default_cache_dir`).

    Returns:
        A `SearchResult`.

    Raises:
        ValueError: bad settings, an unknown model, dataset or target, unreadable checkpoint, limits that no
            configuration meets, an output folder holding another search. Raised before anything is written,
            except the limits check after pruning (it needs the trained model).
    """
    from mpqjax import report  # the top of the house: imported here so the rest stays light

    config = SearchConfig() if config is None else config
    config.validate()
    notify = progress or (lambda event: None)
    out_dir = os.fspath(out_dir) if out_dir is not None else default_out_dir(config)
    previous = run_folder.check_folder(out_dir, config.to_dict(), resume=resume)
    if run_folder.is_finished(out_dir, previous, config.trials):
        report.write(out_dir)
        return _result(out_dir)
    clock = _Clock(previous.get("timings") if previous else None)

    setup = _prepare(config)
    float_net = _read_float_model(config, setup.dataset, out_dir, resume, previous, clock)
    folder = run_folder.RunFolder.create(out_dir, _search_fields(config, setup, clock))
    float_net = _float_phase(config, folder, setup.dataset, float_net, clock, notify, cache_dir)
    layer_space = _space_phase(config, folder, setup, float_net, clock, notify, resume)
    quant_model = steps.quantized_model(config, setup.dataset.num_classes)
    problem = Problem(config, setup.dataset, setup.table, setup.target, setup.limits, float_net.model,
                      float_net.variables, quant_model, layer_space)
    records = _trials_phase(problem, folder, previous, clock, notify)
    best_config = _final_phase(problem, folder, float_net, records, clock, notify)
    if config.baseline:
        _phase(notify, "baseline", "training the uniform-precision baseline")
        with clock("baseline"):
            _uniform_baseline(problem, folder.baseline_log())
    with clock("io"):
        folder.finish(best_config, timings=clock.to_dict())
        report.write(out_dir)
    notify({"event": "done", "best": best_config, "out_dir": out_dir, "timings": clock.to_dict()})
    return _result(out_dir)


# -- before anything is written --------------------------------------------------------------------------------


class _Setup(NamedTuple):
    dataset: data.Dataset
    table: models.LayerTable
    target: Any
    limits: objective.Limits
    full_space: sensitivity.LayerSpace


def _prepare(config: SearchConfig) -> _Setup:
    """Data, layer table, target, limits and the unpruned space; raises ValueError when no configuration can meet
    the limits or the space is smaller than the trials."""
    dataset = steps.load_dataset(config)
    table = models.layer_table(config.model, input_shape=dataset.input_shape)
    target = cost_model.load_target(config.target)
    limits = config_limits(config, table, target)
    space = full_space(config, table)
    check_attainable(space, target, limits)
    if space.space.log10_size() < math.log10(config.trials):
        raise ValueError(f"the space has only {round(10 ** space.space.log10_size())} configurations, fewer "
                         f"than trials={config.trials}")
    return _Setup(dataset, table, target, limits, space)


def _read_float_model(config: SearchConfig, dataset: data.Dataset, out_dir: str, resume: bool,
                      previous: dict | None, clock: _Clock) -> steps.FloatModel | None:
    """The float model from a checkpoint (a resumed search's own copy first), read before the folder is touched so
    that an unreadable one fails first; None when it is to be trained."""
    checkpoint = config.float_checkpoint
    if resume and os.path.isfile(run_folder.file_path(out_dir, "float")):
        checkpoint = run_folder.file_path(out_dir, "float")
    if checkpoint is None:
        return None
    with clock("float_model"):
        float_net = steps.float_model_of(config, dataset, checkpoint=checkpoint)
    if previous is not None:
        float_net = float_net._replace(source=previous.get("float", {}).get("source", float_net.source))
    return float_net


def _search_fields(config: SearchConfig, setup: _Setup, clock: _Clock) -> dict:
    """``search.json``'s fields known before the float model: settings, target, limits, layers, reference sizes."""
    table = setup.table
    fip16 = cost_model.cost(table, np.full(len(table), MAX_BITS), np.ones(len(table)), setup.target)
    fp32 = float(fip16.size_bytes) * 2
    return {
        "model": config.model, "dataset": config.dataset, "seed": config.seed, "settings": config.to_dict(),
        "target": cost_model.target_to_dict(setup.target), "limits": setup.limits.to_dict(),
        "layers": [{"name": layer.name, "kind": layer.kind, "weights": layer.weights, "macs": layer.macs}
                   for layer in table],
        "fip16_size_bytes": cost_model.fip16_size_bytes(table), "fp32_size_bytes": fp32,
        "timings": clock.to_dict(),
    }


# -- the float model and the space -------------------------------------------------------------------------------


def _float_phase(config: SearchConfig, folder: run_folder.RunFolder, dataset: data.Dataset,
                 float_net: steps.FloatModel | None, clock: _Clock, notify: Progress,
                 cache_dir: str | None) -> steps.FloatModel:
    """Train the float model when no checkpoint gave it, keep a copy in the folder, record its accuracies."""
    if float_net is None:
        _phase(notify, "float_model", f"training the float {config.model}")
        with clock("float_model"):
            float_net = steps.float_model_of(config, dataset, cache_dir=cache_dir)
    with clock("io"):
        folder.save_float(float_net.variables)
    with clock("float_model"):
        folder.update(float={"validation_accuracy": train.evaluate(float_net.model, float_net.variables,
                                                                   dataset.validation),
                             "test_accuracy": train.evaluate(float_net.model, float_net.variables, dataset.test),
                             "source": float_net.source})
    return float_net


def _space_phase(config: SearchConfig, folder: run_folder.RunFolder, setup: _Setup, float_net: steps.FloatModel,
                 clock: _Clock, notify: Progress, resume: bool) -> sensitivity.LayerSpace:
    """The search space: pruned by Hessian sensitivity (recorded in ``hessian.json``, reread on resume), or full."""
    if not config.prune:
        size = setup.full_space.space.log10_size()
        folder.update(space=_space_fields(setup.full_space, False, size, size))
        return setup.full_space
    summary = folder.read_hessian() if resume else None
    if summary is not None:
        layer_space = steps.layer_space_from_summary(setup.table, summary, config.widths)
    else:
        _phase(notify, "hessian", "estimating per-layer Hessian traces")
        with clock("hessian"):
            pruned, summary = steps.sensitivity_of(config, float_net, setup.dataset)
        layer_space = pruned.layer_space
        with clock("io"):
            folder.write_hessian(summary)
    check_attainable(layer_space, setup.target, setup.limits, " after Hessian pruning")
    folder.update(space=_space_fields(layer_space, True, summary["log10_size_before"], summary["log10_size_after"]))
    return layer_space


def _space_fields(layer_space: sensitivity.LayerSpace, pruned: bool, size_before: float, size_after: float) -> dict:
    return {"dimensions": [{"name": d.name, "choices": list(d.choices)} for d in layer_space.space.dimensions],
            "pruned": pruned, "log10_size_before": size_before, "log10_size_after": size_after}


# -- the trials ----------------------------------------------------------------------------------------------------


def choose_population(config: SearchConfig, quant_model: models.QModel, dataset: data.Dataset) -> dict:
    """The population size and strategy of a search (``search.json``'s ``population``), measured when asked.

    An explicit size with an explicit strategy (or size 1) is taken as is, after checking that it fits in memory;
    otherwise `mpqjax.training.strategy.choose` measures the candidates (only the strategy when the size is given).

    Returns:
        ``{"population", "strategy", "measured"}``, plus the measurements when measured.
    """
    if config.population != "auto" and (config.strategy != "auto" or config.population == 1):
        size = int(config.population)
        chosen = "sequential" if config.strategy == "auto" else config.strategy
        if size > 1:  # refuse a population that cannot fit before any trial runs
            devices.max_population(quant_model, dataset.input_shape, batch_size=config.batch_size,
                                   mesh=devices.population_mesh(), minimum=size)
        return {"population": size, "strategy": chosen, "measured": False}
    steps_per_configuration = config.finetune_epochs * (len(dataset.train) // config.batch_size)
    choice = strategy.choose(
        quant_model, dataset, batch_size=config.batch_size, steps_per_configuration=steps_per_configuration,
        populations=None if config.population == "auto" else [int(config.population)],
        strategies=population.STRATEGIES if config.strategy == "auto" else [config.strategy], max_size=config.trials)
    record = {**choice.to_dict(), "measured": True}
    if config.population != "auto":  # the size is the user's: only the strategy is chosen (sequential: in turn)
        fastest = max(choice.measurements, key=lambda m: m["configurations_per_hour"])
        record.update(population=int(config.population), strategy=fastest["strategy"])
    return record


def _trials_phase(problem: Problem, folder: run_folder.RunFolder, previous: dict | None, clock: _Clock,
                  notify: Progress) -> list[dict]:
    """Set up the optimiser (restored on resume) and run the trials up to ``config.trials``; returns every record."""
    config = problem.config
    opt = tpe.KMeansTPE(problem.layer_space.space, maximize=True, n_initial=min(config.n_initial, config.trials),
                        capacity=config.trials, feasible=None if config.soft_limits else problem.feasible_fn())
    records = folder.trials()
    if previous is not None and "population" in previous:  # a resumed search keeps its measured choice
        choice = previous["population"]
    else:
        with clock("evaluations"):
            choice = choose_population(config, problem.quant_model, problem.dataset)
    folder.update(population=choice, devices={"platform": jax.default_backend(), "count": jax.device_count(),
                                              "processes": jax.process_count()})
    if choice["population"] > 1 or choice["measured"]:
        measured = ", ".join(f"{m['strategy']} x{m['population']}: {m['configurations_per_hour']:.0f}/h"
                             for m in choice.get("measurements", []))
        _phase(notify, "population", f"population {choice['population']}, strategy {choice['strategy']}"
               + (f" (measured {measured})" if measured else ""))
    with clock("optimiser"):
        state = folder.restore_state(opt, records, problem.layer_space.space, choice["population"])
    with clock("io"):
        folder.save(timings=clock.to_dict())
    _run_trials(problem, folder, opt, state, records, choice, clock, notify)
    return records


def _run_trials(problem: Problem, folder: run_folder.RunFolder, opt: tpe.KMeansTPE, state: tpe.TPEState,
                records: list[dict], choice: dict, clock: _Clock, notify: Progress) -> None:
    """Ask a population, evaluate it, tell it, log it; until ``config.trials`` records (appended to ``records``)."""
    config, keys = problem.config, steps.search_keys(problem.config.seed)
    size, session_start, session_trials = choice["population"], time.perf_counter(), 0
    mesh = devices.population_mesh() if size > 1 else None
    while len(records) < config.trials:
        first = len(records)
        count = min(size, config.trials - first)  # the last population may be smaller
        with clock("optimiser"):
            encoded, _ = opt.ask(jax.random.fold_in(keys.ask, first), state, n=size)
            encoded = np.asarray(encoded)[:count]
        with clock("evaluations"):
            new_records = _evaluate(problem, jax.random.fold_in(keys.trial, first), first, opt.n_initial, encoded,
                                    choice["strategy"], mesh)
        with clock("optimiser"):
            values = [math.nan if record["objective"] is None else record["objective"] for record in new_records]
            state = opt.tell(state, encoded, jnp.asarray(values, jnp.float32))
            jax.block_until_ready(state)
        with clock("io"):
            folder.append_trials(new_records, state, timings=clock.to_dict())  # one write: a population is whole
        records.extend(store.to_json_value(record) for record in new_records)
        session_trials += count
        rate = (time.perf_counter() - session_start) / session_trials
        for record in new_records:
            notify({"event": "trial", "trial": record["trial"] + 1, "trials": config.trials, "record": record,
                    "best": run_folder.best_trial(records[: record["trial"] + 1]), "elapsed": clock.to_dict()["total"],
                    "eta": rate * (config.trials - first - count)})


def _evaluate(problem: Problem, key, first: int, n_initial: int, encoded: np.ndarray, strategy_name: str,
              mesh) -> list[dict]:
    """The trial records of the proposals ``encoded`` (one configuration per row), numbered from ``first``.

    ``mesh`` is the population's devices, or None for a search of one configuration at a time.
    """
    layer_space = problem.layer_space
    points = [layer_space.space.decode(row) for row in encoded]
    arrays = [layer_space.to_arrays(point) for point in points]
    if mesh is None:
        fields = [problem.evaluate(key, *arrays[0])]
    else:
        fields = problem.evaluate_population(key, np.stack([b for b, _ in arrays]), np.stack([w for _, w in arrays]),
                                             strategy=strategy_name, mesh=mesh)
    return [{"trial": first + index, "phase": "random" if first + index < n_initial else "model", "config": point,
             **record} for index, (point, record) in enumerate(zip(points, fields, strict=True))]


# -- the result ----------------------------------------------------------------------------------------------------


def _final_phase(problem: Problem, folder: run_folder.RunFolder, float_net: steps.FloatModel, records: list[dict],
                 clock: _Clock, notify: Progress) -> dict:
    """Train the best trial's configuration for the final epochs and export it; returns ``best_config.json``."""
    config = problem.config
    best = run_folder.best_trial(records)
    if best is None:
        raise ValueError(f"all {len(records)} trials failed (training diverged); lower the fine-tune learning rate")
    _phase(notify, "final_training", f"training the best configuration (trial {best['trial']}) for "
           f"{config.final_epochs} epochs")
    bits, widths = np.asarray(best["bits"]), np.asarray(best["widths"], np.float32)
    with clock("final_training"):
        trained = steps.final_training(config, problem.dataset, float_net, problem.quant_model, bits, widths)
    best_config = {
        "trial": best["trial"], "config": best["config"], "objective": best["objective"],
        "validation_accuracy": best["validation_accuracy"], "final_validation_accuracy": trained.validation_accuracy,
        "test_accuracy": trained.test_accuracy, "float_test_accuracy": folder.meta["float"]["test_accuracy"],
        **{name: best[name] for name in COST_FIELDS},
        "layers": problem.layer_rows(bits, widths),
        "export": FILES["model"],
    }
    with clock("io"):
        steps.export_trained(folder.path("model"), config, problem.dataset, problem.quant_model, trained, bits,
                             widths)
    return best_config


def _uniform_baseline(problem: Problem, log: store.TrialLog) -> None:
    """Every layer at one bit-width, widths 1, for each of ``baseline_bits``: the same short fine-tune as a trial
    (validation accuracy, comparable with the trials) and the same final training as the best configuration (test
    accuracy, comparable with the result). Appended to ``log``; bit-widths already logged are skipped."""
    config, keys = problem.config, steps.search_keys(problem.config.seed)
    done = {record["uniform_bits"] for record in log.records()}
    length = len(problem.table)
    for index, uniform_bits in enumerate(config.baseline_bits):
        if uniform_bits in done:
            continue
        bits, widths = np.full(length, uniform_bits), np.ones(length, np.float32)
        # keys disjoint from the trials' (which use indices below `trials`)
        record = problem.evaluate(jax.random.fold_in(keys.trial, 1_000_000 + index), bits, widths)
        test_accuracy = None
        if record["status"] == "ok":
            variables, losses = problem.finetune(jax.random.fold_in(keys.final, 1_000_000 + index), bits, widths,
                                                 epochs=config.final_epochs, learning_rate=config.final_learning_rate)
            if np.all(np.isfinite(losses)):
                test_accuracy = train.evaluate(problem.quant_model, variables, problem.dataset.test, bits=bits,
                                               widths=widths)
        log.append({"trial": index, "phase": "uniform", "uniform_bits": int(uniform_bits),
                    "config": {"bits": int(uniform_bits), "width": 1.0}, **record, "test_accuracy": test_accuracy})
