"""The search methods in one harness: k-means TPE against its peers at the same size limits, on the same model.

Every method runs `mpqjax.search.run` with the same settings (model, data, seed, target, fine-tune, final training)
except ``method``: the float model (trained once, then cached), the layer table, the splits, the cost model and the
limits are the same for all. Per size limit (a reduction against FiP16) and method it records the test accuracy
after the final training, the size, the FPGA latency, the validation accuracy of the chosen trial and the search
cost (seconds of Hessian, the method's own analysis (the supernet's training for mixprec and dnas), fine-tunes and
optimiser; the number of fine-tunes), with the float model and uniform precision (the ``uniform`` method) as
references. Every search runs for each seed of ``--seeds`` (the seed of everything: data split, float model, search,
final training), and ``summary`` gives each method's mean, standard deviation and range of test accuracy over them.

Prints one JSON line per search, writes everything to ``experiments/results/peers_<model>.json`` and plots test
accuracy against size, every method's mean with its range over the seeds (``peers_<model>.png``).

Usage:
    python experiments/peers.py                       # digits_cnn on digits, 6x and 8x, every method, seed 0
    python experiments/peers.py --reductions 6,7 --trials 60 --seeds 0,1,2          # the results page's table
    python experiments/peers.py --quick               # 6 trials, 1-epoch fine-tunes: checks the script
    python experiments/peers.py --methods hawq_ilp,rd_layers --reductions 8
    python experiments/peers.py --model resnet20 --cifar-shaped --reductions 6 --trials 12 --n-initial 6 \
        --finetune-epochs 2 --final-epochs 4 --supernet-epochs 4 --hessian-max-probes 16 --rd-examples 32 \
        --seeds 0,1,2                                                          # ResNet-20, the results page's table

``--cifar-shaped`` runs on digits made CIFAR-shaped (each 8x8 image enlarged 4x to 32x32, nearest neighbour, and
repeated over 3 channels; the same splits): for machines without a local CIFAR-10 copy (`mpqjax.data.load_cifar10`
reads one, or downloads it), so that ResNet-20 runs at its CIFAR input size on real labels.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import tempfile
import time

import numpy as np

from mpqjax import data, search
from mpqjax.search.methods import METHODS

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")


def cifar_shaped_digits(seed: int = 0) -> data.Dataset:
    """Digits at CIFAR's shape: 32x32x3 (each pixel a 4x4 block, repeated over 3 channels), the same splits."""
    digits = data.load_digits_splits(seed)
    grow = lambda split: (np.repeat(np.repeat(np.repeat(split.x, 4, 1), 4, 2), 3, 3), split.y)  # noqa: E731
    return data.from_arrays(train=grow(digits.train), validation=grow(digits.validation), test=grow(digits.test),
                            num_classes=10, name="digits32")


def run_method(base: search.SearchConfig, method: str, reduction: float, root: str,
               dataset: data.Dataset | None = None) -> dict:
    """One search: ``base`` with ``method`` and the size limit ``FiP16 / reduction``; its result's figures (or the
    reason it failed)."""
    config = dataclasses.replace(base, method=method, min_size_reduction=reduction)
    if not METHODS[method].searches_widths:
        config = dataclasses.replace(config, widths=(1.0,))
    out_dir = os.path.join(root, f"{method}-{reduction:g}-{base.seed}")
    start = time.perf_counter()
    try:
        result = search.run(config, out_dir, dataset=dataset)
    except ValueError as error:
        return {"method": method, "min_size_reduction": reduction, "seed": base.seed, "error": str(error)}
    best = result.best
    return {
        "method": method, "min_size_reduction": reduction, "seed": base.seed, "test_accuracy": best["test_accuracy"],
        "validation_accuracy": best["validation_accuracy"], "size_bytes": best["size_bytes"],
        "size_reduction_vs_fip16": best["size_reduction_vs_fip16"], "latency_seconds": best["latency_seconds"],
        "speedup_vs_fip16": best["speedup_vs_fip16"], "bits": [row["bits"] for row in best["layers"]],
        "widths": [row["width"] for row in best["layers"]], "search_cost": result.search_cost,
        "float_test_accuracy": best["float_test_accuracy"], "wall_seconds": time.perf_counter() - start,
    }


def summarise(rows: list[dict]) -> list[dict]:
    """Per limit and method, over the seeds that finished: test accuracy (mean, standard deviation, min, max), mean
    size, latency and search cost, and the seeds that failed."""
    summary = []
    for reduction in sorted({row["min_size_reduction"] for row in rows}):
        for method in dict.fromkeys(row["method"] for row in rows):
            runs = [row for row in rows if row["min_size_reduction"] == reduction and row["method"] == method]
            done = [row for row in runs if "error" not in row]
            entry = {"min_size_reduction": reduction, "method": method, "seeds": len(done),
                     "failed": [row["seed"] for row in runs if "error" in row]}
            if done:
                accuracy = np.asarray([row["test_accuracy"] for row in done])
                mean = lambda field, done=done: float(np.mean([row[field] for row in done]))  # noqa: E731
                entry.update(test_accuracy_mean=float(accuracy.mean()), test_accuracy_std=float(accuracy.std()),
                             test_accuracy_min=float(accuracy.min()), test_accuracy_max=float(accuracy.max()),
                             size_bytes_mean=mean("size_bytes"), latency_seconds_mean=mean("latency_seconds"),
                             search_seconds_mean=float(np.mean([row["search_cost"]["seconds"] for row in done])),
                             float_test_accuracy_mean=mean("float_test_accuracy"))
            summary.append(entry)
    return summary


def plot(summary: list[dict], path: str, title: str) -> None:
    """Test accuracy against size: each method's mean over the seeds, its bar the seeds' range; one panel per
    limit."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    done = [entry for entry in summary if entry["seeds"]]
    reductions = sorted({entry["min_size_reduction"] for entry in done})
    figure, axes = plt.subplots(1, len(reductions), figsize=(5.5 * len(reductions), 4.5), squeeze=False)
    for axis, reduction in zip(axes[0], reductions, strict=True):
        entries = [entry for entry in done if entry["min_size_reduction"] == reduction]
        for entry in entries:
            mean = entry["test_accuracy_mean"]
            spread = [[mean - entry["test_accuracy_min"]], [entry["test_accuracy_max"] - mean]]
            axis.errorbar(entry["size_bytes_mean"] / 1e3, mean, yerr=spread, fmt="o", capsize=3,
                          label=entry["method"])
        axis.axhline(entries[0]["float_test_accuracy_mean"], color="grey", linestyle="--", label="float")
        axis.set(title=f"{title}: size limit FiP16 / {reduction:g}", xlabel="size (kB)", ylabel="test accuracy")
        axis.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="digits_cnn")
    parser.add_argument("--dataset", default="digits")
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--reductions", default="6,8", help="size limits as reductions against FiP16")
    parser.add_argument("--trials", type=int, default=30, help="trials of the iterative methods")
    parser.add_argument("--n-initial", type=int, default=None, help="their random trials (default min(10, trials))")
    parser.add_argument("--finetune-epochs", type=int, default=search.SearchConfig.finetune_epochs)
    parser.add_argument("--final-epochs", type=int, default=30)
    parser.add_argument("--hessian-max-probes", type=int, default=search.SearchConfig.hessian_max_probes)
    parser.add_argument("--rd-examples", type=int, default=search.SearchConfig.rd_examples)
    parser.add_argument("--seeds", default="0", help="seeds to run every search with (comma-separated)")
    parser.add_argument("--supernet-epochs", type=int, default=search.SearchConfig.supernet_epochs)
    parser.add_argument("--cifar-shaped", action="store_true", help="digits enlarged to 32x32x3 (see above)")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    base = search.SearchConfig(model=args.model, dataset=args.dataset, trials=args.trials,
                               n_initial=args.n_initial or min(10, args.trials), final_epochs=args.final_epochs,
                               finetune_epochs=args.finetune_epochs,
                               hessian_max_probes=args.hessian_max_probes, rd_examples=args.rd_examples,
                               supernet_epochs=args.supernet_epochs)
    if args.quick:
        base = dataclasses.replace(base, trials=6, n_initial=3, finetune_epochs=1, final_epochs=2, float_epochs=3,
                                   hessian_max_probes=16, supernet_epochs=2)
    name = f"peers_{args.model}{'_cifar_shaped' if args.cifar_shaped else ''}{'_quick' if args.quick else ''}"
    out = args.out or os.path.join(RESULTS, f"{name}.json")
    rows = []
    with tempfile.TemporaryDirectory() as root:
        for seed in (int(value) for value in args.seeds.split(",")):
            seeded = dataclasses.replace(base, seed=seed)
            dataset = cifar_shaped_digits(seed) if args.cifar_shaped else None
            for reduction in (float(value) for value in args.reductions.split(",")):
                for method in args.methods.split(","):
                    rows.append(run_method(seeded, method, reduction, root, dataset))
                    print(json.dumps(rows[-1]), flush=True)
                    write(out, args, base, rows)  # after every search: a stopped run keeps what it measured
    plot(summarise(rows), out.removesuffix(".json") + ".png", args.model)
    print(json.dumps({"written": out}))


def write(out: str, args, base: search.SearchConfig, rows: list[dict]) -> None:
    """The results so far, replacing ``out`` whole."""
    summary = {"model": args.model, "dataset": "digits enlarged to 32x32x3" if args.cifar_shaped else args.dataset,
               "settings": dataclasses.asdict(base), "seeds": args.seeds, "summary": summarise(rows), "rows": rows}
    with open(out + ".part", "w") as file:
        json.dump(summary, file, indent=1)
    os.replace(out + ".part", out)


if __name__ == "__main__":
    main()
