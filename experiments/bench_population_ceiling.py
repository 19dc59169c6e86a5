"""The most a population can gain over one-by-one training steps on this device, measured on the training step.

A population of P members vmaps the training step: every member has its own weights, so XLA lowers each
convolution to a grouped convolution. The best any population program could do with the same kernels is a step in
which the P members share their weights, i.e. one model at P times the batch: the same arithmetic without the
grouping. This script times, per model (ResNet-20 and digits_cnn, masked at width 1.25; quantised and float):

* ``one_member``: one configuration's jitted step at the batch size;
* ``vmapped``: the population's vmapped step (P members, the batch shared);
* ``shared_weights``: one configuration's step at P times the batch (the ceiling);

and reports ``P * one_member / vmapped`` (the population's step speed-up) and ``P * one_member / shared_weights``
(its ceiling). A whole evaluation also transfers, calibrates and validates; ``evaluation_seconds`` against
``steps * one_member`` says how much of one evaluation is training steps.

    python experiments/bench_population_ceiling.py [--population 16] [--models resnet20] [--quick]
"""

from __future__ import annotations

import argparse
import json
import os
import time

import numpy as np


def _steps_seconds(step, state, x, y, bits, widths, *, steps: int, repeats: int):
    """Median seconds of ``steps`` consecutive steps (after a compiling warm-up); returns (seconds, state)."""
    import jax

    state, loss = step(state, x, y, bits, widths, 1e-3, 1e-4)
    jax.block_until_ready(loss)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(steps):
            state, loss = step(state, x, y, bits, widths, 1e-3, 1e-4)
        jax.block_until_ready((state, loss))
        times.append(time.perf_counter() - start)
    return float(np.median(times)), state


def bench_model(name: str, *, population: int, batch_size: int, steps: int, repeats: int, quantize: bool) -> dict:
    import jax
    import jax.numpy as jnp

    from mpqjax import data
    from mpqjax.nn import models
    from mpqjax.training import train

    input_shape = (8, 8, 1) if name == "digits_cnn" else (32, 32, 3)
    rng = np.random.default_rng(0)
    model = models.get(name, num_classes=10, max_width=1.25, quantize=quantize)
    table = models.layer_table(name, input_shape=input_shape)
    variables = models.init_variables(jax.random.key(0), model, input_shape)
    bits = jnp.full(len(table), 4.0, jnp.float32)
    widths = jnp.ones(len(table), jnp.float32)

    def batch(size):
        return (jnp.asarray(rng.standard_normal((size, *input_shape)), jnp.float32),
                jnp.asarray(rng.integers(0, 10, size), jnp.int32))

    row = {"model": name, "quantize": quantize, "population": population, "batch_size": batch_size, "steps": steps}
    x, y = batch(batch_size)
    single = jax.jit(train.step_function(model), donate_argnums=0)
    row["one_member_seconds"], _ = _steps_seconds(single, train.init_state(variables), x, y, bits, widths,
                                                  steps=steps, repeats=repeats)
    big_x, big_y = batch(batch_size * population)
    row["shared_weights_seconds"], _ = _steps_seconds(single, train.init_state(variables), big_x, big_y, bits,
                                                      widths, steps=steps, repeats=repeats)
    stacked = jax.tree.map(lambda leaf: jnp.broadcast_to(leaf, (population, *leaf.shape)), variables)
    state = jax.vmap(train.init_state)(stacked)
    vmapped = jax.jit(jax.vmap(train.step_function(model), in_axes=(0, None, None, 0, 0, None, None)),
                      donate_argnums=0)
    row["vmapped_seconds"], _ = _steps_seconds(vmapped, state, x, y, jnp.broadcast_to(bits, (population, len(table))),
                                               jnp.broadcast_to(widths, (population, len(table))),
                                               steps=steps, repeats=repeats)
    row["vmapped_speedup"] = population * row["one_member_seconds"] / row["vmapped_seconds"]
    row["ceiling_speedup"] = population * row["one_member_seconds"] / row["shared_weights_seconds"]
    if quantize:  # how much of one whole evaluation (transfer, calibration, fine-tune, validation) is steps
        float_model = models.get(name, quantize=False, num_classes=10, max_width=1.0)
        float_variables = models.init_variables(jax.random.key(0), float_model, input_shape)
        train_x, train_y = batch(batch_size * steps)
        dataset = data.Dataset("random", data.Split(np.asarray(train_x), np.asarray(train_y)),
                               data.Split(*map(np.asarray, batch(512))), data.Split(*map(np.asarray, batch(64))), 10)

        def evaluation():
            trained, _ = train.finetune(jax.random.key(1), float_model, float_variables, model, dataset,
                                        bits=np.asarray(bits), widths=np.asarray(widths), epochs=1,
                                        batch_size=batch_size)
            train.evaluate(model, trained, dataset.validation, bits=np.asarray(bits), widths=np.asarray(widths))

        evaluation()
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            evaluation()
            times.append(time.perf_counter() - start)
        row["evaluation_seconds"] = float(np.median(times))
        row["steps_fraction_of_evaluation"] = row["one_member_seconds"] / row["evaluation_seconds"]
    return row


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["resnet20", "digits_cnn"])
    parser.add_argument("--population", type=int, default=16)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--steps", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="digits_cnn, population 4, 4 steps, one repeat")
    parser.add_argument("--out", help="write the JSON here too")
    args = parser.parse_args(argv)
    if args.quick:
        args.models, args.population, args.steps, args.repeats = ["digits_cnn"], 4, 4, 1
    import jax

    rows = [bench_model(name, population=args.population, batch_size=args.batch_size, steps=args.steps,
                        repeats=args.repeats, quantize=quantize)
            for name in args.models for quantize in (True, False)]
    results = {"backend": jax.default_backend(), "device": str(jax.devices()[0].device_kind), "jax": jax.__version__,
               "rows": rows}
    print(json.dumps(results, indent=2))
    if args.out:
        from mpqjax import store

        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        store.atomic_write_json(args.out, results)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
