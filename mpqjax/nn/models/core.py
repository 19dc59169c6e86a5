"""The machinery every zoo model shares: configuration handling, layer creation, and layer-table tracing.

A zoo model is a Flax module (subclass of `QModel`) whose ``__call__(x, bits, widths, *, train)`` creates its weight
layers through a `LayerBuilder`, in the paper's order. The builder numbers the layers, picks bits[l] and widths[l],
turns widths into real channel counts (materialised mode) or channel masks (masked mode), and, while a table is
being traced, records each layer's shapes. `layer_table` runs the model under `jax.eval_shape`: the table is what
the model computes, never a hand-written list.
"""

from __future__ import annotations

import contextvars
import dataclasses
import functools
from collections.abc import Sequence
from typing import ClassVar

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from mpqjax.nn import quant
from mpqjax.nn.config import check_config
from mpqjax.nn.layers import DEFAULT_ACT_CLIP, QConv, QDense
from mpqjax.nn.table import LayerSpec, LayerTable, scale_channels

DEFAULT_MAX_WIDTH = 1.25
# The collections a model's state consists of ("calibration" is scratch space filled by
# `mpqjax.training.train.calibrate`).
VARIABLE_COLLECTIONS = ("params", "batch_stats", "quant")

_RECORDER: contextvars.ContextVar = contextvars.ContextVar("mpqjax_layer_recorder", default=None)


@dataclasses.dataclass
class _Recording:
    """What tracing a model collects: one dict per layer and the parameter-free shortcut links."""

    layers: list = dataclasses.field(default_factory=list)
    # (source layer, destination layer, carried channels): zero-padding shortcuts that copy the first `carried`
    # channels of the source's output into the same positions of the destination's output.
    shortcut_links: list = dataclasses.field(default_factory=list)


def _is_concrete(value) -> bool:
    """Not None and free of tracers (a Python list of traced scalars is traced, as a traced array is)."""
    if value is None:
        return False
    return not any(isinstance(leaf, jax.core.Tracer) for leaf in jax.tree_util.tree_leaves(value))


def _float32(values):
    """Bits or widths as a float32 array (None stays None), whatever their form (Python numbers, int64 or float32
    arrays), so every form runs the same operations; host values are converted on the host (no program compiled)."""
    if values is None:
        return None
    if _is_concrete(values) and not isinstance(values, jax.Array):
        values = np.asarray(values, np.float32)
    return jnp.asarray(values, jnp.float32)


class QModel(nn.Module):
    """Base of the zoo models: the fields every model shares.

    Attributes:
        num_classes: classifier outputs.
        widths: per-layer width multipliers of a materialised model (real channel counts), or None for a masked
            model holding parameters at ``max_width`` and taking widths at apply time.
        max_width: largest width multiplier a masked model can represent.
        quantize: False builds the float model (no fake-quantisation ops; ``bits`` is ignored).
        act_clipping: ``"calibrated"``, ``"pact"`` or ``"lsq"`` (see `mpqjax.nn.quant`).
    """

    num_classes: int = 10
    widths: tuple[float, ...] | None = None
    max_width: float = DEFAULT_MAX_WIDTH
    quantize: bool = True
    act_clipping: str = "calibrated"

    zoo_name: ClassVar[str] = ""
    default_input_shape: ClassVar[tuple[int, ...]] = ()

    def input_shape(self) -> tuple[int, ...]:
        """Default shape of one input example (no batch axis)."""
        return self.default_input_shape

    def builder(self, x, bits, widths, train: bool) -> LayerBuilder:
        return LayerBuilder(self, x, bits, widths, train)


class LayerBuilder:
    """Creates a model's weight layers in order inside its compact ``__call__`` and tracks channel counts.

    Layers are referred to by their index in the layer table; a tensor travels with the index of the layer that
    produced it (-1 for the model input).
    """

    def __init__(self, model: QModel, x, bits, widths, train: bool):
        if model.act_clipping not in quant.CLIPPING_MODES:
            raise ValueError(f"act_clipping must be one of {quant.CLIPPING_MODES}, got {model.act_clipping!r}")
        self.model = model
        self.train = train
        self.materialised = model.widths is not None
        self.bits = _float32(bits)
        if self.materialised:
            if widths is not None and _is_concrete(widths):
                if not np.allclose(np.asarray(widths, np.float64), np.asarray(model.widths, np.float64)):
                    raise ValueError("widths passed to a materialised model must equal the widths it was built with")
            widths = model.widths
        self.widths = _float32(widths)
        for label, values in (("bits", self.bits), ("widths", self.widths)):
            if values is not None and values.ndim != 1:
                raise ValueError(f"{label} must be a 1-D array with one entry per layer, got shape {values.shape}")
        self.recording: _Recording | None = _RECORDER.get()
        concrete_bits = model.quantize and _is_concrete(bits)
        if self.recording is None and (concrete_bits or _is_concrete(widths)):
            # Concrete configurations (eager calls, materialised widths) are checked before any layer runs, with
            # messages naming the layer; traced ones are checked by the callers that build them (mpqjax.training.train).
            table = trace(model, input_shape=x.shape[1:])[0]
            check_config(table, bits if concrete_bits else None, widths if _is_concrete(widths) else None,
                         max_width=None if self.materialised else model.max_width)
        self.names: list[str] = []
        self.base_channels: list[int] = []
        self.channels: list[int] = []
        self.scalable: list[bool] = []
        self.group_of: list[int] = []
        self._group_keys: dict[str, int] = {}

    # ----------------------------------------------------------------------------------------------- config
    def _width(self, index: int, name: str):
        if self.widths is None:
            return None
        if index >= self.widths.shape[0]:
            raise ValueError(f"widths has {self.widths.shape[0]} entries but model {self.model.zoo_name!r} has more "
                             f"weight layers (layer {index} is {name!r})")
        return self.widths[index]

    def _bits(self, index: int, name: str):
        if not self.model.quantize:
            return quant.FLOAT_BITS
        if self.bits is None:
            return jnp.asarray(quant.FLOAT_BITS, jnp.float32)
        if index >= self.bits.shape[0]:
            raise ValueError(f"bits has {self.bits.shape[0]} entries but model {self.model.zoo_name!r} has more "
                             f"weight layers (layer {index} is {name!r})")
        return self.bits[index]

    def active(self, index: int):
        """Active output channels of layer ``index`` (traced) in masked mode; None when nothing is masked."""
        if index < 0 or self.materialised or self.widths is None or not self.scalable[index]:
            return None
        return scale_channels(self.base_channels[index], self.widths[index]).astype(jnp.int32)

    # ----------------------------------------------------------------------------------------------- layers
    def layer(self, x, source: int, *, kind: str, features: int, name: str, kernel=(1, 1), stride=(1, 1),
              group: str | None = None, tie_to_input: bool = False, scalable: bool = True,
              input_signed: bool = False, batch_norm: bool = True, use_bias: bool = False):
        """Create and apply weight layer number ``len(self.names)``; returns ``(output, its index)``.

        Args:
            x: input tensor. source: index of the layer that produced ``x`` (-1 for the model input).
            kind: ``"conv"``, ``"depthwise"`` or ``"dense"``. features: base output channels (width 1).
            name: the layer's module name. group: layers created with the same group key share a width multiplier.
            tie_to_input: share the width multiplier of ``source`` (depthwise layers).
            scalable: a width multiplier changes the output channels (False for the classifier head).
        """
        index = len(self.names)
        if kind == "depthwise":
            features = self.base_channels[source] if source >= 0 else x.shape[-1]
            tie_to_input = source >= 0
        if tie_to_input:
            group_id = self.group_of[source]
        elif group is not None:
            group_id = self._group_keys.setdefault(group, index)
        else:
            group_id = index
        self._width(index, name)  # length check
        self.names.append(name)
        self.base_channels.append(features)
        self.scalable.append(scalable)
        self.group_of.append(group_id)
        bits = self._bits(index, name)
        if not scalable:
            channels = features
        elif self.materialised:
            channels = scale_channels(features, float(self.model.widths[index]))
        else:
            channels = scale_channels(features, self.model.max_width)
        self.channels.append(channels)
        common = dict(
            features=channels,
            use_bias=use_bias,
            batch_norm=batch_norm,
            input_signed=input_signed,
            quantize=self.model.quantize,
            act_clipping=self.model.act_clipping,
            name=name,
        )
        in_active = self.active(source) if kind != "depthwise" else None
        out_active = self.active(index)
        if kind == "dense":
            module = QDense(**common)
        else:
            module = QConv(kernel_size=tuple(kernel), strides=tuple(stride), depthwise=kind == "depthwise", **common)
        y = module(x, bits, in_active=in_active, out_active=out_active, train=self.train)
        if self.recording is not None:
            self.recording.layers.append(
                dict(
                    name="/".join(module.scope.path),
                    kind=kind,
                    in_channels=x.shape[-1] if kind != "depthwise" else features,
                    out_channels=features,
                    kernel=tuple(kernel) if kind != "dense" else (1, 1),
                    stride=tuple(stride) if kind != "dense" else (1, 1),
                    out_hw=tuple(y.shape[1:3]) if kind != "dense" else (1, 1),
                    input_layer=source,
                    width_group=group_id,
                    scalable=scalable,
                    use_bias=use_bias,
                    batch_norm=batch_norm,
                )
            )
        return y, index

    def shortcut(self, x, source: int, destination: int, *, stride: int = 1):
        """Option-A (parameter-free) shortcut from layer ``source``'s output to ``destination``'s output.

        Subsamples by ``stride`` and copies the first ``min(channels, base channels of source)`` input channels
        into the same positions, zero elsewhere. Channels a widened source adds beyond its base count are not
        carried: that keeps a widened model's function equal to its float model at transfer time and lets masked
        and materialised models agree.
        """
        if stride > 1:
            x = x[:, ::stride, ::stride, :]
        carried = min(x.shape[-1], self.base_channels[source])
        out_channels = self.channels[destination]
        x = x[..., : min(carried, out_channels)]
        x = jnp.pad(x, [(0, 0)] * (x.ndim - 1) + [(0, out_channels - x.shape[-1])])
        out_active = self.active(destination)
        if out_active is not None:
            x = x * (jnp.arange(out_channels) < out_active)
        if self.recording is not None and self.group_of[source] != self.group_of[destination]:
            self.recording.shortcut_links.append((source, destination, self.base_channels[source]))
        return x

    def finish(self):
        """Check that the configuration arrays had one entry per layer."""
        count = len(self.names)
        for label, values in (("bits", self.bits if self.model.quantize else None), ("widths", self.widths)):
            if values is not None and values.shape[0] != count:
                raise ValueError(
                    f"{label} has {values.shape[0]} entries but model {self.model.zoo_name!r} has {count} weight layers"
                )


# --------------------------------------------------------------------------------------------------- registry
_REGISTRY: dict[str, type] = {}


def register(name: str):
    """Class decorator adding a `QModel` subclass to the zoo under ``name``."""

    def decorate(cls):
        cls.zoo_name = name
        _REGISTRY[name] = cls
        return cls

    return decorate


_ZOO_ORDER = ("digits_cnn", "mlp", "resnet20", "resnet32", "resnet56", "resnet18", "resnet50", "mobilenet_v1",
              "mobilenet_v2")


def available() -> tuple[str, ...]:
    """Names of the zoo's models: the built-in ones in a fixed order, then any registered later."""
    known = [name for name in _ZOO_ORDER if name in _REGISTRY]
    return tuple(known + [name for name in _REGISTRY if name not in _ZOO_ORDER])


def get(name: str, **model_kwargs) -> QModel:
    """The zoo model ``name`` as a Flax module, or a user's model named by its factory.

    Args:
        name: one of `available()`, or ``"package.module:factory"``: an importable function returning a linen or
            NNX module (`mpqjax.nn.models.sources.from_factory`; its options: ``input_shape``, ``num_classes``,
            ``quantize``, ``max_width``, ``act_clipping``).
        **model_kwargs: the model's fields, e.g. ``num_classes``, ``widths`` (a tuple: materialised model),
            ``max_width`` (masked model), ``quantize``, ``act_clipping``; ``stem`` for resnet18.

    Returns:
        A `QModel`. ``model.apply(variables, x, bits, widths, train=False)`` takes per-layer arrays of length
        ``len(layer_table(model))``.

    Example:
        >>> model = get("digits_cnn")
        >>> table = layer_table(model)
        >>> x = jnp.zeros((1, 8, 8, 1))
        >>> bits, widths = jnp.full(len(table), 4), jnp.ones(len(table))
        >>> variables = model.init(jax.random.key(0), x, bits, widths)
        >>> model.apply(variables, x, bits, widths).shape
        (1, 10)
    """
    if isinstance(name, str) and ":" in name:
        from mpqjax.nn.models.sources import from_factory

        return from_factory(name, **model_kwargs)
    if name not in _REGISTRY:
        raise ValueError(f"unknown model {name!r}; available: {', '.join(available())}, or package.module:factory")
    cls = _REGISTRY[name]
    if "widths" in model_kwargs and model_kwargs["widths"] is not None:
        model_kwargs["widths"] = tuple(float(w) for w in np.asarray(model_kwargs["widths"]).reshape(-1))
    field_names = {field.name for field in dataclasses.fields(cls)}
    unknown = sorted(set(model_kwargs) - field_names)
    if unknown:
        raise ValueError(f"model {name!r} has no option(s) {unknown}")
    return cls(**model_kwargs)


def _resolve(model_or_name, model_kwargs) -> QModel:
    if isinstance(model_or_name, str):
        return get(model_or_name, **model_kwargs)
    if model_kwargs:
        raise ValueError("model options can only be given with a model name")
    if not isinstance(model_or_name, QModel) and not hasattr(model_or_name, "analysis"):
        from mpqjax.nn.models.own import wrap  # a user's linen or NNX module, as it is

        return wrap(model_or_name, input_shape=None)
    return model_or_name


def trace(model_or_name, *, input_shape: Sequence[int] | None = None, **model_kwargs):
    """Run a model abstractly (`jax.eval_shape`) and return ``(LayerTable, shortcut_links)``.

    The table always describes the model at width 1 (base channels), whatever its widths or max_width.
    """
    model = _resolve(model_or_name, model_kwargs)
    if not isinstance(model, QModel):  # a user's model (mpqjax.nn.models.own.OwnModel) finds its own layers
        return model.table(input_shape), ()
    base_model = model.clone(widths=None, max_width=1.0, quantize=False, parent=None)
    shape = tuple(int(size) for size in input_shape) if input_shape is not None else tuple(model.input_shape())
    return _trace_base(base_model, shape)


@functools.lru_cache(maxsize=256)
def _trace_base(base_model: QModel, shape: tuple[int, ...]):
    """`trace` of a width-1 float model, cached: a search traces the same model for every configuration."""
    model = base_model
    recording = _Recording()
    token = _RECORDER.set(recording)
    try:
        jax.eval_shape(
            lambda x: base_model.init_with_output(jax.random.key(0), x, None, None, train=False),
            jax.ShapeDtypeStruct((1, *shape), jnp.float32),
        )
    finally:
        _RECORDER.reset(token)
    layers = tuple(LayerSpec(**fields) for fields in recording.layers)
    table = LayerTable(layers=layers, input_shape=shape, model=model.zoo_name)
    return table, tuple(recording.shortcut_links)


def layer_table(model_or_name, *, input_shape: Sequence[int] | None = None, **model_kwargs) -> LayerTable:
    """The layer table of a model (by name or module), derived by shape inference.

    Args:
        model_or_name: a zoo name or a `QModel`, ``"package.module:factory"``, a user's linen or NNX module or
            an `mpqjax.nn.models.OwnModel` (their layers are found in their trace: `mpqjax.nn.models.wrap`).
        input_shape: one example's shape (no batch axis); the model's default when None.
        **model_kwargs: options when a name is given (e.g. ``stem="cifar"`` for resnet18).

    Example:
        >>> table = layer_table("resnet20")
        >>> len(table), table[0].name, table[-1].name
        (20, 'stem', 'head')
    """
    return trace(model_or_name, input_shape=input_shape, **model_kwargs)[0]


@functools.lru_cache(maxsize=256)
def _abstract_variables(model: QModel, shape: tuple[int, ...]) -> dict:
    """Shapes and dtypes of a model's variables (cached: a search initialises one model per configuration)."""
    abstract = jax.eval_shape(
        lambda x: model.init(jax.random.key(0), x, None, None), jax.ShapeDtypeStruct((1, *shape), jnp.float32)
    )
    return {name: value for name, value in abstract.items() if name in VARIABLE_COLLECTIONS}


def init_variables(key, model: QModel, input_shape: Sequence[int] | None = None):
    """Initial variables of ``model``, drawn on the host with NumPy from a seed taken from ``key``.

    Same shapes and distributions as ``model.init`` (kernels: truncated normal with He fan-in scaling for
    convolutions, LeCun for dense layers; batch norm at identity; clips at their default), but no random-number
    program is compiled: on a CPU, compiling threefry draws for every parameter tensor can take longer than training
    a small model. Deterministic: the same key gives the same variables.

    Args:
        key: a JAX PRNG key.
        model: a zoo model.
        input_shape: one example's shape; the model's default when None.

    Returns:
        A variables dict (``params``, ``batch_stats``, and ``quant`` for calibrated clipping).
    """
    shape = tuple(int(size) for size in input_shape) if input_shape is not None else tuple(model.input_shape())
    if not isinstance(model, QModel):  # a user's model initialises itself
        return model.init_variables(key, shape)
    abstract = _abstract_variables(model, shape)
    seed = np.asarray(jax.random.key_data(key)).astype(np.uint32).reshape(-1)
    rng = np.random.default_rng(seed.tolist())

    def draw(path, leaf):
        leaf_name = getattr(path[-1], "key", str(path[-1]))
        if leaf_name == "kernel":
            fan_in = int(np.prod(leaf.shape[:-1]))
            gain = 2.0 if len(leaf.shape) == 4 else 1.0
            # Truncated at 2 standard deviations; 0.8796 restores the target variance (as jax's variance_scaling).
            std = np.sqrt(gain / fan_in) / 0.87962566103423978
            values = rng.standard_normal(leaf.shape)
            while np.any(np.abs(values) > 2):
                outside = np.abs(values) > 2
                values[outside] = rng.standard_normal(int(outside.sum()))
            return jnp.asarray(values * std, leaf.dtype)
        if leaf_name in ("scale", "var"):
            return jnp.ones(leaf.shape, leaf.dtype)
        if leaf_name == "act_clip":
            return jnp.full(leaf.shape, DEFAULT_ACT_CLIP, leaf.dtype)
        return jnp.zeros(leaf.shape, leaf.dtype)

    return jax.tree_util.tree_map_with_path(draw, abstract)

