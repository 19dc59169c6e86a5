"""Small models for the embedded scikit-learn digits data (8x8x1 images, 10 classes)."""

from __future__ import annotations

import flax.linen as nn
import jax.numpy as jnp

from mpqjax.nn.models.blocks import conv_bn, dense_bn
from mpqjax.nn.table import scale_channels


class DigitsCNN(nn.Module):
    """Three 3x3 convolutions with batch norm (the second and third of stride 2), global pooling, a dense head.

    Attributes:
        width: multiplier of every convolution's channels.
        num_classes: classifier outputs.
        channels: the convolutions' channels at width 1.
    """

    width: float = 1.0
    num_classes: int = 10
    channels: tuple[int, ...] = (32, 64, 64)

    @nn.compact
    def __call__(self, x, train: bool = False):
        for index, features in enumerate(self.channels):
            x = conv_bn(x, scale_channels(features, self.width), stride=1 if index == 0 else 2,
                        name=f"conv{index + 1}", train=train)
            x = nn.relu(x)
        x = jnp.mean(x, axis=(1, 2))
        return nn.Dense(self.num_classes, name="head")(x)


class MLP(nn.Module):
    """Dense layers with batch norm and ReLU on the flattened input, then a dense head.

    Attributes:
        width: multiplier of every hidden layer's width.
        num_classes: classifier outputs.
        hidden: the hidden layers' widths at width 1.
    """

    width: float = 1.0
    num_classes: int = 10
    hidden: tuple[int, ...] = (256, 128)

    @nn.compact
    def __call__(self, x, train: bool = False):
        x = x.reshape(x.shape[0], -1)
        for index, features in enumerate(self.hidden):
            x = nn.relu(dense_bn(x, scale_channels(features, self.width), name=f"dense{index + 1}", train=train))
        return nn.Dense(self.num_classes, name="head")(x)
