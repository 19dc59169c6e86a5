"""MobileNet V1 (Howard et al. 2017) and V2 (Sandler et al. 2018) for 224x224 inputs.

Width tying: a depthwise convolution has as many channels as its producer, so it shares the producer's width
multiplier; the projections of a V2 stage whose blocks add residuals form one group.
"""

from __future__ import annotations

import flax.linen as nn
import jax.numpy as jnp

from mpqjax.nn.models.core import QModel, register

_V1_BLOCKS = ((64, 1), (128, 2), (128, 1), (256, 2), (256, 1), (512, 2), (512, 1), (512, 1), (512, 1), (512, 1),
              (512, 1), (1024, 2), (1024, 1))
# (expansion t, output channels c, repeats n, first stride s), Table 2 of Sandler et al.
_V2_BLOCKS = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2),
              (6, 320, 1, 1))


@register("mobilenet_v1")
class MobileNetV1(QModel):
    """3x3/2 stem of 32 channels, 13 depthwise-separable blocks, global pooling, a dense head (28 weight layers)."""

    num_classes: int = 1000
    default_input_shape = (224, 224, 3)

    @nn.compact
    def __call__(self, x, bits=None, widths=None, *, train: bool = False):
        build = self.builder(x, bits, widths, train)
        x, source = build.layer(x, -1, kind="conv", features=32, kernel=(3, 3), stride=(2, 2), name="stem",
                                input_signed=True)
        x = nn.relu(x)
        for block, (features, stride) in enumerate(_V1_BLOCKS):
            x, source = build.layer(x, source, kind="depthwise", features=0, kernel=(3, 3), stride=(stride, stride),
                                    name=f"block{block}_depthwise")
            x = nn.relu(x)
            x, source = build.layer(x, source, kind="conv", features=features, name=f"block{block}_pointwise")
            x = nn.relu(x)
        x = jnp.mean(x, axis=(1, 2))
        x, _ = build.layer(x, source, kind="dense", features=self.num_classes, name="head", scalable=False,
                           batch_norm=False, use_bias=True)
        build.finish()
        return x


@register("mobilenet_v2")
class MobileNetV2(QModel):
    """Inverted residual blocks with linear bottlenecks, a 1x1 convolution to 1280 channels, a dense head."""

    num_classes: int = 1000
    default_input_shape = (224, 224, 3)

    @nn.compact
    def __call__(self, x, bits=None, widths=None, *, train: bool = False):
        build = self.builder(x, bits, widths, train)
        x, source = build.layer(x, -1, kind="conv", features=32, kernel=(3, 3), stride=(2, 2), name="stem",
                                input_signed=True)
        x = nn.relu6(x)
        signed = False
        in_features = 32
        block = 0
        for stage, (expansion, features, repeats, first_stride) in enumerate(_V2_BLOCKS):
            for repeat in range(repeats):
                stride = first_stride if repeat == 0 else 1
                prefix = f"block{block}"
                y, index = x, source
                if expansion != 1:
                    y, index = build.layer(y, index, kind="conv", features=in_features * expansion,
                                           name=f"{prefix}_expand", input_signed=signed)
                    y = nn.relu6(y)
                    dw_signed = False
                else:
                    dw_signed = signed
                y, index = build.layer(y, index, kind="depthwise", features=0, kernel=(3, 3),
                                       stride=(stride, stride), name=f"{prefix}_depthwise", input_signed=dw_signed)
                y = nn.relu6(y)
                group = f"stage{stage}" if repeats > 1 else None
                y, output = build.layer(y, index, kind="conv", features=features, name=f"{prefix}_project",
                                        group=group)
                x = x + y if stride == 1 and in_features == features else y
                signed = True  # linear bottleneck: the block output has no ReLU
                source = output
                in_features = features
                block += 1
        x, source = build.layer(x, source, kind="conv", features=1280, name="last_conv", input_signed=True)
        x = nn.relu6(x)
        x = jnp.mean(x, axis=(1, 2))
        x, _ = build.layer(x, source, kind="dense", features=self.num_classes, name="head", scalable=False,
                           batch_norm=False, use_bias=True)
        build.finish()
        return x
