"""A Flax model, unmodified, as an mpqjax model: `Model`, built by `wrap` (a user's module) or by
`mpqjax.nn.models.get` (the zoo's).

`wrap` takes a ``flax.linen`` module, a ``flax.nnx`` module or a width factory and returns a `Model`
(``apply(variables, x, bits, widths, *, train, mutable)``, a layer table), which the cost model, the Hessian, the
fine-tune, populations, the search and the export take. Nothing in the model's code changes: its forward pass is
traced once per input shape, its layers found in the trace (`mpqjax.nn.models.analysis`), and every call runs the
trace with those layers quantised (`mpqjax.nn.intercept`).

Variables are the model's own: ``{"params": ..., "batch_stats": ...}`` as linen keeps them (an NNX model's
parameters and its other state as plain dicts), plus one activation clip per layer, ``act_clip``, stored under the
layer's name (``variables["quant"][layer]["act_clip"]`` when calibrated, in ``params`` when learned), and, once
transferred from a float model, each width group's channel ranks (``variables["quant"][layer]["channel_rank"]``).

A layer's bit-width ``bits[l]`` quantises its input activations and its weight (one scale per output channel). A layer
may also carry one weight bit-width per output channel (``variables["quant"][layer]["weight_bits"]``, set by
`Model.with_weight_bits`): its weight is then quantised channel by channel at those, its input still at ``bits[l]``.

A gradient-based precision search runs the model on expected quantisation: ``apply(..., relaxation=Relaxation(...))``
mixes each layer's input and weight over candidate bit-widths with traced probabilities and keeps a width group's
channels with traced probabilities (`mpqjax.nn.intercept.Relaxation`, keyed by layer names here).

Rules select layers by their names (regular expressions matched against the whole name with `re.fullmatch`):
``include`` keeps only matching layers, ``exclude`` leaves matching layers in float, ``bits`` pins a bit-width
(e.g. ``{"Conv_0|Dense_.*": 8}`` keeps the first and last layer at 8 bits). A rule that matches no layer is an
error, naming the rule and the layers there are.

Widths: a width multiplier below 1 switches off some of a layer's output channels (those of highest rank, else the
last ones; its consumers read zeros there); the graph decides which layers share one multiplier (`mpqjax.nn.graph`).
A plain module cannot grow: its multipliers are at most 1 (``max_width`` is 1).

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

from mpqjax.nn import intercept, quant
from mpqjax.nn.config import check_channel_bits, check_config
from mpqjax.nn.models.analysis import Analysis, analyse
from mpqjax.nn.models.flax_function import RNG, FlaxFunction, WidthFactory, leaf_paths
from mpqjax.nn.models.relaxation import check_relaxation, is_concrete
from mpqjax.nn.models.rules import Rules
from mpqjax.nn.table import LayerTable

__all__ = ["RANKS", "WEIGHT_BITS", "Model", "wrap"]

# Where a width group's channel ranks live: ``variables["quant"][<the group's first layer>][RANKS]``.
RANKS = "channel_rank"
# Where a layer's per-output-channel weight bit-widths live: ``variables["quant"][<layer>][WEIGHT_BITS]``.
WEIGHT_BITS = "weight_bits"
# The per-channel weight bit-widths `Model.with_weight_bits` accepts (pruning is by widths and ranks, not 0 bits).

@dataclasses.dataclass(frozen=True)
class Model:
    """A Flax model with mpqjax's interface (see the module docstring); build it with `wrap` or `get`.

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
        precision: the dtype the quantised layers take their operands in (`mpqjax.nn.quant.PRECISIONS`:
            ``"bfloat16"`` is mixed precision, the parameters and accumulations staying float32).
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
    precision: str = "float32"

    def __post_init__(self):
        if self.precision not in quant.PRECISIONS:
            raise ValueError(f"precision must be one of {', '.join(quant.PRECISIONS)}, got {self.precision!r}")

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

    def clone(self, *, parent=None, widths=None, **changes) -> Model:
        """A copy with some fields changed (``widths`` of all ones is accepted: the model is always masked)."""
        del parent
        if widths is not None and not np.allclose(np.asarray(widths, np.float64), 1.0):
            raise ValueError(f"{self.name}: a model takes widths when it is applied, not when it is built")
        if self.factory is None and "max_width" in changes and changes["max_width"] > 1.0 + 1e-9:
            changes["max_width"] = 1.0  # a plain module cannot grow; check_config refuses widths above it
        return dataclasses.replace(self, **changes)

    # -- structure ---------------------------------------------------------------------------------------------
    def analysis(self, input_shape: Sequence[int] | None = None) -> Analysis:
        """The layer table and the interceptor's plan at one input shape (cached)."""
        shape = tuple(input_shape) if input_shape is not None else self.input_shape()
        return analyse(self.function, self.model_function, self.rules, self.act_clipping, self.name,
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
        return self.with_quant_variables(variables, shape) if self.quantize else variables

    def check_variables(self, variables, input_shape: Sequence[int] | None = None, *, as_numpy: bool = True) -> dict:
        """``variables`` (their ``params`` and ``batch_stats``), checked against the model's own.

        Args:
            variables: the width-1 model's variables.
            input_shape: one example's shape; the model's default when None.
            as_numpy: return NumPy arrays (else the arrays as given, wherever they lie).

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
        return jax.tree.map(np.asarray, given) if as_numpy else given

    def with_quant_variables(self, variables, input_shape: Sequence[int] | None = None, *, ranks=None) -> dict:
        """``variables`` (the float model's) with the quantiser's own where they are missing: an activation clip
        per layer, and each width group's channel ranks under ``quant/<its first layer>/channel_rank``. Whatever
        ``quant`` already holds (clips, ranks not replaced, per-channel weight bit-widths) is kept.

        Args:
            variables: the model's variables.
            input_shape: one example's shape.
            ranks: ``{first layer of a group: ranks}`` to set (`mpqjax.nn.models.transfer.channel_ranks`): the
                channels a wider module adds rank after them; a group without ranks keeps its channels in order.
        """
        variables = {name: value for name, value in dict(variables).items() if name != "calibration"}
        if not self.quantize:
            return variables
        shape = tuple(input_shape) if input_shape is not None else self.input_shape()
        collection = "quant" if self.act_clipping == "calibrated" else "params"
        flat = traverse_util.flatten_dict(dict(variables.get(collection, {})))
        for name in self.table(shape).names:
            flat.setdefault((name, "act_clip"), jnp.asarray(quant.DEFAULT_ACT_CLIP, jnp.float32))
        variables = {**variables, collection: traverse_util.unflatten_dict(flat)}
        flat = traverse_util.flatten_dict(dict(variables.get("quant", {})))
        for name, held in self.held_channels(shape).items():
            given = (ranks or {}).get(name)
            if given is not None and np.shape(given)[0]:
                rank = jnp.asarray(given, jnp.int32)  # where it lies (traceable)
            elif (name, RANKS) in flat:
                continue  # kept
            else:
                rank = jnp.zeros(0, jnp.int32)
            flat[(name, RANKS)] = jnp.concatenate([rank, jnp.arange(rank.shape[0], held, dtype=jnp.int32)])
        return {**variables, "quant": traverse_util.unflatten_dict(flat)} if flat else variables

    def with_weight_bits(self, variables, weight_bits: Mapping[str, Sequence[int] | None],
                         input_shape: Sequence[int] | None = None) -> dict:
        """``variables`` with per-output-channel weight bit-widths set, or removed, for some layers.

        Output channel ``c`` of such a layer's weight is quantised at ``weight_bits[c]`` bits instead of the
        configuration's ``bits[l]``, which the layer's input activations keep. The bit-widths are variables
        (``variables["quant"][layer]["weight_bits"]``, float32 ``[channels]``), so training, evaluation,
        calibration and populations carry them, and changing their values compiles nothing new.

        Args:
            variables: the model's variables (left unchanged).
            weight_bits: ``{layer name: one whole number in [2, 8] per output channel}``: as many channels as the
                running module holds for the layer (its weight's output-channel axis; at ``max_width`` for a model
                that grows). None removes the layer's, back to ``bits[l]``.
            input_shape: one example's shape; the model's default when None.

        Returns:
            New variables; the layers not named keep what they had.

        Raises:
            ValueError: a float model, an unknown layer, a layer the rules leave in float, the wrong number of
                channels, or bit-widths that are not whole numbers in [2, 8] (naming the layer).

        Example:
            >>> variables = model.with_weight_bits(variables, {"conv1": [8] * 31 + [2]})  # its last channel at 2
            >>> variables = model.with_weight_bits(variables, {"conv1": None})  # all of conv1 at bits[l] again
        """
        if not self.quantize:
            raise ValueError(f"model {self.name!r} is not quantised: it takes no weight_bits")
        shape = tuple(input_shape) if input_shape is not None else self.input_shape()
        channels = self.weight_channels(shape)
        flat = traverse_util.flatten_dict(dict(variables.get("quant", {})))
        for name, values in dict(weight_bits).items():
            if name not in channels:
                every_layer = analyse(self.function, self.function, Rules(), self.act_clipping, self.name, shape,
                                      1.0).table.names
                if name in every_layer:
                    raise ValueError(f"weight_bits: layer {name!r} is not quantised (the model's rules leave it in "
                                     f"float)")
                raise ValueError(f"weight_bits: unknown layer {name!r}; the quantised layers are: "
                                 f"{', '.join(channels)}")
            if values is None:
                flat.pop((name, WEIGHT_BITS), None)
                continue
            per_channel = check_channel_bits(name, values, channels[name], " its weight holds")
            flat[(name, WEIGHT_BITS)] = jnp.asarray(per_channel, jnp.float32)
        if not flat and "quant" not in variables:
            return dict(variables)
        return {**variables, "quant": traverse_util.unflatten_dict(flat)}

    def weight_channels(self, input_shape: Sequence[int] | None = None) -> dict[str, int]:
        """``{quantised layer: the output channels its weight has in the running module}``: what the interceptor
        flattens into one scale (and one weight bit-width) per channel, so what `with_weight_bits` takes per layer
        (at ``max_width`` for a model that grows: its first channels are those of width 1)."""
        input_shape = tuple(input_shape) if input_shape is not None else self.input_shape()
        running = analyse(self.model_function, self.model_function, self.rules, self.act_clipping, self.name,
                          tuple(input_shape), self.max_width).table
        return {layer.name: layer.out_channels for layer in running}

    def held_channels(self, input_shape: Sequence[int] | None = None) -> dict[str, int]:
        """``{first layer of each width group that can narrow: the channels the running module holds for the group}``:
        the length of its channel ranks (`RANKS`) and of a relaxation's keep probabilities."""
        input_shape = tuple(input_shape) if input_shape is not None else self.input_shape()
        analysis = self.analysis(input_shape)
        table = analysis.table
        params = self.model_function.abstract_variables(tuple(input_shape))["params"]
        shapes = dict(zip(leaf_paths(params), (leaf.shape for leaf in jax.tree.leaves(params)), strict=True))
        held = {}
        for group in table.width_groups():
            first = group[0]
            if table[first].scalable and analysis.out_axes[first] is not None:
                held[table[first].name] = shapes[table[first].weight_path][analysis.out_axes[first]]
        return held

    def _split(self, variables, names: Sequence[str]):
        """``(user params, user state, clips [L], {layer index: channel ranks})`` of a variables dict."""
        params = traverse_util.flatten_dict(dict(variables["params"]))
        learned = {key: params.pop(key) for key in [(name, "act_clip") for name in names] if key in params}
        calibrated = traverse_util.flatten_dict(dict(variables.get("quant", {})))
        clips = [learned.get((name, "act_clip"), calibrated.get((name, "act_clip"), quant.DEFAULT_ACT_CLIP))
                 for name in names]
        ranks = {index: calibrated[(name, RANKS)] for index, name in enumerate(names) if (name, RANKS) in calibrated}
        state = {key: value for key, value in variables.items() if key not in ("params", "quant", "calibration")}
        clip_array = jnp.stack([jnp.asarray(clip, jnp.float32).reshape(()) for clip in clips]) if names else None
        return traverse_util.unflatten_dict(params), state, clip_array, ranks

    @staticmethod
    def weight_bits(variables) -> dict:
        """``{layer name: its per-channel weight bit-widths}`` of the layers whose ``variables`` carry them
        (`with_weight_bits`); empty for a per-layer configuration."""
        calibrated = traverse_util.flatten_dict(dict(variables.get("quant", {})))
        return {key[0]: value for key, value in calibrated.items() if len(key) == 2 and key[1] == WEIGHT_BITS}

    # -- running -----------------------------------------------------------------------------------------------
    def init(self, key, x, bits=None, widths=None) -> dict:
        """Flax-style ``init``: the model's variables for inputs like ``x``, with default clips."""
        del bits, widths
        return self.init_variables(key, tuple(x.shape[1:]))

    def apply(self, variables, x, bits=None, widths=None, *, train: bool = False, mutable=False, rngs=None,
              relaxation: intercept.Relaxation | None = None):
        """Run the model at a configuration, as a zoo model's ``apply``.

        Args:
            variables: ``{"params", "batch_stats", "quant"}`` (see the module docstring).
            x: a batch of inputs.
            bits, widths: ``[L]`` per-layer arrays (None: float, width 1).
            train: batch statistics are used and updated.
            mutable: collections to return updated: ``"batch_stats"``, ``"calibration"`` (each layer's input
                statistics, `mpqjax.nn.quant.calibration_stats`; at the highest ``act_bits`` for a relaxed input).
            rngs: ``{"dropout": key}`` for a linen model's dropout in training (default: a fixed key).
            relaxation: expected ("mixture") quantisation for a gradient-based search (`intercept.Relaxation`),
                keyed by layer names: ``weight_probs`` by quantised layer (``[P]``, or ``[channels, P]`` with the
                channels of `weight_channels`), ``keep`` by a width group's first layer (the key `RANKS` uses; as
                many probabilities as the group's channels in the running module). Its probabilities are traced:
                new values run the same compiled program (new layer names or shapes compile another). ``bits`` must
                still be given: a layer uses ``bits[l]`` for its input when ``act_probs`` is None and for its
                weight when absent from ``weight_probs`` (its per-channel weight bit-widths, when it has them, take
                precedence over ``bits[l]``, and ``weight_probs`` over both); ``widths`` still give the hard masks
                that ``keep`` multiplies.

        Returns:
            The output, or ``(output, updated collections)`` when ``mutable``.

        Raises:
            ValueError: a configuration that does not fit the model; a relaxation on a float model or without
                ``bits``, with an unknown layer, of the wrong shape, or with candidate bit-widths that are not whole
                numbers in [2, 16] (0 too for ``weight_bits``: a pruned option), naming the layer.

        Example:
            >>> relaxation = Relaxation(act_bits=jnp.array([2.0, 4, 8]), act_probs=jax.nn.softmax(logits, -1),
            ...                         weight_bits=jnp.array([0.0, 2, 4, 8]), weight_probs={"conv2": probs},
            ...                         keep={"conv1": keep})
            >>> out = model.apply(variables, x, bits, widths, relaxation=relaxation)
        """
        mutable = tuple([mutable] if isinstance(mutable, str) else list(mutable or []))
        count = len(self.analysis(tuple(x.shape[1:])).table)
        calibrate = "calibration" in mutable
        if relaxation is not None:
            relaxation = check_relaxation(self, relaxation, bits, tuple(x.shape[1:]))
        quantized = self.quantize and (bits is not None or widths is not None or calibrate)
        if quantized:
            for label, values in (("bits", bits), ("widths", widths)):
                if values is not None and np.ndim(values) > 0 and np.shape(values)[-1] != count:
                    raise ValueError(f"{label} has {np.shape(values)[-1]} entries but model {self.name!r} has "
                                     f"{count} layers")
            concrete = [values if is_concrete(values) else None for values in (bits, widths)]
            if any(values is not None for values in concrete):  # an eager call: checked here, naming the layer
                check_config(self.analysis(tuple(x.shape[1:])).table, *concrete, max_width=self.max_width)
            bits = _per_layer(quant.FLOAT_BITS if bits is None else bits, count)
            widths = _per_layer(1.0 if widths is None else widths, count)
        else:
            bits = widths = None
        rng = (rngs or {}).get("dropout", jax.random.key(0)) if train and self.function.kind == "linen" else None
        out, updates = _forward(self, variables, x, bits, widths, rng, relaxation, train=train, mutable=mutable)
        return (out, updates) if mutable else out


def _per_layer(values, count: int):
    """``values`` as ``[count]`` float32, converted on the host when they are host values (no program compiled)."""
    if not isinstance(values, jax.Array) and is_concrete(values):
        return np.broadcast_to(np.asarray(values, np.float32), (count,))
    return jnp.broadcast_to(jnp.asarray(values, jnp.float32), (count,))


@functools.partial(jax.jit, static_argnums=0, static_argnames=("train", "mutable"))
def _forward(model: Model, variables, x, bits, widths, rng, relaxation=None, *, train: bool, mutable: tuple):
    """`Model.apply` once its arguments are arrays (jitted: an eager call runs one program, not each op)."""
    analysis = model.analysis(tuple(x.shape[1:]))
    names = analysis.table.names
    params, state, clips, ranks = model._split(variables, names)
    # empty (nothing changes) unless a layer has them
    weight_bits = {names.index(name): value for name, value in model.weight_bits(variables).items() if name in names}
    if relaxation is not None:  # keyed by layer index, as the interceptor takes it
        relaxation = relaxation._replace(
            weight_probs={names.index(name): value for name, value in (relaxation.weight_probs or {}).items()},
            keep={names.index(name): value for name, value in (relaxation.keep or {}).items()})
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
            widths=widths, clips=clips, ranks=ranks, weight_bits=weight_bits, calibrate="calibration" in mutable,
            precision=model.precision, relaxation=relaxation)
        out, new_state = jax.tree.unflatten(out_tree, outputs)
    updates = {name: new_state[name] for name in mutable if name in new_state and name != RNG}
    if "calibration" in mutable:
        updates["calibration"] = {names[index]: {"input_stats": (value,)} for index, value in stats.items()}
    return out, updates


def wrap(module, *, input_shape: Sequence[int] | None, name: str | None = None, include=(), exclude=(),
         bits: Mapping[str, int] | None = None, train_argument: str | None = "auto", num_classes: int | None = None,
         act_clipping: str = "calibrated", source: str | None = None) -> Model:
    """A linen or NNX model as an mpqjax model, its code unchanged.

    Args:
        module: a ``flax.linen.Module`` or a ``flax.nnx.Module`` (its current state is its initialisation), or a
            width factory: a function ``width -> module`` (or a `WidthFactory`) building the model with every
            layer's channels multiplied by ``width`` (the model is ``module(1.0)``); a factory's model also grows
            (multipliers above 1, up to ``max_width``).
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
        An `Model`.

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
    if isinstance(module, Model):
        return module
    factory = None
    if isinstance(module, WidthFactory):
        factory = module
        function = factory.function(1.0)
    elif callable(module) and not _is_module(module):
        factory = WidthFactory(module, train_argument=train_argument)
        function = factory.function(1.0)
    else:
        function = FlaxFunction(module, train_argument=train_argument)
    model = Model(function=function, example_shape=shape, name=name or function.label,
                     rules=Rules.of(include, exclude, bits), source=source, act_clipping=act_clipping,
                     num_classes=num_classes, factory=factory)
    if shape is not None:
        model.analysis()  # finds the layers now: a model without any, or a rule matching none, fails here
    return model


def _is_module(value) -> bool:
    from flax import nnx

    return isinstance(value, (nn.Module, nnx.Module))
