"""A user's own model file, as ``mpqjax search --model own_models_factory:make_cnn`` imports it: plain flax.linen and
flax.nnx modules (no mpqjax code) and the factories that build them, some of them broken on purpose.

The CLI tests put this folder on ``sys.path`` (or run the command from it); every model is tiny (8x8x1 digits).
"""

from __future__ import annotations

import flax.linen as nn
import jax
from flax import nnx


class ResidualCNN(nn.Module):
    """Conv + batch norm, a residual pair of convs with batch norm, a strided conv, global mean, a dense head (batch
    norm statistics with momentum 0.9: a few dozen steps train them)."""

    features: int = 8
    num_classes: int = 10
    momentum: float = 0.9

    @nn.compact
    def __call__(self, x, train: bool = False):
        def norm(y):
            return nn.BatchNorm(use_running_average=not train, momentum=self.momentum)(y)

        x = nn.relu(norm(nn.Conv(self.features, (3, 3))(x)))
        y = nn.relu(norm(nn.Conv(self.features, (3, 3))(x)))
        x = nn.relu(x + norm(nn.Conv(self.features, (3, 3))(y)))
        x = nn.relu(nn.Conv(2 * self.features, (3, 3), strides=2)(x))
        return nn.Dense(self.num_classes)(x.mean(axis=(1, 2)))


class NnxCNN(nnx.Module):
    """The NNX way: layers held as attributes, batch norm switched by ``model.train()`` / ``model.eval()``."""

    def __init__(self, *, features: int = 8, num_classes: int = 10, seed: int = 0):
        rngs = nnx.Rngs(seed)
        self.stem = nnx.Conv(1, features, (3, 3), rngs=rngs)
        self.stem_norm = nnx.BatchNorm(features, momentum=0.9, rngs=rngs)
        self.conv = nnx.Conv(features, 2 * features, (3, 3), strides=2, rngs=rngs)
        self.conv_norm = nnx.BatchNorm(2 * features, momentum=0.9, rngs=rngs)
        self.head = nnx.Linear(2 * features, num_classes, rngs=rngs)

    def __call__(self, x):
        x = nnx.relu(self.stem_norm(self.stem(x)))
        x = nnx.relu(self.conv_norm(self.conv(x)))
        return self.head(x.mean(axis=(1, 2)))


class NoLayer(nn.Module):
    """A per-channel scale and a mean: a parameter, but no convolution or contraction with the input."""

    @nn.compact
    def __call__(self, x):
        x = x * self.param("scale", nn.initializers.ones, (x.shape[-1],))
        return x.reshape((x.shape[0], -1))[:, :10]


def make_cnn(num_classes: int = 10):
    """The residual linen CNN (``own_models_factory:make_cnn``)."""
    return ResidualCNN(num_classes=num_classes)


def make_nnx_cnn():
    """The NNX CNN (``own_models_factory:make_nnx_cnn``)."""
    return NnxCNN()


def make_failing():
    """A factory that raises."""
    raise RuntimeError("no weights here")


def make_number():
    """A factory that returns something else than a module."""
    return 3


def make_no_layer():
    """A module without any quantisable layer."""
    return NoLayer()


class TanhCNN(nn.Module):
    """A convolution followed by tanh: trains and searches, but has no integer form."""

    @nn.compact
    def __call__(self, x, train: bool = False):
        x = jax.numpy.tanh(nn.Conv(8, (3, 3), name="features")(x))
        return nn.Dense(10, name="head")(x.mean(axis=(1, 2)))


def make_tanh_cnn():
    """The tanh CNN (``own_models_factory:make_tanh_cnn``)."""
    return TanhCNN()
