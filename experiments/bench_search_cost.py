"""The GPU cost of a paper-scale search: training images per second of a trial, and the GPU-hours that follow.

A trial is what `mpqjax.search.Problem.evaluate` does: weight transfer and calibration (`mpqjax.search.steps.
finetune_start`), training steps (`mpqjax.training.train.train`, the examples resident on the device), validation
accuracy. For each model, batch size and precision the script runs one warm-up trial (the compilations), then times
trials of ``--timed-steps`` training steps, separating the training steps from the rest (the per-trial overhead).
From those it estimates the paper's searches: 160 trials of 4 epochs on 45,000 images, plus a 90-epoch final
training (the paper: 1.3 GPU-hours for ResNet-20 on CIFAR-10, 2.05 for ResNet-18 on CIFAR-100):

    hours = (160 * (overhead + 4 * 45,000 / images_per_second) + 90 * 45,000 / images_per_second) / 3600

Populations: the existing measurement (`mpqjax.training.strategy.choose`, ``--population auto``) picks the
population size and strategy for each model at its fastest one-by-one setting, and a population trial is timed
there too.

Data: CIFAR-10 / CIFAR-100 from ``--data-dir`` when a local copy is there (`mpqjax.data.load`, no download),
otherwise random CIFAR-shaped data of the same size (45,000 training and 5,000 validation images of 32x32x3; the
values do not change the cost). The JSON says which. Weights are freshly initialised: the cost does not depend on
them.

    python experiments/bench_search_cost.py --out experiments/results/bench_search_cost_gpu_h200.json   # a GPU
    python experiments/bench_search_cost.py --quick         # checks the script on a CPU in about a minute
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
import numpy as np

from mpqjax import data, sensitivity
from mpqjax.nn import models
from mpqjax.search import steps as search_steps
from mpqjax.search.config import SearchConfig
from mpqjax.training import feed, population, strategy, train

PAPER = {"resnet20": {"dataset": "cifar10", "classes": 10, "gpu_hours": 1.3, "bomp_nas_gpu_hours": 12.0},
         "resnet18": {"dataset": "cifar100", "classes": 100, "gpu_hours": 2.05, "bomp_nas_gpu_hours": 30.0}}
SEARCH = {"trials": 160, "trial_epochs": 4, "train_examples": 45_000, "final_epochs": 90}
# (batch size, precision) timed per model by default: the search's default, then larger batches and mixed precision
DEFAULT_SETTINGS = {"resnet20": (("64", "float32"), ("512", "float32"), ("512", "bfloat16"), ("1024", "bfloat16")),
                    "resnet18": (("256", "bfloat16"), ("512", "bfloat16"), ("512", "float32"))}


def load_data(name: str, train_examples: int, validation_examples: int, data_dir: str | None, seed: int):
    """The model's CIFAR dataset when a local copy is there, else CIFAR-shaped random data of the same size."""
    spec = PAPER[name]
    try:
        dataset = data.load(spec["dataset"], data_dir=data_dir, download=False)
        return dataset, f"{spec['dataset']} (local copy)"
    except (ValueError, OSError, ImportError):
        pass
    rng = np.random.default_rng(seed)

    def split(count):
        return data.Split(rng.standard_normal((count, 32, 32, 3), np.float32),
                          rng.integers(0, spec["classes"], count).astype(np.int32))

    dataset = data.Dataset(f"{spec['dataset']}_shaped_random", split(train_examples), split(validation_examples),
                           split(64), spec["classes"], augmentation="cifar")
    return dataset, f"random data of {spec['dataset']}'s shape ({train_examples} training images, augmented)"


def quant_and_float(name: str, classes: int, precision: str):
    options = {"stem": "cifar"} if name == "resnet18" else {}
    float_model = models.get(name, quantize=False, max_width=1.0, num_classes=classes, input_shape=(32, 32, 3),
                             **options)
    quant_model = models.get(name, max_width=1.25, num_classes=classes, input_shape=(32, 32, 3), **options)
    return float_model, quant_model.clone(precision=precision)


def random_configuration(table, key) -> tuple[np.ndarray, np.ndarray]:
    layer_space = sensitivity.layer_space(table)
    bits, widths = layer_space.encoded_to_arrays(layer_space.space.sample(key, 1))
    return np.asarray(bits[0], np.float32), np.asarray(widths[0], np.float32)


def time_trial(dataset, float_model, float_variables, quant_model, bits, widths, *, batch_size: int, steps: int,
               key) -> dict:
    """One trial of ``steps`` training steps: its seconds outside training (transfer, calibration), in training
    steps, and in validation."""
    config = SearchConfig(batch_size=batch_size)
    subset = data.Dataset(dataset.name, data.Split(dataset.train.x[: steps * batch_size],
                                                   dataset.train.y[: steps * batch_size]),
                          dataset.validation, dataset.test, dataset.num_classes, augmentation=dataset.augmentation)
    start = time.perf_counter()
    variables, train_key = search_steps.finetune_start(key, config, subset, float_model, float_variables,
                                                       quant_model, bits, widths)
    jax.block_until_ready(variables)
    started = time.perf_counter()
    variables, losses = train.train(train_key, quant_model, variables, subset, epochs=1, batch_size=batch_size,
                                    learning_rate=1e-3, bits=bits, widths=widths)
    trained = time.perf_counter()
    accuracy = train.evaluate(quant_model, variables, dataset.validation, bits=bits, widths=widths)
    done = time.perf_counter()
    return {"overhead_seconds": started - start, "training_seconds": trained - started,
            "validation_seconds": done - trained, "images": len(losses) * batch_size,
            "finite": bool(np.all(np.isfinite(losses))), "validation_accuracy": accuracy}


def estimate(images_per_second: float, overhead_seconds: float) -> dict:
    """GPU-hours of the paper's search at a measured training throughput and per-trial overhead."""
    trial = overhead_seconds + SEARCH["trial_epochs"] * SEARCH["train_examples"] / images_per_second
    final = SEARCH["final_epochs"] * SEARCH["train_examples"] / images_per_second
    return {"trial_seconds": trial, "final_training_seconds": final,
            "search_gpu_hours": (SEARCH["trials"] * trial + final) / 3600,
            "trial_share_in_training_steps": (trial - overhead_seconds) / trial}


def measure_setting(name: str, dataset, batch_size: int, precision: str, args) -> dict:
    spec = PAPER[name]
    float_model, quant_model = quant_and_float(name, spec["classes"], precision)
    float_variables = models.init_variables(jax.random.key(0), float_model, (32, 32, 3))
    table = models.layer_table(quant_model, input_shape=(32, 32, 3))
    compile_start = time.perf_counter()
    bits, widths = random_configuration(table, jax.random.key(1))
    time_trial(dataset, float_model, float_variables, quant_model, bits, widths, batch_size=batch_size,
               steps=args.timed_steps, key=jax.random.key(2))  # the timed trials' shapes: they compile nothing
    compile_seconds = time.perf_counter() - compile_start
    runs = []
    for repeat in range(args.repeats):
        bits, widths = random_configuration(table, jax.random.key(10 + repeat))
        runs.append(time_trial(dataset, float_model, float_variables, quant_model, bits, widths,
                               batch_size=batch_size, steps=args.timed_steps, key=jax.random.key(20 + repeat)))
    overhead = statistics.median(run["overhead_seconds"] + run["validation_seconds"] for run in runs)
    images_per_second = statistics.median(run["images"] / run["training_seconds"] for run in runs)
    row = {"model": name, "batch_size": batch_size, "precision": precision, "population": 1,
           "strategy": "sequential", "first_trial_seconds": compile_seconds,
           "training_images_per_second": images_per_second, "overhead_seconds": overhead,
           "all_finite": all(run["finite"] for run in runs), "runs": runs,
           **estimate(images_per_second, overhead)}
    row["paper_gpu_hours"] = spec["gpu_hours"]
    row["paper_over_ours"] = spec["gpu_hours"] / row["search_gpu_hours"]
    print(json.dumps({key: value for key, value in row.items() if key != "runs"}), file=sys.stderr, flush=True)
    return row


def measure_population(name: str, dataset, batch_size: int, precision: str, args) -> dict:
    """The population the existing measurement picks at this setting, and a timed population trial there."""
    spec = PAPER[name]
    float_model, quant_model = quant_and_float(name, spec["classes"], precision)
    float_variables = models.init_variables(jax.random.key(0), float_model, (32, 32, 3))
    table = models.layer_table(quant_model, input_shape=(32, 32, 3))
    steps_per_trial = SEARCH["trial_epochs"] * SEARCH["train_examples"] // batch_size
    choice = strategy.choose(quant_model, dataset, batch_size=batch_size, steps_per_configuration=steps_per_trial,
                             populations=args.populations, strategies=("sequential", "vmap"), repeats=3)
    row = {"model": name, "batch_size": batch_size, "precision": precision, "choice": choice.to_dict()}
    if choice.population > 1:
        size = choice.population
        configurations = [random_configuration(table, jax.random.key(30 + i)) for i in range(size)]
        bits = np.stack([b for b, _ in configurations])
        widths = np.stack([w for _, w in configurations])
        subset = data.Dataset(dataset.name, data.Split(dataset.train.x[: args.timed_steps * batch_size],
                                                       dataset.train.y[: args.timed_steps * batch_size]),
                              dataset.validation, dataset.test, dataset.num_classes,
                              augmentation=dataset.augmentation)
        timings = []
        for repeat in range(2):  # the first compiles
            start = time.perf_counter()
            _, losses, training_seconds = population.finetune(
                jax.random.key(40 + repeat), float_model, float_variables, quant_model, subset, bits=bits,
                widths=widths, epochs=1, batch_size=batch_size, strategy=choice.strategy, timed=True)
            timings.append((time.perf_counter() - start, training_seconds))
        total, training = timings[-1]
        images_per_second = size * losses.shape[1] * batch_size / training
        overhead = (total - training) / size
        row.update({"population": size, "strategy": choice.strategy,
                    "training_images_per_second": images_per_second, "overhead_seconds": overhead,
                    **estimate(images_per_second, overhead)})
        row["paper_over_ours"] = spec["gpu_hours"] / row["search_gpu_hours"]
    print(json.dumps(row), file=sys.stderr, flush=True)
    return row


def step_anatomy(name: str, dataset, batch_size: int, repeats: int = 20) -> list[dict]:
    """Where a training step's time goes: the same fed step (batch gathered and augmented on the device) of the
    float model, of the quantised model at width 1, of the search's masked model (widths up to 1.25), and of that
    in bfloat16; median milliseconds per step."""
    spec = PAPER[name]
    options = {"stem": "cifar"} if name == "resnet18" else {}
    shape = (32, 32, 3)
    variants = {
        "float": models.get(name, quantize=False, max_width=1.0, num_classes=spec["classes"], input_shape=shape,
                            **options),
        "quantised, width 1": models.get(name, max_width=1.0, num_classes=spec["classes"], input_shape=shape,
                                         **options),
        "quantised, masked to 1.25": models.get(name, max_width=1.25, num_classes=spec["classes"],
                                                input_shape=shape, **options),
    }
    variants["quantised, masked to 1.25, bfloat16"] = variants["quantised, masked to 1.25"].clone(
        precision="bfloat16")
    run = feed.plan(jax.random.key(0), dataset, epochs=1, batch_size=batch_size, learning_rate=1e-3)
    rows = []
    for label, model in variants.items():
        table = models.layer_table(model, input_shape=shape)
        bits, widths = (None, None) if not model.quantize else train.config_arrays(
            model, random_configuration(table, jax.random.key(1))[0], 1.0, shape)
        variables = models.init_variables(jax.random.key(0), model, shape)
        step = train.training_step(model, dataset.augmentation)
        state = train.init_state(variables)
        if bits is None:
            bits = widths = jax.numpy.zeros(0)
            step = jax.jit(lambda s, r, b, w, d, model=model: train.fed_step_function(model, dataset.augmentation)(
                s, r, None, None, d), donate_argnums=0)
        decay = jax.numpy.float32(1e-4)
        state, loss = step(state, run, bits, widths, decay)
        jax.block_until_ready(loss)
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            state, loss = step(state, run, bits, widths, decay)
            jax.block_until_ready(loss)
            times.append(time.perf_counter() - start)
        milliseconds = 1e3 * statistics.median(times)
        rows.append({"model": name, "variant": label, "batch_size": batch_size, "milliseconds_per_step": milliseconds,
                     "images_per_second": batch_size / milliseconds * 1e3})
        print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["resnet20", "resnet18"], choices=sorted(PAPER))
    parser.add_argument("--settings", nargs="+", default=None,
                        help="model:batch:precision to time, e.g. resnet20:512:bfloat16 (default: a sweep per model)")
    parser.add_argument("--populations", type=int, nargs="+", default=[1, 4, 16])
    parser.add_argument("--no-population", action="store_true", help="skip the population measurement")
    parser.add_argument("--population-models", nargs="+", default=["resnet20"], choices=sorted(PAPER),
                        help="models whose population is chosen and timed (where it can pay: small models)")
    parser.add_argument("--train-examples", type=int, default=SEARCH["train_examples"])
    parser.add_argument("--validation-examples", type=int, default=5000)
    parser.add_argument("--timed-steps", type=int, default=60)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--anatomy", nargs="*", default=[], metavar="MODEL:BATCH",
                        help="also time one training step of the float, quantised, masked and bfloat16 model")
    parser.add_argument("--quick", action="store_true", help="tiny sizes: checks the script (on a CPU)")
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    if args.quick:
        args.train_examples, args.validation_examples, args.timed_steps, args.repeats = 512, 256, 4, 1
        args.populations, args.population_models = [1, 2], ["resnet20"]
        args.settings = args.settings or ["resnet20:32:float32", "resnet20:32:bfloat16", "resnet18:16:bfloat16"]
    settings = [tuple(item.split(":")) for item in (args.settings or [])] or [
        (name, batch, precision) for name in args.models for batch, precision in DEFAULT_SETTINGS[name]]
    settings = [(name, int(batch), precision) for name, batch, precision in settings]
    started = time.perf_counter()
    anatomy = [(item.split(":")[0], int(item.split(":")[1])) for item in args.anatomy]
    datasets = {name: load_data(name, args.train_examples, args.validation_examples, args.data_dir, 0)
                for name in {name for name, _, _ in settings} | {name for name, _ in anatomy}}
    placed = {name: dataset.on_device() for name, (dataset, _) in datasets.items()}  # once, as a search does
    result = {
        "machine": {"backend": jax.default_backend(), "device": str(jax.devices()[0].device_kind),
                    "jax": jax.__version__, "python": platform.python_version()},
        "data": {name: described for name, (_, described) in datasets.items()},
        "search": SEARCH, "paper": PAPER, "anatomy": [], "settings": [], "populations": [], "best": {},
    }
    for name, batch in anatomy:
        result["anatomy"] += step_anatomy(name, placed[name], batch)
        save(result, args.out, started)
    for name, batch, precision in settings:
        result["settings"].append(measure_setting(name, placed[name], batch, precision, args))
        save(result, args.out, started)  # a run stopped at its time limit keeps what it measured
    for row in result["settings"]:
        best = result["best"].get(row["model"])
        if row["all_finite"] and (best is None or row["search_gpu_hours"] < best["search_gpu_hours"]):
            result["best"][row["model"]] = {key: row[key] for key in (
                "batch_size", "precision", "training_images_per_second", "overhead_seconds", "search_gpu_hours",
                "paper_over_ours")}
    save(result, args.out, started)
    for name in [] if args.no_population else args.population_models:
        if name in result["best"]:
            best = result["best"][name]
            result["populations"].append(measure_population(name, placed[name], best["batch_size"],
                                                            best["precision"], args))
            save(result, args.out, started)
    print(json.dumps(result, indent=1))


def save(result: dict, path: str | None, started: float) -> None:
    result["seconds"] = time.perf_counter() - started
    if path:
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        with open(path, "w") as handle:
            handle.write(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
