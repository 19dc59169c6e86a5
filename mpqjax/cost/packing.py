"""Operand packing: how many low-bit multiplications one DSP performs, per bit-width.

A packing table lists multiplications per DSP for every bit-width 1..16 (entry ``b - 1`` at ``b`` bits). It covers
1 bit, below the configurations' range (`mpqjax.nn.config.MIN_BITS`), because it describes the hardware: target
files list 16 entries. The paper's table (`PAPER_PACKING`) lists some widths; `hikonv_packing_table` derives a full
one from HiKonv's rule (Liu et al.) for any A x B multiplier and accumulator.

Example:
    >>> packing_table(PAPER_PACKING)[:8]
    (15, 15, 6, 6, 2, 2, 2, 2)
    >>> hikonv_packing(4).products
    6
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import NamedTuple

from mpqjax.cost._checks import as_int
from mpqjax.nn.config import MAX_BITS

__all__ = ["PAPER_PACKING", "HiKonvPacking", "hikonv_packing", "hikonv_packing_table", "packing_table"]

# A packing table's first entry is for 1-bit operands: entry ``b - 1`` holds ``b`` bits.
_LOWEST_BITS = 1

#: The paper's packing (Section III.C): multiplications per 27x18 DSP for the bit-widths it lists.
PAPER_PACKING: dict[int, int] = {2: 15, 3: 6, 4: 6, 6: 2, 8: 2, 16: 1}


def packing_table(entries: Mapping[int, int] | Sequence[int]) -> tuple[int, ...]:
    """Multiplications per DSP for every bit-width 1..16, from a full list or a sparse mapping.

    A sparse mapping lists some bit-widths; a width that is not listed uses the entry of the next wider listed one
    (its operands are padded to that width), so the table must list 16 or a wider entry must cover every width.

    Args:
        entries: a sequence of 16 positive integers (bit-widths 1..16 in order) or a mapping {bits: multiplications}.

    Returns:
        A tuple of 16 positive integers; entry ``b - 1`` is the multiplications per DSP at ``b`` bits.

    Example:
        >>> packing_table(PAPER_PACKING)[:8]
        (15, 15, 6, 6, 2, 2, 2, 2)
    """
    if isinstance(entries, Mapping):
        sparse = {}
        for key, value in entries.items():
            bits = as_int(key, "packing bit-width")
            if not _LOWEST_BITS <= bits <= MAX_BITS:
                raise ValueError(f"packing lists {bits} bits, outside {_LOWEST_BITS}..{MAX_BITS}")
            sparse[bits] = as_int(value, f"packing at {bits} bits")
        if MAX_BITS not in sparse:
            raise ValueError(f"a sparse packing table must list {MAX_BITS} bits (the FiP16 baseline)")
        table = []
        for bits in range(_LOWEST_BITS, MAX_BITS + 1):
            table.append(sparse[min(listed for listed in sparse if listed >= bits)])
    else:
        if isinstance(entries, (str, bytes)) or len(entries) != MAX_BITS:
            raise ValueError(f"a packing list needs {MAX_BITS} entries (bit-widths 1..{MAX_BITS})")
        table = [as_int(value, f"packing at {bits} bits") for bits, value in enumerate(entries, start=1)]
    for bits, value in enumerate(table, start=1):
        if value < 1:
            raise ValueError(f"packing at {bits} bits must be at least 1 multiplication per DSP, got {value}")
    return tuple(table)


class HiKonvPacking(NamedTuple):
    """One packed multiplication by HiKonv's rule: ``activations`` x ``weights`` operands in one multiply."""

    activations: int  # operands packed in the A port (HiKonv's N)
    weights: int  # operands packed in the B port (HiKonv's K)
    products: int  # multiplications done by one multiply, N*K
    additions: int  # additions done for free, N*K - (N+K-1): products that land in a shared output slice
    slice_bits: int  # bits per packed slice, p + q + guard
    guard_bits: int  # ceil(log2(min(N, K))) (+ extra): room for the sum of overlapping products


def hikonv_packing(
    bits: int, *, multiplier_bits: tuple[int, int] = (27, 18), accumulator_bits: int = 48, extra_guard_bits: int = 0
) -> HiKonvPacking:
    """The most products one A x B multiplier yields for ``bits``-bit operands under HiKonv's packing rule.

    HiKonv packs N activations in the A port and K weights in the B port, each in a slice of
    ``S = p + q + G`` bits with ``G = ceil(log2(min(N, K)))`` guard bits (so the up to min(N, K) products summed into
    one output slice do not overflow into the next); one multiply then yields the N*K products of a 1-D convolution
    as N+K-1 output slices, i.e. N*K multiplications and N*K-(N+K-1) additions. The operands fit when
    ``(N-1)*S + p <= A``, ``(K-1)*S + q <= B`` and the ``(N+K-2)*S + p + q + G`` output bits fit the accumulator.
    Among all (N, K) that fit, the one with the most products wins (ties: more activations).

    With the paper's 27x18 DSP this gives 2 products at 8 and 6 bits, 6 (+2 additions) at 4 bits and 15 (+8
    additions) at 2 bits, as in the paper; at 3 bits it gives 8 products (4 x 2 operands in 7-bit slices, 3
    additions) where the paper's table uses the 4-bit layout (6). Operands are treated as unsigned slices; signed
    operands use the same slices with HiKonv's sign correction.

    Args:
        bits: operand bit-width p = q (weights and activations share it).
        multiplier_bits: (A, B) input port widths of the multiplier.
        accumulator_bits: width of the accumulator that holds the packed result.
        extra_guard_bits: guard bits added to every slice, e.g. ``ceil(log2(c))`` to accumulate c packed products
            before reading the slices out.

    Returns:
        A `HiKonvPacking`.

    Raises:
        ValueError: when a single operand does not fit the ports.

    Example:
        >>> hikonv_packing(4).products, hikonv_packing(4).additions
        (6, 2)
    """
    bits = as_int(bits, "bits")
    port_a, port_b = (as_int(value, "multiplier_bits") for value in multiplier_bits)
    if bits < 1 or bits > port_a or bits > port_b:
        raise ValueError(f"{bits}-bit operands do not fit a {port_a}x{port_b} multiplier")
    best = None
    for activations in range(1, port_a // bits + 1):
        for weights in range(1, port_b // bits + 1):
            guard = math.ceil(math.log2(min(activations, weights))) + extra_guard_bits
            slice_bits = 2 * bits + guard
            fits = (
                (activations - 1) * slice_bits + bits <= port_a
                and (weights - 1) * slice_bits + bits <= port_b
                and (activations + weights - 2) * slice_bits + 2 * bits + guard <= accumulator_bits
            )
            if not fits:
                continue
            products = activations * weights
            candidate = HiKonvPacking(
                activations, weights, products, products - (activations + weights - 1), slice_bits, guard
            )
            if best is None or (products, activations) > (best.products, best.activations):
                best = candidate
    if best is None:  # a single product of p + q bits must fit the accumulator
        raise ValueError(f"{bits}-bit products do not fit a {accumulator_bits}-bit accumulator")
    return best


def hikonv_packing_table(
    *, multiplier_bits: tuple[int, int] = (27, 18), accumulator_bits: int = 48, extra_guard_bits: int = 0
) -> tuple[int, ...]:
    """Multiplications per DSP for bit-widths 1..16 by HiKonv's rule (see `hikonv_packing`).

    Args:
        multiplier_bits, accumulator_bits, extra_guard_bits: the DSP, as in `hikonv_packing`.

    Returns:
        A packing table: a tuple of 16 positive integers, entry ``b - 1`` at ``b`` bits.

    Example:
        >>> hikonv_packing_table()[:8]
        (28, 15, 8, 6, 6, 2, 2, 2)
    """
    return tuple(
        hikonv_packing(
            bits, multiplier_bits=multiplier_bits, accumulator_bits=accumulator_bits, extra_guard_bits=extra_guard_bits
        ).products
        for bits in range(_LOWEST_BITS, MAX_BITS + 1)
    )
