"""Shared fixtures. JAX compilation dominates the suite's time: keep shapes tiny and share compiled objects."""

import os

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=1")
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import tempfile  # noqa: E402

# Trained float models are cached between runs (mpqjax.search.default_cache_dir); tests keep theirs private.
os.environ.setdefault("MPQJAX_CACHE_DIR", tempfile.mkdtemp(prefix="mpqjax-test-cache-"))
# One persistent compilation cache for the session, shared with the subprocesses some tests start (the kill -9
# resume test): identical programs compile once.
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", os.path.join(os.environ["MPQJAX_CACHE_DIR"], "xla"))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.2")


# -- shared models and data (tests/training, ...) -------------------------------------------------------------------

import pytest  # noqa: E402


@pytest.fixture(scope="module", autouse=True)
def release_compiled_programs():
    """Drop every compiled program after each test module: each XLA:CPU executable keeps memory maps, and a whole
    session's programs reach the kernel's limit (vm.max_map_count, 65530), where the next compile crashes. A program
    needed again is loaded from the session's persistent cache."""
    yield
    import jax

    jax.clear_caches()


@pytest.fixture(scope="session")
def digits():
    """The digits dataset (`mpqjax.data.load_digits_splits(0)`): train, validation and test splits."""
    from mpqjax import data

    return data.load_digits_splits(0)


@pytest.fixture(scope="session")
def trained_float_mlp(digits):
    """Factory ``epochs -> (model, variables, losses)``: the float 3-layer MLP (hidden 32, 16; width 1) trained on
    digits for ``epochs`` (key 0, peak learning rate 1e-2); each epoch count is trained once per session."""
    import jax

    from mpqjax.nn import models
    from mpqjax.training import train

    trained = {}

    def make(epochs: int):
        if epochs not in trained:
            model = models.get("mlp", hidden=(32, 16), quantize=False, widths=(1.0, 1.0, 1.0))
            variables, losses = train.train_float(jax.random.key(0), model, digits, epochs=epochs, learning_rate=1e-2)
            trained[epochs] = (model, variables, losses)
        return trained[epochs]

    return make


@pytest.fixture(scope="session")
def masked_mlp():
    """The masked quantised 3-layer MLP (hidden 32, 16; widths up to 1.25): every configuration shares its steps."""
    from mpqjax.nn import models

    return models.get("mlp", hidden=(32, 16), max_width=1.25)


# -- hand-written layer tables (tests/cost, tests/nn) ----------------------------------------------------------------


@pytest.fixture(scope="session")
def two_layer_table():
    """A 3x3 conv 3->8 on a 4x4 output with batch-norm, then a dense head 8->10 with a bias (not scalable)."""
    from mpqjax.nn.table import LayerSpec, LayerTable

    return LayerTable(
        (
            LayerSpec("conv", "conv", 3, 8, kernel=(3, 3), out_hw=(4, 4), width_group=0, batch_norm=True),
            LayerSpec("head", "dense", 8, 10, input_layer=0, width_group=1, scalable=False, use_bias=True),
        ),
        model="two_layer",
    )


@pytest.fixture(scope="session")
def branchy_table():
    """Residual and depthwise wiring: stem -> depthwise (tied to the stem) -> pointwise -> conv, with a residual add
    of the pointwise and the last conv (one width group), and a dense head (not scalable) reading the residual stream.
    """
    from mpqjax.nn.table import LayerSpec, LayerTable

    return LayerTable(
        (
            LayerSpec("stem", "conv", 3, 8, kernel=(3, 3), stride=(2, 2), out_hw=(8, 8), width_group=0,
                      batch_norm=True),
            LayerSpec("dw", "depthwise", 8, 8, kernel=(3, 3), out_hw=(8, 8), input_layer=0, width_group=0),
            LayerSpec("pw", "conv", 8, 16, out_hw=(8, 8), input_layer=1, width_group=2, batch_norm=True),
            LayerSpec("conv", "conv", 16, 16, kernel=(3, 3), out_hw=(8, 8), input_layer=2, width_group=2),
            LayerSpec("head", "dense", 16, 10, input_layer=3, width_group=4, scalable=False, use_bias=True),
        ),
        model="branchy",
    )


# -- counting XLA compilations (tests/optim, tests/integrations) -----------------------------------------------------


@pytest.fixture(scope="session")
def compilations():
    """Context manager factory: ``with compilations() as compiled:`` collects the names of the XLA programs compiled
    inside the block, from `jax.monitoring`'s backend-compile event (persistent-cache hits record it too, so the
    count does not depend on the cache). Create the block's inputs before it: eager ops compile small programs."""
    import contextlib

    import jax

    @contextlib.contextmanager
    def compiled_programs():
        compiled = []

        def listener(event, duration, **kwargs):
            if event == "/jax/core/compile/backend_compile_duration":
                compiled.append(kwargs.get("fun_name"))

        jax.monitoring.register_event_duration_secs_listener(listener)
        try:
            yield compiled
        finally:
            jax.monitoring.unregister_event_duration_listener(listener)

    return compiled_programs


# -- a trained model's folder (tests/export, tests/cli) ------------------------------------------------------------


@pytest.fixture(scope="session")
def trained_digits_folder(tmp_path_factory):
    """``mpqjax train``'s folder of ``digits_cnn`` at bits 6, 4, 2, 3 and widths 0.875, 0.75, 0.875, 1 (one epoch
    of float and one of quantised training): a finished model to export."""
    from mpqjax import cli

    out = tmp_path_factory.mktemp("trained") / "digits"
    code = cli.main(["train", "--model", "digits_cnn", "--bits", "6,4,2,3", "--widths", "0.875,0.75,0.875,1",
                     "--float-epochs", "1", "--batch-size", "128", "--epochs", "1", "--out", str(out)])
    assert code == 0
    return out
