"""Does a faster trial judge configurations as the default one does? Mixed precision and larger batches, measured.

A search only needs its trials to rank configurations as the reference trial would. For random configurations of the
search space (bits and widths), the script fine-tunes each as a trial does (`mpqjax.search.Problem.evaluate`'s
steps) with the reference settings (float32, batch 64) and with each variant (``--variants``: precision, batch size,
learning-rate scaling), and reports per variant the mean validation accuracy, the mean absolute difference from the
reference, and the Spearman rank correlation of the configurations' accuracies with the reference's. The reference
fine-tuned again with other keys (``float32:64:none:reseed``) gives the noise floor of both figures.

Models: ``digits_cnn`` on digits and ``resnet20`` on digits enlarged to CIFAR's 32x32x3 (no CIFAR-10 offline).

    python experiments/trial_accuracy.py --out experiments/results/trial_accuracy.json
    python experiments/trial_accuracy.py --quick          # checks the script
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import jax
import numpy as np
from scipy.stats import spearmanr

from mpqjax import data, sensitivity
from mpqjax.nn import models
from mpqjax.search import steps
from mpqjax.search.config import SearchConfig
from mpqjax.training import train

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from peers import cifar_shaped_digits  # noqa: E402

REFERENCE = "float32:64:none"


def configurations(table, count: int, seed: int):
    """``count`` random configurations of the unpruned space, as ``(bits, widths)`` NumPy rows."""
    layer_space = sensitivity.layer_space(table)
    bits, widths = layer_space.encoded_to_arrays(layer_space.space.sample(jax.random.key(seed), count))
    return list(zip(np.asarray(bits), np.asarray(widths), strict=True))


def run_model(name: str, variants: list[str], count: int, seed: int) -> dict:
    dataset = cifar_shaped_digits(seed) if name == "resnet20" else data.load_digits_splits(seed)
    base = SearchConfig(model=name, dataset="digits", seed=seed)
    float_net = steps.float_model_of(base, dataset)
    placed = dataset.on_device()
    table = models.layer_table(float_net.model, input_shape=dataset.input_shape)
    configs = configurations(table, count, seed)
    accuracies, seconds = {}, {}
    for variant in [REFERENCE, *variants]:
        precision, batch, scaling, *reseed = variant.split(":")
        config = SearchConfig(model=name, dataset="digits", seed=seed, precision=precision, batch_size=int(batch),
                              learning_rate_scaling=scaling)
        quant_model = steps.quantized_model(config, dataset.num_classes)
        started = time.perf_counter()
        accuracies[variant] = []
        for index, (bits, widths) in enumerate(configs):
            key = jax.random.fold_in(steps.search_keys(seed).trial, index + (10_000 if reseed else 0))
            variables, losses = steps.finetune_configuration(
                key, config, placed, float_net.model, float_net.variables, quant_model, bits, widths,
                epochs=config.finetune_epochs, learning_rate=config.finetune_learning_rate)
            accuracy = train.evaluate(quant_model, variables, placed.validation, bits=bits, widths=widths) \
                if np.all(np.isfinite(losses)) else float("nan")
            accuracies[variant].append(accuracy)
        seconds[variant] = time.perf_counter() - started
        print(json.dumps({"model": name, "variant": variant, "seconds": seconds[variant]}), file=sys.stderr,
              flush=True)
    reference = np.asarray(accuracies[REFERENCE])
    rows = []
    for variant, values in accuracies.items():
        values = np.asarray(values)
        rows.append({"variant": variant, "mean_accuracy": float(np.nanmean(values)),
                     "mean_abs_difference": float(np.nanmean(np.abs(values - reference))),
                     "spearman_with_reference": float(spearmanr(values, reference).statistic),
                     "seconds": seconds[variant], "accuracies": [float(v) for v in values]})
    return {"model": name, "dataset": "digits enlarged to 32x32x3" if name == "resnet20" else "digits",
            "configurations": count, "seed": seed, "rows": rows}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["digits_cnn", "resnet20"])
    parser.add_argument("--variants", nargs="+",
                        default=["float32:64:none:reseed", "bfloat16:64:none", "float32:256:none", "float32:256:sqrt",
                                 "float32:256:linear"],
                        help="precision:batch:scaling, against the reference float32:64:none; a fourth field "
                             "'reseed' fine-tunes with other keys (the noise floor: the reference against itself)")
    parser.add_argument("--configurations", type=int, default=12)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true", help="digits_cnn, 3 configurations, one variant")
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    if args.quick:
        args.models, args.configurations, args.variants = ["digits_cnn"], 3, ["bfloat16:64:none"]
    result = {"reference": REFERENCE, "backend": jax.default_backend(),
              "models": [run_model(name, args.variants, args.configurations, args.seed) for name in args.models]}
    text = json.dumps(result, indent=1)
    print(text)
    if args.out:
        with open(args.out, "w") as handle:
            handle.write(text + "\n")


if __name__ == "__main__":
    main()
