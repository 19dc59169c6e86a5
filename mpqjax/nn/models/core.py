"""The model zoo by name, and the functions every model (zoo or user's) answers: its layer table and its initial
variables.

A zoo model is an ordinary Flax module with a ``width`` field (`mpqjax.nn.models.small`, `resnet`, `mobilenet`);
`get` wraps it as a width factory (`mpqjax.nn.models.wrap`), so the zoo and a user's model go through one path: the
layers found in the trace, quantised by the interceptor.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from mpqjax.nn.models.flax_function import WidthFactory
from mpqjax.nn.models.mobilenet import MobileNetV1, MobileNetV2
from mpqjax.nn.models.model import Model, wrap
from mpqjax.nn.models.resnet import CifarResNet, ResNet
from mpqjax.nn.models.small import MLP, DigitsCNN
from mpqjax.nn.table import LayerTable

__all__ = ["DEFAULT_MAX_WIDTH", "available", "get", "host_initializer", "init_variables", "layer_table"]

DEFAULT_MAX_WIDTH = 1.25


@dataclasses.dataclass(frozen=True)
class _ZooEntry:
    module: type
    input_shape: tuple[int, ...]
    options: tuple = ()  # fixed module fields, e.g. (("depth", 20),)


_ZOO = {
    "digits_cnn": _ZooEntry(DigitsCNN, (8, 8, 1)),
    "mlp": _ZooEntry(MLP, (64,)),
    "resnet20": _ZooEntry(CifarResNet, (32, 32, 3), (("depth", 20),)),
    "resnet32": _ZooEntry(CifarResNet, (32, 32, 3), (("depth", 32),)),
    "resnet56": _ZooEntry(CifarResNet, (32, 32, 3), (("depth", 56),)),
    "resnet18": _ZooEntry(ResNet, (224, 224, 3), (("stage_blocks", (2, 2, 2, 2)), ("bottleneck", False))),
    "resnet50": _ZooEntry(ResNet, (224, 224, 3), (("stage_blocks", (3, 4, 6, 3)), ("bottleneck", True))),
    "mobilenet_v1": _ZooEntry(MobileNetV1, (224, 224, 3)),
    "mobilenet_v2": _ZooEntry(MobileNetV2, (224, 224, 3)),
}


def available() -> tuple[str, ...]:
    """Names of the zoo's models."""
    return tuple(_ZOO)


def host_initializer(key, abstract_variables) -> dict:
    """Variables drawn on the host with NumPy from a seed taken from ``key``, as the zoo's modules initialise them.

    Kernels: truncated normal with He fan-in scaling for convolutions, LeCun for dense layers; batch norm at
    identity; biases zero. No random-number program is compiled: on a CPU, compiling threefry draws for every
    parameter tensor can take longer than training a small model. The same key gives the same variables.
    """
    seed = np.asarray(jax.random.key_data(key)).astype(np.uint32).reshape(-1)
    rng = np.random.default_rng(seed.tolist())

    def draw(path, leaf):
        leaf_name = getattr(path[-1], "key", str(path[-1]))
        if leaf_name == "kernel":
            fan_in = int(np.prod(leaf.shape[:-1]))
            gain = 2.0 if len(leaf.shape) == 4 else 1.0
            # Truncated at 2 standard deviations; 0.8796 restores the target variance (as jax's variance_scaling).
            std = np.sqrt(gain / fan_in) / 0.87962566103423978
            values = rng.standard_normal(int(np.prod(leaf.shape)))
            # redraw the values outside, in order, until none is; only they are looked at again
            outside = np.flatnonzero(np.abs(values) > 2)
            while outside.size:
                values[outside] = rng.standard_normal(outside.size)
                outside = outside[np.abs(values[outside]) > 2]
            return jnp.asarray(np.multiply(values, std, out=values).reshape(leaf.shape), leaf.dtype)
        if leaf_name in ("scale", "var"):
            return jnp.ones(leaf.shape, leaf.dtype)
        return jnp.zeros(leaf.shape, leaf.dtype)

    return dict(jax.tree_util.tree_map_with_path(draw, dict(abstract_variables)))


@functools.lru_cache(maxsize=64)
def _zoo_model(name: str, options: tuple, act_clipping: str) -> Model:
    """One wrapped width factory per zoo model and options, so that equal requests share compiled programs."""
    entry = _ZOO[name]
    fields = dict(entry.options) | dict(options)
    factory = WidthFactory(lambda width: entry.module(width=width, **fields), label=name,
                           initializer=host_initializer)
    shape = entry.input_shape
    if entry.module is ResNet and fields.get("stem") == "cifar":
        shape = (32, 32, 3)
    num_classes = fields.get("num_classes", _field_default(entry.module, "num_classes"))
    return wrap(factory, input_shape=shape, name=name, num_classes=num_classes, act_clipping=act_clipping)


def _field_default(module: type, name: str):
    return next(field.default for field in dataclasses.fields(module) if field.name == name)


def get(name: str, *, quantize: bool = True, max_width: float = DEFAULT_MAX_WIDTH, act_clipping: str = "calibrated",
        widths=None, input_shape: Sequence[int] | None = None, **options) -> Model:
    """The zoo model ``name``, or a user's model named by its factory.

    Args:
        name: one of `available()`, or ``"package.module:factory"``: an importable function returning a linen or
            NNX module (`mpqjax.nn.models.sources.from_factory`).
        quantize: False runs the float model.
        max_width: the largest width multiplier the model can take.
        act_clipping: ``"calibrated"``, ``"pact"`` or ``"lsq"``.
        widths: all ones builds the model at width 1 (as ``max_width=1``); other widths are refused: they are
            given when the model is applied.
        input_shape: one example's shape (the zoo model's default when None).
        **options: the module's fields, e.g. ``num_classes``; ``stem="cifar"`` for resnet18/50.

    Returns:
        An `Model`: ``model.apply(variables, x, bits, widths, train=False)`` takes per-layer arrays of length
        ``len(layer_table(model))``.

    Example:
        >>> model = get("digits_cnn")
        >>> table = layer_table(model)
        >>> variables = init_variables(jax.random.key(0), model)
        >>> model.apply(variables, jnp.zeros((1, 8, 8, 1)), jnp.full(len(table), 4.0)).shape
        (1, 10)
    """
    if isinstance(name, str) and ":" in name:
        from mpqjax.nn.models.sources import from_factory

        return from_factory(name, quantize=quantize, max_width=max_width, act_clipping=act_clipping, widths=widths,
                            input_shape=input_shape, **options)
    if name not in _ZOO:
        raise ValueError(f"unknown model {name!r}; available: {', '.join(available())}, or package.module:factory")
    entry = _ZOO[name]
    settable = {field.name for field in dataclasses.fields(entry.module)} - {"width", "name", "parent"}
    settable -= {option for option, _ in entry.options}
    unknown = sorted(set(options) - settable)
    if unknown:
        raise ValueError(f"model {name!r} has no option(s) {unknown}")
    options = {option: tuple(value) if isinstance(value, list) else value for option, value in options.items()}
    model = _zoo_model(name, tuple(sorted(options.items())), act_clipping)
    shape = {} if input_shape is None else {"example_shape": tuple(int(size) for size in input_shape)}
    if widths is not None:
        max_width = 1.0  # (the clone refuses widths other than ones)
    return model.clone(quantize=quantize, max_width=max_width, widths=widths, **shape)


def _resolve(model_or_name, model_kwargs) -> Model:
    if isinstance(model_or_name, str):
        return get(model_or_name, **model_kwargs)
    if model_kwargs:
        raise ValueError("model options can only be given with a model name")
    if not isinstance(model_or_name, Model):  # a user's linen or NNX module, as it is
        return wrap(model_or_name, input_shape=None)
    return model_or_name


def layer_table(model_or_name, *, input_shape: Sequence[int] | None = None, **model_kwargs) -> LayerTable:
    """The layer table of a model: every quantised layer, found in its trace, at width 1.

    Args:
        model_or_name: a zoo name, ``"package.module:factory"``, a model (`get`, `mpqjax.nn.models.wrap`) or a
            user's linen or NNX module.
        input_shape: one example's shape (no batch axis); the model's default when None.
        **model_kwargs: options when a name is given (e.g. ``stem="cifar"`` for resnet18).

    Example:
        >>> table = layer_table("resnet20")
        >>> len(table), table[0].name, table[-1].name
        (20, 'stem', 'head')
    """
    return _resolve(model_or_name, model_kwargs).table(input_shape)


def init_variables(key, model: Model, input_shape: Sequence[int] | None = None) -> dict:
    """A model's initial variables (its own initialisation, the zoo's drawn on the host) with default clips.

    Args:
        key: a JAX PRNG key.
        model: a model (`get`, `mpqjax.nn.models.wrap`).
        input_shape: one example's shape; the model's default when None.
    """
    return model.init_variables(key, input_shape)
