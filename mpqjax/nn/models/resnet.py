"""Residual networks: CIFAR ResNet-20/32/56 (He et al. 2016, option-A shortcuts), ResNet-18 and ResNet-50.

The graph ties widths: the outputs of all blocks of a stage are added together through the shortcuts, so they share
one multiplier (with the stem when the first stage keeps its channel count); inner convolutions are free.
"""

from __future__ import annotations

import flax.linen as nn
import jax.numpy as jnp

from mpqjax.nn.models.blocks import conv_bn, zero_pad_shortcut
from mpqjax.nn.table import scale_channels


class CifarResNet(nn.Module):
    """ResNet for 32x32 inputs: 3x3 stem of 16 channels, three stages of 16/32/64 channels with ``(depth-2)/6``
    basic blocks each, parameter-free zero-padding shortcuts (option A), global pooling, a dense head.
    ResNet-20 has 20 weight layers (19 convolutions and the head).

    Attributes:
        width: multiplier of every convolution's channels.
        depth: 6n + 2.
        num_classes: classifier outputs.
    """

    width: float = 1.0
    depth: int = 20
    num_classes: int = 10

    @nn.compact
    def __call__(self, x, train: bool = False):
        if (self.depth - 2) % 6:
            raise ValueError(f"CIFAR ResNet depth must be 6n + 2, got {self.depth}")
        x = nn.relu(conv_bn(x, scale_channels(16, self.width), name="stem", train=train))
        base_in = 16
        for stage, base in enumerate((16, 32, 64), start=1):
            features = scale_channels(base, self.width)
            for block in range((self.depth - 2) // 6):
                stride = 2 if stage > 1 and block == 0 else 1
                prefix = f"stage{stage}_block{block}"
                y = nn.relu(conv_bn(x, features, stride=stride, name=f"{prefix}_conv1", train=train))
                y = conv_bn(y, features, name=f"{prefix}_conv2", train=train)
                if x.shape[-1] == features and stride == 1:
                    shortcut = x
                else:
                    shortcut = zero_pad_shortcut(x, features, stride=stride, carried=base_in)
                x = nn.relu(y + shortcut)
                base_in = base
        x = jnp.mean(x, axis=(1, 2))
        return nn.Dense(self.num_classes, name="head")(x)


class ResNet(nn.Module):
    """ResNet-18/50 with projection (1x1 convolution + batch norm) shortcuts when the shape changes.

    Attributes:
        width: multiplier of every convolution's channels.
        num_classes: classifier outputs.
        stem: ``"imagenet"`` (7x7/2 convolution and 3x3/2 max-pool, 224x224 inputs) or ``"cifar"`` (3x3/1
            convolution, no pooling, 32x32 inputs).
        stage_blocks: blocks per stage.
        bottleneck: 1x1-3x3-1x1 blocks with 4x expansion (ResNet-50) instead of two 3x3 convolutions.
    """

    width: float = 1.0
    num_classes: int = 1000
    stem: str = "imagenet"
    stage_blocks: tuple[int, ...] = (2, 2, 2, 2)
    bottleneck: bool = False

    @nn.compact
    def __call__(self, x, train: bool = False):
        if self.stem not in ("imagenet", "cifar"):
            raise ValueError(f"stem must be 'imagenet' or 'cifar', got {self.stem!r}")
        if self.stem == "imagenet":
            x = nn.relu(conv_bn(x, scale_channels(64, self.width), kernel=(7, 7), stride=2, name="stem", train=train))
            x = nn.max_pool(x, (3, 3), strides=(2, 2), padding="SAME")
        else:
            x = nn.relu(conv_bn(x, scale_channels(64, self.width), name="stem", train=train))
        expansion = 4 if self.bottleneck else 1
        base_in = 64
        for stage, blocks in enumerate(self.stage_blocks, start=1):
            base = 64 * 2 ** (stage - 1)
            features, out_features = scale_channels(base, self.width), scale_channels(base * expansion, self.width)
            for block in range(blocks):
                stride = 2 if stage > 1 and block == 0 else 1
                prefix = f"stage{stage}_block{block}"
                if self.bottleneck:
                    y = nn.relu(conv_bn(x, features, kernel=(1, 1), name=f"{prefix}_conv1", train=train))
                    y = nn.relu(conv_bn(y, features, stride=stride, name=f"{prefix}_conv2", train=train))
                    y = conv_bn(y, out_features, kernel=(1, 1), name=f"{prefix}_conv3", train=train)
                else:
                    y = nn.relu(conv_bn(x, features, stride=stride, name=f"{prefix}_conv1", train=train))
                    y = conv_bn(y, features, name=f"{prefix}_conv2", train=train)
                shortcut = x
                if stride != 1 or base_in != base * expansion:
                    shortcut = conv_bn(x, out_features, kernel=(1, 1), stride=stride, name=f"{prefix}_downsample",
                                       train=train)
                x = nn.relu(y + shortcut)
                base_in = base * expansion
        x = jnp.mean(x, axis=(1, 2))
        return nn.Dense(self.num_classes, name="head")(x)
