"""The settings of a search: `SearchConfig`, its defaults, its help texts and its validation, in one place.

Each field carries its default, a one-line help and the rule its values follow (field metadata). The command line
generates its options from this metadata (`mpqjax.cli.options`), so a default or a help text is written once, and
`SearchConfig.validate` applies the same rules to the Python API and the command line.

Example:
    >>> config = SearchConfig(model="resnet20", dataset="cifar10", trials=200, max_size_bytes=70e3)
    >>> config.validate()
    >>> dataclasses.fields(SearchConfig)[0].metadata["help"]
    'model zoo name (mpqjax.nn.models.available)'
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from mpqjax import data, sensitivity, store
from mpqjax.nn import models
from mpqjax.nn.config import check_bits
from mpqjax.nn.quant import CALIBRATION_METHODS
from mpqjax.search import objective
from mpqjax.training.population import STRATEGIES

__all__ = ["DEFAULT_SIZE_REDUCTION", "GROUPS", "SearchConfig"]

DEFAULT_SIZE_REDUCTION = 6.0  # the paper's ResNet-20 reached 6.1x against FiP16 at no accuracy loss
# The settings' groups (the command line's option groups), in order.
GROUPS = ("model, data and hardware", "limits", "search", "sensitivity", "training", "population and devices")

Check = Callable[[str, Any], None]  # check(name, value) raises ValueError naming the setting as `name`


def _rule(description: str, test: Callable[[Any], bool], *, optional: bool = False) -> Check:
    """A check raising ``"<name> must be <description>, got <value>"`` when ``test(value)`` fails."""

    def check(name: str, value: Any) -> None:
        if not (optional and value is None) and not test(value):
            raise ValueError(f"{name} must be {description}, got {value!r}")

    return check


def _is_positive_int(value) -> bool:
    return not isinstance(value, bool) and isinstance(value, (int, np.integer)) and value >= 1


def _is_positive_number(value) -> bool:
    return (not isinstance(value, bool) and isinstance(value, (int, float, np.number)) and math.isfinite(value)
            and value > 0)


_POSITIVE_INT = _rule("a positive integer", _is_positive_int)
_POSITIVE = _rule("a positive number", _is_positive_number)
_OPTIONAL_POSITIVE = _rule("a positive number", _is_positive_number, optional=True)
_NON_NEGATIVE = _rule("a non-negative number", lambda v: isinstance(v, (int, float)) and 0 <= v < math.inf)
_CALIBRATION = _rule(f"one of {', '.join(CALIBRATION_METHODS)}", lambda v: v in CALIBRATION_METHODS)
_POPULATION = _rule("a positive integer or 'auto'", lambda v: v == "auto" or _is_positive_int(v))
_STRATEGY = _rule(f"auto or one of {', '.join(STRATEGIES)}", lambda v: v in ("auto", *STRATEGIES))


def _known_model(name: str, value: Any) -> None:
    if value not in models.available():
        raise ValueError(f"unknown model {value!r}; available: {', '.join(models.available())}")


def _known_dataset(name: str, value: Any) -> None:
    if value not in data.LOADERS:
        raise ValueError(f"unknown dataset {value!r}; available: {', '.join(data.LOADERS)}")


def _bits(name: str, value: Any) -> None:
    check_bits(list(value), name)


def _bit_sets(name: str, value: Any) -> None:
    check_bits([bits for group in value for bits in group], name)


def _setting(default: Any, help: str, group: str, check: Check | None = None, **cli: Any) -> Any:
    """A field with its help, group and rule; ``cli``: ``option`` (its spelling when not ``--<name>``),
    ``aliases`` (more spellings) and ``unit`` (``"bytes"`` or ``"seconds"``: the command line takes units)."""
    return dataclasses.field(default=default, metadata={"help": help, "group": group, "check": check, **cli})


_WHAT, _LIMITS, _SEARCH, _SENSITIVITY, _TRAINING, _DEVICES = GROUPS


@dataclasses.dataclass(frozen=True)
class SearchConfig:
    """Every setting of a search; the defaults are the embedded digits job.

    Each field's meaning is its ``help`` metadata (also the command line's help; ``group`` sorts them there).
    `validate` checks the values.
    """

    model: str = _setting("digits_cnn", "model zoo name (mpqjax.nn.models.available)", _WHAT, _known_model)
    dataset: str = _setting("digits", "dataset name (mpqjax.data.LOADERS)", _WHAT, _known_dataset)
    data_dir: str | None = _setting(None, "folder of downloaded datasets (tensorflow-datasets or CIFAR folders)",
                                    _WHAT)
    target: str = _setting("fpga", "hardware target: fpga (the paper's), generic, or a .json/.toml target file",
                           _WHAT)
    max_size_bytes: float | None = _setting(None, "size limit (mu), e.g. 16kB, 0.5MB, 20000 (bytes)", _LIMITS,
                                            _OPTIONAL_POSITIVE, option="--max-size", unit="bytes")
    min_size_reduction: float | None = _setting(
        DEFAULT_SIZE_REDUCTION, "size limit as a reduction against FiP16 (size <= FiP16 size / this; the stricter of "
        "this and the size limit applies)", _LIMITS, _OPTIONAL_POSITIVE)
    max_latency_seconds: float | None = _setting(None, "latency limit (tau), e.g. 2us, 1.5ms, 0.01 (seconds)",
                                                 _LIMITS, _OPTIONAL_POSITIVE, option="--max-latency", unit="seconds")
    min_speedup: float | None = _setting(None, "latency limit as a speed-up against FiP16", _LIMITS,
                                         _OPTIONAL_POSITIVE)
    max_energy_joules: float | None = _setting(None, "energy limit (epsilon) in joules", _LIMITS, _OPTIONAL_POSITIVE,
                                               option="--max-energy")
    min_throughput: float | None = _setting(None, "throughput limit (pi) in inferences per second", _LIMITS,
                                            _OPTIONAL_POSITIVE)
    soft_limits: bool = _setting(False, "evaluate configurations over a limit and penalise them (default: the cost "
                                 "model masks them, they are never proposed)", _LIMITS)
    penalty: float = _setting(objective.DEFAULT_MULTIPLIER, "Lagrangian multiplier per relative violation of a "
                              "limit (objective = accuracy - penalty * violation)", _LIMITS, _POSITIVE)
    trials: int = _setting(60, "configurations to evaluate (the paper's n)", _SEARCH, _POSITIVE_INT)
    n_initial: int = _setting(20, "random configurations first (the paper's n0)", _SEARCH, _POSITIVE_INT)
    seed: int = _setting(0, "seed of everything: data split, float training, probes, optimiser, fine-tunes", _SEARCH)
    prune: bool = _setting(True, "Hessian pruning of each layer's bit-widths (off: every layer may take every "
                           "bit-width of bits)", _SEARCH, option="--no-prune")
    bits: tuple[int, ...] = _setting(sensitivity.ALL_BITS, "bit-widths of the unpruned space", _SEARCH, _bits)
    bit_sets: tuple[tuple[int, ...], ...] = _setting(
        sensitivity.DEFAULT_BIT_SETS, "candidate bits per sensitivity cluster, most sensitive first", _SENSITIVITY,
        _bit_sets)
    widths: tuple[float, ...] = _setting(sensitivity.DEFAULT_WIDTHS, "width multipliers of every width group",
                                         _SEARCH)
    fixed_bits: tuple[tuple[str, int], ...] = _setting((), "layers whose bit-width is fixed by hand, e.g. "
                                                       "'conv1=8,head=8'", _SENSITIVITY, option="--fix-bits")
    log_scale: bool = _setting(False, "cluster log10 of the traces per weight", _SENSITIVITY)
    float_checkpoint: str | None = _setting(
        None, "float model at width 1: a flax msgpack file or an orbax checkpoint folder of {'params', "
        "'batch_stats'} (default: train one, cached)", _WHAT, option="--params", aliases=("--float-checkpoint",))
    float_epochs: int = _setting(20, "float model training epochs (without a checkpoint)", _TRAINING, _POSITIVE_INT)
    float_learning_rate: float = _setting(3e-3, "peak one-cycle learning rate of the float training", _TRAINING,
                                          _POSITIVE, option="--float-lr")
    batch_size: int = _setting(64, "examples per training step", _TRAINING, _POSITIVE_INT)
    finetune_epochs: int = _setting(4, "quantisation-aware fine-tune epochs per trial (the paper's CIFAR value)",
                                    _TRAINING, _POSITIVE_INT)
    finetune_learning_rate: float = _setting(1e-3, "peak one-cycle learning rate of a trial's fine-tune", _TRAINING,
                                             _POSITIVE, option="--finetune-lr")
    final_epochs: int = _setting(90, "training epochs of the best configuration (the paper's 90)", _TRAINING,
                                 _POSITIVE_INT)
    final_learning_rate: float = _setting(1e-2, "peak one-cycle learning rate of the final training (the paper's "
                                          "0.01)", _TRAINING, _POSITIVE, option="--final-lr")
    weight_decay: float = _setting(1e-4, "decoupled weight decay of every training", _TRAINING, _NON_NEGATIVE)
    calibration: str = _setting("mse", f"activation clip calibration: {', '.join(CALIBRATION_METHODS)}", _TRAINING,
                                _CALIBRATION)
    hessian_batch_size: int = _setting(256, "training examples per Hessian batch", _SENSITIVITY, _POSITIVE_INT)
    hessian_batches: int = _setting(2, "training batches the Hessian traces average", _SENSITIVITY, _POSITIVE_INT)
    hessian_max_probes: int = _setting(256, "Hutchinson probe budget", _SENSITIVITY, _POSITIVE_INT)
    hessian_tol: float = _setting(1e-2, "relative change of the running trace means to stop at", _SENSITIVITY,
                                  _POSITIVE)
    baseline: bool = _setting(False, "also train the uniform-precision baseline: every layer at each of the "
                              "baseline bits, width 1", _TRAINING)
    baseline_bits: tuple[int, ...] = _setting((8, 6, 4, 3, 2), "bit-widths of the uniform baseline", _TRAINING,
                                              _bits)
    population: int | str = _setting(
        1, "configurations proposed and fine-tuned together (ask P, evaluate P, tell P), or 'auto': measure 1, 4 "
        "and 16 (capped by memory and trials) and keep the fastest, the smaller within 10%", _DEVICES, _POPULATION)
    strategy: str = _setting(
        "auto", f"how a population trains: auto (measured when the population is auto or > 1, else sequential), "
        f"{', '.join(STRATEGIES)} (mpqjax.training.population); measured choices can differ between runs", _DEVICES,
        _STRATEGY)

    def validate(self, *, names: Mapping[str, str] | None = None) -> None:
        """Raise ValueError naming the first bad setting (cheap checks only: nothing is loaded).

        Args:
            names: how messages name each setting (the command line passes its option spellings); default: the
                field names.
        """
        names = dict(names or {})
        for field in dataclasses.fields(self):
            check = field.metadata.get("check")
            if check is not None:
                check(names.get(field.name, field.name), getattr(self, field.name))
        if self.population != "auto" and self.population > self.trials:
            raise ValueError(f"{names.get('population', 'population')} {self.population} exceeds "
                             f"{names.get('trials', 'trials')}={self.trials}: every population is evaluated whole")

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready settings (tuples as lists)."""
        return store.to_json_value(dataclasses.asdict(self))
