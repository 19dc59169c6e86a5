"""The plots of a search: accuracy against size and latency (``pareto.png``) and the Hessian traces (``hessian.png``).

Matplotlib is imported inside the functions, so importing the report costs nothing until a plot is drawn. Figures
are bare `matplotlib.figure.Figure` objects (Agg canvas, no pyplot state, no global backend), so plots can be drawn
from any thread or notebook; each PNG is written atomically.

Example:
    >>> plot_pareto("runs/digits/pareto.png", load_run("runs/digits"))
    >>> plot_hessian("runs/digits/hessian.png", load_run("runs/digits").hessian)
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import numpy as np

from mpqjax.report.format import SIZE_UNITS, TIME_UNITS, unit_for
from mpqjax.report.pareto import pareto_front
from mpqjax.report.records import best_record, resolution_of, uniform_label
from mpqjax.store.files import atomic_write
from mpqjax.store.run_folder import Run, is_ok, number
from mpqjax.store.selection import choose

__all__ = ["plot_hessian", "plot_pareto"]


def _new_figure(**kwargs):
    # A bare Figure draws with the Agg canvas for PNG, touches no pyplot state and no global backend choice, so
    # reports can be written from any thread or notebook.
    from matplotlib.figure import Figure

    return Figure(**kwargs)


def _save_png(path, figure) -> None:
    atomic_write(path, lambda name: figure.savefig(name, dpi=120, format="png"))


def _as_float_array(values: Sequence) -> np.ndarray:
    return np.array([np.nan if value is None else value for value in values], dtype=float)


# -- Hessian traces -----------------------------------------------------------------------------------------------


def plot_hessian(path: str | os.PathLike, hessian_result: dict) -> None:
    """Plot per-layer Hessian traces (bars with standard errors, coloured by cluster) and traces per weight; PNG.

    Args:
        path: the ``.png`` file, written atomically.
        hessian_result: the ``hessian.json`` dict (``mpqjax hessian``): keys ``model``, ``bit_sets`` and ``layers``
            (rows with ``name``, ``trace``, ``std_error`` (or None), ``trace_per_weight`` and ``cluster``, -1 for a
            layer fixed by hand).

    Example:
        >>> plot_hessian("runs/digits/hessian.png", load_run("runs/digits").hessian)
    """
    import matplotlib
    import matplotlib.patches

    rows = hessian_result["layers"]
    bit_sets = hessian_result.get("bit_sets") or []
    names = [row["name"] for row in rows]
    trace = _as_float_array([row.get("trace") for row in rows])
    error = np.nan_to_num(_as_float_array([row.get("std_error") for row in rows]))
    per_weight = _as_float_array([row.get("trace_per_weight") for row in rows])
    clusters = [int(row.get("cluster", 0)) for row in rows]
    num_clusters = max(len(bit_sets), max(clusters, default=0) + 1, 1)
    colormap = matplotlib.colormaps["viridis"]
    colour_of = {c: colormap(0.1 + 0.75 * c / max(num_clusters - 1, 1)) for c in range(num_clusters)}
    colour_of[-1] = (0.65, 0.65, 0.65, 1.0)
    colours = [colour_of[c] for c in clusters]

    figure = _new_figure(figsize=(max(6.0, 0.45 * len(rows) + 2), 6.5), layout="constrained")
    top, bottom = figure.subplots(2, 1, sharex=True)
    positions = np.arange(len(rows))
    top.bar(positions, np.nan_to_num(trace), yerr=error, color=colours, capsize=2)
    top.set_ylabel("Hessian trace (± std. error)")
    top.set_title(f"{hessian_result.get('model', '')}: per-layer Hessian traces", fontsize=11)
    legend = [
        matplotlib.patches.Patch(color=colour_of[c], label=f"cluster {c}: bits {{{','.join(map(str, bits))}}}")
        for c, bits in enumerate(bit_sets)
        if c in clusters
    ]
    if -1 in clusters:
        legend.append(matplotlib.patches.Patch(color=colour_of[-1], label="fixed by hand"))
    if legend:
        top.legend(handles=legend, fontsize=8)
    bottom.bar(positions, np.nan_to_num(per_weight), color=colours)
    bottom.set_ylabel("trace per weight")
    finite = per_weight[np.isfinite(per_weight)]
    if finite.size and np.all(finite > 0) and finite.size == per_weight.size:
        bottom.set_yscale("log")
    bottom.set_xticks(positions, names, rotation=60, ha="right", fontsize=8)
    _save_png(path, figure)


# -- accuracy against cost ----------------------------------------------------------------------------------------


def _points(records: Sequence[dict], key: str, scale: float):
    """``(cost / scale, accuracy in %)`` of the records that have both, as two arrays (two lists when none)."""
    pairs = [(number(r.get(key)), number(r.get("validation_accuracy"))) for r in records]
    pairs = [(x / scale, 100 * y) for x, y in pairs if x is not None and y is not None]
    return (np.array([p[0] for p in pairs]), np.array([p[1] for p in pairs])) if pairs else ([], [])


def _draw_trials(axes, trials: Sequence[dict], key: str, scale: float) -> None:
    """The trials: one colour per phase, infeasible ones as red crosses, failed ones as ticks on the bottom edge."""
    ok = [record for record in trials if is_ok(record)]
    failed = [record for record in trials if not is_ok(record)]
    for phase, colour in (("random", "tab:gray"), ("model", "tab:blue")):
        chosen = [r for r in ok if r.get("phase") == phase and r.get("feasible", True)]
        if chosen:
            axes.scatter(*_points(chosen, key, scale), s=18, color=colour, alpha=0.7,
                         label=f"{phase} phase ({len(chosen)})")
    others = [r for r in ok if r.get("phase") not in ("random", "model") and r.get("feasible", True)]
    if others:
        axes.scatter(*_points(others, key, scale), s=18, color="tab:purple", alpha=0.7,
                     label=f"other trials ({len(others)})")
    infeasible = [r for r in ok if not r.get("feasible", True)]
    if infeasible:
        axes.scatter(*_points(infeasible, key, scale), s=24, marker="x", color="tab:red",
                     label=f"infeasible ({len(infeasible)})")
    failed_x = [number(r.get(key)) for r in failed]
    failed_x = [x / scale for x in failed_x if x is not None]
    if failed_x:
        # Failed trials have a cost but no accuracy: ticks on the bottom edge, whatever the y range.
        axes.plot(failed_x, np.full(len(failed_x), 0.02), transform=axes.get_xaxis_transform(), ls="none",
                  marker="|", markersize=14, markeredgewidth=2, color="tab:red", clip_on=False,
                  label=f"failed ({len(failed)}): ticks at the bottom")


def _draw_best(axes, run: Run, key: str, scale: float) -> None:
    """The best configuration as a gold star (``gid="best"``) and the band of the trials tied with the most accurate
    (within the selection's resolution, ``gid="tied"``) it was chosen from."""
    best, best_is_final = best_record(run)
    resolution = resolution_of(run)
    choice = choose(run.trials, resolution=resolution or 0.0)
    if resolution and choice.top_accuracy is not None and len(choice.tied) > 1:
        axes.axhspan(100 * (choice.top_accuracy - resolution), 100 * choice.top_accuracy, color="gold", alpha=0.18,
                     lw=0, zorder=0, gid="tied",
                     label=f"tied: within one validation example of the top ({len(choice.tied)} trials)")
    if best is not None and None not in (number(best.get(key)), number(best.get("validation_accuracy"))):
        chosen_here = choice.best is not None and choice.best.get("trial") == best.get("trial")
        how = f": the smallest of the {len(choice.tied)} tied" if chosen_here and len(choice.tied) > 1 else ""
        axes.scatter([number(best[key]) / scale], [100 * number(best["validation_accuracy"])], marker="*",
                     s=220, color="gold", edgecolor="black", zorder=5, gid="best",
                     label=f"best{'' if best_is_final else ' so far'} (trial {best.get('trial')}{how})")


def _draw_references(axes, run: Run, key: str, scale: float, title: str) -> None:
    """The Pareto front, the uniform baseline, the limit, the float model's accuracy and the best configuration."""
    ok = [record for record in run.trials if is_ok(record)]
    baseline = [record for record in run.baseline if is_ok(record)]
    front = [ok[i] for i in pareto_front([r["validation_accuracy"] for r in ok], [r.get(key) for r in ok])]
    if front:
        axes.step(*_points(front, key, scale), where="post", color="tab:orange", lw=1.5, zorder=3,
                  label="Pareto front", gid="front")
    if baseline:
        base_x, base_y = _points(baseline, key, scale)
        order = np.argsort(base_x)
        axes.plot(base_x[order], base_y[order], "s--", color="black", ms=5, lw=1, zorder=4, label="uniform precision")
        for record, x_value, y_value in zip(baseline, base_x, base_y, strict=True):
            axes.annotate(uniform_label(record), (x_value, y_value), textcoords="offset points", xytext=(4, -10),
                          fontsize=8)
    limit = number((run.search.get("limits") or {}).get(key))
    if limit is not None:
        axes.axvline(limit / scale, ls="--", color="tab:red", lw=1, label=f"{title} limit")
    float_accuracy = number((run.search.get("float") or {}).get("validation_accuracy"))
    if float_accuracy is not None:
        axes.axhline(100 * float_accuracy, ls=":", color="tab:green", lw=1.2,
                     label=f"float model {100 * float_accuracy:.2f} %")
    _draw_best(axes, run, key, scale)
    if not ok and not baseline:
        axes.text(0.5, 0.5, "no successful trial yet", transform=axes.transAxes, ha="center", va="center",
                  bbox={"facecolor": "white", "edgecolor": "none"})


def _log_x_axis(axes) -> None:
    import matplotlib.ticker

    axes.set_xscale("log")
    # Labelled ticks at 1, 1.5, 2, 3, 5, 7 per decade: a search spans less than a decade or two.
    axes.xaxis.set_major_locator(matplotlib.ticker.LogLocator(subs=(1.0, 1.5, 2.0, 3.0, 5.0, 7.0)))
    axes.xaxis.set_major_formatter(matplotlib.ticker.FormatStrFormatter("%g"))
    axes.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())


def _shown_costs(run: Run, key: str) -> list[float]:
    """The positive costs a panel shows: every trial's, every baseline record's and the limit."""
    shown = [number(r.get(key)) for r in [*run.trials, *run.baseline]]
    shown.append(number((run.search.get("limits") or {}).get(key)))
    return [value for value in shown if value is not None and value > 0]


def plot_pareto(path: str | os.PathLike, run: Run):
    """Plot validation accuracy against size and against latency for every trial, with the fronts; PNG.

    Random-phase and model-phase trials are drawn in two colours, infeasible ones as red crosses, failed ones as
    ticks along the bottom edge (at their cost); the Pareto front of the successful trials is a step line; the limits
    are vertical dashed lines, the float model's accuracy a horizontal line, the uniform-precision baseline a
    labelled series ("4b", ...) and the best configuration a star (the report's best: `best_record`). A gold band
    marks the accuracies tied with the most accurate feasible trial (within the search's resolution, one validation
    example), the trials the best was chosen from (`mpqjax.store.selection.RULE`).

    Args:
        path: the ``.png`` file, written atomically.
        run: a `Run` from `load_run`.

    Returns:
        The drawn `matplotlib.figure.Figure` (two axes: size, latency). Its marks carry ids for whoever reads it:
        ``gid="best"`` the star, ``"front"`` the Pareto front, ``"tied"`` the band.

    Example:
        >>> plot_pareto("runs/digits/pareto.png", load_run("runs/digits"))
    """
    figure = _new_figure(figsize=(12.0, 5.5), layout="constrained")
    panels = figure.subplots(1, 2, sharey=True)
    legend: dict[str, Any] = {}  # one legend for both panels, below them, so it hides no point
    shown_of = {key: _shown_costs(run, key) for key in ("size_bytes", "latency_seconds")}
    # A wide range (the 8-bit baseline beside 2-bit trials) would squeeze the trials into a corner: log scale, the
    # same for both panels so they read alike.
    log_scale = any(shown and max(shown) > 4 * min(shown) for shown in shown_of.values())
    for axes, key, units, title in ((panels[0], "size_bytes", SIZE_UNITS, "size"),
                                    (panels[1], "latency_seconds", TIME_UNITS, "latency")):
        scale, unit = unit_for(max(shown_of[key]), units) if shown_of[key] else units[-1]
        _draw_trials(axes, run.trials, key, scale)
        _draw_references(axes, run, key, scale, title)
        if log_scale:
            _log_x_axis(axes)
        axes.set_xlabel(f"{title} ({unit}{', log scale' if axes.get_xscale() == 'log' else ''})")
        axes.set_title(f"validation accuracy vs {title}", fontsize=11)
        axes.grid(alpha=0.3)
        legend.update(zip(*reversed(axes.get_legend_handles_labels()), strict=True))
    panels[0].set_ylabel("validation accuracy (%)")
    low, high = panels[0].get_ylim()
    if high > 100.5:  # margins past 100 % only waste room
        panels[0].set_ylim(min(low, 90.0), 100.5)
    if legend:
        figure.legend(legend.values(), legend.keys(), loc="outside lower center", ncols=min(len(legend), 5),
                      fontsize=8, frameon=False)
    done = f"{len(run.trials)}" + (f" of {run.planned_trials}" if run.planned_trials else "")
    figure.suptitle(f"{run.search.get('model', '?')} on {run.search.get('dataset', '?')}: {done} trials "
                    f"({run.status})", fontsize=12)
    _save_png(path, figure)
    return figure
