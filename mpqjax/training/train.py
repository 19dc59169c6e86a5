"""Training and evaluation: float training, activation calibration, quantisation-aware fine-tune of a
configuration, accuracy.

Training is a Python loop over one jitted step (on CPU much faster than ``lax.scan`` over convolutions: measured in
docs/results.md, section "Population training"). The training examples stay on the device and each step gathers
and augments its own batch there (`mpqjax.training.feed`), so the loop only dispatches: nothing waits for the device
until the losses are read at the end. Bits and widths are traced arguments of the step, so every
configuration of one model reuses one compilation; compiled steps are cached per model. The optimiser is Adam with
decoupled weight decay on kernels only, with a one-cycle learning-rate schedule.
"""

from __future__ import annotations

import functools
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import traverse_util

from mpqjax.data import Dataset, Split
from mpqjax.nn import quant
from mpqjax.nn.config import check_config
from mpqjax.nn.models import Model, init_variables, layer_table, transfer_variables
from mpqjax.training import feed

__all__ = [
    "CALIBRATION_COLUMNS",
    "TrainState",
    "apply_gradients",
    "as_float32",
    "calibrate",
    "calibrate_with",
    "calibration_function",
    "config_arrays",
    "evaluate",
    "fed_step_function",
    "finetune",
    "finetune_start",
    "forward_function",
    "init_state",
    "logits_in_batches",
    "optimizer",
    "predict",
    "state_variables",
    "step_function",
    "train",
    "train_float",
    "train_step",
    "training_step",
]

CALIBRATION_COLUMNS = {method: column for column, method in enumerate(quant.CALIBRATION_METHODS)}


class TrainState(NamedTuple):
    """Trainable parameters, the other variable collections (batch statistics, calibrated clips), optimiser state."""

    params: Any
    model_state: Any
    opt_state: Any
    step: jax.Array


def _decay_mask(params):
    flat = traverse_util.flatten_dict(params)
    return traverse_util.unflatten_dict({key: key[-1] == "kernel" for key in flat})


@functools.lru_cache(maxsize=1)
def optimizer() -> optax.GradientTransformation:
    """Adam with decoupled weight decay on kernels; learning rate and decay are injected hyperparameters."""
    return optax.inject_hyperparams(optax.adamw, static_args=("mask",))(
        learning_rate=1e-3, weight_decay=1e-4, mask=_decay_mask
    )


def init_state(variables) -> TrainState:
    """A `TrainState` for ``variables`` (a dict with ``params`` and other collections)."""
    # Copies: the jitted step donates its input state, and the caller's arrays must survive.
    variables = jax.tree_util.tree_map(jnp.copy, variables)
    params = variables["params"]
    model_state = {name: value for name, value in variables.items() if name != "params"}
    return TrainState(params, model_state, optimizer().init(params), jnp.zeros((), jnp.int32))


def state_variables(state: TrainState) -> dict:
    """The variables dict of a `TrainState`."""
    return {"params": state.params, **state.model_state}


def as_float32(values):
    """Bits or widths (any shape) as float32, the one dtype the compiled programs take for them.

    A Python int list, an int64 array and a float32 array then reach one compiled program instead of one each (a
    jitted function compiles once per argument dtype). A float32 `jax.Array` is returned as it is (its placement,
    e.g. a population's sharding, is kept), another `jax.Array` is converted where it lies, anything else becomes
    a NumPy float32 array. Bit-widths and width multipliers are exact in float32, so no number changes.

    Example:
        >>> as_float32([8, 4, 2]).dtype
        dtype('float32')
    """
    if isinstance(values, jax.Array):
        return values if values.dtype == jnp.float32 else values.astype(jnp.float32)
    return np.asarray(values, np.float32)


def config_arrays(model: Model, bits, widths, input_shape) -> tuple[jax.Array, jax.Array]:
    """Validated per-layer ``(bits, widths)`` float32 arrays of one configuration.

    Args:
        model: a model (`mpqjax.nn.models.get`, `mpqjax.nn.models.wrap`).
        bits: ``[L]`` bit-widths, a scalar for every layer, or None for float.
        widths: ``[L]`` width multipliers, a scalar for every layer, or None for 1.
        input_shape: one example's shape (traces the layer table).

    Returns:
        ``(bits, widths)``, each ``[L]`` float32.

    Raises:
        ValueError: a length other than the layer table's, or an invalid bit-width or width (naming the layer);
            per-layer widths other than 1 on a layer whose channels the graph fixes.
    """
    table = layer_table(model, input_shape=input_shape)
    length = len(table)
    # None is float: the layers' internal FLOAT_BITS, not a user's bit-width, so only the widths are checked.
    float_model = bits is None
    strict_fixed = widths is not None and np.ndim(widths) > 0
    widths = 1.0 if widths is None else widths
    widths = np.full(length, widths) if np.ndim(widths) == 0 else np.asarray(widths)
    bits, widths = check_config(table, None if float_model else bits, widths, max_width=model.max_width,
                                strict_fixed=strict_fixed)
    bits = np.full(length, quant.FLOAT_BITS) if float_model else bits
    return jnp.asarray(bits, jnp.float32), jnp.asarray(widths, jnp.float32)


def step_function(model: Model):
    """The (unjitted) training step ``(state, x, y, bits, widths, learning_rate, weight_decay) -> (state, loss)``.

    `train_step` jits it for one configuration; `mpqjax.training.population` vmaps it over a population of
    configurations.
    """

    def step(state: TrainState, x, y, bits, widths, learning_rate, weight_decay):
        def loss_fn(params):
            logits, updates = model.apply(
                {"params": params, **state.model_state}, x, bits, widths, train=True, mutable=["batch_stats"],
                rngs={"dropout": jax.random.fold_in(jax.random.key(0), state.step)},  # a model with dropout
            )
            loss = optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()
            return loss, updates

        (loss, updates), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
        return apply_gradients(state, grads, updates, learning_rate, weight_decay), loss

    return step


def apply_gradients(state: TrainState, grads, updates, learning_rate, weight_decay) -> TrainState:
    """``state`` after one optimiser step: the parameters moved by ``grads`` (`optimizer` at ``learning_rate`` and
    ``weight_decay``), the other collections updated by ``updates`` (batch statistics), the step counted."""
    opt_state = state.opt_state
    opt_state.hyperparams["learning_rate"] = jnp.asarray(learning_rate, jnp.float32)
    opt_state.hyperparams["weight_decay"] = jnp.asarray(weight_decay, jnp.float32)
    param_updates, opt_state = optimizer().update(grads, opt_state, state.params)
    params = optax.apply_updates(state.params, param_updates)
    return TrainState(params, {**state.model_state, **updates}, opt_state, state.step + 1)


@functools.lru_cache(maxsize=64)
def train_step(model: Model):
    """The jitted step ``(state, x, y, bits, widths, learning_rate, weight_decay) -> (state, loss)`` of a model.

    ``bits`` and ``widths`` are ``[L]`` float32 arrays (`config_arrays`); another dtype compiles another program.
    """
    return jax.jit(step_function(model), donate_argnums=0)


def fed_step_function(model: Model, augmentation: str | None = None):
    """The (unjitted) step that gathers its own batch: ``(state, feed, bits, widths, weight_decay) -> (state, loss)``,
    ``feed`` a `mpqjax.training.feed.Feed` whose step ``state.step`` it takes.

    The batch is gathered (and augmented as ``augmentation`` says, a structural switch) where the feed's examples
    lie, then `step_function` runs at the feed's learning rate for that step. Every call of a run has the same
    arguments, all on the device: the loop sends nothing to it.
    """
    step_fn = step_function(model)

    def fed_step(state: TrainState, run: feed.Feed, bits, widths, weight_decay):
        x, y, rate = feed.batch(run, state.step, augmentation)
        return step_fn(state, x, y, bits, widths, rate, weight_decay)

    return fed_step


@functools.lru_cache(maxsize=64)
def training_step(model: Model, augmentation: str | None = None):
    """The jitted `fed_step_function` of a model: what `train` runs (the state is donated)."""
    return jax.jit(fed_step_function(model, augmentation), donate_argnums=0)


def forward_function(model: Model):
    """The (unjitted) inference forward pass ``(variables, x, bits, widths) -> logits``."""
    return lambda variables, x, bits, widths: model.apply(variables, x, bits, widths, train=False)


def calibration_function(model: Model, method: str = "mse"):
    """The (unjitted) ``(variables, x, bits, widths) -> {layer: {"input_stats": (clip,)}}``: every layer's clip of
    its input for one batch by ``method`` (a column of `mpqjax.nn.quant.calibration_stats`; `calibrate`).

    Only that statistic is returned, so a compiled program leaves out the others' work (the percentile's sort).
    """
    column = CALIBRATION_COLUMNS[method]

    def clips(variables, x, bits, widths):
        _, collected = model.apply(variables, x, bits, widths, train=False, mutable=["calibration"])
        return jax.tree.map(lambda stats: stats[..., column], collected["calibration"])

    return clips


@functools.lru_cache(maxsize=64)
def _predict(model: Model):
    return jax.jit(forward_function(model))


@functools.lru_cache(maxsize=64)
def _calibration_clips(model: Model, method: str):
    return jax.jit(calibration_function(model, method))


def train(key, model: Model, variables, data: Dataset | Split, *, epochs: int, batch_size: int = 64,
          learning_rate: float = 3e-3, weight_decay: float = 1e-4, bits=None, widths=None):
    """Train ``model`` from ``variables`` at one configuration; returns ``(variables, losses)``.

    Args:
        key: PRNG key for shuffling and augmentation (`mpqjax.training.feed.plan`).
        model: a model (float or quantised).
        variables: initial variables (`mpqjax.nn.models.init_variables`, `transfer_variables` or a previous run).
        data: a `Dataset` (its train split is used, augmented as its ``augmentation`` says) or a `Split` (used as
            it is). Its examples are placed on the device unless they are there already (`Dataset.on_device`).
        epochs: passes over the training examples.
        batch_size: examples per step (the last incomplete batch of an epoch is dropped).
        learning_rate: peak of the one-cycle schedule.
        weight_decay: decoupled decay of kernels.
        bits: per-layer bit-widths (length of the layer table), a scalar for all layers, or None for float.
        widths: per-layer width multipliers for a masked model (None: all 1).

    Returns:
        The trained variables and the per-step training losses (NumPy array).
    """
    split = data.train if isinstance(data, Dataset) else data
    bits_array, widths_array = config_arrays(model, bits, widths, split.x.shape[1:])
    run = feed.plan(key, data, epochs=epochs, batch_size=batch_size, learning_rate=learning_rate)
    step_fn = training_step(model, data.augmentation if isinstance(data, Dataset) else None)
    state = init_state(variables)
    decay = jnp.asarray(weight_decay, jnp.float32)
    losses = []
    for _ in range(run.steps):  # dispatched ahead: nothing here waits for the device or sends anything to it
        state, loss = step_fn(state, run, bits_array, widths_array, decay)
        losses.append(loss)
    return state_variables(state), np.asarray(jnp.stack(losses), np.float32)


def predict(model: Model, variables, x, *, bits=None, widths=None, batch_size: int = 512) -> np.ndarray:
    """Logits for ``x`` in batches of one fixed shape (the last one padded), so one compilation serves all."""
    bits_array, widths_array = config_arrays(model, bits, widths, x.shape[1:])
    return logits_in_batches(_predict(model), variables, x, bits_array, widths_array, batch_size=batch_size)


def logits_in_batches(forward, variables, x, bits, widths, *, batch_size: int = 512,
                      to_host=np.asarray) -> np.ndarray:
    """``forward(variables, batch, bits, widths)`` over ``x`` in batches of one shape (the last one padded).

    ``forward`` may return logits with leading axes before the batch axis (a population's ``[P, B, C]``): the
    result is ``[..., len(x), C]``. ``to_host`` turns one output into a NumPy array. ``x`` may be a NumPy or a
    device array (a split placed with `mpqjax.data.Split.on_device`: its batches are cut there).
    """
    batch_size = min(batch_size, len(x))
    bits, widths = as_float32(bits), as_float32(widths)
    xp = jnp if isinstance(x, jax.Array) else np
    outputs = []
    for start in range(0, len(x), batch_size):  # every batch dispatched before any is read
        chunk = x[start : start + batch_size]
        padded = xp.concatenate([chunk, xp.zeros((batch_size - len(chunk), *chunk.shape[1:]), chunk.dtype)])
        outputs.append((forward(variables, padded, bits, widths), len(chunk)))
    return np.concatenate([to_host(output)[..., :count, :] for output, count in outputs], axis=-2)


def evaluate(model: Model, variables, split: Split, *, bits=None, widths=None, batch_size: int = 512) -> float:
    """Top-1 accuracy of ``model`` on ``split`` at a configuration (batch norm in inference mode)."""
    logits = predict(model, variables, split.x, bits=bits, widths=widths, batch_size=batch_size)
    return float(np.mean(np.argmax(logits, axis=-1) == np.asarray(split.y)))


def calibrate(model: Model, variables, x, *, bits=None, widths=None, method: str = "mse", batch_size: int = 256,
              num_batches: int = 4):
    """Set every layer's activation clip from a few batches of ``x``: the mean over batches of the per-batch max,
    99.99th percentile or MSE-optimal clip (at the layer's bit-width) of its input.

    For learned clipping this is the initial value of the ``act_clip`` parameter.

    Returns:
        Updated variables.
    """
    if method not in CALIBRATION_COLUMNS:
        raise ValueError(f"calibration method must be one of {quant.CALIBRATION_METHODS}, got {method!r}")
    if not model.quantize:
        return variables
    bits_array, widths_array = config_arrays(model, bits, widths, x.shape[1:])
    return calibrate_with(_calibration_clips(model, method), model, variables, x, bits_array, widths_array,
                          batch_size=batch_size, num_batches=num_batches)


def calibrate_with(clips_fn, model: Model, variables, x, bits, widths, *, batch_size: int, num_batches: int,
                   to_device=jnp.asarray):
    """`calibrate` with a given compiled clips function (`calibration_function`, jitted or vmapped).

    The clips of the batches are averaged where they lie (no host round trip). They may carry leading axes (a
    population's ``[P]``); every member then gets its own clips. ``to_device`` places the result (a population
    places its clips with its sharding).
    """
    batch_size = min(batch_size, len(x))
    bits, widths = as_float32(bits), as_float32(widths)
    collected = []
    for start in range(0, min(len(x), batch_size * num_batches) - batch_size + 1, batch_size):
        clips = clips_fn(variables, x[start : start + batch_size], bits, widths)
        collected.append({key[:-1]: value[0] for key, value in traverse_util.flatten_dict(clips).items()})
    flat = traverse_util.flatten_dict(variables)
    collection = "quant" if model.act_clipping == "calibrated" else "params"
    for layer_path in collected[0]:
        total = collected[0][layer_path]
        for batch in collected[1:]:  # in order, as NumPy's mean of a few values adds them
            total = total + batch[layer_path]
        clip = total / np.float32(len(collected))
        flat[(collection, *layer_path, "act_clip")] = to_device(jnp.maximum(clip, 1e-3).astype(jnp.float32))
    return traverse_util.unflatten_dict(flat)


def finetune(key, float_model: Model, float_variables, model: Model, data: Dataset, *, bits, widths=None,
             epochs: int = 4, batch_size: int = 64, learning_rate: float = 1e-3, calibration: str = "mse",
             weight_decay: float = 1e-4, weight_bits=None, ranks=None):
    """Quantisation-aware fine-tune of a configuration starting from a trained width-1 float model.

    Transfers the float weights (`mpqjax.nn.models.transfer_variables`: narrowed layers keep their most important
    channels, widened ones get new channels with zero consumer weights), sets any per-channel weight bit-widths
    (``weight_bits``, `mpqjax.nn.models.Model.with_weight_bits`) and channel ranks (``ranks``: ``{first layer of a
    width group: ranks}``, which channels a narrower width keeps, in place of the float weights' importance),
    calibrates the activation clips, then trains at ``bits`` and ``widths``.

    Returns:
        ``(variables, losses)`` as `train`; the variables carry ``weight_bits``.
    """
    variables, train_key = finetune_start(key, float_model, float_variables, model, data, bits=bits, widths=widths,
                                          calibration=calibration, weight_bits=weight_bits, ranks=ranks)
    return train(train_key, model, variables, data, epochs=epochs, batch_size=batch_size,
                 learning_rate=learning_rate, weight_decay=weight_decay, bits=bits, widths=widths)


def finetune_start(key, float_model: Model, float_variables, model: Model, data: Dataset, *, bits, widths=None,
                   calibration: str = "mse", weight_bits=None, ranks=None):
    """What `finetune` does before training: ``(variables, train_key)``, the transferred, set and calibrated
    variables and the key the training takes (a trial's time outside its training steps)."""
    transfer_key, train_key = jax.random.split(key)
    variables = transfer_variables(transfer_key, model, float_model, float_variables, input_shape=data.input_shape)
    if weight_bits:
        variables = model.with_weight_bits(variables, weight_bits, data.input_shape)
    if ranks:
        variables = model.with_quant_variables(variables, data.input_shape, ranks=ranks)
    return calibrate(model, variables, data.train.x, bits=bits, widths=widths, method=calibration), train_key


def train_float(key, model: Model, data: Dataset, *, epochs: int = 20, batch_size: int = 64,
                learning_rate: float = 3e-3, weight_decay: float = 1e-4):
    """Initialise and train a float model; returns ``(variables, losses)``."""
    init_key, train_key = jax.random.split(key)
    variables = init_variables(init_key, model, data.input_shape)
    return train(train_key, model, variables, data, epochs=epochs, batch_size=batch_size,
                 learning_rate=learning_rate, weight_decay=weight_decay)
