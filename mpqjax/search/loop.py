"""Algorithm 1 of the paper end to end: float model -> Hessian sensitivity -> pruned space -> k-means TPE over
quantisation-aware fine-tunes -> final training of the best configuration -> export and report.

`run` is the whole job (what ``mpqjax search`` calls); its phases are the functions below and the trials
(`mpqjax.search.trials`), its steps are shared with the other commands (`mpqjax.search.steps`), and everything it
writes goes through the run folder (`mpqjax.store.run_folder.RunFolder`), locked for the run's life. Every check that
can fail runs before the first write. Every finished population of trials is logged before the optimiser state is
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
import platform
import sys
import time
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import numpy as np

from mpqjax import cost as cost_model
from mpqjax import data, sensitivity, store
from mpqjax.nn import models
from mpqjax.nn.config import MAX_BITS
from mpqjax.search import inputs, methods, objective, peers, steps, trials
from mpqjax.search.config import SearchConfig
from mpqjax.search.problem import COST_FIELDS, Problem, check_attainable, config_limits, full_space
from mpqjax.search.trials import choose_population
from mpqjax.store import run_folder
from mpqjax.store.run_folder import FILES, PHASES
from mpqjax.training import devices, train

# FILES is the run folder's (mpqjax.store.run_folder) and choose_population the trials', re-exported for the
# search's users.
__all__ = ["FILES", "SearchResult", "choose_population", "default_out_dir", "run"]

Progress = Callable[[dict], None]


@dataclasses.dataclass(frozen=True)
class SearchResult:
    """What `run` returns: the output folder, the best configuration (``best_config.json``), every trial record,
    the uniform baseline's records (empty without ``baseline``), the time split in seconds and the search cost
    (``search.json``'s ``search_cost``: the method's seconds and fine-tunes)."""

    out_dir: str
    best: dict
    trials: list
    baseline: list
    timings: dict
    search_cost: dict


def default_out_dir(config: SearchConfig) -> str:
    """A new folder per run: ``runs/search/<model>-<dataset>-<date>-<time>``."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    names = [name.rpartition(":")[2].replace(".", "-") for name in (config.model, config.dataset)]
    base = os.path.join("runs", "search", f"{names[0]}-{names[1]}-{stamp}")
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


def _start_event(config: SearchConfig, folder: run_folder.RunFolder, previous: dict | None,
                 float_net: steps.FloatModel | None) -> dict:
    """The first event once the folder is locked: where the search writes, or where a resumed one goes on from."""
    if previous is None:
        what = f"{config.trials} trials" if methods.METHODS[config.method].iterative else "its configurations"
        named = "" if config.method == methods.DEFAULT_METHOD else f"{config.method} "
        message = f"{named}search of {what}, output folder {folder.out_dir}"
    else:
        logged = len(folder.trials())
        where = f"after trial {logged - 1}" if logged else "before its first trial"
        origin = float_net.source if float_net is not None else "to be trained"
        message = (f"resuming the search in {folder.out_dir} {where} ({logged} of {config.trials} trials logged; "
                   f"float model: {origin})")
    return {"event": "start", "out_dir": folder.out_dir, "resume": previous is not None, "message": message}


def _result(out_dir: str) -> SearchResult:
    written = run_folder.load_run(out_dir)
    return SearchResult(out_dir=written.out_dir, best=written.best_config, trials=written.trials,
                        baseline=written.baseline, timings=written.search.get("timings", {}),
                        search_cost=written.search.get("search_cost", {}))


def run(config: SearchConfig | None = None, out_dir: str | None = None, *, resume: bool = False,
        progress: Progress | None = None, cache_dir: str | None = None, model=None, variables=None,
        dataset: data.Dataset | None = None) -> SearchResult:
    """Run a whole search (Algorithm 1) and write its output folder.

    Args:
        config: the settings (default: the embedded digits job, `SearchConfig()`).
        out_dir: output folder (default: a new folder per run, `default_out_dir`). It must be new or empty,
            unless ``resume``.
        resume: continue the search in ``out_dir`` (same settings; ``trials`` may grow). A finished search is
            not run again: its result is returned and its report regenerated.
        progress: called with a dict at the start, after every phase and trial, and at the end (``event``:
            ``"start"``, ``"phase"``, ``"trial"``, ``"done"``). The start and phase events have a ``message``; a
            trial event has ``trial`` (its number, from 0, as in ``trials.jsonl``), ``done`` (trials logged),
            ``trials``, ``record``, ``best``, ``elapsed`` and ``eta`` (seconds left, None until this session has
            timed a population after its first, which compiles).
        cache_dir: the float-model cache (default `mpqjax.search.steps.default_cache_dir`).
        model: your own model instead of ``config.model``: a ``flax.linen`` or ``flax.nnx`` module, or one wrapped
            with rules (`mpqjax.nn.models.wrap`). Recorded as ``python:<name>``: resume it from Python, passing
            it again.
        variables: its trained float variables (a linen ``{"params", "batch_stats"}`` dict or an ``nnx.State``);
            None trains the float model first, from the model's own initialisation.
        dataset: a `mpqjax.data.Dataset` instead of ``config.dataset`` (e.g. `mpqjax.data.from_arrays`).

    Returns:
        A `SearchResult`.

    Raises:
        ValueError: bad settings, an unknown model, dataset or target, unreadable checkpoint, limits that no
            configuration meets, an output folder used or held by another search, a damaged folder to resume.
            Raised before anything is written, except the limits check after pruning (it needs the trained
            model): a new run that fails before its first trial removes what it wrote, a resumed one changes
            nothing before every check passed. The folder is locked while the search runs.
    """
    config = SearchConfig() if config is None else config
    config.validate()
    if resume and out_dir is not None:
        inputs.check_resumable(out_dir, model=model, dataset=dataset)
    # a model without a dataset object learns its input shape from the named dataset, loaded once for the search
    loaded = steps.load_dataset(config) if model is not None and dataset is None else None
    config, model = inputs.prepare_config(config, model=model, dataset=dataset,
                                          input_shape=None if loaded is None else loaded.input_shape)
    if not methods.METHODS[config.method].searches_widths:  # validated: the user gave no other widths
        config = dataclasses.replace(config, widths=(1.0,))
    with inputs.given(model=model, variables=variables, dataset=dataset):
        return _run(config, out_dir, resume=resume, progress=progress, cache_dir=cache_dir, loaded=loaded)


def _run(config: SearchConfig, out_dir: str | None, *, resume: bool, progress: Progress | None,
         cache_dir: str | None, loaded: data.Dataset | None) -> SearchResult:
    """`run` once its inputs are named (``loaded``: the named dataset, when `run` already loaded it)."""
    from mpqjax import report  # the top of the house: imported here so the rest stays light

    config.validate()
    notify = progress or (lambda event: None)
    out_dir = os.fspath(out_dir) if out_dir is not None else default_out_dir(config)
    previous = run_folder.check_folder(out_dir, config.to_dict(), resume=resume)
    if run_folder.is_finished(out_dir, previous, config.trials):
        with store.FolderLock.acquire(out_dir):
            notify({"event": "start", "out_dir": out_dir, "message": f"{out_dir} holds the finished search of "
                    f"{config.trials} trials: its report is written again"})
            report.write(out_dir)
        return _result(out_dir)
    clock = _Clock(previous.get("timings") if previous else None)

    # every check that reads the folder or the inputs runs before the first write
    setup = _prepare(config, loaded)
    float_net = _read_float_model(config, setup.dataset, out_dir, resume, previous, clock)
    recorded = _recorded_space(config, setup, out_dir) if resume else None
    logged = len(store.read_jsonl(run_folder.file_path(out_dir, "trials"))) if previous is not None else 0
    fields = _search_fields(config, setup, clock, previous, logged)
    with run_folder.RunFolder.open(out_dir, config.to_dict(), fields, resume=resume) as folder:
        notify(_start_event(config, folder, previous, float_net))
        best_config = _search(config, folder, setup, float_net, recorded, clock, notify, cache_dir)
        with clock("io"):
            folder.finish(best_config, timings=clock.to_dict())
            report.write(out_dir)
    notify({"event": "done", "best": best_config, "out_dir": out_dir, "timings": clock.to_dict()})
    return _result(out_dir)


def _search(config: SearchConfig, folder: run_folder.RunFolder, setup: _Setup, float_net: steps.FloatModel | None,
            recorded: tuple[sensitivity.LayerSpace, dict] | None, clock: _Clock, notify: Progress,
            cache_dir: str | None) -> dict:
    """The phases that write the folder: float model, space, trials, final training, baseline; returns
    ``best_config.json``."""
    float_net = _float_phase(config, folder, setup.dataset, float_net, clock, notify, cache_dir)
    layer_space, summary = _space_phase(config, folder, setup, float_net, clock, notify, recorded)
    quant_model = steps.quantized_model(config, setup.dataset.num_classes)
    # the dataset and the float weights go to the device once: every trial reads them there
    problem = Problem(config, setup.dataset.on_device(), setup.table, setup.target, setup.limits, float_net.model,
                      jax.device_put(float_net.variables), quant_model, layer_space)
    if methods.METHODS[config.method].iterative:
        records = trials.run_trials(problem, folder, clock, notify)
    else:
        records = trials.run_one_shot(problem, folder, summary, clock, notify)
    folder.update(search_cost=trials.search_cost(config, clock, records))
    best_config = _final_phase(problem, folder, float_net, records, clock, notify)
    if config.baseline:
        _phase(notify, "baseline", "training the uniform-precision baseline")
        with clock("baseline"):
            _uniform_baseline(problem, folder.baseline_log())
    return best_config


# -- before anything is written --------------------------------------------------------------------------------


class _Setup(NamedTuple):
    dataset: data.Dataset
    table: models.LayerTable
    target: Any
    limits: objective.Limits
    full_space: sensitivity.LayerSpace


def _prepare(config: SearchConfig, loaded: data.Dataset | None = None) -> _Setup:
    """Data, layer table, target, limits and the unpruned space; raises ValueError when no configuration can meet
    the limits or the space is smaller than the trials."""
    dataset = loaded if loaded is not None else steps.load_dataset(config)
    devices.check_resident(dataset)  # the trials hold the splits on the device
    table = models.layer_table(inputs.model_named(config.model, input_shape=dataset.input_shape),
                               input_shape=dataset.input_shape)
    target = cost_model.load_target(config.target)
    limits = config_limits(config, table, target)
    space = full_space(config, table)  # config_limits already refused limits no configuration of it can meet
    if methods.METHODS[config.method].iterative and space.space.log10_size() < math.log10(config.trials):
        raise ValueError(f"the space has only {round(10 ** space.space.log10_size())} configurations, fewer "
                         f"than trials={config.trials}")
    if config.method == "uniform":  # before any training: a uniform bit-width must meet the limits
        peers.uniform_proposals(config, table, target, limits, space)
    return _Setup(dataset, table, target, limits, space)


def _read_float_model(config: SearchConfig, dataset: data.Dataset, out_dir: str, resume: bool,
                      previous: dict | None, clock: _Clock) -> steps.FloatModel | None:
    """The float model from a checkpoint (a resumed search's own copy first) or the variables given with the model,
    read before the folder is touched so that an unreadable or unfitting one fails first; None when it is to be
    trained."""
    checkpoint = config.float_checkpoint
    if resume and os.path.isfile(run_folder.file_path(out_dir, "float")):
        checkpoint = run_folder.file_path(out_dir, "float")
    if checkpoint is None and not inputs.has_given_variables():
        return None
    with clock("float_model"):
        float_net = steps.float_model_of(config, dataset, checkpoint=checkpoint)
    if previous is not None:
        float_net = float_net._replace(source=previous.get("float", {}).get("source", float_net.source))
    return float_net


def _recorded_space(config: SearchConfig, setup: _Setup, out_dir: str) -> tuple[sensitivity.LayerSpace, dict] | None:
    """``(pruned space, summary)`` that a resumed search recorded in ``hessian.json``, checked against the limits;
    None when there is none to read (not pruned, or killed before the Hessian)."""
    path = run_folder.file_path(out_dir, "hessian")
    if not methods.runs_hessian(config) or not os.path.isfile(path):
        return None
    summary = store.read_json(path)
    try:
        layer_space = steps.layer_space_from_summary(setup.table, summary, config.widths)
        for size in ("log10_size_before", "log10_size_after"):  # search.json's space section needs them
            float(summary[size])
    except (KeyError, TypeError, ValueError) as error:
        raise ValueError(f"{path!r} is not the sensitivity analysis of this search ({type(error).__name__}: "
                         f"{error}); remove it to compute it again") from None
    if methods.prunes(config):
        check_attainable(layer_space, setup.target, setup.limits, " after Hessian pruning")
    return layer_space, summary


def _versions() -> dict[str, str]:
    """The versions of mpqjax and the libraries that decide its numbers."""
    import flax
    import jaxlib

    import mpqjax

    return {"mpqjax": mpqjax.__version__, "jax": jax.__version__, "jaxlib": jaxlib.__version__,
            "flax": flax.__version__, "python": platform.python_version()}


def _search_fields(config: SearchConfig, setup: _Setup, clock: _Clock, previous: dict | None, logged: int) -> dict:
    """``search.json``'s fields known before the float model: settings, target, limits, layers, reference sizes,
    and the session: a new run's start, command line (``sys.argv``) and versions; a resumed run appends its own,
    with the trials ``logged`` before it, to ``resumed``."""
    table = setup.table
    fip16 = cost_model.cost(table, np.full(len(table), MAX_BITS), np.ones(len(table)), setup.target)
    fp32 = float(fip16.size_bytes) * 2
    session = {"started": time.strftime("%Y-%m-%d %H:%M:%S"), "command": list(sys.argv), "versions": _versions()}
    if previous is not None:
        session = {"resumed": [*previous.get("resumed", []), {**session, "trials_logged": logged}]}
    return {
        "model": config.model, "dataset": config.dataset, "seed": config.seed, "settings": config.to_dict(),
        "target": cost_model.target_to_dict(setup.target), "limits": setup.limits.to_dict(),
        "layers": [{"name": layer.name, "kind": layer.kind, "weights": layer.weights, "macs": layer.macs}
                   for layer in table],
        "fip16_size_bytes": cost_model.fip16_size_bytes(table), "fp32_size_bytes": fp32,
        "timings": clock.to_dict(),
        # how the best trial is chosen (its resolution), readable by a report while the search still runs
        "selection": store.selection.selection_settings(len(setup.dataset.validation)),
        **session,
    }


# -- the float model and the space -------------------------------------------------------------------------------


def _float_phase(config: SearchConfig, folder: run_folder.RunFolder, dataset: data.Dataset,
                 float_net: steps.FloatModel | None, clock: _Clock, notify: Progress,
                 cache_dir: str | None) -> steps.FloatModel:
    """Train the float model when no checkpoint gave it, keep a copy in the folder, record its accuracies."""
    if float_net is None:
        _phase(notify, "float_model", f"training the float {config.model} ({config.float_epochs} epochs; cached "
               f"for the next search)")
        with clock("float_model"):
            float_net = steps.float_model_of(config, dataset, cache_dir=cache_dir)
    with clock("io"):  # the origin first: a copy in the folder never loses where it came from
        folder.save(float={**folder.meta.get("float", {}), "source": float_net.source})
        folder.save_float(float_net.variables)
    with clock("float_model"):
        folder.save(float={"validation_accuracy": train.evaluate(float_net.model, float_net.variables,
                                                                 dataset.validation),
                           "test_accuracy": train.evaluate(float_net.model, float_net.variables, dataset.test),
                           "source": float_net.source})
    return float_net


def _space_phase(config: SearchConfig, folder: run_folder.RunFolder, setup: _Setup, float_net: steps.FloatModel,
                 clock: _Clock, notify: Progress, recorded: tuple[sensitivity.LayerSpace, dict] | None
                 ) -> tuple[sensitivity.LayerSpace, dict | None]:
    """The search space and the Hessian analysis (``hessian.json``; None when the search has none): the space
    pruned by Hessian sensitivity for an iterative method with ``prune`` (a resumed search passes the ``recorded``
    one, `_recorded_space`), else the full space."""
    if not methods.runs_hessian(config):
        return _full_space(folder, setup), None
    if recorded is not None:
        layer_space, summary = recorded
    else:
        _phase(notify, "hessian", f"estimating per-layer Hessian traces (up to {config.hessian_max_probes} probes)")
        with clock("hessian"):
            pruned, summary = steps.sensitivity_of(config, float_net, setup.dataset)
        layer_space = pruned.layer_space
        if methods.prunes(config):
            check_attainable(layer_space, setup.target, setup.limits, " after Hessian pruning")  # before writing
        with clock("io"):
            folder.write_hessian(summary)
    if not methods.prunes(config):
        return _full_space(folder, setup), summary
    folder.update(space=_space_fields(layer_space, True, summary["log10_size_before"], summary["log10_size_after"]))
    return layer_space, summary


def _full_space(folder: run_folder.RunFolder, setup: _Setup) -> sensitivity.LayerSpace:
    """The unpruned space, recorded in ``search.json``."""
    size = setup.full_space.space.log10_size()
    folder.update(space=_space_fields(setup.full_space, False, size, size))
    return setup.full_space


def _space_fields(layer_space: sensitivity.LayerSpace, pruned: bool, size_before: float, size_after: float) -> dict:
    return {"dimensions": [{"name": d.name, "choices": list(d.choices)} for d in layer_space.space.dimensions],
            "pruned": pruned, "log10_size_before": size_before, "log10_size_after": size_after}


# -- the result ----------------------------------------------------------------------------------------------------


def _final_phase(problem: Problem, folder: run_folder.RunFolder, float_net: steps.FloatModel, records: list[dict],
                 clock: _Clock, notify: Progress) -> dict:
    """Train the best trial's configuration for the final epochs and export it; returns ``best_config.json``."""
    config = problem.config
    selection = store.selection.selection_settings(len(problem.dataset.validation))
    best = run_folder.best_trial(records, resolution=selection["resolution"])
    if best is None:
        raise ValueError(f"all {len(records)} trials failed (training diverged); lower the fine-tune learning rate")
    _phase(notify, "final_training", f"training the best configuration (trial {best['trial']}) for "
           f"{config.final_epochs} epochs")
    bits, widths = np.asarray(best["bits"]), np.asarray(best["widths"], np.float32)
    channel_bits = best.get("channel_bits")  # a channel-wise configuration's weights, per channel
    with clock("final_training"):
        trained = steps.final_training(config, problem.dataset, float_net, problem.quant_model, bits, widths,
                                       channel_bits=channel_bits)
    best_config = {
        "trial": best["trial"], "config": best["config"], "objective": best["objective"],
        "validation_accuracy": best["validation_accuracy"], "final_validation_accuracy": trained.validation_accuracy,
        "test_accuracy": trained.test_accuracy, "float_test_accuracy": folder.meta["float"]["test_accuracy"],
        **{name: best[name] for name in COST_FIELDS},
        **({"channel_bits": channel_bits} if channel_bits else {}),
        "layers": problem.layer_rows(bits, widths, channel_bits),
        "export": FILES["model"],
        "selection": {**selection, "explanation": store.selection.explain_choice(
            records, resolution=selection["resolution"])},
    }
    with clock("io"):
        steps.export_trained(folder.path("model"), config, problem.dataset, problem.quant_model, trained, bits,
                             widths, channel_bits)
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
                test_accuracy = train.evaluate(problem.quant_model.clone(precision="float32"), variables,
                                               problem.dataset.test, bits=bits, widths=widths)
        log.append({"trial": index, "phase": "uniform", "uniform_bits": int(uniform_bits),
                    "config": {"bits": int(uniform_bits), "width": 1.0}, **record, "test_accuracy": test_accuracy})
