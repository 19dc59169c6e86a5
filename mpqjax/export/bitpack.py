"""Bit-packed weight codes: b-bit two's-complement fields, back to back or in DSP words.

Two layouts, both a byte string (``uint8``) read least significant bit first:

- ``"bitstream"``: code ``i`` occupies bits ``[i*b, (i+1)*b)`` of the stream. ``n`` codes take ``ceil(n*b/8)``
  bytes: the size the cost model counts.
- ``"dsp"``: the memory image of a packed-operand FPGA multiplier (`mpqjax.cost.packing.hikonv_packing`, a 27x18
  DSP with a 48-bit accumulator by default). Each word of the multiplier's B port (18 bits) holds ``K`` weights of
  ``b`` bits, weight ``j`` at bit ``j*S`` (``K`` and the slice width ``S`` from HiKonv's rule at ``b`` bits; the
  guard bits between slices are zero), and the 18-bit words follow each other as a bitstream. This is what the
  accelerator loads into its weight ports as it is: no repacking on the device, at the price of the guard bits
  (at 4 bits, two weights per 18-bit word: 9 bits a weight).

`pack` and `unpack` run in NumPy; `unpack_jax` is the same unpacking in JAX, which an exported integer program
runs on its stored bytes, so the program file carries the weights at their packed size.

Example:
    >>> data = pack(np.array([1, -1, 0, -2]), 2)
    >>> data.tolist(), unpack(data, 4, 2).tolist()
    ([141], [1, -1, 0, -2])
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np

from mpqjax.cost.packing import hikonv_packing

__all__ = ["LAYOUTS", "MAX_PACKED_BITS", "pack", "packed_bytes", "unpack", "unpack_jax"]

LAYOUTS = ("bitstream", "dsp")
#: Codes of 2 to 8 bits are packed (int8 codes: the integer program's operands).
MAX_PACKED_BITS = 8
_MIN_PACKED_BITS = 2
_PORT_BITS = 18  # the B port of the default DSP, which holds the weights


def _check(bits: int, layout: str) -> int:
    if layout not in LAYOUTS:
        raise ValueError(f"packing layout must be one of {LAYOUTS}, got {layout!r}")
    if not (float(bits) == int(bits) and _MIN_PACKED_BITS <= int(bits) <= MAX_PACKED_BITS):
        raise ValueError(f"weights are packed at {_MIN_PACKED_BITS} to {MAX_PACKED_BITS} bits, got {bits}")
    return int(bits)


def _word_layout(bits: int) -> tuple[int, int]:
    """``(weights per DSP word, slice width)`` at ``bits`` bits."""
    packing = hikonv_packing(bits)
    return packing.weights, packing.slice_bits


def _fields_to_bytes(fields: np.ndarray, width: int) -> np.ndarray:
    unsigned = np.asarray(fields, np.uint64)
    bit_matrix = (unsigned[:, None] >> np.arange(width, dtype=np.uint64)) & np.uint64(1)
    return np.packbits(bit_matrix.astype(np.uint8).reshape(-1), bitorder="little")


def _bytes_to_fields(data: np.ndarray, count: int, width: int) -> np.ndarray:
    stream = np.unpackbits(np.asarray(data, np.uint8), bitorder="little")
    if stream.size < count * width:
        raise ValueError(f"{data.size} bytes hold fewer than {count} fields of {width} bits")
    bit_matrix = stream[: count * width].reshape(count, width).astype(np.uint64)
    return (bit_matrix << np.arange(width, dtype=np.uint64)).sum(axis=1)


def _sign_extend(fields, bits: int, xp):
    fields = fields.astype(xp.int32)
    return fields - ((fields >> (bits - 1)) & 1) * (1 << bits)


def pack(codes, bits: int, *, layout: str = "bitstream") -> np.ndarray:
    """The ``uint8`` bytes of integer codes (flattened, C order) at ``bits`` bits in ``layout``.

    Raises:
        ValueError: an unknown layout, a bit-width outside 2..8, or a code outside ``[-2^(b-1), 2^(b-1) - 1]``.
    """
    bits = _check(bits, layout)
    flat = np.asarray(codes).reshape(-1).astype(np.int64)
    if flat.size and (flat.min() < -(1 << (bits - 1)) or flat.max() > (1 << (bits - 1)) - 1):
        raise ValueError(f"codes in [{flat.min()}, {flat.max()}] do not fit {bits}-bit two's complement")
    fields = flat & ((1 << bits) - 1)
    if layout == "bitstream":
        return _fields_to_bytes(fields, bits)
    per_word, slice_bits = _word_layout(bits)
    words = np.zeros(-(-flat.size // per_word) * per_word, np.int64)
    words[: flat.size] = fields
    words = (words.reshape(-1, per_word) << (np.arange(per_word) * slice_bits)).sum(axis=1)
    return _fields_to_bytes(words, _PORT_BITS)


def packed_bytes(count: int, bits: int, *, layout: str = "bitstream") -> int:
    """How many bytes `pack` gives for ``count`` codes."""
    bits = _check(bits, layout)
    if layout == "bitstream":
        return -(-count * bits // 8)
    per_word, _ = _word_layout(bits)
    words = -(-count // per_word)
    return -(-words * _PORT_BITS // 8)


def _unpack_with(read_fields, xp, unsigned, data, count: int, bits: int, layout: str):
    """The codes of packed bytes, with ``read_fields(data, count, width)`` reading unsigned fields of a bitstream
    in the array module ``xp`` (its ``unsigned`` type wide enough for a DSP word)."""
    bits = _check(bits, layout)
    if layout == "bitstream":
        fields = read_fields(data, count, bits)
    else:
        per_word, slice_bits = _word_layout(bits)
        words = read_fields(data, -(-count // per_word), _PORT_BITS)
        shifts = xp.arange(per_word, dtype=unsigned) * unsigned(slice_bits)
        fields = ((words[:, None] >> shifts) & unsigned((1 << bits) - 1)).reshape(-1)[:count]
    return _sign_extend(fields, bits, xp).astype(xp.int8)


def unpack(data, count: int, bits: int, *, layout: str = "bitstream") -> np.ndarray:
    """The ``count`` int8 codes that `pack` wrote into ``data`` (NumPy)."""
    return _unpack_with(_bytes_to_fields, np, np.uint64, data, count, bits, layout)


def _fields_jax(data, count: int, width: int):
    """``count`` unsigned fields of ``width`` (<= 25) bits from a little-endian bitstream, in JAX."""
    padded = jnp.concatenate([jnp.asarray(data, jnp.uint8), jnp.zeros(4, jnp.uint8)]).astype(jnp.uint32)
    start = jnp.arange(count, dtype=jnp.uint32) * width
    first = start >> 3
    word = padded[first] | (padded[first + 1] << 8) | (padded[first + 2] << 16) | (padded[first + 3] << 24)
    return (word >> (start & 7)) & jnp.uint32((1 << width) - 1)


def unpack_jax(data, count: int, bits: int, *, layout: str = "bitstream"):
    """`unpack` in JAX: the int8 codes of packed bytes (``count`` and ``bits`` are static)."""
    return _unpack_with(_fields_jax, jnp, jnp.uint32, data, count, bits, layout)
