"""The zoo's building blocks: plain Flax layers, as any user would write them.

A zoo model is an ordinary ``flax.linen`` module with a ``width`` field that multiplies every channel count it may
change (`mpqjax.nn.table.scale_channels`); `mpqjax.nn.models.get` wraps it as a width factory, so it goes through
the same interception as a user's model (`mpqjax.nn.models.wrap`).
"""

from __future__ import annotations

import flax.linen as nn
import jax.numpy as jnp
import numpy as np

__all__ = ["HE_NORMAL", "conv_bn", "dense_bn", "zero_pad_shortcut"]

# He et al.'s fan-in initialisation (truncated normal) for convolutions followed by a ReLU.
HE_NORMAL = nn.initializers.variance_scaling(2.0, "fan_in", "truncated_normal")
_BATCH_NORM = dict(momentum=0.9, epsilon=1e-5)


def conv_bn(x, features: int, *, name: str, train: bool, kernel=(3, 3), stride: int = 1, depthwise: bool = False):
    """A bias-free convolution (``SAME`` padding; one filter per channel when ``depthwise``) and a batch norm
    named ``<name>_bn``."""
    groups = x.shape[-1] if depthwise else 1
    x = nn.Conv(x.shape[-1] if depthwise else features, tuple(kernel), strides=(stride, stride), padding="SAME",
                feature_group_count=groups, use_bias=False, kernel_init=HE_NORMAL, name=name)(x)
    return nn.BatchNorm(use_running_average=not train, **_BATCH_NORM, name=f"{name}_bn")(x)


def dense_bn(x, features: int, *, name: str, train: bool):
    """A bias-free dense layer and a batch norm named ``<name>_bn``."""
    x = nn.Dense(features, use_bias=False, name=name)(x)
    return nn.BatchNorm(use_running_average=not train, **_BATCH_NORM, name=f"{name}_bn")(x)


def zero_pad_shortcut(x, out_channels: int, *, stride: int, carried: int):
    """The parameter-free (option-A) shortcut of He et al.: subsample by ``stride``, then zero-pad the channels.

    Only the first ``carried`` channels pass (the input's channels at width 1): channels that a wider model adds
    start as zeros here, so the wider model computes its width-1 model's function until training changes it.
    """
    if stride > 1:
        x = x[:, ::stride, ::stride, :]
    if x.shape[-1] > carried:
        x = x * jnp.asarray(np.arange(x.shape[-1]) < carried, x.dtype)
    return jnp.pad(x, [(0, 0)] * (x.ndim - 1) + [(0, out_channels - x.shape[-1])])
