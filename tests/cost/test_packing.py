"""Specification of `mpqjax.cost.packing`: multiplications per DSP by bit-width, the paper's table and HiKonv's rule.

Expected packings are worked out by hand from HiKonv's slice rule (written next to each case), not copied from code.
"""

import pytest

from mpqjax import cost as cost_model


def test_paper_packing_table_pads_unlisted_widths_to_the_next_listed_one():
    table = cost_model.packing_table(cost_model.PAPER_PACKING)
    assert len(table) == 16
    by_bits = dict(enumerate(table, start=1))
    assert [by_bits[b] for b in (2, 3, 4, 6, 8, 16)] == [15, 6, 6, 2, 2, 1]  # the paper's numbers
    assert [by_bits[b] for b in (1, 5, 7, 9, 15)] == [15, 2, 2, 1, 1]  # padded to 2, 6, 8, 16, 16 bits
    assert cost_model.FPGATarget().packing == table


def test_packing_table_takes_a_full_list_of_16_entries():
    entries = list(range(16, 0, -1))
    assert cost_model.packing_table(entries) == tuple(entries)
    assert cost_model.packing_table({"4": "3", 16: 1})[:5] == (3, 3, 3, 3, 1)  # keys and values may be numeric text


def test_packing_table_rejects_bad_tables():
    with pytest.raises(ValueError, match="must list 16 bits"):
        cost_model.packing_table({2: 15, 8: 2})
    with pytest.raises(ValueError, match="16 entries"):
        cost_model.packing_table([1, 2, 3])
    with pytest.raises(ValueError, match="at least 1"):
        cost_model.packing_table([0] + [1] * 15)
    with pytest.raises(ValueError, match="outside 1..16"):
        cost_model.packing_table({17: 1, 16: 1})
    with pytest.raises(ValueError, match="packing at 2 bits must be an integer"):
        cost_model.packing_table([1, 2.5] + [1] * 14)


@pytest.mark.parametrize(
    ("bits", "activations", "weights", "additions", "slice_bits"),
    [
        # 8 bits: 2 activations in 16-bit slices use 16 + 8 = 24 <= 27 bits of port A; one weight in port B.
        (8, 2, 1, 0, 16),
        # 6 bits: 2x1 in 12-bit slices (20 <= 27); 2x2 would need 13 + 6 = 19 > 18 bits of port B.
        (6, 2, 1, 0, 12),
        # 4 bits: 3x2 in 9-bit slices (1 guard bit): A 2*9 + 4 = 22 <= 27, B 9 + 4 = 13 <= 18; 6 products, 4 outputs.
        (4, 3, 2, 2, 9),
        # 2 bits: 5x3 in 6-bit slices (2 guard bits): A 4*6 + 2 = 26, B 2*6 + 2 = 14; 15 products, 7 outputs.
        (2, 5, 3, 8, 6),
    ],
)
def test_hikonv_rule_reproduces_the_papers_packing(bits, activations, weights, additions, slice_bits):
    packing = cost_model.hikonv_packing(bits)
    assert packing.products == cost_model.PAPER_PACKING[bits]
    assert (packing.activations, packing.weights) == (activations, weights)
    assert packing.additions == additions
    assert packing.slice_bits == slice_bits


def test_hikonv_rule_at_3_bits_packs_8_where_the_paper_uses_6():
    # 4 activations x 2 weights in 7-bit slices: A 3*7 + 3 = 24 <= 27, B 7 + 3 = 10 <= 18; 8 products, 5 outputs.
    # The paper runs 3-bit operands in its 4-bit layout (6 products); HiKonv's rule fits 8.
    packing = cost_model.hikonv_packing(3)
    assert (packing.activations, packing.weights, packing.products, packing.additions) == (4, 2, 8, 3)
    assert cost_model.PAPER_PACKING[3] == 6


def test_hikonv_rule_for_other_multipliers():
    # 18x18 multiplier, 4 bits: 2x2 in 9-bit slices (9 + 4 = 13 <= 18); 3x1 would need 2*8 + 4 = 20 > 18.
    assert cost_model.hikonv_packing(4, multiplier_bits=(18, 18)).products == 4
    # 1 bit on 27x18: 7x4 in 4-bit slices (2 guard bits): A 6*4 + 1 = 25, B 3*4 + 1 = 13.
    assert cost_model.hikonv_packing(1).products == 28
    # A guard bit more per slice (to accumulate 2 packed products): 4 bits keep 3x2 in 10-bit slices (A 2*10 + 4
    # = 24, B 10 + 4 = 14), 2 bits lose 5x3 (7-bit slices: A 4*7 + 2 = 30 > 27).
    assert cost_model.hikonv_packing(4, extra_guard_bits=1).products == 6
    assert cost_model.hikonv_packing(2, extra_guard_bits=1).products < 15
    with pytest.raises(ValueError, match="do not fit"):
        cost_model.hikonv_packing(16, multiplier_bits=(12, 12))


def test_hikonv_rule_needs_room_for_one_product_in_the_accumulator():
    # 16-bit operands fit a 27x18 multiplier, but their 32-bit product does not fit a 24-bit accumulator.
    with pytest.raises(ValueError, match="16-bit products do not fit a 24-bit accumulator"):
        cost_model.hikonv_packing(16, accumulator_bits=24)


def test_hikonv_table_is_non_increasing_in_bits_and_16_bits_packs_one():
    for multiplier_bits in ((27, 18), (18, 18), (25, 18), (32, 32)):
        table = cost_model.hikonv_packing_table(multiplier_bits=multiplier_bits)
        assert all(a >= b for a, b in zip(table, table[1:], strict=False))
        assert table[15] == 1
    assert cost_model.hikonv_packing_table()[:8] == (28, 15, 8, 6, 6, 2, 2, 2)
