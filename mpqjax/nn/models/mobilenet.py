"""MobileNet V1 (Howard et al. 2017) and V2 (Sandler et al. 2018) for 224x224 inputs.

The graph ties widths: a depthwise convolution has as many channels as its producer, so it shares the producer's
multiplier; the projections of a V2 stage whose blocks add residuals share one.
"""

from __future__ import annotations

import flax.linen as nn
import jax.numpy as jnp

from mpqjax.nn.models.blocks import conv_bn
from mpqjax.nn.table import scale_channels

_V1_BLOCKS = ((64, 1), (128, 2), (128, 1), (256, 2), (256, 1), (512, 2), (512, 1), (512, 1), (512, 1), (512, 1),
              (512, 1), (1024, 2), (1024, 1))
# (expansion t, output channels c, repeats n, first stride s), Table 2 of Sandler et al.
_V2_BLOCKS = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2),
              (6, 320, 1, 1))


class MobileNetV1(nn.Module):
    """3x3/2 stem of 32 channels, 13 depthwise-separable blocks, global pooling, a dense head (28 weight layers).

    Attributes:
        width: multiplier of every convolution's channels.
        num_classes: classifier outputs.
    """

    width: float = 1.0
    num_classes: int = 1000

    @nn.compact
    def __call__(self, x, train: bool = False):
        x = nn.relu(conv_bn(x, scale_channels(32, self.width), stride=2, name="stem", train=train))
        for block, (features, stride) in enumerate(_V1_BLOCKS):
            x = nn.relu(conv_bn(x, 0, stride=stride, depthwise=True, name=f"block{block}_depthwise", train=train))
            x = nn.relu(conv_bn(x, scale_channels(features, self.width), kernel=(1, 1), name=f"block{block}_pointwise",
                                train=train))
        x = jnp.mean(x, axis=(1, 2))
        return nn.Dense(self.num_classes, name="head")(x)


class MobileNetV2(nn.Module):
    """Inverted residual blocks with linear bottlenecks, a 1x1 convolution to 1280 channels, a dense head.

    Attributes:
        width: multiplier of every convolution's channels.
        num_classes: classifier outputs.
    """

    width: float = 1.0
    num_classes: int = 1000

    @nn.compact
    def __call__(self, x, train: bool = False):
        x = nn.relu6(conv_bn(x, scale_channels(32, self.width), stride=2, name="stem", train=train))
        block, base_in = 0, 32
        for expansion, base, repeats, first_stride in _V2_BLOCKS:
            for repeat in range(repeats):
                stride = first_stride if repeat == 0 else 1
                prefix = f"block{block}"
                y = x
                if expansion != 1:
                    y = nn.relu6(conv_bn(y, scale_channels(base_in * expansion, self.width), kernel=(1, 1),
                                         name=f"{prefix}_expand", train=train))
                y = nn.relu6(conv_bn(y, 0, stride=stride, depthwise=True, name=f"{prefix}_depthwise", train=train))
                y = conv_bn(y, scale_channels(base, self.width), kernel=(1, 1), name=f"{prefix}_project", train=train)
                x = x + y if stride == 1 and base_in == base else y  # linear bottleneck: no ReLU
                block, base_in = block + 1, base
        x = nn.relu6(conv_bn(x, scale_channels(1280, self.width), kernel=(1, 1), name="last_conv", train=train))
        x = jnp.mean(x, axis=(1, 2))
        return nn.Dense(self.num_classes, name="head")(x)
