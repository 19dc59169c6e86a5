"""Configurations evaluated per hour: a population fine-tuned together against one configuration at a time.

One evaluation is what a search trial does: transfer the float weights, calibrate, fine-tune, validation accuracy
(`mpqjax.training.population.finetune` + `evaluate`; the one-by-one peer is `mpqjax.training.train.finetune` +
`evaluate`, the ``sequential`` strategy at population 1). For every model, strategy and population size the script
times whole evaluations of P random configurations (bits from {2, 3, 4, 6, 8}, widths from {0.75 .. 1.25}) after one
warm-up call (the compilation), and reports the median seconds, configurations per hour and the ratio to one-by-one.

Models: ``digits_cnn`` on the real digits data, ``resnet20`` on CIFAR-shaped random data (32x32x3, 10 classes; the
values do not change the cost). Weights are freshly initialised: the cost does not depend on them.

``--devices 1 2 4`` repeats the vmap strategy with the population sharded over that many devices; on a CPU it
re-runs itself with ``XLA_FLAGS=--xla_force_host_platform_device_count=N`` (forced host devices share the same
cores: that run checks correctness and overhead, not speed).

    python experiments/bench_population.py                         # this machine, both models
    python experiments/bench_population.py --models resnet20 --train-examples 2048 --out results/x.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time

import numpy as np


def _dataset(name: str, train_examples: int, seed: int):
    from mpqjax import data

    if name == "digits_cnn":
        dataset = data.load("digits", seed=seed)
        return dataset
    rng = np.random.default_rng(seed)

    def split(count):
        return data.Split(rng.standard_normal((count, 32, 32, 3)).astype(np.float32),
                          rng.integers(0, 10, count).astype(np.int32))

    return data.Dataset("cifar_shaped_random", split(train_examples), split(512), split(64), 10)


def _configs(key, table, size: int):
    """``size`` random configurations of the full space (width groups respected), as [P, L] bits and widths."""
    from mpqjax import sensitivity

    layer_space = sensitivity.layer_space(table)
    arrays = [layer_space.to_arrays(point)
              for point in layer_space.space.decode_batch(np.asarray(layer_space.space.sample(key, size)))]
    return (np.stack([b for b, _ in arrays]).astype(np.float32),
            np.stack([w for _, w in arrays]).astype(np.float32))


def _time(fn, repeats: int) -> tuple[float, float]:
    """(compile-including first call seconds, median of ``repeats`` further calls)."""
    start = time.perf_counter()
    fn()
    first = time.perf_counter() - start
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return first, float(np.median(times))


def bench_model(name: str, *, populations, strategies, train_examples: int, epochs: int, batch_size: int,
                repeats: int, device_counts=(None,), seed: int = 0) -> dict:
    import jax

    from mpqjax.nn import models
    from mpqjax.training import devices, population, train

    dataset = _dataset(name, train_examples, seed)
    table = models.layer_table(name, input_shape=dataset.input_shape)
    float_model = models.get(name, quantize=False, num_classes=dataset.num_classes, max_width=1.0)
    float_variables = models.init_variables(jax.random.key(seed), float_model, dataset.input_shape)
    model = models.get(name, num_classes=dataset.num_classes, max_width=1.25)
    key = jax.random.key(seed)
    steps = epochs * (len(dataset.train) // batch_size)

    def one_by_one(bits, widths):
        for b, w in zip(bits, widths, strict=True):
            variables, _ = train.finetune(key, float_model, float_variables, model, dataset, bits=b, widths=w,
                                          epochs=epochs, batch_size=batch_size)
            train.evaluate(model, variables, dataset.validation, bits=b, widths=w)

    rows = []
    bits, widths = _configs(jax.random.fold_in(key, 1), table, 1)
    first, seconds = _time(lambda: one_by_one(bits, widths), repeats)
    reference = 3600.0 / seconds
    rows.append({"strategy": "one_by_one", "population": 1, "devices": 1, "first_call_seconds": first,
                 "median_seconds": seconds, "configurations_per_hour": reference, "ratio_to_one_by_one": 1.0})
    for count in device_counts:
        mesh = devices.population_mesh(None if count is None else jax.devices()[:count])
        for strategy in strategies:
            for size in populations:
                if strategy == "sequential" and (size == 1 or count not in (None, 1)):
                    continue  # sequential at 1 is the reference; it never uses more than one device
                bits, widths = _configs(jax.random.fold_in(key, size), table, size)

                def evaluate_population(bits=bits, widths=widths, strategy=strategy, mesh=mesh):
                    variables, _ = population.finetune(key, float_model, float_variables, model, dataset, bits=bits,
                                                       widths=widths, epochs=epochs, batch_size=batch_size,
                                                       strategy=strategy, mesh=mesh)
                    population.evaluate(model, variables, dataset.validation, bits=bits, widths=widths, mesh=mesh)

                first, seconds = _time(evaluate_population, repeats)
                per_hour = 3600.0 * size / seconds
                rows.append({"strategy": strategy, "population": size, "devices": mesh.devices.size,
                             "first_call_seconds": first, "median_seconds": seconds,
                             "configurations_per_hour": per_hour, "ratio_to_one_by_one": per_hour / reference})
                print(json.dumps({"model": name, **rows[-1]}), file=sys.stderr, flush=True)
    memory = None
    try:
        need = devices.member_memory_bytes(model, dataset.input_shape, batch_size=batch_size)
        free, where = devices.free_memory_bytes()
        memory = {"member_bytes": need, "free_bytes": free, "where": where,
                  "max_population": devices.max_population(model, dataset.input_shape, batch_size=batch_size)}
    except ValueError as error:
        memory = {"error": str(error)}
    return {"model": name, "dataset": dataset.name, "train_examples": len(dataset.train),
            "validation_examples": len(dataset.validation), "epochs": epochs, "batch_size": batch_size,
            "steps_per_configuration": steps, "repeats": repeats, "memory": memory, "rows": rows}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["digits_cnn", "resnet20"])
    parser.add_argument("--populations", nargs="+", type=int, default=[1, 4, 16])
    parser.add_argument("--strategies", nargs="+", default=["sequential", "vmap", "scan"])
    parser.add_argument("--train-examples", type=int, default=512, help="CIFAR-shaped training examples")
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--devices", nargs="+", type=int, help="also run vmap sharded over these device counts")
    parser.add_argument("--out", help="write the JSON here too")
    parser.add_argument("--quick", action="store_true", help="digits_cnn, populations 1 and 4, one repeat")
    args = parser.parse_args(argv)
    if args.quick:
        args.models, args.populations, args.repeats = ["digits_cnn"], [1, 4], 1

    if args.devices and max(args.devices) > 1 and "xla_force_host_platform_device_count" not in \
            os.environ.get("XLA_FLAGS", ""):
        import jax

        if jax.default_backend() == "cpu":  # re-run with forced host devices (must be set before JAX starts)
            env = {**os.environ, "XLA_FLAGS": f"--xla_force_host_platform_device_count={max(args.devices)}"}
            return subprocess.call([sys.executable, *sys.argv], env=env)
    import jax

    results = {"backend": jax.default_backend(), "device": str(jax.devices()[0].device_kind),
               "device_count": jax.device_count(), "jax": jax.__version__, "machine": platform.machine(),
               "cpu_count": os.cpu_count(), "models": []}
    for name in args.models:
        results["models"].append(bench_model(
            name, populations=args.populations, strategies=args.strategies, train_examples=args.train_examples,
            epochs=args.epochs, batch_size=args.batch_size, repeats=args.repeats,
            device_counts=[None] if not args.devices else args.devices))
    print(json.dumps(results, indent=2))
    if args.out:
        from mpqjax import store

        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        store.atomic_write_json(args.out, results)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
