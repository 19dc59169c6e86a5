"""Models written as a user writes them: plain flax.linen and flax.nnx, no mpqjax layer (tests of
`mpqjax.nn.models.model`, `mpqjax.nn.graph` and `mpqjax.nn.intercept`).

Every model is tiny (8x8 images, 4-16 channels). The factories at the end are what ``"user_models:make_cnn"`` names
once this directory is on ``sys.path``; `random_variables` stands in for a trained model's variables.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx


class ResidualBlock(nn.Module):
    """Two 3x3 convolutions with batch norm whose output is added to the block's input."""

    @nn.compact
    def __call__(self, x, train: bool = False):
        y = nn.Conv(x.shape[-1], (3, 3))(x)
        y = nn.relu(nn.BatchNorm(use_running_average=not train)(y))
        y = nn.Conv(x.shape[-1], (3, 3))(y)
        y = nn.BatchNorm(use_running_average=not train)(y)
        return x + y


class ResidualCNN(nn.Module):
    """Stem conv + batch norm, a residual block, a strided conv, global mean, a dense head (default Flax names)."""

    features: int = 8
    num_classes: int = 10

    @nn.compact
    def __call__(self, x, train: bool = False):
        x = nn.Conv(self.features, (3, 3))(x)
        x = nn.relu(nn.BatchNorm(use_running_average=not train)(x))
        x = nn.relu(ResidualBlock()(x, train))
        x = nn.relu(nn.Conv(2 * self.features, (3, 3), strides=2)(x))
        x = x.mean(axis=(1, 2))
        return nn.Dense(self.num_classes)(x)


class NnxCNN(nnx.Module):
    """The NNX way: layers held as attributes, batch norm switched by ``model.train()`` / ``model.eval()``."""

    def __init__(self, *, features: int = 8, num_classes: int = 10, in_channels: int = 1, seed: int = 0):
        rngs = nnx.Rngs(seed)
        self.stem = nnx.Conv(in_channels, features, (3, 3), rngs=rngs)
        self.stem_norm = nnx.BatchNorm(features, rngs=rngs)
        self.conv = nnx.Conv(features, 2 * features, (3, 3), strides=2, rngs=rngs)
        self.conv_norm = nnx.BatchNorm(2 * features, rngs=rngs)
        self.head = nnx.Linear(2 * features, num_classes, rngs=rngs)

    def __call__(self, x):
        x = nnx.relu(self.stem_norm(self.stem(x)))
        x = nnx.relu(self.conv_norm(self.conv(x)))
        return self.head(x.mean(axis=(1, 2)))


class SeparableCNN(nn.Module):
    """A conv, a depthwise conv (``feature_group_count`` = channels), a 1x1 conv, a grouped conv (2 groups), a head."""

    @nn.compact
    def __call__(self, x):
        x = nn.relu(nn.Conv(8, (3, 3))(x))
        x = nn.relu(nn.Conv(8, (3, 3), feature_group_count=8)(x))
        x = nn.relu(nn.Conv(16, (1, 1))(x))
        x = nn.relu(nn.Conv(16, (3, 3), feature_group_count=2)(x))
        return nn.Dense(10)(x.mean(axis=(1, 2)))


class MixerBlock(nn.Module):
    """MLP-Mixer block on ``(batch, tokens, channels)``: token mixing over the transposed axis, then channel mixing."""

    token_hidden: int = 6
    channel_hidden: int = 12

    @nn.compact
    def __call__(self, x):
        tokens, channels = x.shape[1], x.shape[2]
        y = jnp.swapaxes(nn.LayerNorm()(x), 1, 2)  # (batch, channels, tokens)
        y = nn.gelu(nn.Dense(self.token_hidden)(y))
        y = nn.Dense(tokens)(y)
        x = x + jnp.swapaxes(y, 1, 2)
        y = nn.gelu(nn.Dense(self.channel_hidden)(nn.LayerNorm()(x)))
        y = nn.Dense(channels)(y)
        return x + y


class AttentionBlock(nn.Module):
    """Single-head self-attention: scores are a contraction of two activations (``einsum`` of queries and keys)."""

    head_size: int = 4

    @nn.compact
    def __call__(self, x):
        q = nn.Dense(self.head_size, name="query")(x)
        k = nn.Dense(self.head_size, name="key")(x)
        v = nn.Dense(x.shape[-1], name="value")(x)
        scores = jnp.einsum("btd,bsd->bts", q, k) / jnp.sqrt(float(self.head_size))
        return x + jnp.einsum("bts,bsc->btc", nn.softmax(scores, axis=-1), v)


class Mixer(nn.Module):
    """Embeds ``(batch, 8 tokens, 4 features)`` to 8 channels, a mixer block, an attention block, mean, a head."""

    channels: int = 8
    num_classes: int = 10

    @nn.compact
    def __call__(self, x):
        x = nn.Dense(self.channels, name="embed")(x)
        x = MixerBlock()(x)
        x = AttentionBlock()(x)
        return nn.Dense(self.num_classes, name="head")(x.mean(axis=1))


class ConcatCNN(nn.Module):
    """Two parallel convs (4 and 6 channels) concatenated on channels, then a conv and a head."""

    branches: tuple[int, int] = (4, 6)

    @nn.compact
    def __call__(self, x):
        a = nn.relu(nn.Conv(self.branches[0], (3, 3))(x))
        b = nn.relu(nn.Conv(self.branches[1], (1, 1))(x))
        x = nn.relu(nn.Conv(8, (3, 3))(jnp.concatenate([a, b], axis=-1)))
        return nn.Dense(10)(x.mean(axis=(1, 2)))


class FlattenNet(nn.Module):
    """A strided conv (8x8x1 -> 4x4x4), flattened to 64 features, a hidden dense layer, a head."""

    @nn.compact
    def __call__(self, x):
        x = nn.relu(nn.Conv(4, (3, 3), strides=2)(x))
        x = x.reshape((x.shape[0], -1))
        x = nn.relu(nn.Dense(16)(x))
        return nn.Dense(10)(x)


class PlainMLP(nn.Module):
    """Dense layers with ReLU on the flattened input (no residual, no normalisation)."""

    hidden: tuple[int, ...] = (16, 8)
    num_classes: int = 10

    @nn.compact
    def __call__(self, x):
        x = x.reshape((x.shape[0], -1))
        for features in self.hidden:
            x = nn.relu(nn.Dense(features)(x))
        return nn.Dense(self.num_classes)(x)


class PlainCNN(nn.Module):
    """Convs with batch norm and ReLU, global mean, a head (no residual)."""

    features: tuple[int, ...] = (8, 8)
    num_classes: int = 10

    @nn.compact
    def __call__(self, x, train: bool = False):
        for features in self.features:
            x = nn.Conv(features, (3, 3))(x)
            x = nn.relu(nn.BatchNorm(use_running_average=not train)(x))
        return nn.Dense(self.num_classes)(x.mean(axis=(1, 2)))


class ChannelOp(nn.Module):
    """``Dense(8)``, then one operation on its output (``op``), then a head: on ``(batch, 4 tokens, 6 features)``.

    ``op``: ``"relu"``, ``"gelu"``, ``"tanh"``, ``"layer_norm"``, ``"rms_norm"``, ``"softmax"`` (over channels),
    ``"token_softmax"`` (over tokens) or ``"channel_sum"`` (adds the channels' sum to each channel).
    """

    op: str = "relu"

    @nn.compact
    def __call__(self, x):
        x = nn.Dense(8)(x)
        if self.op == "relu":
            x = nn.relu(x)
        elif self.op == "gelu":
            x = nn.gelu(x)
        elif self.op == "tanh":
            x = jnp.tanh(x)
        elif self.op == "layer_norm":
            x = nn.LayerNorm()(x)
        elif self.op == "rms_norm":
            x = x / jnp.sqrt(jnp.mean(x * x, axis=-1, keepdims=True) + 1e-6)
        elif self.op == "softmax":
            x = nn.softmax(x, axis=-1)
        elif self.op == "token_softmax":
            x = nn.softmax(x, axis=1)
        elif self.op == "channel_sum":
            x = x + x.sum(axis=-1, keepdims=True)
        else:
            raise ValueError(f"unknown op {self.op!r}")
        return nn.Dense(10)(x.mean(axis=1))


class SharedDense(nn.Module):
    """One dense layer applied twice (shared weights), then a head."""

    @nn.compact
    def __call__(self, x):
        shared = nn.Dense(x.shape[-1])
        x = shared(nn.relu(shared(x)))
        return nn.Dense(10)(x)


class DropoutMLP(nn.Module):
    """A hidden dense layer, dropout switched on by ``train``, a head."""

    @nn.compact
    def __call__(self, x, train: bool = False):
        x = nn.relu(nn.Dense(16)(x))
        x = nn.Dropout(0.5, deterministic=not train)(x)
        return nn.Dense(10)(x)


class NoLayer(nn.Module):
    """A per-channel scale: a parameter, but no convolution or contraction with the input."""

    @nn.compact
    def __call__(self, x):
        return x * self.param("scale", nn.initializers.ones, (x.shape[-1],))


# -- factories (``"user_models:<name>"``) ------------------------------------------------------------------------------


def make_cnn(num_classes: int = 10):
    """The residual linen CNN."""
    return ResidualCNN(num_classes=num_classes)


def make_nnx_cnn():
    """The NNX CNN."""
    return NnxCNN()


def make_failing():
    """A factory that fails."""
    raise RuntimeError("no weights here")


def make_number():
    """A factory that returns something else than a module."""
    return 3


def make_mlp(num_classes: int = 10):
    """The plain linen MLP (hidden 32, 16)."""
    return PlainMLP(hidden=(32, 16), num_classes=num_classes)


NOT_CALLABLE = 3


class WidthCNN(nn.Module):
    """A CNN built at a width multiplier (a width factory's module): every channel count times ``width``."""

    width: float = 1.0

    @nn.compact
    def __call__(self, x, train: bool = False):
        channels = lambda base: int(base * self.width + 0.5)  # noqa: E731
        x = nn.relu(nn.BatchNorm(use_running_average=not train)(nn.Conv(channels(8), (3, 3))(x)))
        y = nn.relu(nn.BatchNorm(use_running_average=not train)(nn.Conv(channels(8), (3, 3))(x)))
        x = nn.relu(x + y)
        x = nn.relu(nn.Conv(channels(16), (3, 3), strides=2)(x))
        return nn.Dense(10)(x.mean(axis=(1, 2)))


def make_width_cnn(width: float = 1.0):
    return WidthCNN(width)


def make_narrow_at_any_width(width: float = 1.0):
    """A broken width factory: the width is ignored, so the wider module has no room for wider layers."""
    return WidthCNN(1.0)


def random_variables(model, seed=0):
    """Variables of the shapes ``model.init_variables`` gives, drawn on the host (compiling the model's random
    initialisers costs seconds): He-scaled kernels, small random biases and batch statistics, clips of 4, channels
    ranked in order."""
    rng = np.random.default_rng(seed)

    def draw(path, leaf):
        name = path[-1].key
        if name == "kernel":
            values = rng.standard_normal(leaf.shape) * np.sqrt(2.0 / np.prod(leaf.shape[:-1]))
        elif name in ("scale", "var"):
            values = 0.5 + rng.uniform(size=leaf.shape)
        elif name == "act_clip":
            values = np.full(leaf.shape, 4.0)
        elif name == "channel_rank":
            values = np.arange(leaf.shape[0])
        else:
            values = 0.1 * rng.standard_normal(leaf.shape)
        return jnp.asarray(values, leaf.dtype)

    return jax.tree_util.tree_map_with_path(draw, jax.eval_shape(model.init_variables, jax.random.key(0)))
