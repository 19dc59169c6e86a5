"""Reports of a search: the trial table (CSV), the Pareto plot, the Hessian-trace plot and a markdown summary.

Everything here reads a search's output folder (the contract: ``search.json``, ``trials.jsonl``, ``baseline.jsonl``,
``hessian.json``, ``best_config.json``) and writes derived files, so it works on a finished search and on one that is
still running, and never needs JAX. `write` regenerates every derived file; ``mpqjax report OUTDIR`` calls it.

Example:
    >>> run = load_run("runs/digits")
    >>> front = pareto_front([t["validation_accuracy"] for t in run.trials], [t["size_bytes"] for t in run.trials])
    >>> write("runs/digits")   # trials.csv, pareto.png, hessian.png, report.md
"""

from __future__ import annotations

import csv
import io
import math
import os
from collections.abc import Sequence
from typing import Any

import numpy as np

from mpqjax import store
from mpqjax.store.run_folder import Run, best_trial, is_ok, load_run, number

__all__ = ["Run", "best_trial", "format_seconds", "format_size", "load_run", "markdown", "pareto_front",
           "plot_hessian", "plot_pareto", "write", "write_trials_csv"]

_SIZE_UNITS = ((1e9, "GB"), (1e6, "MB"), (1e3, "kB"), (1.0, "B"))
_TIME_UNITS = ((1.0, "s"), (1e-3, "ms"), (1e-6, "µs"), (1e-9, "ns"))
_ENERGY_UNITS = ((1.0, "J"), (1e-3, "mJ"), (1e-6, "µJ"), (1e-9, "nJ"), (1e-12, "pJ"))
# The contract's timing keys in pipeline order; any other key follows them, "total" comes last.
_TIMING_ORDER = ("float_model", "hessian", "evaluations", "optimiser", "io", "final_training")


def _as_float_array(values: Sequence) -> np.ndarray:
    return np.array([np.nan if value is None else value for value in values], dtype=float)


def pareto_front(accuracy: Sequence, cost: Sequence) -> np.ndarray:
    """The non-dominated points when maximising accuracy and minimising cost, sorted by increasing cost.

    A point is dominated when another is at least as accurate and at most as costly, and strictly better in one.
    Identical points (same accuracy and cost) are all non-dominated; the front keeps the first of them only. Points
    with a missing or non-finite accuracy or cost (failed trials) are left out.

    Args:
        accuracy: one value per point; None or NaN for a failed trial.
        cost: one value per point (size, latency, ...); None or NaN when unknown.

    Returns:
        Integer indices into the inputs: along the front, cost increases and accuracy strictly increases.

    Example:
        >>> pareto_front([0.9, 0.8, 0.95, None], [2.0, 3.0, 5.0, 1.0]).tolist()
        [0, 2]
    """
    accuracy, cost = _as_float_array(accuracy), _as_float_array(cost)
    if accuracy.shape != cost.shape or accuracy.ndim != 1:
        raise ValueError(f"accuracy and cost must be two lists of the same length, got {accuracy.shape} and "
                         f"{cost.shape}")
    valid = np.flatnonzero(np.isfinite(accuracy) & np.isfinite(cost))
    # Cheapest first; at equal cost the most accurate first, and among identical points the lowest index first: a
    # sweep then keeps exactly the points more accurate than everything cheaper or equally cheap before them.
    order = valid[np.lexsort((valid, -accuracy[valid], cost[valid]))]
    front, best_accuracy = [], -np.inf
    for index in order:
        if accuracy[index] > best_accuracy:
            front.append(index)
            best_accuracy = accuracy[index]
    return np.array(front, dtype=int)


# -- formatting ---------------------------------------------------------------------------------------------------


def _unit(value: float, units) -> tuple[float, str]:
    """The largest unit in which ``value`` is at least 1 (the smallest unit for tiny values)."""
    for scale, name in units:
        if abs(value) >= scale:
            return scale, name
    return units[-1]


def _format_quantity(value, units) -> str:
    value = number(value)
    if value is None:
        return "–"
    scale, name = _unit(value, units)
    return f"{value / scale:.4g} {name}"


def format_size(size_bytes) -> str:
    """A size in bytes for people: ``format_size(2104) == "2.104 kB"`` (decimal units)."""
    return _format_quantity(size_bytes, _SIZE_UNITS)


def format_seconds(seconds) -> str:
    """A duration for people: ``format_seconds(1.25e-5) == "12.5 µs"``."""
    return _format_quantity(seconds, _TIME_UNITS)


def _percent(value, digits: int = 2) -> str:
    value = number(value)
    return "–" if value is None else f"{100 * value:.{digits}f} %"


def _times(value) -> str:
    value = number(value)
    return "–" if value is None else f"{value:.2f}x"


def _integer(value) -> str:
    value = number(value)
    return "–" if value is None else f"{round(value):,}"


def _join(values) -> str:
    return " ".join(f"{value:g}" if isinstance(value, float) else str(value) for value in values or [])


def _cell(text) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def _table(header: Sequence[str], rows: Sequence[Sequence], align: str | None = None) -> list[str]:
    """A markdown table; ``align`` has one character per column: l (left) or r (right)."""
    align = align or "l" * len(header)
    lines = ["| " + " | ".join(map(_cell, header)) + " |",
             "|" + "|".join(" ---: " if a == "r" else " --- " for a in align) + "|"]
    lines += ["| " + " | ".join(map(_cell, row)) + " |" for row in rows]
    return lines


# -- CSV ----------------------------------------------------------------------------------------------------------


def write_trials_csv(path: str | os.PathLike, records: Sequence[dict]) -> None:
    """Write trial records as CSV, atomically: one row per trial, one column per field.

    Scalar fields keep their names (first-seen order); each ``config`` dimension becomes a column of its own
    (``bits/conv1``, ...); lists (``bits``, ``widths``) are joined with spaces; null is an empty cell. Floats are
    written exactly (``repr``), so the numbers read back unchanged.

    Args:
        path: the ``.csv`` file.
        records: trial records (trials.jsonl schema).

    Example:
        >>> write_trials_csv("runs/digits/trials.csv", load_run("runs/digits").trials)
    """
    columns: dict[str, None] = {}
    config_columns: dict[str, None] = {}
    for record in records:
        for key, value in record.items():
            if key == "config" and isinstance(value, dict):
                config_columns.update(dict.fromkeys(value))
            else:
                columns[key] = None
    # A dimension named like a top-level field (not expected: dimensions are "bits/..." and "width/...") is prefixed.
    config_names = {name: (f"config:{name}" if name in columns else name) for name in config_columns}

    def cell(value):
        if value is None:
            return ""
        if isinstance(value, (list, tuple)):
            return _join(value)
        if isinstance(value, float):
            return repr(value)
        return value

    def rows():
        for record in records:
            row = {key: cell(value) for key, value in record.items() if key in columns}
            config = record.get("config") if isinstance(record.get("config"), dict) else {}
            row.update({config_names[name]: cell(value) for name, value in config.items()})
            yield row

    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=[*columns, *config_names.values()], restval="", lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows())
    store.atomic_write_text(path, text.getvalue())


# -- plots --------------------------------------------------------------------------------------------------------


def _new_figure(**kwargs):
    # A bare Figure draws with the Agg canvas for PNG, touches no pyplot state and no global backend choice, so
    # reports can be written from any thread or notebook.
    from matplotlib.figure import Figure

    return Figure(**kwargs)


def _save_png(path, figure) -> None:
    store.atomic_write(path, lambda name: figure.savefig(name, dpi=120, format="png"))


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


def _uniform_label(record: dict) -> str:
    if isinstance(record.get("uniform_bits"), int):
        return f"{record['uniform_bits']}b"
    bits = set(record.get("bits") or [])
    return f"{bits.pop()}b" if len(bits) == 1 else "mixed"


def _best_record(run: Run) -> tuple[dict | None, bool]:
    """The best configuration's trial record and whether it is final (best_config.json) or the best so far."""
    if run.best_config is not None:
        for record in run.trials:
            if record.get("trial") == run.best_config.get("trial"):
                return {**record, **{k: v for k, v in run.best_config.items() if k != "layers"}}, True
        return dict(run.best_config), True
    return best_trial(run.trials), False


def plot_pareto(path: str | os.PathLike, run: Run) -> None:
    """Plot validation accuracy against size and against latency for every trial, with the fronts; PNG.

    Random-phase and model-phase trials are drawn in two colours, infeasible ones as red crosses, failed ones as
    ticks along the bottom edge (at their cost); the Pareto front of the successful trials is a step line; the limits
    are vertical dashed lines, the float model's accuracy a horizontal line, the uniform-precision baseline a
    labelled series ("4b", ...) and the best configuration a star.

    Args:
        path: the ``.png`` file, written atomically.
        run: a `Run` from `load_run`.

    Example:
        >>> plot_pareto("runs/digits/pareto.png", load_run("runs/digits"))
    """
    limits = run.search.get("limits") or {}
    float_accuracy = number((run.search.get("float") or {}).get("validation_accuracy"))
    best, best_is_final = _best_record(run)
    ok = [record for record in run.trials if is_ok(record)]
    failed = [record for record in run.trials if not is_ok(record)]
    baseline = [record for record in run.baseline if is_ok(record)]

    figure = _new_figure(figsize=(12.0, 5.5), layout="constrained")
    panels = figure.subplots(1, 2, sharey=True)
    legend: dict[str, Any] = {}  # one legend for both panels, below them, so it hides no point
    shown_of = {}
    for key in ("size_bytes", "latency_seconds"):
        shown = [number(r.get(key)) for r in [*run.trials, *run.baseline]] + [number(limits.get(key))]
        shown_of[key] = [value for value in shown if value is not None and value > 0]
    # A wide range (the 8-bit baseline beside 2-bit trials) would squeeze the trials into a corner: log scale, the
    # same for both panels so they read alike.
    log_scale = any(shown and max(shown) > 4 * min(shown) for shown in shown_of.values())
    for axes, key, units, title in ((panels[0], "size_bytes", _SIZE_UNITS, "size"),
                                    (panels[1], "latency_seconds", _TIME_UNITS, "latency")):
        limit = number(limits.get(key))
        shown = shown_of[key]
        scale, unit = _unit(max(shown), units) if shown else units[-1]

        def xy(records, key=key, scale=scale):
            pairs = [(number(r.get(key)), number(r.get("validation_accuracy"))) for r in records]
            pairs = [(x / scale, 100 * y) for x, y in pairs if x is not None and y is not None]
            return (np.array([p[0] for p in pairs]), np.array([p[1] for p in pairs])) if pairs else ([], [])

        for phase, colour in (("random", "tab:gray"), ("model", "tab:blue")):
            chosen = [r for r in ok if r.get("phase") == phase and r.get("feasible", True)]
            if chosen:
                axes.scatter(*xy(chosen), s=18, color=colour, alpha=0.7, label=f"{phase} phase ({len(chosen)})")
        others = [r for r in ok if r.get("phase") not in ("random", "model") and r.get("feasible", True)]
        if others:
            axes.scatter(*xy(others), s=18, color="tab:purple", alpha=0.7, label=f"other trials ({len(others)})")
        infeasible = [r for r in ok if not r.get("feasible", True)]
        if infeasible:
            axes.scatter(*xy(infeasible), s=24, marker="x", color="tab:red", label=f"infeasible ({len(infeasible)})")
        failed_x = [number(r.get(key)) for r in failed]
        failed_x = [x / scale for x in failed_x if x is not None]
        if failed_x:
            # Failed trials have a cost but no accuracy: ticks on the bottom edge, whatever the y range.
            axes.plot(failed_x, np.full(len(failed_x), 0.02), transform=axes.get_xaxis_transform(), ls="none",
                      marker="|", markersize=14, markeredgewidth=2, color="tab:red", clip_on=False,
                      label=f"failed ({len(failed)}): ticks at the bottom")

        front = [ok[i] for i in pareto_front([r["validation_accuracy"] for r in ok], [r.get(key) for r in ok])]
        if front:
            front_x, front_y = xy(front)
            axes.step(front_x, front_y, where="post", color="tab:orange", lw=1.5, zorder=3,
                      label="Pareto front")
        if baseline:
            base_x, base_y = xy(baseline)
            order = np.argsort(base_x)
            axes.plot(base_x[order], base_y[order], "s--", color="black", ms=5, lw=1, zorder=4,
                      label="uniform precision")
            for record, x_value, y_value in zip(baseline, base_x, base_y, strict=True):
                axes.annotate(_uniform_label(record), (x_value, y_value), textcoords="offset points", xytext=(4, -10),
                              fontsize=8)
        if limit is not None:
            axes.axvline(limit / scale, ls="--", color="tab:red", lw=1, label=f"{title} limit")
        if float_accuracy is not None:
            axes.axhline(100 * float_accuracy, ls=":", color="tab:green", lw=1.2,
                         label=f"float model {100 * float_accuracy:.2f} %")
        if best is not None and None not in (number(best.get(key)), number(best.get("validation_accuracy"))):
            axes.scatter([number(best[key]) / scale], [100 * number(best["validation_accuracy"])], marker="*",
                         s=220, color="gold", edgecolor="black", zorder=5,
                         label=f"best{'' if best_is_final else ' so far'} (trial {best.get('trial')})")
        if not ok and not baseline:
            axes.text(0.5, 0.5, "no successful trial yet", transform=axes.transAxes, ha="center", va="center",
                      bbox={"facecolor": "white", "edgecolor": "none"})
        if log_scale:
            import matplotlib.ticker

            axes.set_xscale("log")
            # Labelled ticks at 1, 1.5, 2, 3, 5, 7 per decade: a search spans less than a decade or two.
            axes.xaxis.set_major_locator(matplotlib.ticker.LogLocator(subs=(1.0, 1.5, 2.0, 3.0, 5.0, 7.0)))
            axes.xaxis.set_major_formatter(matplotlib.ticker.FormatStrFormatter("%g"))
            axes.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
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


# -- markdown -----------------------------------------------------------------------------------------------------


def _limits_text(limits: dict) -> str:
    parts = []
    for key, label, fmt in (("size_bytes", "size", format_size), ("latency_seconds", "latency", format_seconds),
                            ("energy_joules", "energy", lambda v: _format_quantity(v, _ENERGY_UNITS)),
                            ("throughput_per_second", "throughput", lambda v: f"{number(v):.4g} /s")):
        if number(limits.get(key)) is not None:
            parts.append(f"{label} {'>=' if key == 'throughput_per_second' else '<='} {fmt(limits[key])}")
    return ", ".join(parts) or "none"


def _target_text(target: dict) -> str:
    if not target:
        return "–"
    name, kind = target.get("name", "?"), target.get("kind", "?")
    details = []
    if "rows" in target and "cols" in target:
        details.append(f"{target['rows']}x{target['cols']} systolic array")
    if "bops_per_cycle" in target:
        details.append(f"{target['bops_per_cycle']:g} bit-ops/cycle")
    if number(target.get("clock_hz")) is not None:
        details.append(f"{target['clock_hz'] / 1e6:g} MHz")
    return f"{name} ({kind}{': ' + ', '.join(details) if details else ''})"


def _timings_lines(timings: dict, running: bool) -> list[str]:
    parts = {k: number(v) for k, v in timings.items() if k != "total" and number(v) is not None}
    keys = [k for k in _TIMING_ORDER if k in parts] + [k for k in parts if k not in _TIMING_ORDER]
    total = number(timings.get("total"))
    if total is None:
        total = sum(parts.values())
    rows = [[key.replace("_", " "), f"{parts[key]:.2f}", f"{100 * parts[key] / total:.1f} %" if total else "–"]
            for key in keys]
    other = total - sum(parts.values())
    if total and other > 0.005 * total:
        rows.append(["other", f"{other:.2f}", f"{100 * other / total:.1f} %"])
    rows.append(["**total**", f"**{total:.2f}**", "100 %" if total else "–"])
    title = "## Time split" + (" (so far)" if running else "")
    return [title, "", *_table(["phase", "seconds", "share"], rows, "lrr"), ""]


def _layer_lines(run: Run, best: dict, best_is_final: bool) -> list[str]:
    if best_is_final and run.best_config.get("layers"):
        layers = run.best_config["layers"]
        rows = [[i, layer.get("name", "?"), layer.get("bits", "–"), _join([layer.get("width")]),
                 _integer(layer.get("weights")), format_size(layer.get("size_bytes")), _integer(layer.get("cycles"))]
                for i, layer in enumerate(layers)]
        totals = {key: sum(number(layer.get(key)) or 0.0 for layer in layers)
                  for key in ("weights", "size_bytes", "cycles")}
        rows.append(["", "**total**", "", "", _integer(totals["weights"]), format_size(totals["size_bytes"]),
                     _integer(totals["cycles"])])
        return ["### Per layer", "", *_table(["#", "layer", "bits", "width", "weights", "size", "cycles"], rows,
                                             "rlrrrrr"), ""]
    # While the search runs there is no per-layer cost breakdown yet: show the configuration of the best trial.
    layers = run.search.get("layers") or []
    bits, widths = best.get("bits") or [], best.get("widths") or []
    rows = [[i, layer.get("name", "?"), layer.get("kind", "–"), bits[i] if i < len(bits) else "–",
             _join([widths[i]]) if i < len(widths) else "–", _integer(layer.get("weights"))]
            for i, layer in enumerate(layers)]
    note = ("(search running: best trial so far, before final training; per-layer size and cycles come with "
            "best_config.json)") if not best_is_final else "(best_config.json lists no layers: the configuration only)"
    return ["### Per layer", "", note, "",
            *_table(["#", "layer", "kind", "bits", "width", "weights at width 1"], rows, "rllrrr"), ""]


def _best_lines(run: Run) -> list[str]:
    best, best_is_final = _best_record(run)
    if best is None:
        return ["## Best configuration", "", "No successful feasible trial yet.", ""]
    float_test = number(best.get("float_test_accuracy"))
    if float_test is None:
        float_test = number((run.search.get("float") or {}).get("test_accuracy"))
    rows = [["trial", f"{best.get('trial', '–')} ({best.get('phase', '–')} phase)"],
            ["objective", f"{number(best.get('objective')):.4f}" if number(best.get("objective")) is not None
             else "–"],
            ["validation accuracy (short fine-tune)", _percent(best.get("validation_accuracy"))]]
    if best_is_final:
        test = number(best.get("test_accuracy"))
        versus = f" (float model {_percent(float_test)}, {100 * (test - float_test):+.2f} points)" if (
            test is not None and float_test is not None) else ""
        rows += [["validation accuracy (final training)", _percent(best.get("final_validation_accuracy"))],
                 ["test accuracy (final training)", _percent(test) + versus]]
    rows += [["size", f"{format_size(best.get('size_bytes'))}: {_times(best.get('size_reduction_vs_fip16'))} "
                      f"smaller than FiP16, {_times(best.get('size_reduction_vs_fp32'))} smaller than FP32"],
             ["latency", f"{format_seconds(best.get('latency_seconds'))} ({_integer(best.get('latency_cycles'))} "
                         f"cycles): {_times(best.get('speedup_vs_fip16'))} faster than FiP16"],
             ["energy", _format_quantity(best.get("energy_joules"), _ENERGY_UNITS)]]
    if best_is_final and best.get("export"):
        rows.append(["exported model", f"[{best['export']}]({best['export']})"])
    heading = "## Best configuration" if best_is_final else "## Best configuration so far"
    note = [] if best_is_final else ["(search running: best trial so far, before final training)", ""]
    return [heading, "", *note, *_table(["", ""], rows), "", *_layer_lines(run, best, best_is_final)]


def _front_lines(run: Run, key: str, title: str) -> list[str]:
    ok = [record for record in run.trials if is_ok(record)]
    front = [ok[i] for i in pareto_front([r["validation_accuracy"] for r in ok], [r.get(key) for r in ok])]
    if not front:
        return []
    rows = [[r.get("trial", "–"), r.get("phase", "–"), _percent(r["validation_accuracy"]),
             format_size(r.get("size_bytes")), format_seconds(r.get("latency_seconds")),
             "yes" if r.get("feasible", True) else "no", _join(r.get("bits")), _join(r.get("widths"))]
            for r in front]
    return [f"## Pareto front: validation accuracy vs {title}", "",
            *_table(["trial", "phase", "validation accuracy", "size", "latency", "feasible", "bits", "widths"], rows,
                    "rlrrrlll"), ""]


def _baseline_lines(run: Run) -> list[str]:
    if not run.baseline:
        return []
    ok = [record for record in run.trials if is_ok(record)]
    rows = []
    for record in sorted(run.baseline, key=lambda r: number(r.get("size_bytes")) or 0.0):
        size = number(record.get("size_bytes"))
        # The search's answer to this baseline: its most accurate trial no larger than the uniform model.
        rivals = [r for r in ok if size is not None and (number(r.get("size_bytes")) or math.inf) <= size]
        rival = max(rivals, key=lambda r: (r["validation_accuracy"], -r.get("trial", 0)), default=None)
        row = [_uniform_label(record), _percent(record.get("validation_accuracy")),
               _percent(record.get("test_accuracy")), format_size(size), format_seconds(record.get("latency_seconds"))]
        if rival is None:
            row += ["–", "–", "–", "–"]
        else:
            row += [rival.get("trial", "–"), _percent(rival["validation_accuracy"]),
                    format_size(rival.get("size_bytes")), format_seconds(rival.get("latency_seconds"))]
        rows.append(row)
    return ["## Uniform precision against the search", "",
            "Each uniform-precision model (every layer at one bit-width, widths 1) beside the search's most accurate "
            "trial of at most its size.", "",
            *_table(["uniform", "validation accuracy", "test accuracy (final training)", "size", "latency",
                     "search trial", "validation accuracy", "size", "latency"], rows, "lrrrrrrrr"), ""]


def markdown(run: Run) -> str:
    """The report (``report.md``) of a finished or running search, as markdown text.

    Sections: a header (model, dataset, target, limits, status, trials, search space, float model), the time split,
    the best configuration (or the best trial so far) with its per-layer table, the Pareto fronts (accuracy against
    size and against latency), the uniform-precision baseline beside the search, and the plots.

    Example:
        >>> print(markdown(load_run("runs/digits")))
    """
    search = run.search
    running = run.status != "finished"
    ok = [record for record in run.trials if is_ok(record)]
    phases = {}
    for record in run.trials:
        phases[record.get("phase", "?")] = phases.get(record.get("phase", "?"), 0) + 1
    done = f"{len(run.trials)}" + (f" of {run.planned_trials} planned" if run.planned_trials else "")
    by_phase = f" ({', '.join(f'{count} {phase}' for phase, count in phases.items())})" if phases else ""
    trial_counts = (f"{done}{by_phase}: {len(ok)} ok, {len(run.trials) - len(ok)} failed, "
                    f"{sum(1 for r in ok if not r.get('feasible', True))} infeasible")
    space = search.get("space") or {}
    float_model = search.get("float") or {}
    header_rows = [["status", run.status], ["model", search.get("model", "–")],
                   ["dataset", search.get("dataset", "–")], ["target", _target_text(search.get("target") or {})],
                   ["limits", _limits_text(search.get("limits") or {})], ["seed", search.get("seed", "–")],
                   ["trials", trial_counts]]
    if number(space.get("log10_size_before")) is not None:
        pruned = f", 10^{space['log10_size_after']:.2f} after pruning" if (
            space.get("pruned") and number(space.get("log10_size_after")) is not None) else " (not pruned)"
        header_rows.append(["search space", f"10^{space['log10_size_before']:.2f} configurations{pruned}"])
    header_rows.append(["float model", f"validation accuracy {_percent(float_model.get('validation_accuracy'))}, "
                                       f"test accuracy {_percent(float_model.get('test_accuracy'))}"
                                       + (f" ({float_model['source']})" if float_model.get("source") else "")])
    header_rows.append(["reference sizes", f"FiP16 {format_size(search.get('fip16_size_bytes'))}, "
                                           f"FP32 {format_size(search.get('fp32_size_bytes'))}"])
    lines = [f"# mpqjax search: {search.get('model', '?')} on {search.get('dataset', '?')}", ""]
    if running:
        lines += ["**Search running**: this report shows the trials finished so far.", ""]
    lines += [*_table(["", ""], header_rows), ""]
    if search.get("timings"):
        lines += _timings_lines(search["timings"], running)
    lines += _best_lines(run)
    lines += _front_lines(run, "size_bytes", "size")
    lines += _front_lines(run, "latency_seconds", "latency")
    lines += _baseline_lines(run)
    lines += ["## Plots", "", "Trials, Pareto fronts, limits and baseline: [pareto.png](pareto.png)", "",
              "![accuracy against size and latency](pareto.png)", ""]
    if run.hessian is not None:
        lines += ["Per-layer Hessian traces: [hessian.png](hessian.png)", "", "![Hessian traces](hessian.png)", ""]
    lines += ["All trials: [trials.csv](trials.csv)", ""]
    return "\n".join(lines)


def write(out_dir: str | os.PathLike) -> list[str]:
    """Regenerate a search folder's derived files: trials.csv, pareto.png, hessian.png (with hessian.json), report.md.

    Each file is written atomically, so a reader never sees half of one; works while the search is still running.

    Args:
        out_dir: the search's output folder.

    Returns:
        The paths written, report.md last.

    Raises:
        ValueError: not a search folder (see `load_run`).

    Example:
        >>> write("runs/digits")
        ['runs/digits/trials.csv', 'runs/digits/pareto.png', 'runs/digits/hessian.png', 'runs/digits/report.md']
    """
    run = load_run(out_dir)
    join = lambda name: os.path.join(run.out_dir, name)
    written = [join("trials.csv"), join("pareto.png")]
    write_trials_csv(written[0], run.trials)
    plot_pareto(written[1], run)
    if run.hessian is not None:
        written.append(join("hessian.png"))
        plot_hessian(written[-1], run.hessian)
    written.append(join("report.md"))
    store.atomic_write_text(written[-1], markdown(run))
    return written
