"""Export of a quantised model at one configuration as a single ``.npz`` file, and loading it back.

The file is framework-neutral: NumPy arrays in a zip archive (``numpy.load(path)`` reads it, no pickles), holding
integer weights with their scales, the activation quantisers' parameters, biases and batch-norm statistics, and a
JSON description. `export_model` writes it atomically (a reader never sees half a file); `load_model` rebuilds the
mpqjax model and variables so that ``train.evaluate(loaded.model, loaded.variables, split, bits=loaded.bits)``
gives the accuracy of the trained fake-quantised model.

Format ``mpqjax-export/1``
--------------------------

Entries (``<layer>`` is a weight layer's path in the model, e.g. ``conv1`` or ``stage1/block0/conv1``):

=========================  ===============  =================================================================
name                       dtype, shape     meaning
=========================  ===============  =================================================================
``__config__``             str, ()          JSON text (below)
``<layer>/weight``         int8 or int16    integer weights: conv ``(kh, kw, in, out)`` (HWIO), depthwise
                                            ``(kh, kw, 1, channels)``, dense ``(in, out)``; int8 for at most 8
                                            bits, int16 up to 16; values in ``[-(2^(b-1) - 1), 2^(b-1) - 1]``
``<layer>/weight_scale``   float32, (out,)  one scale per output channel (the last axis)
``<layer>/bits``           int32, ()        the layer's bit-width b (of its weights and input activations)
``<layer>/act_clip``       float32, ()      clipping value c of the layer's input activations
``<layer>/act_scale``      float32, ()      activation step ``max(c, 1e-8) / levels``: levels = ``2^b - 1``
                                            (unsigned input) or ``2^(b-1) - 1`` (signed input)
``<layer>/bias``           float32, (out,)  only for layers with a bias (``use_bias``)
``<layer>/bn_scale``,      float32, (out,)  only for layers followed by batch norm (``batch_norm``): gamma,
``bn_bias``, ``bn_mean``,                   beta, running mean, running variance
``bn_var``
=========================  ===============  =================================================================

Channel counts are the real ones: a model searched with masked widths is exported with its active channels only.

``__config__`` holds ``format`` (``"mpqjax-export/1"``), ``model`` (the `mpqjax.nn.models` zoo name),
``model_kwargs`` (its constructor options, without ``widths``), ``input_shape`` (one example, NHWC without the
batch axis), ``num_classes``, ``batch_norm_epsilon``, ``metadata`` (free-form: accuracy, cost, ...) and
``layers``: one object per weight layer in execution order with ``name``, ``kind`` (``conv``, ``depthwise``,
``dense``), ``bits``, ``width`` (multiplier), ``in_channels`` and ``out_channels`` (real counts), ``kernel``,
``stride``, ``padding``, ``input_layer`` (index of the layer whose output feeds this one, -1 for the model input),
``input_signed``, ``act_quantized``, ``use_bias``, ``batch_norm`` and ``weight_dtype``. Padding is ``"SAME"`` for
convolutions in the XLA/TensorFlow sense (``out = ceil(in / stride)``, total padding
``max((out - 1) * stride + k - in, 0)``, the smaller half before) and null for dense layers.

Running a layer (what mpqjax's fake-quantised layer computes; ``round`` is to nearest, ties to even):

1. Weights: ``w = weight.astype(float32) * weight_scale`` (scales broadcast over the last axis). The scale is
   ``max(max|w_float|, 1e-8) / (2^(b-1) - 1)`` of the trained float weights, so ``w`` is exactly the weight the
   fake quantiser trained with (see `mpqjax.export.integer.integer_weights` for the exception at 14 bits).
2. Input activations, when ``act_quantized``: clip to ``[-c, c]`` if ``input_signed`` (no ReLU before the layer),
   else to ``[0, c]``; ``x_int = round(x_clipped / act_scale)``; ``x = x_int * act_scale``. An integer engine can
   accumulate ``x_int * weight`` in int32 and scale output channel ``o`` by ``act_scale * weight_scale[o]``.
3. ``y = conv(x, w)`` or ``x @ w``; ``y += bias``; batch norm
   ``y = (y - bn_mean) / sqrt(bn_var + batch_norm_epsilon) * bn_scale + bn_bias``.

The connections between layers (ReLU, pooling, residual additions) are the zoo model's forward pass
(`mpqjax.nn.models`). ``digits_cnn``: conv1 (signed input), ReLU, conv2, ReLU, conv3, ReLU, mean over height and
width, head (dense with bias, no batch norm) giving the logits. ``mlp``: flatten, dense layers each followed by
ReLU, head. ResNets add option-A shortcuts (subsample, keep the first channels, zero-pad) before a block's last ReLU.

16 bits: mpqjax's fake quantiser treats 16 bits as full precision (weights and activations pass through). The
export still rounds such a layer's weights to 16-bit integers (a change of at most half a step, ``1 / 65534`` of
the channel's largest weight) and marks its input ``act_quantized: false``. Wider (float) layers are refused.

Example:
    >>> export_model("best.npz", model_name="digits_cnn", model_kwargs={}, variables=variables,
    ...              bits=[8, 4, 3, 8], widths=[0.75, 1.25, 1.0, 1.0], input_shape=(8, 8, 1), num_classes=10,
    ...              metadata={"test_accuracy": 0.97})
    >>> loaded = load_model("best.npz")
    >>> train.evaluate(loaded.model, loaded.variables, data.test, bits=loaded.bits)
    0.97...
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from typing import NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from mpqjax.export.archive import one_line, read_archive
from mpqjax.export.integer import activation_scale, integer_weights, requantisable_kernel, weight_dtype
from mpqjax.nn import models, quant
from mpqjax.nn.config import check_config
from mpqjax.nn.layers import QConv, QDense
from mpqjax.nn.models.core import VARIABLE_COLLECTIONS
from mpqjax.store.files import atomic_write, to_json_value

__all__ = ["BATCH_NORM_EPSILON", "CONFIG_ENTRY", "FORMAT_VERSION", "Exported", "export_model", "load_model"]

FORMAT_VERSION = "mpqjax-export/1"
CONFIG_ENTRY = "__config__"
# layers.py builds every batch norm with this epsilon.
BATCH_NORM_EPSILON = 1e-5

# Where each variable of a layer goes in the file: (collection, path below the layer) -> entry suffix. The
# activation clip is a "quant" variable when calibrated and a parameter when learned.
_ENTRY_OF = {
    ("params", ("kernel",)): "weight",
    ("params", ("bias",)): "bias",
    ("params", ("bn", "scale")): "bn_scale",
    ("params", ("bn", "bias")): "bn_bias",
    ("batch_stats", ("bn", "mean")): "bn_mean",
    ("batch_stats", ("bn", "var")): "bn_var",
    ("quant", ("act_clip",)): "act_clip",
    ("params", ("act_clip",)): "act_clip",
}


class Exported(NamedTuple):
    """A model loaded from an export: ready for `mpqjax.training.train.evaluate` / `predict` with ``bits=bits``.

    Attributes:
        model: the materialised zoo model (real channel counts, ``widths`` set).
        variables: its variables; the fake quantiser maps its kernels exactly to ``weight * weight_scale``.
        bits: per-layer bit-widths (int32).
        widths: per-layer width multipliers (float32).
        input_shape: one example's shape.
        num_classes: classifier outputs.
        metadata: the free-form metadata given at export.
        config: the whole ``__config__`` JSON object.
    """

    model: models.QModel
    variables: dict
    bits: np.ndarray
    widths: np.ndarray
    input_shape: tuple[int, ...]
    num_classes: int
    metadata: dict
    config: dict


# ------------------------------------------------------------------------------------------------ model structure
def _model_structure(model: models.QModel, input_shape: Sequence[int]):
    """Expected variable shapes (flattened, model collections only) and each weight layer's module attributes."""
    modules: dict[str, dict] = {}

    def record(call, args, kwargs, context):
        module = context.module
        if context.method_name == "__call__" and isinstance(module, (QConv, QDense)):
            modules["/".join(module.scope.path)] = dict(
                input_signed=bool(module.input_signed),
                depthwise=bool(getattr(module, "depthwise", False)),
                in_channels=int(args[0].shape[-1]),
            )
        return call(*args, **kwargs)

    def init(x):
        with nn.intercept_methods(record):
            return model.init(jax.random.key(0), x, None, None)

    abstract = jax.eval_shape(init, jax.ShapeDtypeStruct((1, *input_shape), jnp.float32))
    abstract = {name: value for name, value in abstract.items() if name in VARIABLE_COLLECTIONS}
    shapes = {key: tuple(leaf.shape) for key, leaf in traverse_util.flatten_dict(abstract).items()}
    return shapes, modules


def _layer_keys(shapes: dict, name: str) -> dict[str, tuple]:
    """Entry suffix -> variable key, for the variables of layer ``name``."""
    prefix = tuple(name.split("/"))
    found = {}
    for key in shapes:
        collection, rest = key[0], key[1:]
        if rest[: len(prefix)] == prefix and (collection, rest[len(prefix) :]) in _ENTRY_OF:
            found[_ENTRY_OF[(collection, rest[len(prefix) :])]] = key
    return found


def _key_text(key: tuple) -> str:
    return "/".join(str(part) for part in key)


def _check_variables(flat: dict, shapes: dict):
    missing = [key for key in shapes if key not in flat]
    if missing:
        raise ValueError(f"variables lack {_key_text(missing[0])!r} (and {len(missing) - 1} more) for the model")
    extra = [key for key in flat if key[0] in VARIABLE_COLLECTIONS and key not in shapes]
    if extra:
        raise ValueError(f"variables hold {_key_text(extra[0])!r}, which the model does not have")
    for key, shape in shapes.items():
        if tuple(np.shape(flat[key])) != shape:
            raise ValueError(f"variable {_key_text(key)!r} has shape {tuple(np.shape(flat[key]))}, the model at "
                             f"these widths needs {shape}")


# ------------------------------------------------------------------------------------------------ export
def _config_arrays(model: models.QModel, table, bits, widths):
    if model.widths is not None:
        given = None if widths is None else np.asarray(widths, np.float64).reshape(-1)
        if given is not None and (given.size not in (1, len(table)) or not np.allclose(given, model.widths)):
            raise ValueError(f"widths {given.tolist()} differ from the materialised model's {list(model.widths)}")
        widths = model.widths
    elif widths is None:
        widths = 1.0
    if np.ndim(widths) == 0:
        widths = np.full(len(table), float(widths))
    if bits is None:
        raise ValueError("bits are required: the configuration's per-layer bit-widths")
    max_width = None if model.widths is not None else model.max_width
    # check_config's range [2, 16] is the format's (int8 and int16 codes, see weight_dtype): nothing wider passes.
    return check_config(table, bits, widths, max_width=max_width)


def _layer_entries(layer, bits: int, width: float, module: dict, values: dict) -> tuple[dict, dict]:
    """One weight layer's file entries and its object in ``__config__["layers"]``.

    Args:
        layer: its `mpqjax.nn.table.LayerSpec`.
        bits: its bit-width.
        width: its width multiplier.
        module: its module's attributes (`_model_structure`).
        values: its variables by entry suffix (``weight``, ``act_clip``, ``bias``, ``bn_scale``, ...).
    """
    weight, scale = integer_weights(values["weight"], bits)
    clip = np.float32(values["act_clip"])
    entries = {
        f"{layer.name}/weight": weight,
        f"{layer.name}/weight_scale": scale,
        f"{layer.name}/bits": np.asarray(bits, np.int32),
        f"{layer.name}/act_clip": np.asarray(clip, np.float32),
        f"{layer.name}/act_scale": np.asarray(activation_scale(clip, bits, signed=module["input_signed"]), np.float32),
    }
    for entry in ("bias", "bn_scale", "bn_bias", "bn_mean", "bn_var"):
        if entry in values:
            entries[f"{layer.name}/{entry}"] = values[entry].astype(np.float32)
    config = dict(
        name=layer.name, kind=layer.kind, bits=bits, width=width, in_channels=module["in_channels"],
        out_channels=int(weight.shape[-1]), kernel=list(layer.kernel), stride=list(layer.stride),
        padding=None if layer.kind == "dense" else "SAME", input_layer=layer.input_layer,
        input_signed=module["input_signed"], act_quantized=bits < quant.PASS_THROUGH_BITS,
        use_bias="bias" in values, batch_norm="bn_scale" in values, weight_dtype=weight.dtype.name,
    )
    return entries, config


def export_model(path: str | os.PathLike, *, model_name: str, model_kwargs: dict | None, variables, bits, widths,
                 input_shape: Sequence[int], num_classes: int, metadata: dict | None = None) -> dict:
    """Write a trained quantised model at one configuration to one ``.npz`` file (format in the module docstring).

    Args:
        path: the file to create or replace (atomically; its folder must exist).
        model_name: the zoo name (`mpqjax.nn.models.available`).
        model_kwargs: the model's constructor options. Without ``widths`` the model is masked (as the search
            fine-tunes it) and only the active channels at ``widths`` are exported; with ``widths`` it is
            materialised and ``widths`` may be None.
        variables: the trained variables of that model.
        bits: per-layer bit-widths (or one for every layer), integers in [2, 16].
        widths: per-layer width multipliers (or one for every layer; None: 1, or the materialised model's).
        input_shape: one example's shape.
        num_classes: classifier outputs.
        metadata: free-form JSON-compatible facts to keep with the model (accuracy, size, ...).

    Returns:
        The ``__config__`` object written.

    Raises:
        ValueError: an unknown model or option, a configuration the model rejects, bits outside [2, 16], variables
            that do not fit the model, or metadata that is not JSON; nothing is written then.
    """
    folder = os.path.dirname(os.path.abspath(os.fspath(path)))
    if not os.path.isdir(folder):
        raise ValueError(f"cannot write {os.fspath(path)!r}: folder {folder!r} does not exist")
    kwargs = dict(model_kwargs or {})
    if "num_classes" in kwargs and int(kwargs["num_classes"]) != int(num_classes):
        raise ValueError(f"num_classes {num_classes} differs from model_kwargs' {kwargs['num_classes']}")
    kwargs["num_classes"] = int(num_classes)
    model = models.get(model_name, **kwargs)
    if not model.quantize:
        raise ValueError("export needs a quantised model (quantize=True): a float model has no integer weights")
    input_shape = tuple(int(size) for size in input_shape)
    table = models.layer_table(model, input_shape=input_shape)
    bits_array, widths_array = _config_arrays(model, table, bits, widths)
    if model.widths is None:
        model, variables = models.materialize(model, variables, widths_array, input_shape=input_shape)
    shapes, modules = _model_structure(model, input_shape)
    flat = {key: np.asarray(value) for key, value in traverse_util.flatten_dict(dict(variables)).items()}
    _check_variables(flat, shapes)

    arrays: dict[str, np.ndarray] = {}
    layer_configs = []
    exported_keys = set()
    for layer, layer_bits, width in zip(table, bits_array, widths_array, strict=True):
        keys = _layer_keys(shapes, layer.name)
        exported_keys.update(keys.values())
        entries, layer_config = _layer_entries(layer, int(layer_bits), float(width), modules[layer.name],
                                               {entry: flat[key] for entry, key in keys.items()})
        arrays.update(entries)
        layer_configs.append(layer_config)
    leftover = sorted(_key_text(key) for key in shapes if key not in exported_keys)
    if leftover:
        raise ValueError(f"variable {leftover[0]!r} has no place in the {FORMAT_VERSION} format")

    stored_kwargs = {key: value for key, value in kwargs.items() if key not in ("widths", "max_width")}
    config = dict(format=FORMAT_VERSION, model=model_name, model_kwargs=stored_kwargs, input_shape=list(input_shape),
                  num_classes=int(num_classes), batch_norm_epsilon=BATCH_NORM_EPSILON, layers=layer_configs,
                  metadata=metadata or {})
    try:
        text = json.dumps(to_json_value(config), allow_nan=False)
    except (TypeError, ValueError) as error:
        raise ValueError(f"model_kwargs and metadata must be JSON values: {error}") from None
    arrays[CONFIG_ENTRY] = np.asarray(text)

    def write(temporary):
        with open(temporary, "wb") as handle:  # a file object: np.savez would append ".npz" to a bare name
            np.savez_compressed(handle, **arrays)

    atomic_write(path, write)
    return json.loads(text)


# ------------------------------------------------------------------------------------------------ load
def _read_arrays(path: str) -> tuple[dict[str, np.ndarray], dict]:
    """Every entry of the file and its parsed config; any failure is a one-line ValueError naming the file."""
    return read_archive(path, kind="mpqjax export", required=(CONFIG_ENTRY,), config_entry=CONFIG_ENTRY,
                        format_version=FORMAT_VERSION)


def _as_tuples(value):
    """JSON lists back to tuples (model options are hashable dataclass fields)."""
    if isinstance(value, list):
        return tuple(_as_tuples(item) for item in value)
    if isinstance(value, dict):
        return {key: _as_tuples(item) for key, item in value.items()}
    return value


def _entry(arrays: dict, name: str, dtype=None, shape=None) -> np.ndarray:
    if name not in arrays:
        raise ValueError(f"entry {name!r} is missing")
    value = arrays[name]
    if dtype is not None and value.dtype != np.dtype(dtype):
        raise ValueError(f"entry {name!r} has dtype {value.dtype}, expected {np.dtype(dtype)}")
    if shape is not None and tuple(value.shape) != tuple(shape):
        raise ValueError(f"entry {name!r} has shape {tuple(value.shape)}, expected {tuple(shape)}")
    return value


def _rebuild(arrays: dict, config: dict) -> Exported:
    try:
        layer_configs = config["layers"]
        names = [layer["name"] for layer in layer_configs]
        bits = np.asarray([int(layer["bits"]) for layer in layer_configs], np.int32)
        widths = np.asarray([float(layer["width"]) for layer in layer_configs], np.float32)
        input_shape = tuple(int(size) for size in config["input_shape"])
        num_classes = int(config["num_classes"])
        kwargs = _as_tuples(dict(config["model_kwargs"]))
        model_name = config["model"]
    except (KeyError, TypeError, ValueError) as error:
        raise ValueError(f"{CONFIG_ENTRY} is incomplete ({one_line(error)})") from None
    kwargs["num_classes"] = num_classes
    model = models.get(model_name, **kwargs, widths=tuple(float(w) for w in widths))
    table = models.layer_table(model, input_shape=input_shape)
    if list(table.names) != names:
        raise ValueError(f"its layers {names} are not those of model {model_name!r} {list(table.names)}")
    check_config(table, bits, widths)
    shapes, _ = _model_structure(model, input_shape)
    flat = {}
    for layer, layer_bits in zip(table, bits, strict=True):
        keys = _layer_keys(shapes, layer.name)
        stored_bits = int(_entry(arrays, f"{layer.name}/bits", np.int32, ()))
        if stored_bits != layer_bits:
            raise ValueError(f"layer {layer.name!r}: entry bits {stored_bits} differs from the config's {layer_bits}")
        dtype = weight_dtype(int(layer_bits))
        weight_shape = shapes[keys["weight"]]
        weight = _entry(arrays, f"{layer.name}/weight", dtype, weight_shape)
        limit = (1 << (int(layer_bits) - 1)) - 1
        if weight.size and int(np.abs(weight.astype(np.int32)).max()) > limit:
            raise ValueError(f"layer {layer.name!r}: weights exceed +-{limit}, the range of {layer_bits} bits")
        scale = _entry(arrays, f"{layer.name}/weight_scale", np.float32, weight_shape[-1:])
        if not np.all(np.isfinite(scale) & (scale > 0)):
            raise ValueError(f"layer {layer.name!r}: weight scales must be finite and positive")
        flat[keys["weight"]] = requantisable_kernel(weight, scale, int(layer_bits))
        for entry, key in keys.items():
            if entry != "weight":
                flat[key] = np.array(_entry(arrays, f"{layer.name}/{entry}", np.float32, shapes[key]))
    missing = sorted(_key_text(key) for key in shapes if key not in flat)
    if missing:
        raise ValueError(f"the model needs variable {missing[0]!r}, which the format does not hold")
    variables = traverse_util.unflatten_dict({key: jnp.asarray(value) for key, value in flat.items()})
    return Exported(model=model, variables=variables, bits=bits, widths=widths, input_shape=input_shape,
                    num_classes=num_classes, metadata=dict(config.get("metadata") or {}), config=config)


def load_model(path: str | os.PathLike) -> Exported:
    """Rebuild the model and variables of a file written by `export_model`.

    ``train.evaluate(loaded.model, loaded.variables, split, bits=loaded.bits)`` reproduces the exported model's
    accuracy: the loaded kernels re-quantise exactly to ``weight * weight_scale``, so a materialised original
    gives bit-identical logits, a masked one the same up to float summation order.

    Args:
        path: an ``.npz`` file of format `FORMAT_VERSION`.

    Returns:
        An `Exported`.

    Raises:
        ValueError: (one line, naming the file) the file is missing, not an npz archive, truncated, of another
            format or version, or inconsistent (missing entries, wrong dtypes or shapes, integers outside the
            layer's bit range).

    Example:
        >>> loaded = load_model("best.npz")
        >>> logits = train.predict(loaded.model, loaded.variables, x, bits=loaded.bits)
    """
    path = os.fspath(path)
    arrays, config = _read_arrays(path)
    try:
        return _rebuild(arrays, config)
    except (ValueError, KeyError, TypeError) as error:  # a tampered or hand-made file
        raise ValueError(f"{path!r}: {one_line(error).removeprefix('ValueError: ')}") from None
