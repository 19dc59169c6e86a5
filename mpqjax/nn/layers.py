"""Quantised Flax layers: `QConv` (regular or depthwise) and `QDense`, each optionally followed by batch norm.

A layer fake-quantises its weights and its input activations at one bit-width (`mpqjax.nn.quant`), passed to
``__call__`` as a scalar array, so a new bit-width never rebuilds or recompiles the layer.

Width multipliers come in two modes that compute the same function:

* materialised: the layer is built with its real channel count (``features``) and nothing is masked;
* masked: the layer holds parameters for its largest width and receives traced active channel counts
  (``in_active``, ``out_active``). Channels are used as prefixes: channel ``c`` is active when ``c < active``.
  Kernel entries of inactive input channels are zeroed before quantisation (so per-channel scales match the
  materialised layer) and inactive output channels are zeroed after batch norm.

Each layer keeps its activation clipping value as ``act_clip``: a parameter when learned (``"pact"``, ``"lsq"``), a
variable of the ``"quant"`` collection when calibrated. When the ``"calibration"`` collection is mutable, the layer
records `mpqjax.nn.quant.calibration_stats` of its input there (see `mpqjax.training.train.calibrate`).
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from mpqjax.nn import quant

__all__ = ["DEFAULT_ACT_CLIP", "QConv", "QDense", "channel_mask"]

DEFAULT_ACT_CLIP = 4.0


def channel_mask(channels: int, active):
    """Boolean ``(channels,)`` mask of the first ``active`` channels (``active`` may be traced)."""
    return jnp.arange(channels) < active


class _QuantizedLayer(nn.Module):
    """Shared input quantisation, batch norm and masking of `QConv` and `QDense`."""

    def _activation_clip(self):
        if self.act_clipping == "calibrated":
            return self.variable("quant", "act_clip", lambda: jnp.asarray(DEFAULT_ACT_CLIP, jnp.float32)).value
        return self.param("act_clip", lambda _: jnp.asarray(DEFAULT_ACT_CLIP, jnp.float32))

    def _quantize_input(self, x, bits, in_mask):
        if not self.quantize:
            return x
        if self.is_mutable_collection("calibration"):
            stats = quant.calibration_stats(x, bits, signed=self.input_signed, channel_mask=in_mask)
            self.sow("calibration", "input_stats", stats)
        clip = self._activation_clip()
        return quant.quantize_activations(x, bits, clip, signed=self.input_signed, mode=self.act_clipping)

    def _finish(self, y, out_mask, train):
        if self.use_bias:
            y = y + self.param("bias", nn.initializers.zeros, (y.shape[-1],), jnp.float32)
        if self.batch_norm:
            y = nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5, name="bn")(y)
        if out_mask is not None:
            y = y * out_mask
        return y


class QConv(_QuantizedLayer):
    """Convolution (NHWC) with fake-quantised weights and input, optional batch norm and channel masks.

    Attributes:
        features: output channels held by the parameters (ignored for depthwise: equals the input channels).
        kernel_size: (height, width).
        strides: (height, width).
        depthwise: one filter per input channel (``feature_group_count`` = channels).
        use_bias: add a bias (usually False before batch norm).
        batch_norm: follow with batch norm.
        input_signed: the input can be negative (no ReLU before it): signed activation quantiser.
        quantize: structural switch; False builds the float layer without any fake-quantisation ops.
        act_clipping: ``"calibrated"``, ``"pact"`` or ``"lsq"`` (see `mpqjax.nn.quant`).

    Example:
        >>> layer = QConv(features=8)
        >>> x = jnp.ones((2, 8, 8, 3))
        >>> variables = layer.init(jax.random.key(0), x, 4)
        >>> layer.apply(variables, x, 4).shape
        (2, 8, 8, 8)
    """

    features: int
    kernel_size: tuple[int, int] = (3, 3)
    strides: tuple[int, int] = (1, 1)
    depthwise: bool = False
    use_bias: bool = False
    batch_norm: bool = True
    input_signed: bool = False
    quantize: bool = True
    act_clipping: str = "calibrated"

    @nn.compact
    def __call__(self, x, bits=quant.FLOAT_BITS, *, in_active=None, out_active=None, train: bool = False):
        """Apply the layer.

        Args:
            x: input ``(batch, height, width, channels)``.
            bits: scalar bit-width for weights and input activations.
            in_active: active input channels (masked mode), or None.
            out_active: active output channels (masked mode), or None.
            train: batch norm uses (and updates) batch statistics.
        """
        in_channels = x.shape[-1]
        out_channels = in_channels if self.depthwise else self.features
        kernel_in = 1 if self.depthwise else in_channels
        fan_in_init = nn.initializers.variance_scaling(2.0, "fan_in", "truncated_normal")
        kernel = self.param("kernel", fan_in_init, (*self.kernel_size, kernel_in, out_channels), jnp.float32)
        in_mask = None if in_active is None else channel_mask(in_channels, in_active)
        out_mask = None if out_active is None else channel_mask(out_channels, out_active)
        if in_mask is not None and not self.depthwise:
            kernel = kernel * in_mask[:, None]
        if out_mask is not None:
            kernel = kernel * out_mask
        x = self._quantize_input(x, bits, in_mask)
        if self.quantize:
            kernel = quant.quantize_weights(kernel, bits)
        y = jax.lax.conv_general_dilated(
            x,
            kernel,
            window_strides=self.strides,
            padding="SAME",
            dimension_numbers=("NHWC", "HWIO", "NHWC"),
            feature_group_count=in_channels if self.depthwise else 1,
        )
        return self._finish(y, out_mask, train)


class QDense(_QuantizedLayer):
    """Dense layer with fake-quantised weights and input, optional batch norm and channel masks.

    Attributes are those of `QConv` without the spatial ones.

    Example:
        >>> layer = QDense(features=10, batch_norm=False, use_bias=True)
        >>> x = jnp.ones((2, 64))
        >>> layer.apply(layer.init(jax.random.key(0), x, 8), x, 8).shape
        (2, 10)
    """

    features: int
    use_bias: bool = False
    batch_norm: bool = True
    input_signed: bool = False
    quantize: bool = True
    act_clipping: str = "calibrated"

    @nn.compact
    def __call__(self, x, bits=quant.FLOAT_BITS, *, in_active=None, out_active=None, train: bool = False):
        """Apply the layer; arguments as in `QConv.__call__`, ``x`` of shape ``(batch, features_in)``."""
        in_features = x.shape[-1]
        kernel = self.param("kernel", nn.initializers.lecun_normal(), (in_features, self.features), jnp.float32)
        in_mask = None if in_active is None else channel_mask(in_features, in_active)
        out_mask = None if out_active is None else channel_mask(self.features, out_active)
        if in_mask is not None:
            kernel = kernel * in_mask[:, None]
        if out_mask is not None:
            kernel = kernel * out_mask
        x = self._quantize_input(x, bits, in_mask)
        if self.quantize:
            kernel = quant.quantize_weights(kernel, bits)
        y = x @ kernel
        return self._finish(y, out_mask, train)
