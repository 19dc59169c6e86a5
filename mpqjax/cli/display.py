"""What the commands print: the search's progress bar and summary, the cost table and the Hessian table."""

from __future__ import annotations

import sys
import time
from typing import TextIO

from mpqjax.report import format_seconds, format_size
from mpqjax.store.run_folder import FILES

__all__ = ["ProgressBar", "print_cost", "print_hessian", "print_summary"]


class ProgressBar:
    """A search's progress (`mpqjax.search.run`'s ``progress``): one status line on a terminal, rewritten in place,
    or a line every few seconds in a log file; a line per phase.

    Args:
        stream: where to write (``sys.stderr`` for the command).
        width: characters of the bar.
    """

    def __init__(self, stream: TextIO, *, width: int = 24):
        self.stream, self.width = stream, width
        self.interactive = stream.isatty()
        self.last_line = 0.0

    def __call__(self, event: dict) -> None:
        if event["event"] == "phase":
            self._print(f"{event['message']} ...", final=True)
        elif event["event"] == "trial":
            done, total, best = event["trial"], event["trials"], event["best"]
            filled = int(self.width * done / total)
            text = f"trial {done}/{total} [{'#' * filled}{'.' * (self.width - filled)}]"
            if best is not None:
                text += (f" best {best['objective']:.4f} (acc {best['validation_accuracy']:.4f}, "
                         f"{format_size(best['size_bytes'])}, {format_seconds(best['latency_seconds'])})")
            else:
                text += " best -"
            text += f" elapsed {event['elapsed']:.0f}s, ~{event['eta']:.0f}s left"
            now = time.monotonic()
            if self.interactive or done == total or now - self.last_line > 10:
                self.last_line = now
                self._print(text, final=done == total)

    def _print(self, text: str, *, final: bool) -> None:
        if self.interactive:
            self.stream.write("\r\x1b[2K" + text + ("\n" if final else ""))
        else:
            self.stream.write(text + "\n")
        self.stream.flush()


def print_summary(result, stream: TextIO | None = None) -> None:
    """A finished search (`mpqjax.search.SearchResult`): the best configuration per layer, accuracies, cost, time."""
    out = stream or sys.stdout
    best, timings = result.best, result.timings
    print(f"best configuration: trial {best['trial']} of {len(result.trials)}", file=out)
    print(f"{'layer':<28} {'bits':>4} {'width':>6} {'weights':>9} {'size':>10} {'cycles':>9}", file=out)
    for row in best["layers"]:
        print(f"{row['name'][:28]:<28} {row['bits']:>4} {row['width']:>6.3g} {row['weights']:>9,} "
              f"{format_size(row['size_bytes']):>10} {row['cycles']:>9,.0f}", file=out)
    print(f"accuracy: validation {best['validation_accuracy']:.4f} after the trial's fine-tune, "
          f"{best['final_validation_accuracy']:.4f} after the final training; test {best['test_accuracy']:.4f} "
          f"(float model {best['float_test_accuracy']:.4f})", file=out)
    print(f"size {format_size(best['size_bytes'])}: {best['size_reduction_vs_fip16']:.2f}x smaller than FiP16, "
          f"{best['size_reduction_vs_fp32']:.2f}x smaller than FP32; latency {format_seconds(best['latency_seconds'])}"
          f", {best['speedup_vs_fip16']:.2f}x faster than FiP16", file=out)
    total = max(timings.get("total", 0.0), 1e-9)
    split = ", ".join(f"{name} {seconds:.1f}s ({100 * seconds / total:.1f}%)" for name, seconds in timings.items()
                      if name != "total" and seconds > 0)
    print(f"time {total:.1f}s: {split}", file=out)
    files = ", ".join(FILES[name] for name in ("best", "model", "report", "pareto", "trials"))
    print(f"results in {result.out_dir}: {files}", file=out)


def print_cost(model: str, target, report: dict, *, fpga: bool, stream: TextIO | None = None) -> None:
    """A configuration's cost (`mpqjax.cost.cost_report`): a row per layer, then size, latency, BOPs and energy."""
    out = stream or sys.stdout
    header = f"{'#':>3}  {'layer':<28} {'kind':<9} {'bits':>4} {'width':>6} {'in':>5} {'out':>5} {'weights':>9}"
    header += f" {'bytes':>9} {'MACs':>11}" + (f" {'mult/DSP':>8}" if fpga else "") + f" {'cycles':>11}"
    print(f"{model} on {target.name}", file=out)
    print(header, file=out)
    for index, row in enumerate(report["layers"]):
        line = f"{index:>3}  {row['name'][:28]:<28} {row['kind']:<9} {row['bits']:>4} {row['width']:>6.3g}"
        line += f" {row['in_channels']:>5} {row['out_channels']:>5} {row['weights']:>9,} {row['size_bytes']:>9,.0f}"
        line += f" {row['macs']:>11,}" + (f" {row['mults_per_dsp']:>8}" if fpga else "")
        cycles = row["latency_cycles"]
        print(line + (f" {cycles:>11,.0f}" if fpga else f" {cycles:>11.4g}"), file=out)
    totals = report["totals"]
    print(f"size     {totals['size_bytes']:,.0f} bytes ({totals['size_bytes'] / 1e6:.4g} MB): "
          f"{totals['size_reduction_vs_fip16']:.3g}x smaller than FiP16, "
          f"{totals['size_reduction_vs_fp32']:.3g}x smaller than FP32", file=out)
    print(f"latency  {totals['latency_cycles']:,.0f} cycles = {totals['latency_seconds'] * 1e3:.4g} ms "
          f"at {target.clock_hz / 1e6:g} MHz: {totals['speedup_vs_fip16']:.3g}x faster than FiP16", file=out)
    print(f"BOPs     {totals['bops']:.4g}   MACs {totals['macs']:,}   energy {totals['energy_joules'] * 1e6:.4g} uJ",
          file=out)


def print_hessian(summary: dict, stream: TextIO | None = None) -> None:
    """A sensitivity analysis (`mpqjax.search.analyze_sensitivity`'s summary): the probes, a row per layer (trace,
    trace per weight, standard error, cluster, candidate bits) and the space's size before and after pruning."""
    out = stream or sys.stdout
    rows, run = summary["layers"], summary["hessian"]
    print(f"{run['probes']} probes ({'converged' if run['converged'] else 'probe budget reached'}) "
          f"on {run['examples']} training examples in {run['batches']} batches", file=out)
    print(f"{'#':>3}  {'layer':<28} {'weights':>9} {'trace':>11} {'trace/weight':>12} {'std err':>9} "
          f"{'cluster':>7}  candidate bits", file=out)
    for index, row in enumerate(rows):
        error = f"{row['std_error']:>9.3g}" if row["std_error"] is not None else f"{'-':>9}"
        cluster = row["cluster"] if row["cluster"] >= 0 else "fixed"
        candidates = "{" + ", ".join(map(str, row["candidate_bits"])) + "}"
        print(f"{index:>3}  {row['name'][:28]:<28} {row['weights']:>9,} {row['trace']:>11.4g} "
              f"{row['trace_per_weight']:>12.4g} {error} {cluster:>7}  {candidates}", file=out)
    print(f"search space: 10^{summary['log10_size_before']:.2f} configurations before pruning, "
          f"10^{summary['log10_size_after']:.2f} after", file=out)
