"""Benchmark of `mpqjax.sensitivity.hessian`: cost of one Hutchinson probe relative to one gradient, and time to 5%
error.

1. For ``digits_cnn`` and ResNet-20 (float, width 1, batch norm in inference mode), the time of one probe (one
   Hessian-vector product that serves every layer, drawn and reduced to per-layer estimates) divided by the time of
   one gradient of the same loss on the same batch. Both are jitted and timed after compilation; medians of repeats.
   Probes are vmapped in chunks; the per-probe time of each chunk size is reported.
2. For ResNet-20 on one batch, the wall time (compilation included) until every layer's standard error is within
   5% of its trace, with one shared probe per HVP and with per-layer probes (one HVP per layer per probe), each
   capped at a probe budget. Where the budget runs out first (on a CPU it does: a ResNet-20 HVP on 256 images takes
   seconds), the per-probe spread measured so far gives the probes, and the time, the target would need.

For the cost ratio the models are at random initialisation (a product's cost does not depend on the weights' values);
for the time to a 5% error ResNet-20 is first trained briefly (the spread of the estimates does depend on them: at
random initialisation some layers' traces are near zero and their relative error is meaningless). Data: the digits
(8x8 for the digits CNN, upsampled to 32x32x3 for ResNet-20). Prints JSON; progress goes to stderr.

    python experiments/bench_hessian.py [--quick]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

from mpqjax import data
from mpqjax.nn import models
from mpqjax.sensitivity import hessian
from mpqjax.training import train


def config(quick: bool) -> dict:
    """The benchmark's settings; ``quick`` shrinks everything for a loaded CPU."""
    if quick:
        return {
            "ratio": [("digits_cnn", 64), ("resnet20", 8)],
            "chunk_sizes": (1, 4),
            "repeats": 3,
            "time_to_error": {"model": "resnet20", "batch_size": 8, "budgets": {"shared": 32, "per_layer": 3},
                              "train_epochs": 1},
        }
    return {
        "ratio": [("digits_cnn", 256), ("resnet20", 256)],
        "chunk_sizes": (1, 4),
        "repeats": 3,
        "time_to_error": {"model": "resnet20", "batch_size": 256, "budgets": {"shared": 24, "per_layer": 3},
                          "train_epochs": 2},
    }


def log(message: str) -> None:
    print(f"[bench_hessian {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def setup(name: str, batch_size: int, *, train_epochs: int = 0, seed: int = 0):
    """A float zoo model at width 1, its variables, one batch of training images and ``loss(params, batch)``.

    The digits CNN sees the 8x8 digits; ResNet-20 sees them upsampled to 32x32x3 (a CIFAR-shaped input with a real
    signal). ``train_epochs > 0`` first trains the float model that many epochs on the digits training split.
    """
    key = jax.random.key(seed)
    dataset = data.load("digits", seed=seed)
    split = dataset.train
    if name != "digits_cnn":
        upsampled = np.repeat(np.repeat(np.repeat(split.x, 4, axis=1), 4, axis=2), 3, axis=3)
        split = data.Split(upsampled, split.y)
    input_shape = split.x.shape[1:]
    batch = (jnp.asarray(split.x[:batch_size]), jnp.asarray(split.y[:batch_size]))
    table = models.layer_table(name, input_shape=input_shape)
    model = models.get(name, quantize=False, num_classes=dataset.num_classes, max_width=1.0)
    init_key, train_key = jax.random.split(key)
    variables = models.init_variables(init_key, model, input_shape)
    if train_epochs:
        variables, _ = train.train(train_key, model, variables, split, epochs=train_epochs, batch_size=64)
    others = {k: v for k, v in variables.items() if k != "params"}

    def loss_fn(params, batch):
        logits = model.apply({"params": params, **others}, batch[0], None, None, train=False)
        return optax.softmax_cross_entropy_with_integer_labels(logits, batch[1]).mean()

    return table, variables["params"], batch, loss_fn


def median_seconds(fn, repeats: int) -> tuple[float, float]:
    """Median wall-clock and process-CPU seconds of ``fn()`` (already compiled), over ``repeats`` calls."""
    walls, cpus = [], []
    for _ in range(repeats):
        wall, cpu = time.perf_counter(), time.process_time()
        jax.block_until_ready(fn())
        walls.append(time.perf_counter() - wall)
        cpus.append(time.process_time() - cpu)
    return statistics.median(walls), statistics.median(cpus)


def probe_versus_gradient(name: str, batch_size: int, chunk_sizes, repeats: int) -> dict:
    log(f"probe versus gradient: {name}, batch {batch_size}")
    table, params, batch, loss_fn = setup(name, batch_size)
    gradient = jax.jit(jax.grad(loss_fn))
    jax.block_until_ready(gradient(params, batch))
    gradient_wall, gradient_cpu = median_seconds(lambda: gradient(params, batch), repeats)
    per_chunk = {}
    key = jax.random.key(0)
    for chunk_size in chunk_sizes:
        names, step = hessian.probe_step(loss_fn, params, layers=list(table.names), chunk_size=chunk_size)
        start = time.perf_counter()
        jax.block_until_ready(step(params, batch, key))
        compile_seconds = time.perf_counter() - start
        wall, cpu = median_seconds(lambda step=step: step(params, batch, key), repeats)
        per_chunk[str(chunk_size)] = {
            "probe_seconds": wall / chunk_size,
            "probe_cpu_seconds": cpu / chunk_size,
            "probe_over_gradient": wall / chunk_size / gradient_wall,
            "probe_over_gradient_cpu": cpu / chunk_size / gradient_cpu,
            "first_call_seconds": compile_seconds,
        }
    best = min(per_chunk, key=lambda c: per_chunk[c]["probe_seconds"])
    return {
        "model": name,
        "batch_size": batch_size,
        "layers": len(names),
        "weights": int(table.total_weights),
        "gradient_seconds": gradient_wall,
        "gradient_cpu_seconds": gradient_cpu,
        "per_chunk_size": per_chunk,
        "best_chunk_size": int(best),
        "best_probe_over_gradient": per_chunk[best]["probe_over_gradient"],
    }


def time_to_error(model: str, batch_size: int, budgets: dict, train_epochs: int, target: float = 0.05) -> dict:
    log(f"training {model} for {train_epochs} epochs")
    table, params, batch, loss_fn = setup(model, batch_size, train_epochs=train_epochs)
    results = {}
    chunk_size = hessian.default_chunk_size()
    for probing in hessian.PROBINGS:
        max_probes = budgets[probing]
        log(f"time to {target:.0%} error: {model}, batch {batch_size}, {probing} probes, budget {max_probes}")
        start = time.perf_counter()
        # tol=inf switches the running-mean test off: the standard-error condition alone decides when to stop
        traces = hessian.layer_traces(
            jax.random.key(1),
            loss_fn,
            params,
            batch,
            layers=list(table.names),
            max_probes=max_probes,
            tol=float("inf"),
            std_error_rtol=target,
            chunk_size=chunk_size,
            probing=probing,
        )
        seconds = time.perf_counter() - start
        relative = traces.relative_std_error
        probes = int(traces.probes[0])
        # per-probe coefficient of variation: probes each layer would need for the target error
        needed = np.ceil((relative * np.sqrt(probes) / target) ** 2)
        results[probing] = {
            "max_probes": max_probes,
            "seconds": seconds,
            "probes": probes,
            "hvps": probes * (1 if probing == "shared" else len(table)),
            "reached_target": bool(traces.converged),
            "max_relative_std_error": float(np.max(relative)),
            "median_relative_std_error": float(np.median(relative)),
            "worst_layer": traces.names[int(np.argmax(relative))],
            "probes_needed_estimate": int(np.max(needed)),
            "seconds_needed_estimate": float(seconds / probes * np.max(needed)),
        }
    return {"model": model, "batch_size": batch_size, "float_training_epochs": train_epochs,
            "data": "digits training images upsampled to 32x32x3", "target_relative_std_error": target,
            "chunk_size": chunk_size, "seconds_include_compilation": True, **results}


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small batches and few repeats (a loaded CPU)")
    parser.add_argument("--shared-probes", type=int, default=None,
                        help="probe budget of the time-to-5%%-error run with shared probes (e.g. 40000 on a GPU)")
    parser.add_argument("--per-layer-probes", type=int, default=None,
                        help="probe budget (rounds of one probe per layer) of the per-layer run")
    args = parser.parse_args(argv)
    settings = config(args.quick)
    budgets = settings["time_to_error"]["budgets"]
    if args.shared_probes:
        budgets["shared"] = args.shared_probes
    if args.per_layer_probes:
        budgets["per_layer"] = args.per_layer_probes
    report = {
        "benchmark": "hessian",
        "quick": args.quick,
        "backend": jax.default_backend(),
        "cpu_count": os.cpu_count(),
        "machine": platform.processor() or platform.machine(),
        "jax": jax.__version__,
        "probe_versus_gradient": [
            probe_versus_gradient(name, batch_size, settings["chunk_sizes"], settings["repeats"])
            for name, batch_size in settings["ratio"]
        ],
        "time_to_5_percent_error": time_to_error(**settings["time_to_error"]),
    }
    print(json.dumps(report, indent=2))
    return report


if __name__ == "__main__":
    main()
