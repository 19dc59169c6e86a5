"""Does k-means TPE keep its quality per evaluation when it proposes q configurations at once? (issue 8)

A population evaluation runs the search as ask(q) -> evaluate q configurations together -> tell(q). This study runs
`mpqjax.optim.tpe.run(opt, key, objective, evaluations, batch_size=q)` for q = 1, 4, 16 on tasks of the convergence
study's registry (``experiments/convergence.py``; default discrete40, branin, hartmann6 and digits_mpq when the
registry has it) and compares the best objective against the number of evaluations. Settings: the paper's n0 = 20
random trials, a budget of 100 evaluations, every other `KMeansTPE` setting at its default; seed s is
``jax.random.key(s)``.

Batch strategies (``--variants``, `KMeansTPE`'s ``batch`` setting; q = 1 is the same search under both):

- ``top_q`` (the algorithm before issue 8): the q best distinct candidates by l(x)/g(x) among
  ``max(num_candidates, 2 q)`` drawn from l, from one model fit per batch. A batch asked while fewer than n0 trials
  are told is wholly random, so its random start is n0 rounded up to a multiple of q (32 for q = 16);
- ``liar`` (the default since): q proposals made one at a time inside the jitted ask, each after the previous ones
  joined the history as pending trials counted as failed (they join g(x): a constant liar with the worst value), each
  with the random/model switch and schedule (k, c) of the trial it stands for (so the random start stays n0);
- ``neutral_liar``: the same one-at-a-time proposals, but the pending trials join neither l(x) nor g(x) (they only
  advance the random start and the schedule, and are never proposed again): each proposal is a fresh single ask of
  the same model.

Each run goes on past the budget to a horizon (default twice the budget) so that a slower batch search's delay in
reaching q = 1's final level can be measured rather than censored; "final" always means after the budget.

Printed as JSON (and written to ``experiments/results/population_quality[_quick].json``), per task, variant and q:
the random start; final best (median and interquartile range over seeds); evaluations to reach two levels of
``top_q``'s q = 1 search (its median best after the budget, ``final``, and after half of it, ``half``) per seed,
their median over seeds (a seed that never reaches it counts as more than the horizon) and on the median curve, and
both as a ratio to q = 1's (> 1: q at once needs that many times the evaluations); the median optimiser time per
evaluation. The plot (``population_quality[_quick].png``, one panel per task) shows the median best-so-far and its
interquartile band (regret where the optimum is known).

Run: ``nice -n 10 python experiments/population_quality.py`` (20 seeds, budget 100, horizon 200, the library's
default kernel mode; ``--seeds``, ``--trials``, ``--horizon``, ``--tasks``, ``--q``, ``--variants``, ``--joint``
to change; about 20 minutes on 2 shared cores with the three variants, most of it digits_mpq) or ``--quick``
(2 seeds x 32 evaluations on discrete40, for smoke tests). Results kept (docs/results.md, section "Batch proposals",
gives the commands): ``population_quality_independent.json`` (``--joint false``: independent kernels on every task),
``population_quality_liar_variants.json`` (the defaults with all three variants) and
``population_quality_liar_variants_hartmann6_60seeds.json`` (``--tasks hartmann6 --seeds 60``, all three);
``population_quality_liar_variants_60seeds_extra.json``: liar vs neutral_liar at 60 seeds on digits_mpq, Branin and
discrete40 (summaries only; its ``provenance`` says how it was made).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import time

import jax
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from convergence import TASKS, evaluations_to_reach  # noqa: E402

from mpqjax import store  # noqa: E402
from mpqjax.optim.tpe import KMeansTPE, run  # noqa: E402

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")
DEFAULT_TASKS = ("discrete40", "branin", "hartmann6", "digits_mpq")
QUICK_TASKS = ("discrete40",)
VARIANTS = ("top_q", "liar", "neutral_liar")
N_INITIAL = 20


JOINT = {"auto": "auto", "true": True, "false": False}


def make_optimiser(task_, variant: str, capacity: int, joint: str = "auto") -> KMeansTPE:
    """k-means TPE with the paper's n0, the batch strategy ``variant``, the kernel mode ``joint`` (a key of `JOINT`)
    and the library's defaults otherwise."""
    return KMeansTPE(task_.space, capacity=capacity, n_initial=N_INITIAL, batch=variant, joint=JOINT[joint])


def search(opt: KMeansTPE, task_, trials: int, q: int, seed: int) -> tuple[np.ndarray, float]:
    """Objective values in evaluation order, and the seconds spent outside the objective."""
    objective_seconds = 0.0

    def objective(x):
        nonlocal objective_seconds
        begin = time.perf_counter()
        values = [task_.objective(config) for config in opt.space.decode_batch(np.asarray(x))]
        objective_seconds += time.perf_counter() - begin
        return np.asarray(values, np.float32)

    start = time.perf_counter()
    state = run(opt, jax.random.key(seed), objective, trials, batch_size=q)
    return np.asarray(state.y[:trials], float), time.perf_counter() - start - objective_seconds


def random_start(q: int, variant: str) -> int:
    """Random trials of a run with batch size q (see the module docstring)."""
    return math.ceil(N_INITIAL / q) * q if variant == "top_q" else N_INITIAL


def reach_summary(best: np.ndarray, target: float) -> dict:
    """Evaluations to reach ``target`` per seed, their median (a miss counts as more than the budget), and on the
    median curve."""
    reach = [evaluations_to_reach(row, target) for row in best]
    median = statistics.median(sorted(r if r is not None else math.inf for r in reach))
    return {"per_seed": reach, "median": None if math.isinf(median) else float(median),
            "seeds_reaching": f"{sum(r is not None for r in reach)}/{len(reach)}",
            "median_curve": evaluations_to_reach(np.median(best, axis=0), target)}


def summarise(curves: dict[str, dict[int, np.ndarray]], seconds: dict[str, dict[int, list[float]]],
              trials: int) -> dict:
    """Per variant and q: final best, evaluations to reach q = 1's levels, and their ratio to q = 1's.

    Args:
        curves: best-so-far [seeds, horizon] per variant and q (horizon >= trials).
        seconds: optimiser seconds per run, per variant and q.
        trials: the budget: "final" means after this many evaluations; levels are searched for up to the horizon.

    Two levels, both from the reference variant (``top_q``, the algorithm before issue 8, when it ran): its q = 1
    median best after ``trials`` evaluations (``final``) and after half of them (``half``).
    """
    reference = curves["top_q"] if "top_q" in curves else next(iter(curves.values()))
    targets = {}
    if 1 in reference:
        targets = {"final": float(np.median(reference[1][:, trials - 1])),
                   "half": float(np.median(reference[1][:, trials // 2 - 1]))}
    summary = {}
    for variant, by_q in curves.items():
        entries = {}
        for q, best in by_q.items():
            final = best[:, trials - 1]
            entries[q] = {"random_trials": random_start(q, variant),
                          "final_best_median": float(np.median(final)),
                          "final_best_iqr": [float(np.percentile(final, 25)), float(np.percentile(final, 75))],
                          "optimiser_ms_per_evaluation_median":
                              statistics.median(seconds[variant][q]) / best.shape[1] * 1e3}
            if best.shape[1] > trials:
                entries[q]["best_median_at_horizon"] = float(np.median(best[:, -1]))
            for level, target in targets.items():
                entries[q][f"evals_to_q1_{level}"] = {"target": target, **reach_summary(best, target)}
        summary[variant] = entries
    single = summary.get("top_q", {}).get(1)
    for entries in summary.values():
        for entry in entries.values():
            for level in targets:
                # > 1: asking q at once needs that many times the evaluations of top_q's q = 1 to reach its level
                for field in ("median", "median_curve"):
                    ours = entry[f"evals_to_q1_{level}"][field]
                    theirs = single[f"evals_to_q1_{level}"][field] if single else None
                    entry[f"evals_to_q1_{level}"][f"{field}_ratio_to_q1"] = ours / theirs if ours and theirs else None
    return {variant: {str(q): entry for q, entry in entries.items()} for variant, entries in summary.items()}


def plot(results: dict, curves: dict, path: str) -> None:
    trials = results["trials"]
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(curves)
    columns = min(2, len(names))
    rows = math.ceil(len(names) / columns)
    figure, axes = plt.subplots(rows, columns, figsize=(5.5 * columns, 3.8 * rows), squeeze=False)
    colours = {1: "C0", 4: "C1", 16: "C3"}
    styles = {"top_q": "--", "liar": "-", "neutral_liar": "-."}
    for axis, task_name in zip(axes.ravel(), names, strict=False):
        optimum = results["tasks"][task_name]["optimum"]
        offset = optimum if optimum is not None else 0.0
        shown_all = []
        for variant, by_q in curves[task_name].items():
            for q, best in by_q.items():
                if q == 1 and variant != next(iter(curves[task_name])):
                    continue  # a single ask is the same under every batch strategy: one line
                shown = best - offset
                shown_all.append(shown)
                evaluations = np.arange(1, best.shape[1] + 1)
                colour = colours.get(q, f"C{4 + q % 5}")
                axis.plot(evaluations, np.median(shown, axis=0), color=colour, linestyle=styles.get(variant, ":"),
                          label="q=1 (every variant)" if q == 1 else f"{variant} q={q}")
                axis.fill_between(evaluations, np.percentile(shown, 25, axis=0), np.percentile(shown, 75, axis=0),
                                  color=colour, alpha=0.08)
        if all(np.all(shown > 0) for shown in shown_all):
            axis.set_yscale("log")
        # zoom past the random start, where every run is alike
        start = min(N_INITIAL, shown_all[0].shape[1] - 1)
        top = max(float(np.median(shown, axis=0)[start]) for shown in shown_all)
        bottom = min(float(np.percentile(shown, 25, axis=0).min()) for shown in shown_all)
        if axis.get_yscale() == "log":
            axis.set_ylim(bottom * 0.9, top * 1.1)
        else:
            margin = 0.05 * (top - bottom) or 1.0
            axis.set_ylim(bottom - margin, top + margin)
        if shown_all[0].shape[1] > trials:
            axis.axvline(trials, color="k", linewidth=0.6, alpha=0.5)
        axis.set_title(task_name)
        axis.set_xlabel("evaluations")
        axis.set_ylabel("best-so-far regret" if optimum is not None else "best-so-far objective")
        axis.legend(fontsize=7)
    for axis in axes.ravel()[len(names):]:
        axis.set_visible(False)
    figure.suptitle("k-means TPE, q proposals per ask: median best-so-far and interquartile band over seeds")
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="2 seeds x 32 evaluations on discrete40 (smoke test)")
    parser.add_argument("--tasks", nargs="+", default=None, help=f"task names from {sorted(TASKS)}")
    parser.add_argument("--q", nargs="+", type=int, default=[1, 4, 16], help="batch sizes (default 1 4 16)")
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), help=f"batch strategies from {VARIANTS}")
    parser.add_argument("--joint", choices=sorted(JOINT), default="auto",
                        help="kernel mode (default auto, the library's: joint up to 20 dimensions)")
    parser.add_argument("--seeds", type=int, default=None, help="seeds 0..N-1 (default 20; quick 2)")
    parser.add_argument("--trials", type=int, default=None, help="evaluation budget (default 100; quick 32)")
    parser.add_argument("--horizon", type=int, default=None,
                        help="evaluations per run, past the budget, to see when slower runs reach q = 1's final "
                             "level (default 2 x trials; quick: trials)")
    parser.add_argument("--out", default=None, help="JSON path (default experiments/results/population_quality*.json)")
    return parser


def main(argv=None):
    parser = make_parser()
    args = parser.parse_args(argv)
    trials = args.trials or (32 if args.quick else 100)
    horizon = args.horizon or (trials if args.quick else 2 * trials)
    seeds = list(range(args.seeds or (2 if args.quick else 20)))
    if args.tasks:
        task_names = args.tasks
    else:
        task_names = [name for name in (QUICK_TASKS if args.quick else DEFAULT_TASKS) if name in TASKS]
    unknown = sorted(set(task_names) - set(TASKS))
    if unknown:
        parser.error(f"unknown tasks {unknown}; choose from {sorted(TASKS)}")
    if any(q < 1 for q in args.q) or trials <= N_INITIAL or horizon < trials or not seeds:
        parser.error("need q >= 1, more than n0 = 20 trials, a horizon of at least the trials and one seed or more")
    bad_variants = sorted(set(args.variants) - set(VARIANTS))
    if bad_variants:
        parser.error(f"unknown variants {bad_variants}; choose from {VARIANTS}")
    batch_sizes = sorted(set(args.q))
    out_path = args.out or os.path.join(RESULTS, "population_quality_quick.json" if args.quick
                                        else "population_quality.json")

    results = {"trials": trials, "horizon": horizon, "seeds": seeds, "q": batch_sizes, "variants": args.variants,
               "settings": f"KMeansTPE(space, capacity={horizon}, n_initial={N_INITIAL}, batch=variant, "
                           f"joint={JOINT[args.joint]!r}), other "
                           "settings default; "
                           "mpqjax.optim.tpe.run(..., batch_size=q), key jax.random.key(seed)",
               "tasks": {}}
    curves = {}
    for task_name in task_names:
        task_ = TASKS[task_name]()
        started = time.perf_counter()
        task_curves, seconds = {}, {}
        for variant in args.variants:
            opt = make_optimiser(task_, variant, horizon, args.joint)
            task_curves[variant], seconds[variant] = {}, {}
            for q in batch_sizes:
                runs = [search(opt, task_, horizon, q, seed) for seed in seeds]
                task_curves[variant][q] = np.stack([np.minimum.accumulate(values) for values, _ in runs])
                seconds[variant][q] = [spent for _, spent in runs]
        curves[task_name] = task_curves
        results["tasks"][task_name] = {
            "description": task_.description, "optimum": task_.optimum,
            "joint": opt.joint_kernels,  # the kernel mode the defaults chose for this space
            "summary": summarise(task_curves, seconds, trials),
            "best_so_far": {variant: {str(q): best.round(6).tolist() for q, best in by_q.items()}
                            for variant, by_q in task_curves.items()},
            "study_wall_seconds": time.perf_counter() - started,
        }
        print(f"{task_name}: done in {time.perf_counter() - started:.0f} s", file=sys.stderr, flush=True)
    os.makedirs(os.path.dirname(os.path.abspath(out_path)), exist_ok=True)
    store.atomic_write_json(out_path, results)
    plot(results, curves, os.path.splitext(out_path)[0] + ".png")
    print(json.dumps({name: entry["summary"] for name, entry in results["tasks"].items()}, indent=1))


if __name__ == "__main__":
    main()
