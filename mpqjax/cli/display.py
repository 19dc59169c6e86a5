"""What the commands print: the search's progress bar and summary, the cost table and the Hessian table."""

from __future__ import annotations

import os
import shlex
import sys
import threading
import time
from typing import TextIO

from mpqjax.report import format_seconds, format_size, format_width
from mpqjax.store.files import read_jsonl
from mpqjax.store.run_folder import FILES, file_path

__all__ = ["RESULT_FILES", "ProgressBar", "interrupted", "print_cost", "print_hessian", "print_summary"]

# The files of a finished search, as its summary lists them: what a user opens first, then the rest of the folder.
RESULT_FILES = ("best", "model", "report", "pareto", "hessian_plot", "trials", "csv", "baseline", "search", "hessian",
                "float", "state")


class ProgressBar:
    """A search's progress (`mpqjax.search.run`'s ``progress``): the output folder first, a line per phase, then one
    status line per trial, rewritten in place on a terminal, or a line every few seconds in a log file.

    A phase line counts its seconds while the phase runs (float training and the Hessian take tens of seconds with
    no trial to show): rewritten every ``tick`` seconds on a terminal, repeated every ten seconds in a log. Use it
    as a context manager (or call `close`) so the counting stops with the search, however it ends.

    Trials are numbered from 0 as in ``trials.jsonl``; the bar counts the trials done.

    Args:
        stream: where to write (``sys.stderr`` for the command).
        width: characters of the bar.
        enabled: False prints nothing (``--quiet``).
        tick: seconds between the rewrites of a running phase's line.
    """

    def __init__(self, stream: TextIO, *, width: int = 24, enabled: bool = True, tick: float = 1.0):
        self.stream, self.width, self.enabled, self.tick = stream, width, enabled, tick
        self.interactive = stream.isatty()
        self.last_line = 0.0
        self._lock = threading.Lock()
        self._phase: tuple[str, float] | None = None  # the running phase's message and start
        self._stopped = threading.Event()
        self._ticker: threading.Thread | None = None

    def __call__(self, event: dict) -> None:
        if not self.enabled:
            return
        with self._lock:
            self._end_phase()
            if event["event"] == "start":
                self._print(event["message"], final=True)
            elif event["event"] == "phase":
                self._phase = (event["message"], time.monotonic())
                self._print(f"{event['message']} ...", final=not self.interactive)
                if self._ticker is None:
                    self._ticker = threading.Thread(target=self._count_seconds, name="progress", daemon=True)
                    self._ticker.start()
            elif event["event"] == "trial":
                self._trial(event)

    def close(self) -> None:
        """End the running phase's line and stop counting (a second call does nothing)."""
        self._stopped.set()
        if self._ticker is not None:
            self._ticker.join()
            self._ticker = None
        with self._lock:
            self._end_phase()

    def __enter__(self) -> ProgressBar:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def _trial(self, event: dict) -> None:
        done, total, best = event["done"], event["trials"], event["best"]
        filled = int(self.width * done / total)
        text = f"trial {event['trial']}: {done}/{total} done [{'#' * filled}{'.' * (self.width - filled)}]"
        if best is not None:
            text += (f" best: trial {best['trial']}, {best['objective']:.4f} (acc {best['validation_accuracy']:.4f}, "
                     f"{format_size(best['size_bytes'])}, {format_seconds(best['latency_seconds'])})")
        else:
            text += " best: -"
        left = "time left: estimating" if event["eta"] is None else f"~{event['eta']:.0f}s left"
        text += f"; elapsed {event['elapsed']:.0f}s, {left}"
        now = time.monotonic()
        if self.interactive or done == total or now - self.last_line > 10:
            self.last_line = now
            self._print(text, final=done == total)

    def _end_phase(self) -> None:
        if self._phase is not None and self.interactive:
            message, started = self._phase
            self._print(f"{message} ... {time.monotonic() - started:.0f}s", final=True)
        self._phase = None

    def _count_seconds(self) -> None:
        while not self._stopped.wait(self.tick):
            with self._lock:
                if self._phase is None:
                    continue
                message, started = self._phase
                now = time.monotonic()
                if self.interactive:
                    self._print(f"{message} ... {now - started:.0f}s", final=False)
                elif now - max(started, self.last_line) >= 10:
                    self.last_line = now
                    self._print(f"{message} ... {now - started:.0f}s", final=True)

    def _print(self, text: str, *, final: bool) -> None:
        if self.interactive:
            self.stream.write("\r\x1b[2K" + text + ("\n" if final else ""))
        else:
            self.stream.write(text + "\n")
        self.stream.flush()


def interrupted(out_dir: str | os.PathLike | None) -> str:
    """What a search stopped by Ctrl-C says: after which trial (numbered from 0), and the command that resumes it.

    Args:
        out_dir: the search's output folder, or None when it was not chosen yet.
    """
    if out_dir is None or not os.path.isfile(file_path(out_dir, "search")):
        return "interrupted before the search started; nothing was written"
    try:
        logged = len(read_jsonl(file_path(out_dir, "trials")))
    except (ValueError, OSError):
        logged = 0
    where = f"after trial {logged - 1}" if logged else "before the first trial"
    return f"interrupted {where}; resume with: mpqjax search --out {shlex.quote(os.fspath(out_dir))} --resume"


def print_summary(result, stream: TextIO | None = None) -> None:
    """A finished search (`mpqjax.search.SearchResult`): the best configuration per layer, accuracies, cost, time."""
    out = stream or sys.stdout
    best, timings = result.best, result.timings
    print(f"best configuration: trial {best['trial']} of {len(result.trials)}", file=out)
    if (best.get("selection") or {}).get("explanation"):  # how it was chosen (mpqjax.store.selection)
        print(f"chosen: {best['selection']['explanation']}", file=out)
    print(f"{'layer':<28} {'bits':>4} {'width':>6} {'weights':>9} {'size':>10} {'cycles':>9}", file=out)
    for row in best["layers"]:
        print(f"{row['name'][:28]:<28} {row['bits']:>4} {format_width(row['width']):>6} {row['weights']:>9,} "
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
    share = (getattr(result, "search_cost", None) or {}).get("training_share")
    in_steps = f"; trials {100 * share:.1f}% in training steps" if share is not None else ""
    print(f"time {total:.1f}s: {split}{in_steps}", file=out)
    written = [FILES[name] for name in RESULT_FILES if os.path.isfile(file_path(result.out_dir, name))]
    print(f"results in {result.out_dir}: {', '.join(written)}", file=out)


def print_cost(model: str, target, report: dict, *, fpga: bool, stream: TextIO | None = None) -> None:
    """A configuration's cost (`mpqjax.cost.cost_report`): a row per layer, then size, latency, BOPs and energy."""
    out = stream or sys.stdout
    header = f"{'#':>3}  {'layer':<28} {'kind':<9} {'bits':>4} {'width':>6} {'in':>5} {'out':>5} {'weights':>9}"
    header += f" {'bytes':>9} {'MACs':>11}" + (f" {'mult/DSP':>8}" if fpga else "") + f" {'cycles':>11}"
    print(f"{model} on {target.name}", file=out)
    print(header, file=out)
    for index, row in enumerate(report["layers"]):
        line = f"{index:>3}  {row['name'][:28]:<28} {row['kind']:<9} {row['bits']:>4} {format_width(row['width']):>6}"
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
