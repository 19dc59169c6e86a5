"""Benchmark of quantisation-aware training (issue 3): prints one JSON object.

* digits_cnn: float accuracy vs all-4-bit accuracy after a short fine-tune, with wall times (target: >= 97% float,
  4-bit within 1 point, under a minute in all);
* activation clipping at 2 and 3 bits: calibrated (max, percentile, MSE) vs learned (PACT, LSQ), chosen on the
  validation split;
* QAT step time / float step time (digits_cnn, and ResNet-20 outside --quick);
* ResNet-20 at 0.75x widths: step time of the model a search trains (parameters at max width 1.25, the switched-off
  channels masked) vs the module built at width 0.75 (the smaller model itself).

Usage: python experiments/bench_quant.py [--quick]
"""

from __future__ import annotations

import argparse
import json
import time

import jax
import numpy as np

from mpqjax import data
from mpqjax.nn import models
from mpqjax.training import train


def config(quick: bool) -> dict:
    """Experiment settings; --quick shrinks what is not part of the headline figures."""
    return dict(
        float_epochs=15,
        finetune_epochs=3,
        clipping_epochs=2 if quick else 4,
        clipping_bits=(2, 3),
        step_repeats=15 if quick else 40,
        resnet_input=(16, 16, 3) if quick else (32, 32, 3),
        resnet_batch=16 if quick else 64,
        digits_batch=64,
    )


def median_step_seconds(model, variables, x, y, bits, widths, repeats):
    """Median wall time of one jitted training step (after a compile-and-warm-up step)."""
    step = train.train_step(model)
    state = train.init_state(variables)
    state, loss = step(state, x, y, bits, widths, 1e-3, 1e-4)
    jax.block_until_ready(loss)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        state, loss = step(state, x, y, bits, widths, 1e-3, 1e-4)
        jax.block_until_ready(loss)
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def digits_accuracy(settings, digits):
    start = time.perf_counter()
    float_model = models.get("digits_cnn", quantize=False, widths=(1.0,) * 4)
    float_variables, _ = train.train_float(jax.random.key(0), float_model, digits, epochs=settings["float_epochs"])
    float_seconds = time.perf_counter() - start
    float_accuracy = train.evaluate(float_model, float_variables, digits.test)
    start = time.perf_counter()
    model = models.get("digits_cnn", widths=(1.0,) * 4)
    variables, _ = train.finetune(jax.random.key(1), float_model, float_variables, model, digits, bits=4,
                                  epochs=settings["finetune_epochs"])
    quant_seconds = time.perf_counter() - start
    quant_accuracy = train.evaluate(model, variables, digits.test, bits=4)
    result = dict(
        float_test_accuracy=float_accuracy,
        float_train_seconds=round(float_seconds, 2),
        int4_test_accuracy=quant_accuracy,
        int4_finetune_seconds=round(quant_seconds, 2),
        accuracy_drop_points=round(100 * (float_accuracy - quant_accuracy), 2),
        total_seconds=round(float_seconds + quant_seconds, 2),
    )
    return result, float_model, float_variables


def clipping_comparison(settings, digits, float_model, float_variables):
    """Fine-tune every layer at 2 and 3 bits with each clipping choice; choose on validation accuracy."""
    choices = [("calibrated", "max"), ("calibrated", "percentile"), ("calibrated", "mse"), ("pact", "mse"),
               ("lsq", "mse")]
    rows = []
    for mode, calibration in choices:
        model = models.get("digits_cnn", widths=(1.0,) * 4, act_clipping=mode)
        for bits in settings["clipping_bits"]:
            variables, _ = train.finetune(jax.random.key(2), float_model, float_variables, model, digits, bits=bits,
                                          epochs=settings["clipping_epochs"], calibration=calibration)
            rows.append(dict(
                clipping=mode if mode != "calibrated" else f"calibrated-{calibration}",
                initial_calibration=calibration,
                bits=bits,
                validation_accuracy=train.evaluate(model, variables, digits.validation, bits=bits),
                test_accuracy=train.evaluate(model, variables, digits.test, bits=bits),
            ))
    mean_validation = {}
    for row in rows:
        mean_validation.setdefault(row["clipping"], []).append(row["validation_accuracy"])
    mean_validation = {name: float(np.mean(values)) for name, values in mean_validation.items()}
    return dict(rows=rows, mean_validation_accuracy=mean_validation,
                best=max(mean_validation, key=mean_validation.get))


def step_overhead(settings, digits):
    result = {}
    x = digits.train.x[: settings["digits_batch"]]
    y = digits.train.y[: settings["digits_batch"]]
    cases = [("digits_cnn", (8, 8, 1), x, y)]
    if settings["resnet_input"][0] == 32:
        rng = np.random.default_rng(0)
        batch = settings["resnet_batch"]
        cases.append(("resnet20", (32, 32, 3), rng.normal(size=(batch, 32, 32, 3)).astype(np.float32),
                      rng.integers(0, 10, batch).astype(np.int32)))
    for name, shape, xs, ys in cases:
        float_model = models.get(name, quantize=False, max_width=1.0)
        quant_model = models.get(name, max_width=1.0)
        length = len(models.layer_table(name))
        times = {}
        for label, model in (("float", float_model), ("qat_4bit", quant_model)):
            variables = models.init_variables(jax.random.key(3), model, shape)
            bits = np.full(length, 4 if model.quantize else 32, np.float32)
            times[label] = median_step_seconds(model, variables, xs, ys, bits, np.ones(length, np.float32),
                                               settings["step_repeats"])
        result[name] = dict(float_step_ms=round(1e3 * times["float"], 3), qat_step_ms=round(1e3 * times["qat_4bit"], 3),
                            qat_over_float=round(times["qat_4bit"] / times["float"], 3))
    return result


def masked_vs_smaller(settings):
    shape = settings["resnet_input"]
    batch = settings["resnet_batch"]
    masked = models.get("resnet20", max_width=1.25, input_shape=shape)
    table = masked.table()
    widths = np.array([0.75 if layer.scalable else 1.0 for layer in table], np.float32)
    bits = np.full(len(table), 4, np.float32)
    rng = np.random.default_rng(1)
    x = rng.normal(size=(batch, *shape)).astype(np.float32)
    y = rng.integers(0, 10, batch).astype(np.int32)
    smaller = models.wrap(masked.factory.build(0.75), input_shape=shape)
    times = {}
    for label, model, model_widths in (("masked", masked, widths), ("smaller", smaller, np.ones_like(widths))):
        variables = models.init_variables(jax.random.key(4), model, shape)
        times[label] = median_step_seconds(model, variables, x, y, bits, model_widths, settings["step_repeats"])
    return dict(input_shape=list(shape), batch=batch, widths=0.75, masked_max_width=1.25,
                masked_step_ms=round(1e3 * times["masked"], 3),
                smaller_step_ms=round(1e3 * times["smaller"], 3),
                masked_over_smaller=round(times["masked"] / times["smaller"], 3))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smaller settings for a CPU")
    args = parser.parse_args()
    settings = config(args.quick)
    digits = data.load_digits_splits(0)
    accuracy, float_model, float_variables = digits_accuracy(settings, digits)
    report = dict(
        quick=args.quick,
        backend=jax.default_backend(),
        digits_cnn=accuracy,
        clipping=clipping_comparison(settings, digits, float_model, float_variables),
        step_overhead=step_overhead(settings, digits),
        resnet20_masked_vs_smaller=masked_vs_smaller(settings),
    )
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
