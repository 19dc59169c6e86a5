"""Benchmark of searching a user's own Flax model (prints one JSON object).

* user_lines: lines of mpqjax code in examples/own_model_linen.py (the part after its ``# -- mpqjax`` marker);
* compiled_steps: training-step programs compiled by whole searches of a user's linen model with 4 and with 8
  trials (the float model's step included): the count does not grow with the trials;
* step_seconds: median time of one jitted training step (digits, batch 64) of
  - the zoo's digits_cnn quantised by the interceptor (``zoo``, at max_width 1.25 as a search builds it, and
    ``zoo_width1`` at max_width 1),
  - the same network in float (``float``),
  and a user's residual linen CNN quantised and in float; ratios against the float models.

Usage: python experiments/bench_own_model.py [--quick]
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import shutil
import sys
import tempfile

import flax.linen as nn
import jax
import jax.numpy as jnp

import mpqjax
from mpqjax import data
from mpqjax.nn import models

sys.path.insert(0, str(pathlib.Path(__file__).parent))
from bench_quant import median_step_seconds  # noqa: E402  (the same timing as the QAT benchmark)

ROOT = pathlib.Path(__file__).resolve().parents[1]


class ResidualCNN(nn.Module):
    """A user's CNN: convolutions with batch norm, a residual add, global pooling, a dense head."""

    @nn.compact
    def __call__(self, x, train: bool = False):
        norm = lambda: nn.BatchNorm(use_running_average=not train)  # noqa: E731
        x = nn.relu(norm()(nn.Conv(32, (3, 3))(x)))
        y = nn.relu(norm()(nn.Conv(32, (3, 3))(x)))
        x = nn.relu(x + norm()(nn.Conv(32, (3, 3))(y)))
        x = nn.relu(norm()(nn.Conv(64, (3, 3), strides=2)(x)))
        return nn.Dense(10)(x.mean(axis=(1, 2)))


def user_lines() -> int:
    """Non-blank, non-comment lines after the ``# -- mpqjax`` marker of the linen example."""
    text = (ROOT / "examples" / "own_model_linen.py").read_text().split("# -- mpqjax", 1)[1].splitlines()[1:]
    return sum(1 for line in text if line.strip() and not line.strip().startswith("#"))


def compiled_steps(trials: int, dataset) -> int:
    """Training-step programs compiled by one search of `ResidualCNN` with ``trials`` trials."""
    names = []

    def listener(event, duration, **kwargs):
        if event == "/jax/core/compile/backend_compile_duration":
            names.append(kwargs.get("fun_name"))

    out_dir = tempfile.mkdtemp(prefix="mpqjax-own-")
    cache_dir = tempfile.mkdtemp(prefix="mpqjax-own-cache-")
    jax.monitoring.register_event_duration_secs_listener(listener)
    try:
        config = mpqjax.SearchConfig(trials=trials, n_initial=2, population=2, strategy="sequential",
                                     float_epochs=1, finetune_epochs=1, final_epochs=1, hessian_max_probes=4)
        mpqjax.run(config, os.path.join(out_dir, "run"), model=ResidualCNN(), dataset=dataset, cache_dir=cache_dir)
    finally:
        jax.monitoring.unregister_event_duration_listener(listener)
        shutil.rmtree(out_dir, ignore_errors=True)
        shutil.rmtree(cache_dir, ignore_errors=True)
    return sum(1 for name in names if name == "jit(step)")


def step_times(dataset, repeats: int) -> dict:
    x, y = dataset.train.x[:64], dataset.train.y[:64]
    shape = dataset.input_shape
    zoo_float = models.get("digits_cnn", quantize=False, max_width=1.0)
    float_variables = models.init_variables(jax.random.key(0), zoo_float, shape)
    bits = jnp.asarray([8, 4, 3, 6], jnp.float32)
    widths = jnp.asarray([1.0, 0.75, 0.875, 1.0], jnp.float32)
    ones = jnp.ones(4, jnp.float32)
    times = {}
    for label, max_width in (("zoo", 1.25), ("zoo_width1", 1.0)):
        zoo = models.get("digits_cnn", max_width=max_width)
        variables = models.transfer_variables(jax.random.key(1), zoo, zoo_float, float_variables, input_shape=shape)
        times[label] = median_step_seconds(zoo, variables, x, y, bits, widths, repeats)
    times["float"] = median_step_seconds(zoo_float, float_variables, x, y, jnp.full(4, 32.0), ones, repeats)
    user = models.wrap(ResidualCNN(), input_shape=shape)
    user_variables = user.init_variables(jax.random.key(0))
    user_bits = jnp.asarray([8, 4, 4, 3, 8], jnp.float32)
    user_widths = jnp.asarray([1.0, 0.75, 1.0, 0.875, 1.0], jnp.float32)
    times["user_intercepted"] = median_step_seconds(user, user_variables, x, y, user_bits, user_widths, repeats)
    user_float = user.clone(quantize=False)
    times["user_float"] = median_step_seconds(user_float, user.function.initial_variables(jax.random.key(0), shape),
                                              x, y, jnp.full(5, 32.0), jnp.ones(5), repeats)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer step repeats")
    args = parser.parse_args()
    dataset = data.load("digits", seed=0)
    times = step_times(dataset, repeats=15 if args.quick else 60)
    result = {
        "user_lines": user_lines(),
        "compiled_steps": {"trials_4": compiled_steps(4, dataset), "trials_8": compiled_steps(8, dataset)},
        "step_seconds": times,
        "ratios": {
            "zoo_vs_float": times["zoo"] / times["float"],
            "zoo_width1_vs_float": times["zoo_width1"] / times["float"],
            "user_intercepted_vs_float": times["user_intercepted"] / times["user_float"],
        },
        "machine": {"devices": [str(device) for device in jax.devices()], "jax": jax.__version__,
                    "python": sys.version.split()[0]},
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
