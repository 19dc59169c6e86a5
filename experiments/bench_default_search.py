"""The default search's time on this checkout against a reference checkout, runs alternated on the same machine.

Runs ``mpqjax search`` with no arguments (digits_cnn on digits, 60 trials, 90 final epochs) from each source tree in
turn, ``--repeats`` times each, after one warm-up run per tree (float model and compilation caches filled), and
reports the median seconds of each phase (``search.json``'s ``timings``), the trials' share of time in training steps
where the tree records it, and whether both trees found the same trials.

    git worktree add /tmp/reference <commit>
    python experiments/bench_default_search.py --reference /tmp/reference --out experiments/results/x.json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PHASES = ("hessian", "evaluations", "optimiser", "final_training")


def run_search(tree: str, out_dir: str, options: list[str]) -> dict:
    environment = dict(os.environ, PYTHONPATH=tree)
    subprocess.run([sys.executable, "-m", "mpqjax.cli", "search", "--quiet", "--out", out_dir, *options], cwd=tree,
                   env=environment, check=True, stdout=subprocess.DEVNULL)
    with open(os.path.join(out_dir, "search.json")) as handle:
        meta = json.load(handle)
    with open(os.path.join(out_dir, "trials.jsonl")) as handle:
        trials = [json.loads(line) for line in handle if line.strip()]
    timed = {key: value for key, value in meta["timings"].items() if key in PHASES}
    search_time = sum(value for key, value in meta["timings"].items() if key not in ("total", "baseline"))
    share = (meta.get("search_cost") or {}).get("training_share")
    untimed = [{key: value for key, value in trial.items() if key not in ("seconds", "training_seconds")}
               for trial in trials]
    return {"phases": timed, "search_seconds": search_time, "training_share": share, "trials": untimed}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--reference", required=True, help="a checkout of the reference version")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="6 trials, 2 final epochs, one repeat: checks the script")
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    options = ["--trials", "6", "--n-initial", "3", "--final-epochs", "2"] if args.quick else []
    args.repeats = 1 if args.quick else args.repeats
    trees = {"this": HERE, "reference": os.path.abspath(args.reference)}
    runs = {name: [] for name in trees}
    with tempfile.TemporaryDirectory() as work:
        for name, tree in trees.items():  # warm-up: fills the float-model and compilation caches
            run_search(tree, os.path.join(work, f"{name}-warmup"), options)
        for repeat in range(args.repeats):
            for name, tree in trees.items():
                runs[name].append(run_search(tree, os.path.join(work, f"{name}-{repeat}"), options))
    summary = {}
    for name, results in runs.items():
        summary[name] = {
            "search_seconds": statistics.median(r["search_seconds"] for r in results),
            **{f"{phase}_seconds": statistics.median(r["phases"].get(phase, 0.0) for r in results)
               for phase in PHASES},
            "training_share": statistics.median(r["training_share"] for r in results)
            if all(r["training_share"] is not None for r in results) else None,
            "runs_seconds": [r["search_seconds"] for r in results],
        }
    result = {"repeats": args.repeats, "reference": args.reference, "summary": summary,
              "ratio_search_seconds": summary["reference"]["search_seconds"] / summary["this"]["search_seconds"],
              "ratio_evaluations_seconds": summary["reference"]["evaluations_seconds"]
              / summary["this"]["evaluations_seconds"],
              "same_trials": all(r["trials"] == runs["reference"][0]["trials"]
                                 for r in runs["this"] + runs["reference"])}
    text = json.dumps(result, indent=1)
    print(text)
    if args.out:
        with open(args.out, "w") as handle:
            handle.write(text + "\n")


if __name__ == "__main__":
    main()
