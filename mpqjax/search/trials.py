"""The trials of a search: the population choice, the optimiser restored from the run folder, and the loop that
asks a population, evaluates it, tells it and logs it, with its progress events and the time left; for a one-shot
method, its configurations computed once and fine-tuned in turn.

Every draw is keyed by the index of the population's first trial (``fold_in(key, trial)``) and every population is
logged before the optimiser state is saved (`mpqjax.store.run_folder.RunFolder.append_trials`), so a resumed
search continues exactly where the interrupted one stopped.

Example:
    >>> records = run_trials(problem, folder, clock, progress)
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable
from typing import Protocol

import jax
import jax.numpy as jnp
import numpy as np

from mpqjax import data, store
from mpqjax.nn import models
from mpqjax.optim import tpe
from mpqjax.search import methods, peers, steps, supernet
from mpqjax.search.config import SearchConfig
from mpqjax.search.problem import Problem
from mpqjax.store import run_folder
from mpqjax.training import devices, population, strategy

__all__ = ["Clock", "choose_population", "run_one_shot", "run_proposals", "run_trials", "search_cost"]

Progress = Callable[[dict], None]


class Clock(Protocol):
    """The run's phase timer: ``with clock("evaluations"): ...`` adds the block's seconds to a phase of
    `mpqjax.store.run_folder.PHASES`; ``clock.to_dict()`` is the time split of ``search.json``."""

    def __call__(self, phase: str) -> contextlib.AbstractContextManager: ...

    def to_dict(self) -> dict[str, float]: ...


def search_cost(config: SearchConfig, clock: Clock, records: list[dict]) -> dict:
    """``search.json``'s ``search_cost``: what the method spent to choose its configuration.

    Seconds (Hessian, the method's own analysis, the trials' fine-tunes and the optimiser), fine-tunes, and the
    trials' seconds in training steps with their share of the trials' time (the rest: weight transfer, calibration,
    validation), on this backend.
    """
    spent = clock.to_dict()
    phases = ("hessian", "method", "evaluations", "optimiser")
    timed = [record for record in records if record.get("training_seconds") is not None]
    training = sum(record["training_seconds"] for record in timed)
    trial_seconds = sum(record["seconds"] for record in timed)
    return {"method": config.method, "seconds": sum(spent[phase] for phase in phases),
            **{f"{phase}_seconds": spent[phase] for phase in phases}, "finetunes": len(records),
            "training_steps_seconds": training,
            "training_share": training / trial_seconds if trial_seconds > 0 else None,
            "backend": jax.default_backend()}


def choose_population(config: SearchConfig, quant_model: models.Model, dataset: data.Dataset) -> dict:
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


def run_trials(problem: Problem, folder: run_folder.RunFolder, clock: Clock, notify: Progress) -> list[dict]:
    """Set up the optimiser (restored from the folder on resume) and run the trials up to ``config.trials``.

    Args:
        problem: the search's problem (its config, data, space and limits).
        folder: the run's folder: the logged trials are read from it, every population is logged to it.
        clock: the run's phase timer.
        notify: the progress callback (`mpqjax.search.run`'s ``progress``).

    Returns:
        Every trial record, the logged ones first.
    """
    config = problem.config
    # random search: the same optimiser, every trial one of its initial random draws
    n_initial = config.trials if config.method == "random" else min(config.n_initial, config.trials)
    opt = tpe.KMeansTPE(problem.layer_space.space, maximize=True, n_initial=n_initial, capacity=config.trials,
                        feasible=None if config.soft_limits else problem.feasible_fn())
    records = folder.trials()
    if "population" in folder.meta:  # a resumed search keeps its measured choice
        choice = folder.meta["population"]
    else:
        with clock("evaluations"):
            choice = choose_population(config, problem.quant_model, problem.dataset)
    folder.update(population=choice, devices={"platform": jax.default_backend(), "count": jax.device_count(),
                                              "processes": jax.process_count()})
    if choice["population"] > 1 or choice["measured"]:
        measured = ", ".join(f"{m['strategy']} x{m['population']}: {m['configurations_per_hour']:.0f}/h"
                             for m in choice.get("measurements", []))
        message = f"population {choice['population']}, strategy {choice['strategy']}"
        notify({"event": "phase", "phase": "population",
                "message": message + (f" (measured {measured})" if measured else "")})
    with clock("optimiser"):
        state = folder.restore_state(opt, records, problem.layer_space.space, choice["population"])
    with clock("io"):
        folder.save(timings=clock.to_dict())
    if len(records) < config.trials:
        how = "all random" if opt.n_initial == config.trials else f"the first {opt.n_initial} random, then k-means TPE"
        notify({"event": "phase", "phase": "trials", "message": f"trials {len(records)} to {config.trials - 1} "
                f"(numbered from 0; {how})"})
    _ask_evaluate_tell(problem, folder, opt, state, records, choice, clock, notify)
    return records


def run_one_shot(problem: Problem, folder: run_folder.RunFolder, summary: dict | None, clock: Clock,
                 notify: Progress) -> list[dict]:
    """A one-shot method's phases: its configurations computed once (the ``method`` phase, recorded as
    ``search.json``'s ``method``), then fine-tuned in turn (`run_proposals`).

    A resumed search whose configurations were all fine-tuned computes nothing again (no supernet trained anew, no
    ILP solved anew): ``method.proposals``, written with the first trial, says how many there are.

    Args:
        problem: the search's problem.
        folder: the run's folder.
        summary: the Hessian analysis (``hessian.json``), for the methods that read it; None otherwise.
        clock: the run's phase timer.
        notify: the progress callback.

    Returns:
        Every trial record, the logged ones first.
    """
    recorded = folder.meta.get("method")
    if isinstance(recorded, dict) and 0 < recorded.get("proposals", 0) <= len(folder.trials()):
        return folder.trials()
    method = problem.config.method
    notify({"event": "phase", "phase": "method", "message": f"{method}: {methods.METHODS[method].summary}"})
    with clock("method"):
        proposals, details = _proposals(problem, summary)
    folder.update(method={"name": method, "proposals": len(proposals), **details})
    return run_proposals(problem, folder, proposals, clock, notify)


def _proposals(problem: Problem, summary: dict | None) -> tuple[list[peers.Proposal], dict]:
    """A one-shot method's configurations and what its computation recorded."""
    key = steps.search_keys(problem.config.seed).trial
    if methods.METHODS[problem.config.method].relaxed:
        proposal, details = supernet.propose_relaxed(problem.config.method, problem, key)
        return [proposal], {"supernet": details}
    traces = None
    if summary is not None:
        by_name = {row["name"]: row["trace_per_weight"] for row in summary["layers"]}
        traces = [by_name[name] for name in problem.table.names]
    return peers.propose(problem.config.method, problem, key, traces_per_weight=traces), {}


def run_proposals(problem: Problem, folder: run_folder.RunFolder, proposals: list, clock: Clock,
                  notify: Progress) -> list[dict]:
    """Fine-tune a one-shot method's configurations in turn (the trials), logging each; a resumed search skips the
    logged ones (`run_one_shot` computes the proposals again, deterministically, when some are left).

    Args:
        problem: the search's problem.
        folder: the run's folder.
        proposals: the method's configurations (`mpqjax.search.peers.Proposal`).
        clock: the run's phase timer.
        notify: the progress callback.

    Returns:
        Every trial record, the logged ones first.
    """
    records, keys = folder.trials(), steps.search_keys(problem.config.seed)
    if len(records) < len(proposals):
        notify({"event": "phase", "phase": "trials", "message": f"fine-tuning the {len(proposals)} configuration"
                f"{'s' if len(proposals) > 1 else ''} of {problem.config.method}"})
    time_left = _TimeLeft()
    for index in range(len(records), len(proposals)):
        started, proposal = time.perf_counter(), proposals[index]
        with clock("evaluations"):
            fields = problem.evaluate(jax.random.fold_in(keys.trial, index), proposal.bits, proposal.widths,
                                      proposal.channel_bits)
        record = {"trial": index, "phase": problem.config.method, "config": _proposal_config(problem, proposal),
                  **fields}
        with clock("io"):
            folder.append_trials([record], None, timings=clock.to_dict())
        records.append(store.to_json_value(record))
        time_left.seconds.append(time.perf_counter() - started)
        notify({"event": "trial", "trial": index, "done": index + 1, "trials": len(proposals), "record": record,
                "best": run_folder.best_trial(records, resolution=1 / len(problem.dataset.validation)),
                "elapsed": clock.to_dict()["total"], "eta": time_left.estimate(len(proposals) - index - 1)})
    return records


def _proposal_config(problem: Problem, proposal) -> dict:
    """A proposal as a point of the space's names; a channel-wise one that prunes has the widths of its pruning
    (kept / channels), which are no choices of the space."""
    layer_space = problem.layer_space
    if proposal.channel_bits is None:
        return layer_space.to_config(proposal.bits, proposal.widths)
    config = layer_space.to_config(proposal.bits, np.ones_like(proposal.widths))
    for index, dimension in enumerate(layer_space.width_index):
        if dimension >= 0:
            config[layer_space.space.names[dimension]] = float(proposal.widths[index])
    return config


class _TimeLeft:
    """The time left of a session: the median time of its populations times the populations left, leaving out the
    session's first population (it compiles the training step), so None until a second one was timed."""

    def __init__(self):
        self.seconds: list[float] = []

    def estimate(self, populations_left: int) -> float | None:
        timed = self.seconds[1:]
        if populations_left == 0:
            return 0.0
        return float(np.median(timed)) * populations_left if timed else None


def _ask_evaluate_tell(problem: Problem, folder: run_folder.RunFolder, opt: tpe.KMeansTPE, state: tpe.TPEState,
                       records: list[dict], choice: dict, clock: Clock, notify: Progress) -> None:
    """Ask a population, evaluate it, tell it, log it; until ``config.trials`` records (appended to ``records``)."""
    config, keys = problem.config, steps.search_keys(problem.config.seed)
    size, time_left = choice["population"], _TimeLeft()
    mesh = devices.population_mesh() if size > 1 else None
    while len(records) < config.trials:
        first, started = len(records), time.perf_counter()
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
        time_left.seconds.append(time.perf_counter() - started)
        eta = time_left.estimate(-(-(config.trials - len(records)) // size))
        for record in new_records:
            notify({"event": "trial", "trial": record["trial"], "done": record["trial"] + 1, "trials": config.trials,
                    "record": record,
                    "best": run_folder.best_trial(records[: record["trial"] + 1],
                                                  resolution=1 / len(problem.dataset.validation)),
                    "elapsed": clock.to_dict()["total"], "eta": eta})


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
