"""Specification of `mpqjax.sensitivity.hessian`: Hessian-vector products and per-layer Hutchinson traces.

(Which leaves make up a layer: tests/sensitivity/test_leaves.py.)

Reference values come from `jax.hessian` on tiny models (the exact diagonal block of each layer's kernel).
"""

import json

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.flatten_util import ravel_pytree
from sklearn.datasets import load_digits

from mpqjax.sensitivity.hessian import (
    PROBINGS,
    LayerTraces,
    default_chunk_size,
    fixed_probe_traces,
    hvp,
    layer_traces,
    probe_step,
)
from mpqjax.sensitivity.leaves import group_leaves, leaf_layers


class TinyMLP(nn.Module):
    @nn.compact
    def __call__(self, x):
        hidden = nn.tanh(nn.Dense(8)(x))
        return nn.Dense(10)(hidden)


class TinyCNN(nn.Module):
    """Two convolutions with batch norm (inference mode in the loss), global pooling, a dense head: 404 weights."""

    @nn.compact
    def __call__(self, x, train=False):
        x = x.reshape(-1, 8, 8, 1)
        x = nn.relu(nn.BatchNorm(use_running_average=not train)(nn.Conv(4, (3, 3), use_bias=False)(x)))
        x = nn.relu(nn.BatchNorm(use_running_average=not train)(nn.Conv(8, (3, 3), strides=2, use_bias=False)(x)))
        return nn.Dense(10)(x.mean(axis=(1, 2)))


def cross_entropy(logits, labels):
    return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()


@pytest.fixture(scope="module")
def digits():
    data = load_digits()
    images = (data.data - data.data.mean(0)) / (data.data.std(0) + 1.0)
    return jnp.asarray(images[:32], jnp.float32), jnp.asarray(data.target[:32])


def exact_kernel_traces(loss_fn, params, batch):
    """Trace of each kernel's diagonal Hessian block: the diagonal of the kernels' full Hessian from `jax.hessian`."""
    names = list(group_leaves(params))
    flat, unravel = ravel_pytree({name: params[name]["kernel"] for name in names})

    def kernels_loss(flat_kernels):
        kernels = unravel(flat_kernels)
        return loss_fn({**params, **{name: {**params[name], "kernel": kernels[name]} for name in names}}, batch)

    diagonal = unravel(jnp.diag(jax.jit(jax.hessian(kernels_loss))(flat)))
    return {name: float(jnp.sum(diagonal[name])) for name in names}


@pytest.fixture(scope="module")
def small():
    """A hand-written two-layer net with few operations: without jit every operation is dispatched on its own."""
    params = {
        "hidden": {"kernel": jax.random.normal(jax.random.key(0), (64, 4)) * 0.2, "bias": jnp.zeros(4)},
        "head": {"kernel": jax.random.normal(jax.random.key(1), (4, 3)) * 0.5},
    }

    def loss_fn(p, images):
        hidden = jnp.tanh(images @ p["hidden"]["kernel"] + p["hidden"]["bias"])
        return jnp.mean(jnp.tanh(hidden @ p["head"]["kernel"]) ** 2)

    return loss_fn, params


@pytest.fixture(scope="module")
def mlp(digits):
    model = TinyMLP()
    params = jax.jit(model.init)(jax.random.key(1), digits[0])["params"]
    loss_fn = lambda p, batch: cross_entropy(model.apply({"params": p}, batch[0]), batch[1])
    return loss_fn, params, exact_kernel_traces(loss_fn, params, digits)


@pytest.fixture(scope="module")
def cnn(digits):
    model = TinyCNN()
    variables = jax.jit(model.init)(jax.random.key(1), digits[0])
    batch_stats = variables["batch_stats"]
    # batch norm in inference mode: batch_stats are closed over, the Hessian is taken w.r.t. params only
    loss_fn = lambda p, batch: cross_entropy(model.apply({"params": p, "batch_stats": batch_stats}, batch[0]), batch[1])
    return loss_fn, variables["params"], exact_kernel_traces(loss_fn, variables["params"], digits)


@pytest.fixture(scope="module")
def cnn_with_state(digits):
    """The tiny CNN's loss with its batch statistics as an argument, ``loss(params, batch, batch_stats)``, defined
    once, and three sets of statistics of the same shapes (the model's, then shifted as after more training)."""
    model = TinyCNN()
    variables = jax.jit(model.init)(jax.random.key(1), digits[0])

    def loss_fn(params, batch, batch_stats):
        return cross_entropy(model.apply({"params": params, "batch_stats": batch_stats}, batch[0]), batch[1])

    shifted = [jax.tree.map(lambda leaf, i=i: leaf + 0.2 * i, variables["batch_stats"]) for i in range(3)]
    return loss_fn, variables["params"], jax.block_until_ready(shifted)


def assert_matches_exact(traces: LayerTraces, exact: dict, rtol: float = 0.05):
    assert traces.names == tuple(exact)
    reference = np.array(list(exact.values()))
    error = np.abs(traces.trace - reference)
    assert np.all(error <= rtol * np.abs(reference)), (traces.trace, reference)
    assert np.all(error <= 3 * traces.std_error), (error, traces.std_error)


# -- Hessian-vector products -------------------------------------------------------------------------------------


def test_hvp_equals_full_hessian_times_vector(small, digits):
    loss_fn, params = small
    flat, unravel = ravel_pytree(params)
    vector = jax.random.normal(jax.random.key(2), flat.shape)
    full = jax.jit(jax.hessian(lambda f: loss_fn(unravel(f), digits[0])))(flat)
    product = ravel_pytree(jax.jit(hvp, static_argnums=0)(loss_fn, params, digits[0], unravel(vector)))[0]
    np.testing.assert_allclose(product, full @ vector, rtol=1e-4, atol=1e-6)


# -- accuracy against exact traces -------------------------------------------------------------------------------


def test_shared_probes_match_exact_traces_of_mlp(mlp, digits):
    loss_fn, params, exact = mlp
    traces = layer_traces(jax.random.key(0), loss_fn, params, digits, max_probes=4096, tol=1e-9, chunk_size=256)
    assert_matches_exact(traces, exact)
    assert not traces.converged and np.all(traces.probes == 4096)


def test_per_layer_probes_match_exact_traces_of_cnn_with_batch_norm(cnn, digits):
    loss_fn, params, exact = cnn
    traces = layer_traces(
        jax.random.key(0), loss_fn, params, digits, max_probes=1024, tol=1e-9, chunk_size=128, probing="per_layer"
    )
    assert_matches_exact(traces, exact)


def test_shared_probes_standard_error_covers_error_on_cnn(cnn, digits):
    # With one probe for all layers the first convolution's estimate carries the cross-layer terms v_l^T H_lm v_m in
    # its variance (about 10x the standard deviation of per-layer probes here): the error is large, but the reported
    # standard error says so.
    loss_fn, params, exact = cnn
    traces = layer_traces(jax.random.key(3), loss_fn, params, digits, max_probes=1024, tol=1e-9, chunk_size=128)
    per_layer = layer_traces(
        jax.random.key(3), loss_fn, params, digits, max_probes=1024, tol=1e-9, chunk_size=128, probing="per_layer"
    )
    reference = np.array(list(exact.values()))
    assert np.all(np.abs(traces.trace - reference) <= 3 * traces.std_error)
    assert traces.std_error[0] > 3 * per_layer.std_error[0]


# -- the estimator's mechanics -----------------------------------------------------------------------------------


def test_jit_and_no_jit_agree(small, digits):
    loss_fn, params = small
    kwargs = dict(max_probes=4, tol=1e-9, chunk_size=4)
    compiled = layer_traces(jax.random.key(5), loss_fn, params, digits[0], **kwargs)
    eager = layer_traces(jax.random.key(5), loss_fn, params, digits[0], jit=False, **kwargs)
    assert compiled.names == ("head", "hidden") and np.all(compiled.trace != 0)
    np.testing.assert_allclose(eager.trace, compiled.trace, rtol=1e-4)
    np.testing.assert_allclose(eager.std_error, compiled.std_error, rtol=1e-3)


def test_same_key_same_result_other_key_other_result(mlp, digits):
    loss_fn, params, _ = mlp
    first = layer_traces(jax.random.key(7), loss_fn, params, digits, max_probes=16, tol=1e-9)
    again = layer_traces(jax.random.key(7), loss_fn, params, digits, max_probes=16, tol=1e-9)
    other = layer_traces(jax.random.key(8), loss_fn, params, digits, max_probes=16, tol=1e-9)
    np.testing.assert_array_equal(first.trace, again.trace)
    assert not np.allclose(first.trace, other.trace)


def test_several_batches_give_the_hessian_of_the_mean_loss(small, digits):
    loss_fn, params = small
    images = digits[0]
    kwargs = dict(max_probes=16, tol=1e-9, chunk_size=8)
    whole = layer_traces(jax.random.key(1), loss_fn, params, images, **kwargs)
    # unequal batch sizes are weighted by their number of examples
    split = layer_traces(jax.random.key(1), loss_fn, params, [images[:24], images[24:]], **kwargs)
    np.testing.assert_allclose(split.trace, whole.trace, rtol=1e-4)
    assert split.batches == 2 and whole.batches == 1


def test_stops_when_every_running_mean_settles(mlp, digits):
    loss_fn, params, _ = mlp
    loose = layer_traces(jax.random.key(0), loss_fn, params, digits, max_probes=400, tol=0.2, chunk_size=8)
    assert loose.converged and 16 <= loose.probes[0] < 400 and loose.probes[0] % 8 == 0
    # the probe budget is exact even when it is not a multiple of the chunk size
    budget = layer_traces(jax.random.key(0), loss_fn, params, digits, max_probes=20, tol=1e-9, chunk_size=8)
    assert not budget.converged and np.all(budget.probes == 20)
    # an extra condition on the standard error holds when the estimation stops early
    precise = layer_traces(
        jax.random.key(0), loss_fn, params, digits, max_probes=2000, tol=0.2, std_error_rtol=0.05, chunk_size=64
    )
    assert precise.converged
    assert np.all(precise.std_error <= 0.05 * np.abs(precise.trace))
    assert precise.probes[0] > loose.probes[0]


def test_one_compilation_serves_every_chunk(small, digits):
    loss_fn, params = small
    traces_of = {}

    def run(max_probes):
        def counting_loss(p, batch):  # a new function each run, so nothing is cached between runs
            traces_of[max_probes] = traces_of.get(max_probes, 0) + 1  # counts only while JAX traces it
            return loss_fn(p, batch)

        layer_traces(jax.random.key(0), counting_loss, params, digits[0], max_probes=max_probes, tol=1e-9, chunk_size=4)

    run(4)
    run(64)
    assert traces_of[64] == traces_of[4]


def test_probe_step_is_the_estimators_inner_step(small, digits):
    loss_fn, params = small
    names, step = probe_step(loss_fn, params, chunk_size=4)
    products = np.asarray(step(params, digits[0], jax.random.fold_in(jax.random.key(9), 0)))  # the first chunk's key
    traces = layer_traces(jax.random.key(9), loss_fn, params, digits[0], max_probes=4, tol=1e-9, chunk_size=4)
    assert products.shape == (4, 2) and names == traces.names
    np.testing.assert_allclose(products.mean(axis=0), traces.trace, rtol=1e-6)


# -- state passed to the loss, and the jittable form ----------------------------------------------------------------


def test_new_state_reuses_the_compiled_step(cnn_with_state, digits, compilations):
    loss_fn, params, stats = cnn_with_state
    kwargs = dict(state=stats[0], max_probes=8, tol=1e-9, chunk_size=4)
    first = layer_traces(jax.random.key(4), loss_fn, params, digits, **kwargs)
    with compilations() as compiled:  # as once per epoch: the same loss, new statistics
        second = layer_traces(jax.random.key(4), loss_fn, params, digits, **{**kwargs, "state": stats[1]})
        third = layer_traces(jax.random.key(4), loss_fn, params, digits, **{**kwargs, "state": stats[2]})
    assert compiled == []
    assert not np.allclose(first.trace, second.trace) and not np.allclose(second.trace, third.trace)
    # the same numbers as a loss closing over the statistics (which compiles a program of its own)
    closed = layer_traces(jax.random.key(4), lambda p, b: loss_fn(p, b, stats[1]), params, digits,
                          max_probes=8, tol=1e-9, chunk_size=4)
    np.testing.assert_allclose(second.trace, closed.trace, rtol=1e-5)
    names, step = probe_step(loss_fn, params, chunk_size=4)
    products = step(params, digits, jax.random.fold_in(jax.random.key(4), 0), stats[1])
    assert names == second.names and products.shape == (4, 3)


@pytest.mark.parametrize("probing", PROBINGS)
def test_fixed_probe_traces_under_jit_equal_layer_traces(cnn_with_state, digits, compilations, probing):
    loss_fn, params, stats = cnn_with_state
    images, labels = digits
    batches = [(images[:20], labels[:20]), (images[20:], labels[20:])]  # unequal sizes: weighted as layer_traces
    kwargs = dict(chunk_size=4, probing=probing)  # 6 probes: the second chunk is cut, as layer_traces cuts it
    estimate = jax.jit(lambda key, p, b, s: fixed_probe_traces(key, loss_fn, p, b, state=s, num_probes=6, **kwargs))
    trace, std_error = estimate(jax.random.key(6), params, batches, stats[0])
    eager = layer_traces(jax.random.key(6), loss_fn, params, batches, state=stats[0], max_probes=6, tol=1e-9,
                         **kwargs)
    assert eager.probes.tolist() == [6, 6, 6] and eager.names == leaf_layers(params, None)[0]
    assert trace.shape == std_error.shape == (3,) and trace.dtype == jnp.float32
    np.testing.assert_allclose(trace, eager.trace, rtol=1e-5)  # layer_traces sums in float64 on the host
    np.testing.assert_allclose(std_error, eager.std_error, rtol=1e-5)
    with compilations() as compiled:  # traced key, parameters and state: new values compile nothing
        again = estimate(jax.random.key(7), params, batches, stats[1])
    assert compiled == [] and not np.allclose(again[0], trace)


def test_fixed_probe_traces_runs_eagerly_with_one_probe_and_checks_its_settings(small, digits):
    loss_fn, params = small
    trace, std_error = fixed_probe_traces(jax.random.key(9), loss_fn, params, digits[0], num_probes=1, chunk_size=1)
    eager = layer_traces(jax.random.key(9), loss_fn, params, digits[0], max_probes=1, chunk_size=1)
    np.testing.assert_allclose(trace, eager.trace, rtol=1e-5)
    assert np.all(np.isnan(std_error))
    with pytest.raises(ValueError, match="num_probes must be an integer >= 1"):
        fixed_probe_traces(jax.random.key(0), loss_fn, params, digits[0], num_probes=0)
    with pytest.raises(ValueError, match="probing"):
        fixed_probe_traces(jax.random.key(0), loss_fn, params, digits[0], num_probes=4, probing="diagonal")


def test_defaults_one_probe_per_step_on_cpu_and_two_probings():
    assert jax.default_backend() != "cpu" or default_chunk_size() == 1
    assert PROBINGS == ("shared", "per_layer")


def test_single_probe_has_no_standard_error(mlp, digits):
    loss_fn, params, _ = mlp
    traces = layer_traces(jax.random.key(0), loss_fn, params, digits, max_probes=1)
    assert np.all(np.isnan(traces.std_error)) and np.all(np.isfinite(traces.trace))
    assert json.loads(json.dumps(traces.to_dict()))["layers"][0]["std_error"] is None


# -- layers --------------------------------------------------------------------------------------------------------


def test_default_layers_are_the_kernels(mlp, digits):
    loss_fn, params, _ = mlp
    traces = layer_traces(jax.random.key(0), loss_fn, params, digits, max_probes=4)
    assert traces.names == tuple(group_leaves(params)) == ("Dense_0", "Dense_1")
    assert traces.weights.tolist() == [64 * 8, 8 * 10]  # kernels only: biases are not probed


def test_layers_by_prefix_or_mapping_count_their_weights(small, digits):
    loss_fn, params = small
    by_prefix = layer_traces(jax.random.key(0), loss_fn, params, digits[0], layers=["head"], max_probes=4)
    assert by_prefix.names == ("head",) and by_prefix.weights.tolist() == [12]
    mapping = {"all": ["hidden/kernel", "hidden/bias", "head/kernel"]}
    whole = layer_traces(jax.random.key(0), loss_fn, params, digits[0], layers=mapping, max_probes=4)
    assert whole.weights.tolist() == [64 * 4 + 4 + 12]


def test_layer_with_zero_weights_is_reported_not_divided_by(small, digits):
    loss_fn, params = small
    layers = {"empty": [], "head": ["head/kernel"]}
    key = jax.random.key(0)
    traces = layer_traces(key, loss_fn, params, digits[0], layers=layers, max_probes=4, probing="per_layer")
    assert traces.names == ("empty", "head")
    assert traces.weights.tolist() == [0, 12]
    assert traces.trace[0] == 0.0 and traces.trace_per_weight[0] == 0.0 and traces.std_error[0] == 0.0
    assert np.all(np.isfinite(traces.trace_per_weight)) and traces.trace[1] != 0
    # a zero-size kernel leaf also gives an empty block
    zero_kernel = {"w": jnp.zeros((0, 3)), "v": jnp.ones(3)}
    traces = layer_traces(
        jax.random.key(0), lambda p, b: jnp.sum(p["v"] ** 2) + jnp.sum(p["w"]), zero_kernel, jnp.ones((1,)),
        layers={"w": ["w"], "v": ["v"]}, max_probes=4,
    )
    np.testing.assert_allclose(traces.trace, [0.0, 6.0])
    assert traces.trace_per_weight.tolist() == [0.0, 2.0]


# -- bad input ------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "change, message",
    [
        (dict(loss_fn=lambda p, b: p["Dense_1"]["kernel"].sum(0)), "scalar"),
        (dict(params="nan"), "NaN"),
        (dict(max_probes=0), "max_probes"),
        (dict(tol=0.0), "tol"),
        (dict(tol=-1e-3), "tol"),
        (dict(batches="empty"), "empty batch"),
        (dict(batches=[]), "empty batch list"),
        (dict(chunk_size=0), "chunk_size"),
        (dict(probing="diagonal"), "probing"),
        (dict(layers={"Dense_0": ["Dense_0/weights"]}), "no parameter leaf"),
        (dict(layers={"a": ["Dense_0/kernel"], "b": ["Dense_0/kernel"]}), "more than one layer"),
        (dict(layers=["Conv_0"]), "matches no parameter leaf"),
    ],
)
def test_bad_input_raises_a_clear_value_error(mlp, digits, change, message):
    loss_fn, params, _ = mlp
    arguments = dict(loss_fn=loss_fn, params=params, batches=digits, max_probes=4)
    arguments.update(change)
    if arguments["params"] == "nan":
        arguments["params"] = jax.tree.map(lambda a: a.at[0].set(jnp.nan), params)
    if arguments["batches"] == "empty":
        arguments["batches"] = (digits[0][:0], digits[1][:0])
    with pytest.raises(ValueError, match=message):
        layer_traces(jax.random.key(0), **arguments)


def test_non_finite_product_raises(digits):
    params = {"w": jnp.zeros(3)}
    with pytest.raises(ValueError, match="NaN or inf"):
        layer_traces(jax.random.key(0), lambda p, b: jnp.sum(jnp.sqrt(p["w"])), params, digits, layers={"w": ["w"]})
