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
from collections.abc import Callable, Collection, Mapping
from typing import Any

import numpy as np

from mpqjax import data, sensitivity, store
from mpqjax.nn import models
from mpqjax.nn.config import MAX_CHANNEL_BITS, check_bits
from mpqjax.nn.quant import CALIBRATION_METHODS, PRECISIONS
from mpqjax.search import inputs, methods, objective
from mpqjax.training.feed import LEARNING_RATE_SCALINGS
from mpqjax.training.population import STRATEGIES

__all__ = ["DEFAULT_SIZE_REDUCTION", "GROUPS", "LIMIT_SETTINGS", "MAX_SEED", "TWO_WAYS", "UNUSED", "SearchConfig"]

MAX_SEED = 2**32 - 1  # the data split's NumPy/scikit-learn generators take seeds below 2**32
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


def _is_seed(value) -> bool:
    return not isinstance(value, bool) and isinstance(value, (int, np.integer)) and 0 <= value <= MAX_SEED


_POSITIVE_INT = _rule("a positive integer", _is_positive_int)
_POSITIVE = _rule("a positive number", _is_positive_number)
_OPTIONAL_POSITIVE = _rule("a positive number", _is_positive_number, optional=True)
_NON_NEGATIVE = _rule("a non-negative number", lambda v: isinstance(v, (int, float)) and 0 <= v < math.inf)
_CALIBRATION = _rule(f"one of {', '.join(CALIBRATION_METHODS)}", lambda v: v in CALIBRATION_METHODS)
_POPULATION = _rule("a positive integer or 'auto'", lambda v: v == "auto" or _is_positive_int(v))
_SEED = _rule("an integer in [0, 2**32 - 1]", _is_seed)
_SCALING = _rule(f"one of {', '.join(LEARNING_RATE_SCALINGS)}", lambda v: v in LEARNING_RATE_SCALINGS)
_PRECISION = _rule(f"one of {', '.join(PRECISIONS)}", lambda v: v in PRECISIONS)
_STRATEGY = _rule(f"auto or one of {', '.join(STRATEGIES)}", lambda v: v in ("auto", *STRATEGIES))


def _known_method(name: str, value: Any) -> None:
    if value not in methods.METHODS:
        raise ValueError(f"{name} must be one of {', '.join(methods.METHODS)}, got {value!r}")


def _method(config: SearchConfig) -> methods.Method:
    return methods.METHODS[config.method]


def _known_model(name: str, value: Any) -> None:
    inputs.check_model_name(value)


def _known_dataset(name: str, value: Any) -> None:
    inputs.check_dataset_name(value)


def _bits(name: str, value: Any) -> None:
    check_bits(list(value), name)
    if not value or len(set(value)) != len(value):
        raise ValueError(f"{name} must name one or more distinct bit-widths, got {list(value)}")


def _widths(name: str, value: Any) -> None:
    if not value or any(not _is_positive_number(width) for width in value):
        raise ValueError(f"{name} must be positive numbers, got {list(value)}")
    if len(set(value)) != len(value):
        raise ValueError(f"{name} must name distinct width multipliers, got {list(value)}")


def _bit_sets(name: str, value: Any) -> None:
    if not value or any(not group for group in value):
        raise ValueError(f"{name} must be one or more non-empty sets of bit-widths, got {value!r}")
    check_bits([bits for group in value for bits in group], name)
    for group in value:
        if len(set(group)) != len(group):
            raise ValueError(f"{name}: a set names a bit-width twice, got {list(group)}")


def _fixed_bits(name: str, value: Any) -> None:
    pairs = list(value)
    if any(not (isinstance(pair, (tuple, list)) and len(pair) == 2 and isinstance(pair[0], str)) for pair in pairs):
        raise ValueError(f"{name} must be (layer name, bits) pairs, got {value!r}")
    layers = [layer for layer, _ in pairs]
    twice = sorted({layer for layer in layers if layers.count(layer) > 1})
    if twice:
        raise ValueError(f"{name}: layers fixed twice: {', '.join(twice)}")
    try:
        check_bits([bits for _, bits in pairs], layers)
    except ValueError as error:
        raise ValueError(f"{name}: {error}") from None


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

    model: str = _setting("digits_cnn", f"model zoo name ({', '.join(models.available())}) or your own model's "
                          "factory, package.module:function (returning a flax linen or nnx module)", _WHAT,
                          _known_model)
    dataset: str = _setting("digits", f"dataset name: {', '.join(data.LOADERS)} (digits is embedded; the others "
                            "are read from --data-dir or downloaded)", _WHAT, _known_dataset)
    data_dir: str | None = _setting(None, "folder of downloaded datasets (tensorflow-datasets or CIFAR folders)",
                                    _WHAT)
    target: str = _setting("fpga", "hardware target: fpga (the paper's), generic, or a .json/.toml target file",
                           _WHAT)
    max_size_bytes: float | None = _setting(None, "size limit (mu), e.g. 16kB, 0.5MB, 20000 (bytes)", _LIMITS,
                                            _OPTIONAL_POSITIVE, option="--max-size", unit="bytes")
    min_size_reduction: float | None = _setting(
        DEFAULT_SIZE_REDUCTION, "size limit as a reduction against FiP16: size <= FiP16 size / this (give this or "
        "the size limit, not both)", _LIMITS, _OPTIONAL_POSITIVE)
    max_latency_seconds: float | None = _setting(None, "latency limit (tau), e.g. 2us, 1.5ms, 0.01 (seconds)",
                                                 _LIMITS, _OPTIONAL_POSITIVE, option="--max-latency", unit="seconds")
    min_speedup: float | None = _setting(None, "latency limit as a speed-up against FiP16 (not with the latency "
                                         "limit)", _LIMITS, _OPTIONAL_POSITIVE)
    max_energy_joules: float | None = _setting(None, "energy limit (epsilon) in joules", _LIMITS, _OPTIONAL_POSITIVE,
                                               option="--max-energy")
    min_throughput: float | None = _setting(None, "throughput limit (pi) in inferences per second", _LIMITS,
                                            _OPTIONAL_POSITIVE)
    max_bops: float | None = _setting(None, "bit-operations limit: MACs x weight bits x activation bits, summed over "
                                      "layers (HAWQ-V3's budget)", _LIMITS, _OPTIONAL_POSITIVE)
    soft_limits: bool = _setting(False, "evaluate configurations over a limit and penalise them (default: the cost "
                                 "model masks them, they are never proposed)", _LIMITS)
    penalty: float = _setting(objective.DEFAULT_MULTIPLIER, "Lagrangian multiplier per relative violation of a "
                              "limit (objective = accuracy - penalty * violation)", _LIMITS, _POSITIVE)
    method: str = _setting("kmeans_tpe", "search method: kmeans_tpe (the paper's), random, uniform, hawq_ilp, "
                           "rd_layers, rd_channels, mixprec, dnas (mpqjax.search.methods)", _SEARCH, _known_method)
    trials: int = _setting(60, "configurations to evaluate (the paper's n)", _SEARCH, _POSITIVE_INT)
    n_initial: int = _setting(20, "random configurations first (the paper's n0); when not set, at most trials (a "
                              "shorter search is then all random); set above trials, refused", _SEARCH,
                              _POSITIVE_INT)
    seed: int = _setting(0, "seed of everything: data split, float training, probes, optimiser, fine-tunes (an "
                         "integer in [0, 2**32 - 1])", _SEARCH, _SEED)
    prune: bool = _setting(True, "Hessian pruning of each layer's bit-widths (off, --no-prune: every layer may take "
                           "every bit-width of bits)", _SEARCH, option="--no-prune")
    bits: tuple[int, ...] = _setting(sensitivity.ALL_BITS, "bit-widths of the unpruned space", _SEARCH, _bits)
    bit_sets: tuple[tuple[int, ...], ...] = _setting(
        sensitivity.DEFAULT_BIT_SETS, "candidate bits per sensitivity cluster, most sensitive first", _SENSITIVITY,
        _bit_sets)
    widths: tuple[float, ...] = _setting(sensitivity.DEFAULT_WIDTHS, "width multipliers of every width group",
                                         _SEARCH, _widths)
    fixed_bits: tuple[tuple[str, int], ...] = _setting((), "layers whose bit-width is fixed by hand, e.g. "
                                                       "'conv1=8,head=8' (bit-widths 2 to 16)", _SENSITIVITY,
                                                       _fixed_bits, option="--fix-bits")
    log_scale: bool = _setting(False, "cluster log10 of the traces per weight", _SENSITIVITY)
    float_checkpoint: str | None = _setting(
        None, "float model at width 1: a flax msgpack file or an orbax checkpoint folder of {'params', "
        "'batch_stats'} (default: train one, cached)", _WHAT, option="--params", aliases=("--float-checkpoint",))
    float_epochs: int = _setting(20, "float model training epochs (without a checkpoint)", _TRAINING, _POSITIVE_INT)
    float_learning_rate: float = _setting(3e-3, "peak one-cycle learning rate of the float training", _TRAINING,
                                          _POSITIVE, option="--float-lr")
    batch_size: int = _setting(64, "examples per training step", _TRAINING, _POSITIVE_INT)
    learning_rate_scaling: str = _setting(
        "none", "how the learning rates (given for batches of 64) follow the batch size: none, linear (x batch/64) "
        "or sqrt", _TRAINING, _SCALING, option="--lr-scaling")
    precision: str = _setting(
        "float32", "operands of the quantised layers' convolutions and products in trials and the final training: "
        "float32, or bfloat16 (mixed precision: faster on a GPU; the test accuracy and the export stay float32)",
        _TRAINING, _PRECISION)
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
    rd_examples: int = _setting(256, "training examples whose outputs measure the distortion curves of rd_layers and "
                                "rd_channels", _SENSITIVITY, _POSITIVE_INT)
    supernet_epochs: int = _setting(10, "training epochs of the supernet of mixprec and dnas (its weights and its "
                                    "relaxed choices)", _SEARCH, _POSITIVE_INT)
    arch_learning_rate: float = _setting(5e-2, "Adam learning rate of the relaxed choices' logits (mixprec, dnas)",
                                         _SEARCH, _POSITIVE, option="--arch-lr")
    cost_strength: float = _setting(1.0, "initial multiplier of each limit's expected cost ratio in the supernet's "
                                    "loss (mixprec, dnas); dual ascent then tunes it to the limit", _SEARCH,
                                    _NON_NEGATIVE)
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

    def validate(self, *, names: Mapping[str, str] | None = None, given: Collection[str] | None = None) -> None:
        """Raise ValueError naming the first bad setting or combination (cheap checks only: nothing is loaded).

        Each value is checked against its rule; then combinations: a limit given two ways (a size and a size
        reduction, a latency and a speed-up), more random trials (``n_initial``) than trials, and a population
        larger than the trials. With ``given`` (the command line), settings that would have no effect with the
        others (`UNUSED`) are refused too.

        Args:
            names: how messages name each setting (the command line passes its option spellings); default: the
                field names.
            given: the settings the caller set explicitly (the command line passes the options given). Default
                (the Python API): a setting counts as set when it differs from its default, so the default size
                reduction still applies with ``max_size_bytes`` (the stricter wins: pass ``min_size_reduction=None``
                to drop it) and the default ``n_initial`` is capped at ``trials``; unused settings are not refused
                (a settings dict shared by several searches may carry some).
        """
        names = dict(names or {})
        name = lambda setting: names.get(setting, setting)  # noqa: E731
        for field in dataclasses.fields(self):
            check = field.metadata.get("check")
            if check is not None:
                check(name(field.name), getattr(self, field.name))
        is_set = (lambda setting: setting in given) if given is not None else self._differs_from_default
        for first, second, limit in TWO_WAYS:
            if is_set(first) and is_set(second) and None not in (getattr(self, first), getattr(self, second)):
                raise ValueError(f"{name(first)} and {name(second)} both set {limit}: give one")
        if self.n_initial > self.trials and is_set("n_initial"):
            raise ValueError(f"{name('n_initial')} {self.n_initial} exceeds {name('trials')}={self.trials}: every "
                             f"trial would be random; give at most {self.trials}, or leave it out (its default is "
                             f"capped at {name('trials')})")
        if self.population != "auto" and self.population > self.trials:
            raise ValueError(f"{name('population')} {self.population} exceeds {name('trials')}={self.trials}: "
                             "every population is evaluated whole")
        self._check_method(name, is_set)
        if given is not None:
            self._refuse_unused(set(given), name)

    def _check_method(self, name: Callable[[str], str], is_set: Callable[[str], bool]) -> None:
        """Refuse what the method cannot honour: widths other than 1 for a method that chooses bit-widths only,
        two limits for a method that allocates under one."""
        method = _method(self)
        if not method.searches_widths and is_set("widths") and tuple(self.widths) != (1.0,):
            raise ValueError(f"{name('method')} {self.method} chooses bit-widths only (every width is 1): "
                             f"{name('widths')} cannot apply; leave it out")
        limits = [limit for limit, settings in LIMIT_SETTINGS.items()
                  if any(getattr(self, setting) is not None for setting in settings)]
        if self.method == "rd_layers" and len(limits) > 1:
            raise ValueError(f"{name('method')} rd_layers allocates under one limit, got {' and '.join(limits)}; "
                             f"give one, or use hawq_ilp")
        if method.relaxed and not limits:
            raise ValueError(f"{name('method')} {self.method} trades accuracy against a limit: give one")
        wide = sorted({bits for bits in (*self.bits, *(b for _, b in self.fixed_bits)) if bits > MAX_CHANNEL_BITS})
        if self.method == "mixprec" and wide:
            raise ValueError(f"{name('method')} mixprec quantises weights channel by channel at 2 to "
                             f"{MAX_CHANNEL_BITS} bits: leave {wide} out of {name('bits')} and {name('fixed_bits')}")
        if self.method == "rd_channels" and limits != ["the size limit"]:
            raise ValueError(f"{name('method')} rd_channels allocates under the size limit alone, got "
                             f"{' and '.join(limits) or 'no limit'}")

    def _differs_from_default(self, setting: str) -> bool:
        return getattr(self, setting) != _DEFAULTS[setting]

    def _refuse_unused(self, given: set[str], name: Callable[[str], str]) -> None:
        """Raise ValueError when a setting given has no effect with the others (`UNUSED`)."""
        for settings, applies, reason in UNUSED:
            unused = [setting for setting in settings if setting in given]
            if unused and applies(self):
                shown = {setting: name(setting) for setting in _DEFAULTS}
                listed = " and ".join(name(setting) for setting in unused)
                raise ValueError(f"{listed} {'has' if len(unused) == 1 else 'have'} no effect "
                                 f"{reason.format_map(shown)}")

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready settings (tuples as lists)."""
        return store.to_json_value(dataclasses.asdict(self))


_DEFAULTS = {field.name: field.default for field in dataclasses.fields(SearchConfig)}

LIMIT_SETTINGS = {"the size limit": ("max_size_bytes", "min_size_reduction"),
                  "the latency limit": ("max_latency_seconds", "min_speedup"),
                  "the energy limit": ("max_energy_joules",), "the throughput limit": ("min_throughput",),
                  "the bit-operations limit": ("max_bops",)}
"""The settings that give each limit."""

TWO_WAYS = (("max_size_bytes", "min_size_reduction", "the size limit"),
            ("max_latency_seconds", "min_speedup", "the latency limit"))
"""Pairs of settings that give one limit two ways, refused together: ``(setting, setting, the limit)``."""

UNUSED: tuple[tuple[tuple[str, ...], Callable[[SearchConfig], bool], str], ...] = (
    (("data_dir",), lambda config: config.dataset == "digits", "with the digits dataset: it is embedded, nothing is "
     "read from a folder"),
    (("float_epochs", "float_learning_rate"), lambda config: config.float_checkpoint is not None,
     "with {float_checkpoint}: the float model is read from it, not trained"),
    (("trials", "n_initial", "population", "strategy", "prune", "bit_sets", "log_scale"),
     lambda config: not _method(config).iterative, "with a one-shot {method} (uniform, hawq_ilp, rd_layers, "
     "rd_channels, mixprec, dnas): it fine-tunes the configurations it computes, from every bit-width of {bits}"),
    (("n_initial",), lambda config: config.method == "random", "with {method} random: every trial is random"),
    (("rd_examples",), lambda config: config.method not in ("rd_layers", "rd_channels"),
     "without {method} rd_layers or rd_channels"),
    (("supernet_epochs", "arch_learning_rate", "cost_strength"), lambda config: not _method(config).relaxed,
     "without {method} mixprec or dnas"),
    (("hessian_batch_size", "hessian_batches", "hessian_max_probes", "hessian_tol"),
     lambda config: not _method(config).iterative and not _method(config).uses_hessian,
     "with {method} uniform, rd_layers, rd_channels, mixprec or dnas: it reads no Hessian"),
    (("bit_sets", "log_scale", "hessian_batch_size", "hessian_batches", "hessian_max_probes", "hessian_tol"),
     lambda config: not methods.runs_hessian(config), "with {prune}: there is no Hessian and no pruning"),
    (("baseline_bits",), lambda config: not config.baseline, "without {baseline}"),
    (("strategy",), lambda config: config.population == 1 and config.strategy not in ("auto", "sequential"),
     "with a population of 1: one configuration at a time trains sequentially; give {population} N or auto"),
)
"""Settings with no effect under a condition, refused when given on the command line:
``(settings, condition(config), why)``; ``why`` names settings as ``{setting}``."""
