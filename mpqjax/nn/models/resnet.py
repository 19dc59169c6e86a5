"""Residual networks: CIFAR ResNet-20/32/56 (He et al. 2016, option-A shortcuts), ResNet-18 and ResNet-50.

Width tying: the outputs of all blocks of a stage are added together through the shortcuts, so they form one width
group (with the stem when the first stage keeps its channel count); inner convolutions are free.
"""

from __future__ import annotations

import flax.linen as nn
import jax.numpy as jnp

from mpqjax.nn.models.core import QModel, register


class CifarResNet(QModel):
    """ResNet for 32x32 inputs: 3x3 stem of 16 channels, three stages of 16/32/64 channels with ``(depth-2)/6``
    basic blocks each, parameter-free zero-padding shortcuts (option A), global pooling, a dense head.
    ResNet-20 has 20 weight layers (19 convolutions and the head)."""

    depth: int = 20
    default_input_shape = (32, 32, 3)

    @nn.compact
    def __call__(self, x, bits=None, widths=None, *, train: bool = False):
        if (self.depth - 2) % 6:
            raise ValueError(f"CIFAR ResNet depth must be 6n + 2, got {self.depth}")
        blocks = (self.depth - 2) // 6
        build = self.builder(x, bits, widths, train)
        x, source = build.layer(x, -1, kind="conv", features=16, kernel=(3, 3), name="stem", group="stage1",
                                input_signed=True)
        x = nn.relu(x)
        for stage, features in enumerate((16, 32, 64), start=1):
            for block in range(blocks):
                stride = 2 if stage > 1 and block == 0 else 1
                prefix = f"stage{stage}_block{block}"
                y, inner = build.layer(x, source, kind="conv", features=features, kernel=(3, 3),
                                       stride=(stride, stride), name=f"{prefix}_conv1")
                y = nn.relu(y)
                y, output = build.layer(y, inner, kind="conv", features=features, kernel=(3, 3),
                                        name=f"{prefix}_conv2", group=f"stage{stage}")
                x = nn.relu(y + build.shortcut(x, source, output, stride=stride))
                source = output
        x = jnp.mean(x, axis=(1, 2))
        x, _ = build.layer(x, source, kind="dense", features=self.num_classes, name="head", scalable=False,
                           batch_norm=False, use_bias=True)
        build.finish()
        return x


@register("resnet20")
class ResNet20(CifarResNet):
    depth: int = 20


@register("resnet32")
class ResNet32(CifarResNet):
    depth: int = 32


@register("resnet56")
class ResNet56(CifarResNet):
    depth: int = 56


class ImageNetStyleResNet(QModel):
    """ResNet-18/50 with projection (1x1 convolution + batch norm) shortcuts when the shape changes.

    Attributes:
        stem: ``"imagenet"`` (7x7/2 convolution and 3x3/2 max-pool, 224x224 inputs) or ``"cifar"`` (3x3/1
            convolution, no pooling, 32x32 inputs).
        num_classes: defaults to 1000 for the ImageNet stem and 10 for the CIFAR stem when left at None.
    """

    num_classes: int | None = None
    stem: str = "imagenet"
    stage_blocks: tuple[int, ...] = (2, 2, 2, 2)
    bottleneck: bool = False

    def input_shape(self):
        return (224, 224, 3) if self.stem == "imagenet" else (32, 32, 3)

    def _classes(self):
        if self.num_classes is not None:
            return self.num_classes
        return 1000 if self.stem == "imagenet" else 10

    @nn.compact
    def __call__(self, x, bits=None, widths=None, *, train: bool = False):
        if self.stem not in ("imagenet", "cifar"):
            raise ValueError(f"stem must be 'imagenet' or 'cifar', got {self.stem!r}")
        build = self.builder(x, bits, widths, train)
        expansion = 4 if self.bottleneck else 1
        # The stem joins the first stage's group when that stage's first block has an identity shortcut.
        stem_group = "stage1" if expansion == 1 else None
        if self.stem == "imagenet":
            x, source = build.layer(x, -1, kind="conv", features=64, kernel=(7, 7), stride=(2, 2), name="stem",
                                    group=stem_group, input_signed=True)
            x = nn.relu(x)
            x = nn.max_pool(x, (3, 3), strides=(2, 2), padding="SAME")
        else:
            x, source = build.layer(x, -1, kind="conv", features=64, kernel=(3, 3), name="stem", group=stem_group,
                                    input_signed=True)
            x = nn.relu(x)
        in_features = 64
        for stage, blocks in enumerate(self.stage_blocks, start=1):
            features = 64 * 2 ** (stage - 1)
            for block in range(blocks):
                stride = 2 if stage > 1 and block == 0 else 1
                prefix = f"stage{stage}_block{block}"
                group = f"stage{stage}"
                if self.bottleneck:
                    y, index = build.layer(x, source, kind="conv", features=features, name=f"{prefix}_conv1")
                    y = nn.relu(y)
                    y, index = build.layer(y, index, kind="conv", features=features, kernel=(3, 3),
                                           stride=(stride, stride), name=f"{prefix}_conv2")
                    y = nn.relu(y)
                    y, output = build.layer(y, index, kind="conv", features=features * 4, name=f"{prefix}_conv3",
                                            group=group)
                else:
                    y, index = build.layer(x, source, kind="conv", features=features, kernel=(3, 3),
                                           stride=(stride, stride), name=f"{prefix}_conv1")
                    y = nn.relu(y)
                    y, output = build.layer(y, index, kind="conv", features=features, kernel=(3, 3),
                                            name=f"{prefix}_conv2", group=group)
                if stride != 1 or in_features != features * expansion:
                    shortcut, _ = build.layer(x, source, kind="conv", features=features * expansion,
                                              stride=(stride, stride), name=f"{prefix}_downsample", group=group)
                else:
                    shortcut = x
                x = nn.relu(y + shortcut)
                source = output
                in_features = features * expansion
        x = jnp.mean(x, axis=(1, 2))
        x, _ = build.layer(x, source, kind="dense", features=self._classes(), name="head", scalable=False,
                           batch_norm=False, use_bias=True)
        build.finish()
        return x


@register("resnet18")
class ResNet18(ImageNetStyleResNet):
    stage_blocks: tuple[int, ...] = (2, 2, 2, 2)
    bottleneck: bool = False


@register("resnet50")
class ResNet50(ImageNetStyleResNet):
    stage_blocks: tuple[int, ...] = (3, 4, 6, 3)
    bottleneck: bool = True
