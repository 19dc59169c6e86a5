"""Specification of mpqjax.export.bitpack: weight codes at their bit-width, as a bitstream or a packed-DSP image."""

import jax
import numpy as np
import pytest

from mpqjax.cost.packing import hikonv_packing
from mpqjax.export import bitpack


@pytest.mark.parametrize("layout", bitpack.LAYOUTS)
@pytest.mark.parametrize("bits", range(2, 9))
def test_packing_round_trips_in_numpy_and_in_jax(bits, layout):
    rng = np.random.default_rng(bits)
    for count in (1, 7, 333):
        codes = rng.integers(-(1 << (bits - 1)), 1 << (bits - 1), size=count)
        data = bitpack.pack(codes, bits, layout=layout)
        assert data.dtype == np.uint8 and data.size == bitpack.packed_bytes(count, bits, layout=layout)
        np.testing.assert_array_equal(bitpack.unpack(data, count, bits, layout=layout), codes)
        unpacked = jax.jit(lambda d, c=count, b=bits, lay=layout: bitpack.unpack_jax(d, c, b, layout=lay))(data)
        assert unpacked.dtype == np.int8
        np.testing.assert_array_equal(np.asarray(unpacked), codes)


def test_the_bitstream_holds_each_code_in_its_bits_least_significant_first():
    assert bitpack.pack(np.array([1, -1, 0, -2]), 2).tolist() == [0b10001101]
    assert bitpack.packed_bytes(1000, 3) == 375  # the cost model's 3 bits a weight


def test_a_dsp_word_holds_the_weights_of_one_b_port_at_their_slices():
    packing = hikonv_packing(4)  # two 4-bit weights in an 18-bit B port, 9-bit slices
    assert (packing.weights, packing.slice_bits) == (2, 9)
    data = bitpack.pack(np.array([3, -2, 1]), 4, layout="dsp")
    stream = int.from_bytes(data.tobytes(), "little")
    first, second = stream & (2 ** 18 - 1), stream >> 18
    assert first == 3 | (0b1110 << 9) and second == 1
    assert bitpack.packed_bytes(3, 4, layout="dsp") == 5  # two 18-bit words


@pytest.mark.parametrize("codes, bits, layout, message", [
    ([0], 1, "bitstream", "packed at 2 to 8 bits"),
    ([0], 9, "bitstream", "packed at 2 to 8 bits"),
    ([2], 2, "bitstream", "do not fit 2-bit"),
    ([-129], 8, "dsp", "do not fit 8-bit"),
    ([0], 4, "nibbles", "layout must be one of"),
])
def test_what_cannot_be_packed_is_refused(codes, bits, layout, message):
    with pytest.raises(ValueError, match=message):
        bitpack.pack(np.array(codes), bits, layout=layout)


def test_too_few_bytes_for_the_codes_asked_is_an_error():
    with pytest.raises(ValueError, match="hold fewer than"):
        bitpack.unpack(np.zeros(1, np.uint8), 5, 2)
