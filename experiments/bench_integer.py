"""Benchmark of integer-only inference on this CPU: prints one JSON object.

For digits_cnn (8x8x1, batch 256) and ResNet-20 (32x32x3, batch 64), each at a mixed configuration (bits drawn from
{2, 3, 4, 6, 8}, widths 0.75 where a layer scales), the median time of one batch for:

- ``float``: the float model (jitted ``model.apply`` without a configuration);
- ``fake_quantised``: the fake-quantised model a search trains (jitted ``model.apply`` at the configuration);
- ``integer``: the integer program (`mpqjax.export.lower`: int8 codes, int32 accumulation, int64 requantisation);
- ``integer_file``: the same loaded from its file (`write_integer_model`, `load_program`), bit-packed weights
  unpacked on every call;
- ``onnxruntime``: the integer program as ONNX (`mpqjax.export.to_onnx`) run by onnxruntime on the CPU.

Throughputs are examples per second; ``*_over_float`` divides a throughput by the float model's. Agreement is the
share of examples where the integer program's class equals the fake-quantised model's. Weights are random and the
activation clips calibrated on the batch: throughput does not depend on training.

``agreement``: the zoo's digits_cnn, ResNet-20 and MobileNetV2 trained in float on digits (`mpqjax.search.
float_model`, as a search trains them), quantised after training at three mixed configurations each (bits from
{2, 3, 4, 6, 8}, widths 0.75 to 1.25; clips calibrated on 256 training images), and lowered: the share of the 360
test examples where the integer program predicts the fake-quantised model's class, the largest logit difference,
and both test accuracies.

Usage: python experiments/bench_integer.py [--quick] [--repeats N]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time

import jax
import numpy as np

from mpqjax import export
from mpqjax.nn import models
from mpqjax.training import train


def median_seconds(run, x, repeats: int) -> float:
    """Median wall time of ``run(x)`` after one warm-up call (which compiles)."""
    np.asarray(run(x))
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        np.asarray(run(x))
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def measure(name: str, shape: tuple, batch: int, repeats: int) -> dict:
    model = models.get(name, num_classes=10).clone(example_shape=shape)
    table = model.table(shape)
    bits = np.random.default_rng(0).choice([2, 3, 4, 6, 8], len(table)).tolist()
    widths = [0.75 if layer.scalable else 1.0 for layer in table]
    x = np.random.default_rng(1).normal(size=(batch, *shape)).astype(np.float32)
    variables = train.calibrate(model, model.init_variables(jax.random.key(0), shape), x, bits=bits, widths=widths,
                                method="max", batch_size=len(x), num_batches=1)
    float_variables = {key: value for key, value in variables.items() if key != "quant"}
    program = export.lower(model, variables, bits, widths, input_bound=float(np.abs(x).max()))
    runs = {
        "float": jax.jit(lambda v: model.apply(float_variables, v)),
        "fake_quantised": jax.jit(lambda v: model.apply(variables, v, bits, widths)),
        "integer": program,
    }
    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, "model_int.npz")
        described = export.write_integer_model(path, program)
        runs["integer_file"] = export.load_program(path)
        onnx_path = os.path.join(folder, "model.onnx")
        export.write_onnx(onnx_path, lambda *a: program.run(list(a[:-1]), a[-1]), [layer.codes for layer in
                                                                                   program.layers], shape)
        import onnxruntime

        session = onnxruntime.InferenceSession(onnx_path, providers=["CPUExecutionProvider"])
        runs["onnxruntime"] = lambda v: session.run(None, {session.get_inputs()[0].name: v})[0]
        seconds = {label: median_seconds(run, x, repeats) for label, run in runs.items()}
        file_bytes = os.path.getsize(path)
    throughput = {label: batch / value for label, value in seconds.items()}
    fake = np.asarray(runs["fake_quantised"](x))
    return {
        "model": name, "input_shape": list(shape), "batch": batch, "bits": bits, "widths": widths,
        "median_seconds_per_batch": seconds, "examples_per_second": throughput,
        **{f"{label}_over_float": throughput[label] / throughput["float"] for label in throughput if label != "float"},
        "agreement_with_fake_quantised": float(np.mean(program(x).argmax(-1) == fake.argmax(-1))),
        "weight_payload_bytes": described["payload_bytes"], "file_bytes": file_bytes,
    }


def agreement(name: str, configurations: int) -> list[dict]:
    """Integer against fake-quantised predictions of a zoo model trained on digits, at mixed configurations."""
    from mpqjax import data, search

    dataset = data.load("digits", seed=0)
    key = jax.random.key(0)
    float_module, float_variables, _ = search.float_model(jax.random.fold_in(key, 0), name, dataset)
    model = models.get(name, num_classes=dataset.num_classes, max_width=1.25)
    transferred = models.transfer_variables(jax.random.fold_in(key, 1), model, float_module, float_variables,
                                            input_shape=dataset.input_shape)
    table = model.table(dataset.input_shape)
    rng = np.random.default_rng(0)
    rows = []
    for _ in range(configurations):
        bits = rng.choice([2, 3, 4, 6, 8], len(table)).tolist()
        group_width = {group[0]: float(rng.choice([0.75, 0.875, 1.0, 1.125, 1.25])) for group in table.width_groups()}
        widths = [group_width[group[0]] if table[index].scalable else 1.0
                  for group in table.width_groups() for index in group]
        order = [index for group in table.width_groups() for index in group]
        widths = [width for _, width in sorted(zip(order, widths, strict=True))]
        variables = train.calibrate(model, transferred, dataset.train.x[:256], bits=bits, widths=widths,
                                    batch_size=256, num_batches=1)
        fake = np.asarray(model.apply(variables, dataset.test.x, bits, widths))
        pixels = np.clip(np.round(dataset.test.x * dataset.std + dataset.mean), 0, 255).astype(np.uint8)
        program = export.lower(model, variables, bits, widths, normalisation=(dataset.mean, dataset.std),
                               input_shape=dataset.input_shape)
        logits = program(pixels)
        rows.append({"model": name, "bits": bits, "widths": widths,
                     "agreement": float(np.mean(logits.argmax(-1) == fake.argmax(-1))),
                     "largest_logit_difference": float(np.max(np.abs(logits - fake))),
                     "largest_logit": float(np.max(np.abs(fake))),
                     "fake_quantised_test_accuracy": float(np.mean(fake.argmax(-1) == dataset.test.y)),
                     "integer_test_accuracy": float(np.mean(logits.argmax(-1) == dataset.test.y))})
    return rows


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="digits_cnn only, 5 repeats")
    parser.add_argument("--repeats", type=int, default=None)
    args = parser.parse_args(argv)
    repeats = args.repeats or (5 if args.quick else 20)
    cases = [("digits_cnn", (8, 8, 1), 256)] + ([] if args.quick else [("resnet20", (32, 32, 3), 64)])
    trained = ["digits_cnn"] if args.quick else ["digits_cnn", "resnet20", "mobilenet_v2"]
    result = {"machine": f"{platform.machine()}, {os.cpu_count()} CPUs", "jax": jax.__version__,
              "repeats": repeats, "models": [measure(name, shape, batch, repeats) for name, shape, batch in cases],
              "agreement": [row for name in trained for row in agreement(name, 1 if args.quick else 3)]}
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
