"""Specification of mpqjax.search.channels: a channel-wise configuration checked, its pruning as widths and channel
ranks, and its per-channel bit-widths as the quantised model holds them."""

import numpy as np
import pytest

from mpqjax.nn import models
from mpqjax.search import channels


def test_a_channel_wise_configuration_prunes_with_widths_and_ranks():
    table = models.layer_table("digits_cnn")  # conv1 32, conv2 64, conv3 64 channels, head 10; each its own group
    channel_bits = {"conv1": [4] * 30 + [0, 0], "conv2": [2, 8] * 32, "head": [8] * 10}
    layout = channels.channel_layout(table, channel_bits)
    assert layout.widths.tolist() == [30 / 32, 1.0, 1.0, 1.0]
    assert layout.kept_bits == {"conv1": [4] * 30, "conv2": [2, 8] * 32, "head": [8] * 10}
    assert layout.ranks["conv1"].tolist() == list(range(32))  # the kept channels first, here already in front
    middle = channels.channel_layout(table, {"conv1": [0] + [4] * 31})
    assert middle.ranks["conv1"].tolist() == [31, *range(31)]
    assert middle.widths[0] * 32 == pytest.approx(31)


@pytest.mark.parametrize("channel_bits, message", [
    ({"conv9": [4]}, r"unknown layers \['conv9'\]"),
    ({"conv1": [4] * 31}, "must be 32 bit-widths, each 0 \\(pruned\\) or 2 to 8"),
    ({"conv1": [1] * 32}, "each 0 \\(pruned\\) or 2 to 8, got \\[1, 1"),
    ({"conv1": [0] * 32}, "prunes every channel of layer 'conv1'"),
    ({"head": [0] + [8] * 9}, "layer 'head' cannot prune a channel"),
])
def test_a_bad_channel_wise_configuration_is_refused(channel_bits, message):
    with pytest.raises(ValueError, match=message):
        channels.channel_layout(models.layer_table("digits_cnn"), channel_bits)


def test_channels_of_a_residual_stream_cannot_be_pruned():
    table = models.layer_table("resnet20")
    shared = next(table[group[0]].name for group in table.width_groups() if len(group) > 1)
    width = table[table.names.index(shared)].out_channels
    with pytest.raises(ValueError, match=f"layer '{shared}' cannot prune a channel: its channels are shared"):
        channels.channel_layout(table, {shared: [0] + [4] * (width - 1)})


def test_the_quantised_model_holds_every_channel_it_can_grow_to():
    model = models.get("digits_cnn", num_classes=10, max_width=1.25)  # conv1 holds 40 channels for 32 at width 1
    held = model.weight_channels((8, 8, 1))
    padded = channels.weight_bits_of(model, {"conv1": [0, 3] + [4] * 30}, np.array([6, 4, 4, 8]), (8, 8, 1))
    assert len(padded["conv1"]) == held["conv1"] == 40
    # a pruned channel and the channels beyond width 1 are switched off: they take the layer's bits
    assert padded["conv1"] == [6, 3] + [4] * 30 + [6] * 8
