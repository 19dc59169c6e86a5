"""Per-layer Hessian traces by Hutchinson's estimator, with Hessian-vector products by forward-over-reverse.

The sensitivity of a layer is the trace of the diagonal block of the loss Hessian that belongs to the layer's weights
(Section III.A of the paper). The Hessian is never formed: a Hessian-vector product is the forward-mode derivative
(`jax.jvp`) of the reverse-mode gradient (`jax.grad`), at a small constant times the cost of one gradient.

One Rademacher probe ``v`` over the weights of all layers and one product ``H v`` give an unbiased estimate of every
layer's trace at once, ``v_l . (H v)_l``: the cross terms ``v_l^T H_lm v_m`` vanish in expectation because the
blocks of ``v`` are independent. Parameters that belong to no layer (biases, batch-norm scales by default) get a zero
probe, which keeps the estimate unbiased and removes their share of the variance.

Sharing has a price: the variance of layer l's estimate includes the cross terms with every other layer. For a layer
whose own block is small next to its coupling with the others (typically a first convolution) that can take many
times the probes for the same standard error (measured in docs/results.md, section "Hessian traces").
``probing="per_layer"`` confines each probe to one layer, one HVP per layer per probe, without those terms. Every
estimate comes with its standard error, so the caller can see which case it is in. A layer is a group of parameter
leaves (`mpqjax.sensitivity.leaves`).

Values the loss needs but that are not differentiated (a Flax model's batch statistics) are passed as ``state``:
``loss_fn(params, batch, state)``. The compiled step is cached per loss function, so a loss defined once and called
with new ``state`` (e.g. once per epoch) reuses it, where a loss that closes over the statistics is a new function
each time and compiles again. `fixed_probe_traces` is the estimator as a pure function of arrays (a fixed number of
probes, no stopping rule), for use under `jax.jit`.

Example:
    >>> traces = layer_traces(jax.random.key(0), loss_fn, params, [batch_a, batch_b])
    >>> dict(zip(traces.names, traces.trace_per_weight))
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from mpqjax.sensitivity.leaves import leaf_layers, leaf_paths

__all__ = ["PROBINGS", "LayerTraces", "default_chunk_size", "fixed_probe_traces", "hvp", "layer_traces",
           "probe_step"]

PyTree = Any
# ``loss_fn(params, batch) -> scalar``, or ``loss_fn(params, batch, state) -> scalar`` when a ``state`` is given.
LossFn = Callable[..., jax.Array]


def _with_state(loss_fn: LossFn, state: Any) -> Callable[[PyTree, Any], jax.Array]:
    """``(params, batch) -> loss``: ``loss_fn`` itself without a state, else with ``state`` as its third argument."""
    if state is None:
        return loss_fn
    return lambda params, batch: loss_fn(params, batch, state)


def hvp(loss_fn: LossFn, params: PyTree, batch: Any, vector: PyTree) -> PyTree:
    """Hessian-vector product ``H(params) @ vector`` of ``loss_fn(params, batch)``, without forming the Hessian.

    Forward-over-reverse: the `jax.jvp` of `jax.grad`, whose cost is a small constant times one gradient.

    Args:
        loss_fn: ``loss_fn(params, batch) -> scalar``.
        params: the point at which the Hessian is taken (any PyTree of float arrays).
        batch: the data passed to ``loss_fn``.
        vector: a PyTree with the structure, shapes and dtypes of ``params``.

    Returns:
        ``H @ vector`` with the structure of ``params``.

    Example:
        >>> hvp(lambda p, b: jnp.sum(p["w"] ** 2), {"w": jnp.ones(3)}, None, {"w": jnp.ones(3)})
        {'w': Array([2., 2., 2.], dtype=float32)}
    """
    gradient = lambda p: jax.grad(loss_fn)(p, batch)
    return jax.jvp(gradient, (params,), (vector,))[1]


@dataclasses.dataclass(frozen=True)
class LayerTraces:
    """Estimated Hessian traces of each layer's diagonal block.

    Attributes:
        names: layer names, in order.
        trace: estimated trace per layer (float64).
        std_error: standard error of each estimate (sample std over probes / sqrt(probes); NaN with one probe).
        weights: number of weights (probed parameter entries) per layer.
        probes: probes averaged per layer (the same for all layers: one probe serves every layer).
        batches: number of data batches the Hessian was averaged over.
        converged: whether the tolerance was met before the probe budget ran out.
    """

    names: tuple[str, ...]
    trace: np.ndarray
    std_error: np.ndarray
    weights: np.ndarray
    probes: np.ndarray
    batches: int
    converged: bool

    @property
    def trace_per_weight(self) -> np.ndarray:
        """Trace divided by the layer's weight count; 0 for a layer with no weights (its block is empty)."""
        safe = np.maximum(self.weights, 1)
        return np.where(self.weights > 0, self.trace / safe, 0.0)

    @property
    def relative_std_error(self) -> np.ndarray:
        """Standard error relative to |trace| (inf where the trace is 0 and the error is not)."""
        with np.errstate(divide="ignore", invalid="ignore"):
            ratio = self.std_error / np.abs(self.trace)
        return np.where(self.std_error == 0, 0.0, ratio)

    def to_dict(self) -> dict:
        """JSON-ready summary: one row per layer plus the run's totals (non-finite numbers become None)."""
        finite = lambda x: float(x) if math.isfinite(x) else None
        rows = [
            {
                "name": name,
                "trace": finite(self.trace[i]),
                "trace_per_weight": finite(self.trace_per_weight[i]),
                "std_error": finite(self.std_error[i]),
                "weights": int(self.weights[i]),
                "probes": int(self.probes[i]),
            }
            for i, name in enumerate(self.names)
        ]
        return {"layers": rows, "batches": self.batches, "converged": self.converged}


def _batch_size(batch: Any) -> int:
    leaves = jax.tree_util.tree_leaves(batch)
    if not leaves:
        raise ValueError("empty batch: it holds no arrays")
    sizes = [np.shape(leaf)[0] for leaf in leaves if np.ndim(leaf) >= 1]
    if any(size == 0 for size in sizes):
        raise ValueError("empty batch: an array in the batch has zero examples")
    return sizes[0] if sizes else 1


def _check_params(params: PyTree) -> None:
    leaves = jax.tree_util.tree_leaves(params)
    if not leaves:
        raise ValueError("params hold no arrays")
    for path, leaf in zip(leaf_paths(params), leaves, strict=True):
        if not jnp.issubdtype(jnp.result_type(leaf), jnp.inexact):
            raise ValueError(f"parameter {path!r} is not a float array (dtype {jnp.result_type(leaf)})")
        if not bool(jnp.all(jnp.isfinite(leaf))):
            raise ValueError(f"parameter {path!r} contains NaN or inf")


def _check_loss(loss_fn: LossFn, params: PyTree, batch: Any, state: Any = None) -> None:
    out = jax.eval_shape(_with_state(loss_fn, state), params, batch)
    shape = getattr(out, "shape", None)
    if shape != () or not jnp.issubdtype(out.dtype, jnp.floating):
        described = f"shape {shape} dtype {getattr(out, 'dtype', None)}" if shape is not None else type(out).__name__
        raise ValueError(f"loss must return a float scalar, got {described}")


@functools.lru_cache(maxsize=16)
def _chunk_estimator(loss_fn: LossFn, leaf_layer: tuple[int, ...], num_layers: int, chunk_size: int, jit: bool):
    """``f(params, batch, key, leaf_mask, state) -> [chunk_size, num_layers]`` estimates ``v_l . (H v)_l`` per probe.

    ``leaf_mask[i]`` (0 or 1) says whether leaf ``i`` is probed; leaves in no layer are never probed. ``state`` is
    passed to the loss as its third argument (None: a two-argument loss). Cached, so that repeated calls with the same
    loss function and layers (e.g. one per checkpoint, or one per epoch with new ``state``) compile once.
    """

    def one_probe(params, batch, state, vector):
        product = hvp(_with_state(loss_fn, state), params, batch, vector)
        pairs = zip(jax.tree_util.tree_leaves(vector), jax.tree_util.tree_leaves(product), strict=True)
        dots = [jnp.vdot(v, hv) for v, hv in pairs]
        per_layer = [jnp.zeros((), jnp.float32)] * num_layers
        for dot, layer in zip(dots, leaf_layer, strict=True):
            if layer >= 0:
                per_layer[layer] = per_layer[layer] + dot.astype(jnp.float32)
        return jnp.stack(per_layer)

    def chunk(params, batch, key, leaf_mask, state):
        # One draw for the whole chunk: per-leaf draws under vmap made compilation take seconds.
        leaves, treedef = jax.tree_util.tree_flatten(params)
        sizes = [leaf.size if layer >= 0 else 0 for leaf, layer in zip(leaves, leaf_layer, strict=True)]
        signs = jax.random.rademacher(key, (chunk_size, max(sum(sizes), 1)), dtype=jnp.float32)
        offsets = np.cumsum([0] + sizes)
        probe_leaves = [
            (signs[:, offsets[i] : offsets[i + 1]] * leaf_mask[i]).reshape((chunk_size, *leaf.shape)).astype(leaf.dtype)
            if leaf_layer[i] >= 0
            else jnp.zeros((chunk_size, *leaf.shape), leaf.dtype)
            for i, leaf in enumerate(leaves)
        ]
        vectors = jax.tree_util.tree_unflatten(treedef, probe_leaves)
        # vmap over probes with params un-batched: XLA computes the primal forward/backward once per chunk.
        return jax.vmap(one_probe, in_axes=(None, None, None, 0))(params, batch, state, vectors)

    return jax.jit(chunk) if jit else chunk


PROBINGS = ("shared", "per_layer")


def default_chunk_size() -> int:
    """Probes per vmapped step when none is given: 1 on CPU, 8 on accelerators.

    XLA's CPU convolutions with a batch of kernel tangents take a slow path, so a chunk of probes costs nearly its
    size in single probes there; accelerators gain from the batching (measured in docs/results.md, section "Hessian
    traces").
    """
    return 1 if jax.default_backend() == "cpu" else 8


def probe_step(
    loss_fn: LossFn,
    params: PyTree,
    *,
    layers: Mapping[str, Sequence[str]] | Sequence[str] | None = None,
    chunk_size: int | None = None,
    jit: bool = True,
) -> tuple[tuple[str, ...], Callable]:
    """The inner step of `layer_traces`: ``chunk_size`` shared probes, one HVP each, per-layer estimates.

    For custom loops and benchmarks; `layer_traces` adds validation, stopping, batches and standard errors.

    Args:
        loss_fn: ``loss_fn(params, batch) -> scalar``, or ``loss_fn(params, batch, state)`` for steps called with a
            ``state``.
        params: parameters of the structure the step will be called with.
        layers: as in `layer_traces`.
        chunk_size: probes per call (vmapped); default `default_chunk_size()`.
        jit: return the compiled step.

    Returns:
        ``(names, step)`` with ``step(params, batch, key, state=None) -> [chunk_size, len(names)]`` estimates
        ``v_l . (H v)_l`` (their mean over probes estimates each layer's trace).
    """
    names, leaf_layer = leaf_layers(params, layers)
    chunk_size = default_chunk_size() if chunk_size is None else chunk_size
    chunk = _chunk_estimator(loss_fn, tuple(leaf_layer), len(names), int(chunk_size), bool(jit))
    mask = jnp.asarray(np.asarray(leaf_layer) >= 0, jnp.float32)
    return names, lambda params, batch, key, state=None: chunk(params, batch, key, mask, state)


def _batch_list(batches) -> tuple[list, np.ndarray]:
    """The batches as a list (one batch or a list of them) and their weights, proportional to their sizes."""
    batch_list = list(batches) if isinstance(batches, list) else [batches]
    if not batch_list:
        raise ValueError("empty batch list: give at least one batch")
    sizes = np.array([_batch_size(batch) for batch in batch_list], dtype=np.float64)
    return batch_list, sizes / sizes.sum()


def _layer_weights(params, layers) -> tuple[tuple[str, ...], list[int], np.ndarray]:
    """``(layer names, the layer of each parameter leaf (-1: none), weights per layer)``."""
    names, leaf_layer = leaf_layers(params, layers)
    weights = np.zeros(len(names), dtype=np.int64)
    for leaf, layer in zip(jax.tree_util.tree_leaves(params), leaf_layer, strict=True):
        if layer >= 0:
            weights[layer] += int(np.size(leaf))
    return names, leaf_layer, weights


def layer_traces(
    key: jax.Array,
    loss_fn: LossFn,
    params: PyTree,
    batches: Any,
    *,
    state: Any = None,
    layers: Mapping[str, Sequence[str]] | Sequence[str] | None = None,
    max_probes: int = 256,
    tol: float = 1e-2,
    std_error_rtol: float | None = None,
    chunk_size: int | None = None,
    probing: str = "shared",
    jit: bool = True,
) -> LayerTraces:
    """Hutchinson estimates of the Hessian trace of every layer's diagonal block, from Rademacher probes.

    Probes are drawn ``chunk_size`` at a time (vmapped; ``chunk_size`` fixes a shape, so it is static). After every
    chunk past the first, the running mean of every layer is compared with the previous one; the estimation stops when
    each changed by at most ``tol`` relative to its magnitude (and, if ``std_error_rtol`` is given, each standard error
    is at most that fraction of the trace), or when ``max_probes`` probes have been used. With several batches, each
    probe's product is the batch-size-weighted mean of the per-batch products, i.e. the Hessian of the mean loss.

    The loss is the caller's: for a Flax model with batch norm, apply the model in inference mode (``train=False``)
    and pass its ``batch_stats`` as ``state`` to a loss ``loss_fn(params, batch, state)`` defined once, so the Hessian
    is taken with respect to ``params`` only and calls with new statistics (e.g. once per epoch) reuse the compiled
    step. A loss that closes over the statistics instead is a new function per call: each call compiles again.

    Args:
        key: PRNG key for the probes.
        loss_fn: ``loss_fn(params, batch) -> scalar``, or ``loss_fn(params, batch, state) -> scalar`` when ``state``
            is given. The compiled step is cached per loss function: pass the same one to repeated calls.
        params: parameters at which the Hessian is taken.
        batches: one batch, or a Python ``list`` of batches (a tuple is one batch, e.g. ``(images, labels)``);
            each distinct batch shape compiles the step once.
        state: values the loss needs that are not differentiated (any PyTree of arrays, e.g. batch statistics),
            passed to ``loss_fn`` as its third argument and traced: new values of the same shapes compile nothing.
            None (the default) calls ``loss_fn(params, batch)``.
        layers: ``None`` (one layer per ``kernel`` leaf, see `mpqjax.sensitivity.leaves.group_leaves`), a sequence
            of layer-name prefixes, or a mapping from layer name to the paths of its leaves (an empty sequence gives a
            layer with no weights, reported with trace 0).
        max_probes: probe budget (>= 1).
        tol: relative change of every layer's running mean at which to stop (> 0).
        std_error_rtol: optional extra stopping condition on every layer's relative standard error (> 0).
        chunk_size: probes per vmapped step (default `default_chunk_size()`: 1 on CPU, 8 on accelerators); on an
            accelerator larger is faster per probe but needs ``chunk_size`` times the memory of one HVP.
        probing: ``"shared"`` (the paper's estimator: one probe over all layers, one HVP per probe gives every
            layer's estimate) or ``"per_layer"`` (a probe confined to one layer at a time: one HVP per layer per probe,
            but without the cross-layer terms ``v_l^T H_lm v_m`` in the variance, which dominate for layers whose
            trace is small next to their coupling with other layers, e.g. a first convolution).
        jit: compile the chunk step (False runs op by op; for debugging and for checking the compiled path).

    Returns:
        `LayerTraces` with the trace, trace per weight, standard error and probes used of each layer.

    Raises:
        ValueError: non-scalar loss, non-finite or non-float parameters, ``max_probes < 1``, ``tol <= 0``,
            ``chunk_size < 1``, an empty batch or batch list, a layer naming an unknown leaf, or a non-finite product.

    Example:
        >>> def loss(p, b, stats):
        ...     logits = model.apply({"params": p, "batch_stats": stats}, b[0], train=False)
        ...     return optax.softmax_cross_entropy_with_integer_labels(logits, b[1]).mean()
        >>> traces = layer_traces(jax.random.key(0), loss, params, (images, labels), state=stats, max_probes=64)
    """
    chunk_size = _check_settings(max_probes, tol, std_error_rtol, chunk_size, probing)
    batch_list, batch_weights = _batch_list(batches)
    _check_params(params)
    for batch in batch_list:
        _check_loss(loss_fn, params, batch, state)
    names, leaf_layer, weights = _layer_weights(params, layers)
    num_layers = len(names)
    chunk_step = _chunk_estimator(loss_fn, tuple(leaf_layer), num_layers, int(chunk_size), bool(jit))
    passes = _passes(np.asarray(leaf_layer), weights, probing)

    def estimate_chunk(batch, chunk_key):
        chunk = np.zeros((chunk_size, num_layers))
        for mask, layer_indices in passes:
            products = np.asarray(chunk_step(params, batch, chunk_key, mask, state), np.float64)
            chunk[:, layer_indices] = products[:, layer_indices]
        return chunk

    def draw(chunk_key):  # the Hessian of the mean loss: products weighted by the batches' sizes
        return sum(
            weight * estimate_chunk(batch, chunk_key) for weight, batch in zip(batch_weights, batch_list, strict=True)
        )

    all_estimates, converged = _until_stable(key, draw, max_probes=max_probes, tol=tol, std_error_rtol=std_error_rtol)
    used = len(all_estimates)
    trace = all_estimates.mean(axis=0)
    if used > 1:
        std_error = all_estimates.std(axis=0, ddof=1) / math.sqrt(used)
    else:
        std_error = np.full(num_layers, np.nan)
    return LayerTraces(
        names=names,
        trace=trace,
        std_error=std_error,
        weights=weights,
        probes=np.full(num_layers, used, dtype=np.int64),
        batches=len(batch_list),
        converged=converged,
    )


def fixed_probe_traces(
    key: jax.Array,
    loss_fn: LossFn,
    params: PyTree,
    batches: Any,
    *,
    num_probes: int,
    state: Any = None,
    layers: Mapping[str, Sequence[str]] | Sequence[str] | None = None,
    chunk_size: int | None = None,
    probing: str = "shared",
) -> tuple[jax.Array, jax.Array]:
    """The jittable form of `layer_traces`: exactly ``num_probes`` probes, no stopping rule, arrays in and out.

    The same probes as `layer_traces` with the same key, ``chunk_size`` and ``probing`` (chunk ``i`` draws from
    ``jax.random.fold_in(key, i)``, the last chunk is cut to the budget), so the result equals the trace and standard
    error of ``layer_traces(key, ..., max_probes=num_probes)`` whenever that one spends its whole budget (e.g. a tiny
    ``tol``), up to float32 rounding (`layer_traces` sums on the host in float64). Nothing depends on traced values
    in Python: ``key``, ``params``, ``batches`` and ``state`` may be traced, so it runs under `jax.jit` and
    `jax.vmap`; ``loss_fn``, ``num_probes``, ``layers``, ``chunk_size``, ``probing`` and the batch shapes fix the
    program (static). The chunks run in a `jax.lax.map`, so the program's size does not grow with ``num_probes``.

    It checks the settings only: a non-finite product gives NaN instead of `layer_traces`' error.

    Args:
        key: PRNG key for the probes.
        loss_fn: as in `layer_traces`.
        params: parameters at which the Hessian is taken.
        batches: one batch, or a Python ``list`` of batches (the Hessian of their size-weighted mean loss).
        num_probes: probes per layer (>= 1).
        state: as in `layer_traces`: the loss's third argument, not differentiated; None for a two-argument loss.
        layers, chunk_size, probing: as in `layer_traces`.

    Returns:
        ``(trace, std_error)``, float32 arrays ``[L]`` in the order of `mpqjax.sensitivity.leaves.leaf_layers`'s
        names (those of `layer_traces`); ``std_error`` is NaN when ``num_probes`` is 1.

    Raises:
        ValueError: ``num_probes < 1``, ``chunk_size < 1``, an unknown probing, an empty batch list, or a layer
            naming an unknown leaf.

    Example:
        >>> estimate = jax.jit(lambda key, p, b, stats: fixed_probe_traces(key, loss, p, b, state=stats,
        ...                                                                num_probes=64))
        >>> trace, std_error = estimate(jax.random.key(0), params, (images, labels), stats)
    """
    chunk_size = _check_settings(num_probes, 1.0, None, chunk_size, probing, probes_name="num_probes")
    batch_list, batch_weights = _batch_list(batches)
    names, leaf_layer, weights = _layer_weights(params, layers)
    num_layers = len(names)
    # Unjitted: it is traced into the caller's program (or the lax.map below) rather than called as a nested jit.
    chunk_step = _chunk_estimator(loss_fn, tuple(leaf_layer), num_layers, int(chunk_size), False)
    passes = _passes(np.asarray(leaf_layer), weights, probing)

    def draw(chunk_index):  # as layer_traces' draw: the batches' products weighted by their sizes
        chunk_key = jax.random.fold_in(key, chunk_index)
        total = jnp.zeros((chunk_size, num_layers), jnp.float32)
        for weight, batch in zip(batch_weights, batch_list, strict=True):
            chunk = jnp.zeros((chunk_size, num_layers), jnp.float32)
            for mask, layer_indices in passes:
                products = chunk_step(params, batch, chunk_key, mask, state)
                chunk = chunk.at[:, layer_indices].set(products[:, layer_indices])
            total = total + np.float32(weight) * chunk
        return total

    num_chunks = -(-num_probes // chunk_size)
    estimates = jax.lax.map(draw, jnp.arange(num_chunks, dtype=jnp.uint32))
    estimates = estimates.reshape(num_chunks * chunk_size, num_layers)[:num_probes]
    trace = estimates.mean(axis=0)
    if num_probes > 1:
        std_error = estimates.std(axis=0, ddof=1) / np.float32(math.sqrt(num_probes))
    else:
        std_error = jnp.full(num_layers, jnp.nan, jnp.float32)
    return trace, std_error


def _check_settings(max_probes, tol, std_error_rtol, chunk_size, probing, *, probes_name: str = "max_probes") -> int:
    """Raise ValueError for a bad setting of `layer_traces`; returns the chunk size (default filled in)."""
    if not isinstance(max_probes, int | np.integer) or max_probes < 1:
        raise ValueError(f"{probes_name} must be an integer >= 1, got {max_probes!r}")
    if not (isinstance(tol, int | float | np.floating) and tol > 0):
        raise ValueError(f"tol must be a number > 0, got {tol!r}")
    if std_error_rtol is not None and not std_error_rtol > 0:
        raise ValueError(f"std_error_rtol must be > 0 or None, got {std_error_rtol!r}")
    chunk_size = default_chunk_size() if chunk_size is None else chunk_size
    if not isinstance(chunk_size, int | np.integer) or chunk_size < 1:
        raise ValueError(f"chunk_size must be an integer >= 1, got {chunk_size!r}")
    if probing not in PROBINGS:
        raise ValueError(f"probing must be one of {PROBINGS}, got {probing!r}")
    return chunk_size


def _passes(leaf_layer: np.ndarray, weights: np.ndarray, probing: str) -> list[tuple[jax.Array, np.ndarray]]:
    """One vmapped chunk of products per pass: (mask of the probed leaves, the layers whose estimates it gives)."""
    if probing == "shared":
        return [(jnp.asarray(leaf_layer >= 0, jnp.float32), np.arange(len(weights)))]
    return [
        (jnp.asarray(leaf_layer == layer, jnp.float32), np.array([layer]))
        for layer in range(len(weights))
        if weights[layer] > 0
    ]


def _until_stable(key, draw: Callable[[jax.Array], np.ndarray], *, max_probes: int, tol: float,
                  std_error_rtol: float | None) -> tuple[np.ndarray, bool]:
    """Chunks ``draw(fold_in(key, i))`` of per-probe estimates ``[chunk, L]`` until every running mean settles.

    Returns:
        ``(estimates, converged)``: every estimate used ``[probes, L]`` (exactly ``max_probes`` when the budget ran
        out), and whether the stopping condition was met first.
    """
    estimates: list[np.ndarray] = []
    used = 0
    previous_mean = None
    chunk_index = 0
    while used < max_probes:
        chunk = draw(jax.random.fold_in(key, chunk_index))[: max_probes - used]
        chunk_index += 1
        if not np.all(np.isfinite(chunk)):
            raise ValueError("a Hessian-vector product is NaN or inf: check the loss at these parameters")
        estimates.append(chunk)
        used += len(chunk)
        all_estimates = np.concatenate(estimates)
        mean = all_estimates.mean(axis=0)
        if previous_mean is not None:
            stable = np.all(np.abs(mean - previous_mean) <= tol * np.abs(mean))
            if stable and std_error_rtol is not None:
                std_error = all_estimates.std(axis=0, ddof=1) / math.sqrt(used)
                stable = bool(np.all(std_error <= std_error_rtol * np.abs(mean)))
            if stable:
                return all_estimates, True
        previous_mean = mean
    return np.concatenate(estimates), False
