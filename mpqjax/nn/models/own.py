"""A user's own Flax model, unmodified, as an mpqjax model: `wrap`.

`wrap` takes a ``flax.linen`` module or a ``flax.nnx`` module and returns an `OwnModel`: the same interface as the
zoo's models (``apply(variables, x, bits, widths, *, train, mutable)``, a layer table), so the cost model, the
Hessian, the fine-tune, populations, the search and the export take it as they take a zoo model. Nothing in the
user's code changes: the model's forward pass is traced once per input shape, its layers found in the trace
(`mpqjax.nn.graph`), and every call runs the trace with those layers quantised (`mpqjax.nn.intercept`).

Variables are the user's own: ``{"params": ..., "batch_stats": ...}`` as linen keeps them (an NNX model's
parameters and its other state as plain dicts), plus one activation clip per layer, ``act_clip``, stored under the
layer's name (``variables["quant"][layer]["act_clip"]`` when calibrated, in ``params`` when learned).

Rules select layers by their names (regular expressions matched against the whole name with `re.fullmatch`):
``include`` keeps only matching layers, ``exclude`` leaves matching layers in float, ``bits`` pins a bit-width
(e.g. ``{"Conv_0|Dense_.*": 8}`` keeps the first and last layer at 8 bits). A rule that matches no layer is an
error, naming the rule and the layers there are.

Widths: a width multiplier below 1 switches off a layer's last output channels (its consumers read zeros there);
the graph decides which layers share one multiplier (`mpqjax.nn.graph`). A plain module cannot grow: its
multipliers are at most 1 (``max_width`` is 1).

Example:
    >>> model = wrap(MyCNN(), input_shape=(8, 8, 1))
    >>> table = model.table()
    >>> logits = model.apply(variables, x, bits=[8] * len(table), widths=[1.0] * len(table))
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Mapping, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from mpqjax.nn import graph, intercept, quant
from mpqjax.nn.layers import DEFAULT_ACT_CLIP
from mpqjax.nn.models.flax_function import RNG, FlaxFunction, WidthFactory, leaf_paths, path_text
from mpqjax.nn.models.rules import Rules
from mpqjax.nn.table import LayerSpec, LayerTable, scale_channels

__all__ = ["OwnModel", "wrap"]

@dataclasses.dataclass(frozen=True)
class _Analysis:
    """A model's layer table (at width 1) and how the interceptor runs its (possibly wider) module."""

    table: LayerTable
    plan: intercept.Plan
    main_leaf: dict
    pinned: dict
    in_axes: tuple  # per layer, its weight's input-channel axes


@dataclasses.dataclass(frozen=True)
class OwnModel:
    """A user's Flax model with mpqjax's interface (see the module docstring); build it with `wrap`.

    Attributes:
        function: the model as a pure function.
        example_shape: one input example's shape (no batch axis).
        name: what reports call the model.
        rules: the layer rules.
        source: how to rebuild the model in another process (``"package.module:factory"``), or None.
        quantize: False runs the model as it is (the float model).
        act_clipping: ``"calibrated"``, ``"pact"`` or ``"lsq"``.
        max_width: largest width multiplier (1: a plain module only narrows).
        num_classes: the number of outputs, when known.
        factory: the width factory the model came from (None: a plain module, which cannot grow).
    """

    function: FlaxFunction
    example_shape: tuple[int, ...] | None
    name: str = "own"
    rules: Rules = Rules()
    source: str | None = None
    quantize: bool = True
    act_clipping: str = "calibrated"
    max_width: float = 1.0
    num_classes: int | None = None
    factory: WidthFactory | None = None
    widths: None = None  # always masked: widths are given at apply time

    @property
    def zoo_name(self) -> str:
        return self.name

    @property
    def model_function(self) -> FlaxFunction:
        """The module that runs: built at ``max_width`` by a width factory, else the model itself."""
        if self.factory is not None and abs(self.max_width - 1.0) > 1e-9:
            return self.factory.function(self.max_width)
        return self.function

    def input_shape(self) -> tuple[int, ...]:
        """One input example's shape (raises when the model was wrapped without one)."""
        if self.example_shape is None:
            raise ValueError(f"model {self.name!r} needs one input example's shape (input_shape=, or --input-shape "
                             f"on the command line)")
        return self.example_shape

    def clone(self, *, parent=None, widths=None, **changes) -> OwnModel:
        """A copy with some fields changed (``widths`` of all ones is accepted: the model is always masked)."""
        del parent
        if widths is not None and not np.allclose(np.asarray(widths, np.float64), 1.0):
            raise ValueError(f"{self.name}: a user model takes widths when it is applied, not when it is built")
        if self.factory is None and "max_width" in changes and changes["max_width"] > 1.0 + 1e-9:
            changes["max_width"] = 1.0  # a plain module cannot grow; check_config refuses widths above it
        return dataclasses.replace(self, **changes)

    # -- structure ---------------------------------------------------------------------------------------------
    def analysis(self, input_shape: Sequence[int] | None = None) -> _Analysis:
        """The layer table and the interceptor's plan at one input shape (cached)."""
        shape = tuple(input_shape) if input_shape is not None else self.input_shape()
        return _analyse(self.function, self.model_function, self.rules, self.act_clipping, self.name,
                        tuple(int(s) for s in shape), self.max_width)

    def table(self, input_shape: Sequence[int] | None = None) -> LayerTable:
        """The layer table: every quantised layer, named by its weight's path, in execution order."""
        return self.analysis(input_shape).table

    def fingerprint(self, input_shape: Sequence[int] | None = None) -> str:
        """A digest of the model's traced program (its operations and shapes) at one input shape."""
        import hashlib

        shape = tuple(input_shape) if input_shape is not None else self.input_shape()
        closed = self.function.eval_jaxpr(tuple(int(size) for size in shape))[0]
        return hashlib.sha256(str(closed).encode()).hexdigest()[:16]

    def pinned_bits(self) -> dict[str, int]:
        """``{layer: bits}`` the rules pin."""
        return dict(self.analysis().pinned)

    # -- variables ---------------------------------------------------------------------------------------------
    def init_variables(self, key, input_shape: Sequence[int] | None = None) -> dict:
        """Initial variables (the model's own initialisation) with default activation clips."""
        shape = tuple(input_shape) if input_shape is not None else self.input_shape()
        variables = self.model_function.initial_variables(key, shape)
        return self.with_clips(variables, shape) if self.quantize else variables

    def transfer(self, key, float_variables, input_shape: Sequence[int] | None = None) -> dict:
        """This model's variables from the trained width-1 float model's, with default activation clips.

        A model that does not grow takes the same arrays. A wider one takes the float weights in its leading
        channels and its own initialisation in the new ones, with the weights that read new channels zeroed: the
        function is the float model's until training moves them, and the new channels train (their consumers'
        weights get gradients at once).

        Raises:
            ValueError: float variables that do not fit the width-1 model, or a wider model whose variables are
                narrower than them.
        """
        shape = tuple(input_shape) if input_shape is not None else self.input_shape()
        base = self.check_variables(float_variables, shape)
        if self.model_function is self.function:
            return self.with_clips(base, shape)
        wide = jax.tree.map(np.array, self.model_function.initial_variables(key, shape))
        flat_base = dict(zip(leaf_paths(base), jax.tree.leaves(base), strict=True))
        analysis = self.analysis(shape)
        ones = np.ones(len(analysis.table), np.float32)
        reads = {}  # weight path -> (input-channel axes, which input channels exist at width 1)
        for index, layer in enumerate(analysis.table):
            mask = intercept.mask_of(analysis.plan.in_masks[index], ones, analysis.plan.base_channels)
            if mask is not None and layer.kind != "depthwise":
                reads[f"params/{layer.weight_path}"] = (analysis.in_axes[index], np.asarray(mask))

        def paste(path, leaf):
            name = path_text(path)
            old = flat_base.get(name)
            if old is None or old.ndim != leaf.ndim or any(a > b for a, b in zip(old.shape, leaf.shape, strict=True)):
                raise ValueError(f"the width factory builds {name!r} as {leaf.shape} at width {self.max_width:g}, "
                                 f"which does not hold its {None if old is None else old.shape} at width 1")
            leaf[tuple(slice(0, size) for size in old.shape)] = old
            if name in reads:
                axes, mask = reads[name]
                leaf *= np.asarray(intercept.along(jnp.asarray(mask), leaf.ndim, axes, leaf.shape), leaf.dtype)
            return leaf

        return self.with_clips(jax.tree_util.tree_map_with_path(paste, wide), shape)

    def check_variables(self, variables, input_shape: Sequence[int] | None = None) -> dict:
        """``variables`` (their ``params`` and ``batch_stats``) as NumPy arrays, checked against the model's own.

        Raises:
            ValueError: a missing or unexpected leaf, or a leaf of another shape, named by its path.
        """
        shape = tuple(input_shape) if input_shape is not None else self.input_shape()
        expected = self.function.abstract_variables(tuple(int(size) for size in shape))  # at width 1
        given = {name: variables[name] for name in expected if name in variables}
        flat_expected = dict(zip(leaf_paths(expected), jax.tree.leaves(expected), strict=True))
        flat_given = dict(zip(leaf_paths(given), jax.tree.leaves(given), strict=True))
        for path, leaf in flat_expected.items():
            if path not in flat_given:
                raise ValueError(f"variables do not fit model {self.name!r}: {path!r} is missing")
            if tuple(np.shape(flat_given[path])) != tuple(leaf.shape):
                raise ValueError(f"variables do not fit model {self.name!r}: {path!r} has shape "
                                 f"{tuple(np.shape(flat_given[path]))}, the model's is {tuple(leaf.shape)}")
        extra = sorted(set(flat_given) - set(flat_expected))
        if extra:
            raise ValueError(f"variables do not fit model {self.name!r}: {extra[0]!r} is not one of its variables")
        return jax.tree.map(np.asarray, given)

    def with_clips(self, variables, input_shape: Sequence[int] | None = None) -> dict:
        """``variables`` (the float model's) with an activation clip per layer where there is none yet."""
        variables = {name: value for name, value in dict(variables).items() if name != "calibration"}
        if not self.quantize:
            return variables
        collection = "quant" if self.act_clipping == "calibrated" else "params"
        flat = traverse_util.flatten_dict(dict(variables.get(collection, {})))
        for name in self.table(input_shape).names:
            flat.setdefault((name, "act_clip"), jnp.asarray(DEFAULT_ACT_CLIP, jnp.float32))
        return {**variables, collection: traverse_util.unflatten_dict(flat)}

    def _split(self, variables, names: Sequence[str]):
        """``(user params, user state, clips [L])`` of a variables dict."""
        params = traverse_util.flatten_dict(dict(variables["params"]))
        learned = {key: params.pop(key) for key in [(name, "act_clip") for name in names] if key in params}
        calibrated = traverse_util.flatten_dict(dict(variables.get("quant", {})))
        clips = [learned.get((name, "act_clip"), calibrated.get((name, "act_clip"), DEFAULT_ACT_CLIP))
                 for name in names]
        state = {key: value for key, value in variables.items() if key not in ("params", "quant", "calibration")}
        clip_array = jnp.stack([jnp.asarray(clip, jnp.float32).reshape(()) for clip in clips]) if names else None
        return traverse_util.unflatten_dict(params), state, clip_array

    # -- running -----------------------------------------------------------------------------------------------
    def init(self, key, x, bits=None, widths=None) -> dict:
        """Flax-style ``init``: the model's variables for inputs like ``x``, with default clips."""
        del bits, widths
        return self.init_variables(key, tuple(x.shape[1:]))

    def apply(self, variables, x, bits=None, widths=None, *, train: bool = False, mutable=False, rngs=None):
        """Run the model at a configuration, as a zoo model's ``apply``.

        Args:
            variables: ``{"params", "batch_stats", "quant"}`` (see the module docstring).
            x: a batch of inputs.
            bits, widths: ``[L]`` per-layer arrays (None: float, width 1).
            train: batch statistics are used and updated.
            mutable: collections to return updated: ``"batch_stats"``, ``"calibration"`` (each layer's input
                statistics, `mpqjax.nn.quant.calibration_stats`).
            rngs: ``{"dropout": key}`` for a linen model's dropout in training (default: a fixed key).

        Returns:
            The output, or ``(output, updated collections)`` when ``mutable``.
        """
        mutable = tuple([mutable] if isinstance(mutable, str) else list(mutable or []))
        count = len(self.analysis(tuple(x.shape[1:])).table)
        calibrate = "calibration" in mutable
        quantized = self.quantize and (bits is not None or widths is not None or calibrate)
        if quantized:
            for label, values in (("bits", bits), ("widths", widths)):
                if values is not None and np.ndim(values) > 0 and np.shape(values)[-1] != count:
                    raise ValueError(f"{label} has {np.shape(values)[-1]} entries but model {self.name!r} has "
                                     f"{count} layers")
            bits = jnp.broadcast_to(jnp.asarray(quant.FLOAT_BITS if bits is None else bits, jnp.float32), (count,))
            widths = jnp.broadcast_to(jnp.asarray(1.0 if widths is None else widths, jnp.float32), (count,))
        else:
            bits = widths = None
        rng = (rngs or {}).get("dropout", jax.random.key(0)) if train and self.function.kind == "linen" else None
        out, updates = _forward(self, variables, x, bits, widths, rng, train=train, mutable=mutable)
        return (out, updates) if mutable else out


@functools.partial(jax.jit, static_argnums=0, static_argnames=("train", "mutable"))
def _forward(model: OwnModel, variables, x, bits, widths, rng, *, train: bool, mutable: tuple):
    """`OwnModel.apply` once its arguments are arrays (jitted: an eager call runs one program, not each op)."""
    analysis = model.analysis(tuple(x.shape[1:]))
    names = analysis.table.names
    params, state, clips = model._split(variables, names)
    if rng is not None:
        state[RNG] = rng
    stats = {}
    function = model.model_function
    if bits is None:
        out, new_state = function(params, state, x, train)
    else:
        closed, out_tree = function.jaxpr(params, state, x, train)
        flat_params, flat_state = jax.tree.leaves(params), jax.tree.leaves(state)
        outputs, stats = intercept.quantized_call(
            closed, [*flat_params, *flat_state, x], num_param_leaves=len(flat_params),
            num_state_leaves=len(flat_state), plan=analysis.plan, main_leaf=analysis.main_leaf, bits=bits,
            widths=widths, clips=clips, calibrate="calibration" in mutable)
        out, new_state = jax.tree.unflatten(out_tree, outputs)
    updates = {name: new_state[name] for name in mutable if name in new_state and name != RNG}
    if "calibration" in mutable:
        updates["calibration"] = {names[index]: {"input_stats": (value,)} for index, value in stats.items()}
    return out, updates


def _discover(function: FlaxFunction, rules: Rules, name: str, input_shape: tuple[int, ...]):
    """``(discovery, kept, weight paths)`` of one module: its layers with the rules applied."""
    closed, paths, num_state = function.eval_jaxpr(input_shape)
    num_params = len(paths)
    found = graph.discover(closed, paths, num_params, num_state)
    if not found.layers:
        raise ValueError(f"model {name!r} has no quantisable layer (no convolution or dense contraction of its input "
                         f"with a parameter)")
    kept = rules.kept(found.names)
    if not any(kept):
        raise ValueError(f"the rules leave model {name!r} no layer to quantise")
    if not all(kept):
        found = graph.discover(closed, paths, num_params, num_state,
                               fixed_layers=frozenset(i for i, keep in enumerate(kept) if not keep))
    return found, kept, paths


def _table(found, kept, paths, position: dict, name: str, input_shape) -> LayerTable:
    specs = []
    for index, layer in enumerate(found.layers):
        if kept[index]:
            specs.append(LayerSpec(
                name=found.names[index], kind=layer.kind, in_channels=layer.in_channels,
                out_channels=layer.out_channels, kernel=layer.kernel, stride=layer.stride, out_hw=layer.out_hw,
                input_layer=position.get(found.input_layer[index], -1), input_repeat=found.input_repeat[index],
                width_group=position[found.out_classes[index]], scalable=not found.fixed[index],
                use_bias=found.use_bias[index], batch_norm=found.batch_norm[index], groups=layer.groups,
                weight=paths[layer.leaf]))
    return LayerTable(layers=tuple(specs), input_shape=input_shape, model=name)


def _check_wider(table: LayerTable, wide: LayerTable, max_width: float) -> None:
    """A width factory's wider module must have the same layers, each with room for ``max_width``."""
    if table.names != wide.names:
        raise ValueError(f"the width factory builds other layers at width {max_width:g} ({', '.join(wide.names)}) "
                         f"than at width 1 ({', '.join(table.names)})")
    for layer, wider in zip(table, wide, strict=True):
        if not layer.scalable and wider.out_channels != layer.out_channels:
            raise ValueError(f"layer {layer.name!r}: its channels are fixed by the graph, but the width factory gives "
                             f"it {wider.out_channels} at width {max_width:g} instead of {layer.out_channels}")
        needed = scale_channels(layer.out_channels, max_width) if layer.scalable else layer.out_channels
        if wider.out_channels < needed:
            raise ValueError(f"layer {layer.name!r}: the width factory gives it {wider.out_channels} channels at "
                             f"width {max_width:g}, fewer than the {needed} that width needs")


@functools.lru_cache(maxsize=64)
def _analyse(function: FlaxFunction, model_function: FlaxFunction, rules: Rules, act_clipping: str, name: str,
             input_shape: tuple[int, ...], max_width: float) -> _Analysis:
    """The table of the width-1 module; the plan of the module that runs (the same, or built at ``max_width``)."""
    found, kept, paths = _discover(function, rules, name, input_shape)
    position = {old: new for new, old in enumerate(i for i, keep in enumerate(kept) if keep)}
    table = _table(found, kept, paths, position, name, input_shape)
    if model_function is not function:
        found, kept, paths = _discover(model_function, rules, name, input_shape)
        _check_wider(table, _table(found, kept, paths, position, name, input_shape), max_width)
    occurrences, layer_of_leaf = {}, {}
    for index, layer in enumerate(found.layers):
        occurrences[layer.leaf] = occurrences.get(layer.leaf, 0) + 1
        if kept[index]:
            layer_of_leaf[(layer.leaf, occurrences[layer.leaf])] = position[index]
    in_masks = tuple(_renumber(found.in_masks[i], position) for i, keep in enumerate(kept) if keep)
    plan = intercept.Plan(layer_of_leaf=layer_of_leaf, in_masks=in_masks,
                          signed=tuple(not found.input_nonneg[i] for i, keep in enumerate(kept) if keep),
                          base_channels=tuple(layer.out_channels for layer in table), act_clipping=act_clipping)
    in_axes = tuple(layer.in_axes for layer, keep in zip(found.layers, kept, strict=True) if keep)
    return _Analysis(table, plan, found.main_leaf, rules.pinned(table.names), in_axes)


def _renumber(description, position: dict):
    """A mask description with discovery's layer indices replaced by table indices."""
    if description is None:
        return None
    if description[0] == "group":
        return ("group", position[description[1]], description[2])
    if description[0] == "ones":
        return description
    return (description[0], tuple(_renumber(part, position) for part in description[1]))


def wrap(module, *, input_shape: Sequence[int] | None, name: str | None = None, include=(), exclude=(),
         bits: Mapping[str, int] | None = None, train_argument: str | None = "auto", num_classes: int | None = None,
         act_clipping: str = "calibrated", source: str | None = None) -> OwnModel:
    """A linen or NNX model as an mpqjax model, its code unchanged.

    Args:
        module: a ``flax.linen.Module`` or a ``flax.nnx.Module`` (its current state is its initialisation), or a
            width factory: a function ``width -> module`` building the model with every layer's channels
            multiplied by ``width`` (the model is ``module(1.0)``); a factory's model also grows (multipliers
            above 1, up to ``max_width``).
        input_shape: one input example's shape, without the batch axis (None: given later, to each call that
            needs it, e.g. ``model.table(input_shape)``).
        name: what reports call it (default: the class name).
        include, exclude, bits: layer rules (see `Rules`).
        train_argument: the ``__call__`` argument that switches training mode for a linen module (``"train"``,
            ``"training"``, ``"deterministic"``, ``"use_running_average"``...): found in the signature by default.
        num_classes: the model's outputs, when it is a classifier.
        act_clipping: ``"calibrated"``, ``"pact"`` or ``"lsq"``.
        source: how to rebuild it elsewhere, ``"package.module:factory"`` (set by `mpqjax.nn.models.get`).

    Returns:
        An `OwnModel`.

    Raises:
        ValueError: not a Flax module, no quantisable layer, a rule that matches no layer, a bad rule.

    Example:
        >>> model = wrap(MyCNN(), input_shape=(8, 8, 1), bits={"Conv_0|Dense_0": 8})
        >>> model.table().names
        ('Conv_0', 'Conv_1', 'Dense_0')
    """
    if act_clipping not in quant.CLIPPING_MODES:
        raise ValueError(f"act_clipping must be one of {quant.CLIPPING_MODES}, got {act_clipping!r}")
    shape = None if input_shape is None else tuple(int(size) for size in input_shape)
    if shape is not None and (not shape or any(size < 1 for size in shape)):
        raise ValueError(f"input_shape must be one example's positive sizes, got {tuple(input_shape)}")
    if isinstance(module, OwnModel):
        return module
    factory = None
    if callable(module) and not _is_module(module):
        factory = WidthFactory(module, train_argument=train_argument)
        function = factory.function(1.0)
    else:
        function = FlaxFunction(module, train_argument=train_argument)
    model = OwnModel(function=function, example_shape=shape, name=name or function.label,
                     rules=Rules.of(include, exclude, bits), source=source, act_clipping=act_clipping,
                     num_classes=num_classes, factory=factory)
    if shape is not None:
        model.analysis()  # finds the layers now: a model without any, or a rule matching none, fails here
    return model


def _is_module(value) -> bool:
    from flax import nnx

    return isinstance(value, (nn.Module, nnx.Module))
