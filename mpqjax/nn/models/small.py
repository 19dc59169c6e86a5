"""Small models for the embedded scikit-learn digits data (8x8x1 images, 10 classes)."""

from __future__ import annotations

import flax.linen as nn
import jax.numpy as jnp

from mpqjax.nn.models.core import QModel, register


@register("digits_cnn")
class DigitsCNN(QModel):
    """Three 3x3 convolutions with batch norm (the second and third of stride 2), global pooling, a dense head.

    Attributes:
        channels: base output channels of the three convolutions.
    """

    channels: tuple[int, ...] = (32, 64, 64)
    default_input_shape = (8, 8, 1)

    @nn.compact
    def __call__(self, x, bits=None, widths=None, *, train: bool = False):
        build = self.builder(x, bits, widths, train)
        source = -1
        for index, features in enumerate(self.channels):
            stride = (1, 1) if index == 0 else (2, 2)
            x, source = build.layer(x, source, kind="conv", features=features, kernel=(3, 3), stride=stride,
                                    name=f"conv{index + 1}", input_signed=index == 0)
            x = nn.relu(x)
        x = jnp.mean(x, axis=(1, 2))
        x, _ = build.layer(x, source, kind="dense", features=self.num_classes, name="head", scalable=False,
                           batch_norm=False, use_bias=True)
        build.finish()
        return x


@register("mlp")
class MLP(QModel):
    """Dense layers with batch norm and ReLU on the flattened input, then a dense head.

    Attributes:
        hidden: base widths of the hidden layers.
    """

    hidden: tuple[int, ...] = (256, 128)
    default_input_shape = (64,)

    @nn.compact
    def __call__(self, x, bits=None, widths=None, *, train: bool = False):
        build = self.builder(x, bits, widths, train)
        x = x.reshape(x.shape[0], -1)
        source = -1
        for index, features in enumerate(self.hidden):
            x, source = build.layer(x, source, kind="dense", features=features, name=f"dense{index + 1}",
                                    input_signed=index == 0)
            x = nn.relu(x)
        x, _ = build.layer(x, source, kind="dense", features=self.num_classes, name="head", scalable=False,
                           batch_norm=False, use_bias=True)
        build.finish()
        return x
