"""The report of a search (``report.md``): header, time split, best configuration, Pareto fronts and baseline.

Example:
    >>> print(markdown(load_run("runs/digits")))
"""

from __future__ import annotations

import math

from mpqjax.report.format import (
    MISSING,
    format_count,
    format_energy,
    format_factor,
    format_percent,
    format_seconds,
    format_size,
    format_values,
    format_width,
    markdown_table,
)
from mpqjax.report.pareto import pareto_front
from mpqjax.report.records import best_record, resolution_of, selection_note, uniform_label
from mpqjax.store.run_folder import FILES, PHASES, Run, is_ok, number
from mpqjax.store.selection import RULE, choose

__all__ = ["markdown"]


def _limits_text(limits: dict) -> str:
    parts = []
    for key, label, fmt in (("size_bytes", "size", format_size), ("latency_seconds", "latency", format_seconds),
                            ("energy_joules", "energy", format_energy),
                            ("throughput_per_second", "throughput", lambda v: f"{number(v):.4g} /s"),
                            ("bops", "bit-operations", lambda v: f"{number(v) / 1e6:.4g} M")):
        if number(limits.get(key)) is not None:
            parts.append(f"{label} {'>=' if key == 'throughput_per_second' else '<='} {fmt(limits[key])}")
    return ", ".join(parts) or "none"


def _target_text(target: dict) -> str:
    if not target:
        return MISSING
    name, kind = target.get("name", "?"), target.get("kind", "?")
    details = []
    if "rows" in target and "cols" in target:
        details.append(f"{target['rows']}x{target['cols']} systolic array")
    if "bops_per_cycle" in target:
        details.append(f"{target['bops_per_cycle']:g} bit-ops/cycle")
    if number(target.get("clock_hz")) is not None:
        details.append(f"{target['clock_hz'] / 1e6:g} MHz")
    return f"{name} ({kind}{': ' + ', '.join(details) if details else ''})"


def _header_lines(run: Run) -> list[str]:
    """The title and the table of what was searched: model, dataset, target, limits, trials, space, float model."""
    search = run.search
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
    rows = [["status", run.status], ["model", search.get("model", MISSING)],
            ["dataset", search.get("dataset", MISSING)], ["target", _target_text(search.get("target") or {})],
            ["limits", _limits_text(search.get("limits") or {})], ["seed", search.get("seed", MISSING)],
            ["trials", trial_counts]]
    cost = search.get("search_cost") or {}
    if number(cost.get("seconds")) is not None:
        finetunes = cost.get("finetunes", MISSING)
        share = number(cost.get("training_share"))
        in_steps = f", {100 * share:.1f} % of the trials' time in training steps" if share is not None else ""
        rows.append(["search method", f"{cost.get('method', MISSING)}: {cost['seconds']:.1f} s, {finetunes} "
                                      f"fine-tune{'' if finetunes == 1 else 's'} ({cost.get('backend', MISSING)})"
                                      f"{in_steps}"])
    if number(space.get("log10_size_before")) is not None:
        pruned = f", 10^{space['log10_size_after']:.2f} after pruning" if (
            space.get("pruned") and number(space.get("log10_size_after")) is not None) else " (not pruned)"
        rows.append(["search space", f"10^{space['log10_size_before']:.2f} configurations{pruned}"])
    rows.append(["float model", f"validation accuracy {format_percent(float_model.get('validation_accuracy'))}, "
                                f"test accuracy {format_percent(float_model.get('test_accuracy'))}"
                                + (f" ({float_model['source']})" if float_model.get("source") else "")])
    rows.append(["reference sizes", f"FiP16 {format_size(search.get('fip16_size_bytes'))}, "
                                    f"FP32 {format_size(search.get('fp32_size_bytes'))}"])
    lines = [f"# mpqjax search: {search.get('model', '?')} on {search.get('dataset', '?')}", ""]
    if run.status != "finished":
        lines += ["**Search running**: this report shows the trials finished so far.", ""]
    return [*lines, *markdown_table(["", ""], rows), ""]


def _timings_lines(timings: dict, running: bool) -> list[str]:
    """The time split: one row per phase (pipeline order, then any other key), the rest as "other", the total."""
    parts = {k: number(v) for k, v in timings.items() if k != "total" and number(v) is not None}
    keys = [k for k in PHASES if k in parts] + [k for k in parts if k not in PHASES]
    total = number(timings.get("total"))
    if total is None:
        total = sum(parts.values())
    rows = [[key.replace("_", " "), f"{parts[key]:.2f}", f"{100 * parts[key] / total:.1f} %" if total else MISSING]
            for key in keys]
    other = total - sum(parts.values())
    if total and other > 0.005 * total:
        rows.append(["other", f"{other:.2f}", f"{100 * other / total:.1f} %"])
    rows.append(["**total**", f"**{total:.2f}**", "100 %" if total else MISSING])
    title = "## Time split" + (" (so far)" if running else "")
    return [title, "", *markdown_table(["phase", "seconds", "share"], rows, "lrr"), ""]


def _layer_lines(run: Run, best: dict, best_is_final: bool) -> list[str]:
    """The per-layer table: cost per layer from best_config.json, or the best trial's configuration so far."""
    if best_is_final and run.best_config.get("layers"):
        layers = run.best_config["layers"]
        rows = [[i, layer.get("name", "?"), layer.get("bits", MISSING), format_width(layer.get("width")),
                 format_count(layer.get("weights")), format_size(layer.get("size_bytes")),
                 format_count(layer.get("cycles"))]
                for i, layer in enumerate(layers)]
        totals = {key: sum(number(layer.get(key)) or 0.0 for layer in layers)
                  for key in ("weights", "size_bytes", "cycles")}
        rows.append(["", "**total**", "", "", format_count(totals["weights"]), format_size(totals["size_bytes"]),
                     format_count(totals["cycles"])])
        return ["### Per layer", "",
                *markdown_table(["#", "layer", "bits", "width", "weights", "size", "cycles"], rows, "rlrrrrr"), ""]
    # While the search runs there is no per-layer cost breakdown yet: show the configuration of the best trial.
    layers = run.search.get("layers") or []
    bits, widths = best.get("bits") or [], best.get("widths") or []
    rows = [[i, layer.get("name", "?"), layer.get("kind", MISSING), bits[i] if i < len(bits) else MISSING,
             format_width(widths[i]) if i < len(widths) else MISSING, format_count(layer.get("weights"))]
            for i, layer in enumerate(layers)]
    note = ("(search running: best trial so far, before final training; per-layer size and cycles come with "
            f"{FILES['best']})") if not best_is_final else f"({FILES['best']} lists no layers: the configuration only)"
    return ["### Per layer", "", note, "",
            *markdown_table(["#", "layer", "kind", "bits", "width", "weights at width 1"], rows, "rllrrr"), ""]


def _best_lines(run: Run) -> list[str]:
    """The best configuration (or the best trial so far): accuracy, size, latency, energy, then its layers."""
    best, best_is_final = best_record(run)
    if best is None:
        return ["## Best configuration", "", "No successful feasible trial yet.", ""]
    float_test = number(best.get("float_test_accuracy"))
    if float_test is None:
        float_test = number((run.search.get("float") or {}).get("test_accuracy"))
    objective = number(best.get("objective"))
    rows = [["trial", f"{best.get('trial', MISSING)} ({best.get('phase', MISSING)} phase)"],
            ["how it was chosen", selection_note(run)],
            ["objective", f"{objective:.4f}" if objective is not None else MISSING],
            ["validation accuracy (short fine-tune)", format_percent(best.get("validation_accuracy"))]]
    if best_is_final:
        test = number(best.get("test_accuracy"))
        versus = f" (float model {format_percent(float_test)}, {100 * (test - float_test):+.2f} points)" if (
            test is not None and float_test is not None) else ""
        rows += [["validation accuracy (final training)", format_percent(best.get("final_validation_accuracy"))],
                 ["test accuracy (final training)", format_percent(test) + versus]]
    rows += [["size", f"{format_size(best.get('size_bytes'))}: {format_factor(best.get('size_reduction_vs_fip16'))} "
                      f"smaller than FiP16, {format_factor(best.get('size_reduction_vs_fp32'))} smaller than FP32"],
             ["latency", f"{format_seconds(best.get('latency_seconds'))} "
                         f"({format_count(best.get('latency_cycles'))} cycles): "
                         f"{format_factor(best.get('speedup_vs_fip16'))} faster than FiP16"],
             ["energy", format_energy(best.get("energy_joules"))]]
    if best_is_final and best.get("export"):
        rows.append(["exported model", f"[{best['export']}]({best['export']})"])
    heading = "## Best configuration" if best_is_final else "## Best configuration so far"
    note = [] if best_is_final else ["(search running: best trial so far, before final training)", ""]
    return [heading, "", *note, *markdown_table(["", ""], rows), "", f"The selection rule: {RULE}.", "",
            *_layer_lines(run, best, best_is_final)]


def _off_front_reason(run: Run, best: dict, front: list[dict], key: str, title: str) -> str:
    """Why the best configuration is not on a front: the front's trial that is at least as good in both, and why
    the selection did not prefer it (a limit broken, or an accuracy tied within the resolution at a larger size)."""
    accuracy, cost = number(best.get("validation_accuracy")), number(best.get(key))
    if accuracy is None or cost is None:
        return f"its validation accuracy or {title} is unknown"
    rival = next((r for r in front if r["validation_accuracy"] >= accuracy and (number(r.get(key)) or 0.0) <= cost),
                 None)
    if rival is None:  # not expected: some front trial is at least as good as every trial
        return "no trial of the front is as good in both"
    name, versus = f"trial {rival.get('trial')}", (f"{format_percent(rival['validation_accuracy'])} against "
                                                    f"{format_percent(accuracy)}")
    if rival["validation_accuracy"] == accuracy and number(rival.get(key)) == cost:
        return f"{name} has the same validation accuracy and {title}; the front lists one of equal points"
    if not rival.get("feasible", True):
        return f"{name} is more accurate ({versus}) at no larger {title}, but breaks a limit"
    tied = {r.get("trial") for r in choose(run.trials, resolution=resolution_of(run) or 0.0).tied}
    if rival.get("trial") in tied and best.get("trial") in tied:
        larger = (f"larger ({format_size(rival.get('size_bytes'))} against {format_size(best.get('size_bytes'))})"
                  if (number(rival.get("size_bytes")) or 0.0) > (number(best.get("size_bytes")) or 0.0)
                  else f"as large and slower ({format_seconds(rival.get('latency_seconds'))} against "
                       f"{format_seconds(best.get('latency_seconds'))})")
        return (f"{name} is more accurate ({versus}) by less than one validation example, a tie for the selection, "
                f"and {larger}")
    return f"{name} is more accurate ({versus}) at no larger {title}"


def _front_lines(run: Run, key: str, title: str) -> list[str]:
    """The Pareto front of the ok trials against one cost, cheapest first, the best configuration marked (or why it
    is not on the front said below the table); nothing when there is no ok trial."""
    ok = [record for record in run.trials if is_ok(record)]
    front = [ok[i] for i in pareto_front([r["validation_accuracy"] for r in ok], [r.get(key) for r in ok])]
    if not front:
        return []
    best, _ = best_record(run)
    best_trial_number = None if best is None else best.get("trial")
    rows = [[f"{r.get('trial', MISSING)}{' (best)' if r.get('trial') == best_trial_number else ''}",
             r.get("phase", MISSING), format_percent(r["validation_accuracy"]), format_size(r.get("size_bytes")),
             format_seconds(r.get("latency_seconds")), "yes" if r.get("feasible", True) else "no",
             format_values(r.get("bits")), format_values(r.get("widths"))]
            for r in front]
    lines = [f"## Pareto front: validation accuracy vs {title}", "",
             *markdown_table(["trial", "phase", "validation accuracy", "size", "latency", "feasible", "bits", "widths"],
                             rows, "rlrrrlll"), ""]
    if best is not None and best_trial_number not in {r.get("trial") for r in front}:
        lines += [f"The best configuration, trial {best_trial_number}, is not on this front: "
                  f"{_off_front_reason(run, best, front, key, title)}.", ""]
    return lines


def _baseline_lines(run: Run) -> list[str]:
    """Each uniform-precision model beside the search's most accurate trial of at most its size."""
    if not run.baseline:
        return []
    ok = [record for record in run.trials if is_ok(record)]
    rows = []
    for record in sorted(run.baseline, key=lambda r: number(r.get("size_bytes")) or 0.0):
        size = number(record.get("size_bytes"))
        rivals = [r for r in ok if size is not None and (number(r.get("size_bytes")) or math.inf) <= size]
        rival = max(rivals, key=lambda r: (r["validation_accuracy"], -r.get("trial", 0)), default=None)
        row = [uniform_label(record), format_percent(record.get("validation_accuracy")),
               format_percent(record.get("test_accuracy")), format_size(size),
               format_seconds(record.get("latency_seconds"))]
        if rival is None:
            row += [MISSING] * 4
        else:
            row += [rival.get("trial", MISSING), format_percent(rival["validation_accuracy"]),
                    format_size(rival.get("size_bytes")), format_seconds(rival.get("latency_seconds"))]
        rows.append(row)
    return ["## Uniform precision against the search", "",
            "Each uniform-precision model (every layer at one bit-width, widths 1) beside the search's most accurate "
            "trial of at most its size.", "",
            *markdown_table(["uniform", "validation accuracy", "test accuracy (final training)", "size", "latency",
                             "search trial", "validation accuracy", "size", "latency"], rows, "lrrrrrrrr"), ""]


def _plot_lines(run: Run) -> list[str]:
    """Links to the plots and the trial table, beside report.md in the folder."""
    pareto, hessian, trials = FILES["pareto"], FILES["hessian_plot"], FILES["csv"]
    lines = ["## Plots", "", f"Trials, Pareto fronts, limits and baseline: [{pareto}]({pareto})", "",
             f"![accuracy against size and latency]({pareto})", ""]
    if run.hessian is not None:
        lines += [f"Per-layer Hessian traces: [{hessian}]({hessian})", "", f"![Hessian traces]({hessian})", ""]
    return [*lines, f"All trials: [{trials}]({trials})", ""]


def markdown(run: Run) -> str:
    """The report (``report.md``) of a finished or running search, as markdown text.

    Sections: a header (model, dataset, target, limits, status, trials, search space, float model), the time split,
    the best configuration (or the best trial so far) with its per-layer table, the Pareto fronts (accuracy against
    size and against latency), the uniform-precision baseline beside the search, and the plots.

    Args:
        run: a `Run` from `load_run`.

    Returns:
        The markdown text; the plots and the CSV are linked by their file names in the same folder.

    Example:
        >>> print(markdown(load_run("runs/digits")))
    """
    lines = _header_lines(run)
    if run.search.get("timings"):
        lines += _timings_lines(run.search["timings"], run.status != "finished")
    lines += _best_lines(run)
    lines += _front_lines(run, "size_bytes", "size")
    lines += _front_lines(run, "latency_seconds", "latency")
    lines += _baseline_lines(run)
    lines += _plot_lines(run)
    return "\n".join(lines)
