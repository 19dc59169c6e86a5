"""A trial's start outside its training steps, on this checkout against a reference checkout: the search model's
initial variables (the zoo draws them on the host), the weight transfer from the float model, and the whole start
(transfer and calibration, `mpqjax.training.train.finetune_start`), for ResNet-20 and ResNet-18 at CIFAR shapes.

Each tree runs in its own process, in turn, ``--rounds`` times; each time is the median of ``--repeats`` calls after
a warm-up call (the compilations). The float weights lie on the device, as a search places them.

    git worktree add /tmp/reference <commit>
    python experiments/bench_trial_start.py --reference /tmp/reference     # about 2 minutes on the CPU
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import statistics
import subprocess
import sys

HERE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODELS = {"resnet20": {"num_classes": 10}, "resnet18": {"num_classes": 100, "stem": "cifar"}}


def measure(repeats: int) -> dict:
    """Median seconds of each part of a trial's start, per model (run inside the tree being measured)."""
    import time

    import jax
    import numpy as np

    from mpqjax import data
    from mpqjax.nn import models
    shape = (32, 32, 3)
    rng = np.random.default_rng(0)
    results = {}
    for name, options in MODELS.items():
        float_model = models.get(name, quantize=False, max_width=1.0, input_shape=shape, **options)
        model = models.get(name, max_width=1.25, input_shape=shape, **options)
        float_variables = jax.device_put(models.init_variables(jax.random.key(0), float_model, shape))
        split = data.Split(rng.standard_normal((256, *shape), np.float32),
                           rng.integers(0, options["num_classes"], 256).astype(np.int32))
        dataset = data.Dataset("cifar_shaped", split, split, split, options["num_classes"]).on_device()
        bits = np.full(len(models.layer_table(model, input_shape=shape)), 4.0, np.float32)
        parts = {
            "initial_variables": functools.partial(model.model_function.initial_variables, input_shape=shape),
            "transfer": functools.partial(models.transfer_variables, model=model, float_model=float_model,
                                          float_variables=float_variables, input_shape=shape),
            "start": functools.partial(_start, float_model, float_variables, model, dataset, bits),
        }
        results[name] = {}
        for part, run in parts.items():
            jax.block_until_ready(run(jax.random.key(99)))
            times = []
            for repeat in range(repeats):
                begin = time.perf_counter()
                jax.block_until_ready(run(jax.random.key(repeat)))
                times.append(time.perf_counter() - begin)
            results[name][f"{part}_seconds"] = statistics.median(times)
    return results


def _start(float_model, float_variables, model, dataset, bits, key):
    from mpqjax.training import train

    return train.finetune_start(key, float_model, float_variables, model, dataset, bits=bits)[0]


def run_tree(tree: str, repeats: int) -> dict:
    code = f"import json, sys; sys.path.insert(0, {HERE + '/experiments'!r}); import bench_trial_start as b; " \
           f"print(json.dumps(b.measure({repeats})))"
    output = subprocess.run([sys.executable, "-c", code], cwd=tree, env=dict(os.environ, PYTHONPATH=tree),
                            check=True, capture_output=True, text=True).stdout
    return json.loads(output.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--reference", required=True, help="a checkout of the reference version")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    runs = {"this": [], "reference": []}
    for _ in range(args.rounds):
        runs["this"].append(run_tree(HERE, args.repeats))
        runs["reference"].append(run_tree(os.path.abspath(args.reference), args.repeats))
    summary = {tree: {name: {part: statistics.median(run[name][part] for run in tree_runs)
                             for part in tree_runs[0][name]} for name in MODELS} for tree, tree_runs in runs.items()}
    ratios = {name: {part: summary["reference"][name][part] / summary["this"][name][part]
                     for part in summary["this"][name]} for name in MODELS}
    result = {"machine": os.uname().nodename, "reference": os.path.abspath(args.reference), "seconds": summary,
              "reference_over_this": ratios}
    text = json.dumps(result, indent=1)
    print(text)
    if args.out:
        with open(args.out, "w") as handle:
            handle.write(text + "\n")


if __name__ == "__main__":
    main()
