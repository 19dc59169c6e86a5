"""Specification of mpqjax.store.selection: the one best trial of a search, tie-broken on constructed trial logs.

Accuracies are float32 fractions k/180, as a search on the digits validation split (180 images) records them; the
resolution is one validation example.
"""

import math

import numpy as np
import pytest

from mpqjax import report, store
from mpqjax.store import selection

EXAMPLES = 180
RESOLUTION = 1 / EXAMPLES


def accuracy(correct):
    """A validation accuracy as a search records it: a float32 fraction of the 180 examples."""
    return float(np.float32(correct / EXAMPLES))


def trial(number, correct, size, latency, *, feasible=True, status="ok"):
    return {"trial": number, "status": status, "validation_accuracy": None if correct is None else accuracy(correct),
            "objective": None if correct is None else accuracy(correct), "feasible": feasible, "size_bytes": size,
            "latency_seconds": latency}


def chosen(records, resolution=RESOLUTION):
    best = selection.best_trial(records, resolution=resolution)
    return None if best is None else best["trial"]


def test_the_issue_case_a_later_smaller_faster_tie_is_chosen_over_the_earliest():
    # Six trials at 177/180; the earliest (trial 10) was exported before; trial 54 is 7 % smaller and 17 % faster.
    records = [trial(n, 177, size, latency) for n, size, latency in
               ((10, 15460, 1.52e-6), (21, 15800, 1.40e-6), (33, 16020, 1.31e-6), (40, 15460, 1.60e-6),
                (54, 14340, 1.26e-6), (58, 14900, 1.20e-6))]
    records += [trial(n, 170, 9000, 1e-6) for n in (60, 61)]  # smaller but 7 examples worse: not tied
    assert chosen(records) == 54
    choice = selection.choose(records, resolution=RESOLUTION)
    assert [r["trial"] for r in choice.tied] == [10, 21, 33, 40, 54, 58]
    assert [r["trial"] for r in choice.front] == [54, 58]  # 10, 21, 33 and 40 are larger and slower than 54 or 58
    assert selection.explain_choice(records, resolution=RESOLUTION) == (
        "trial 54: validation accuracy 0.9833, the best; of the 6 trials within one validation example (0.0056) of "
        "it, the smallest on the size/latency front")


def test_accuracies_within_one_validation_example_tie_two_examples_do_not():
    records = [trial(0, 177, 15000, 1.5e-6), trial(1, 176, 14000, 1.4e-6), trial(2, 175, 13000, 1.3e-6)]
    assert chosen(records) == 1  # 176/180 is one example below the top (float32 noise included), 175/180 two
    assert chosen(records, resolution=2 * RESOLUTION) == 2
    assert chosen(records, resolution=0.0) == 0 == chosen(records[:1])  # exact ties only: the most accurate
    assert selection.explain_choice(records, resolution=RESOLUTION) == (
        "trial 1: validation accuracy 0.9778, within one validation example (0.0056) of the best 0.9833 (trial 0); "
        "of the 2 such trials, the smallest on the size/latency front")


def test_the_tie_window_is_anchored_at_the_most_accurate_trial():
    # 176 ties with 177 and 175 with 176, but 175 does not tie with the top: ties are not chained.
    records = [trial(0, 177, 15000, 1.5e-6), trial(1, 176, 14000, 1.5e-6), trial(2, 175, 10000, 1.5e-6)]
    assert chosen(records) == 1


def test_an_infeasible_or_failed_trial_is_never_chosen_nor_sets_the_top():
    records = [trial(0, 180, 9000, 1e-6, feasible=False),  # the most accurate, but it breaks a limit
               trial(1, None, 8000, 1e-6, status="failed"),
               {**trial(2, 179, 8000, 1e-6), "validation_accuracy": math.nan},  # ok but no accuracy: not ok
               trial(3, 170, 16000, 2e-6), trial(4, 169, 15000, 2e-6), trial(5, 160, 10000, 1e-6)]
    assert chosen(records) == 4  # the top is 170 (the feasible ones'): 169 ties, 160 does not
    choice = selection.choose(records, resolution=RESOLUTION)
    assert [r["trial"] for r in choice.candidates] == [3, 4, 5] and choice.top_accuracy == accuracy(170)
    assert [r["trial"] for r in choice.more_accurate_infeasible] == [0]
    assert selection.explain_choice(records, resolution=RESOLUTION).endswith("; 1 more accurate trial breaks a limit")
    assert chosen([r for r in records if r["trial"] < 3]) is None
    assert selection.explain_choice(records[:2]) == ("no trial is ok and feasible (2 trials: 1 failed, 1 breaking a "
                                                     "limit)")
    assert chosen([]) is None
    # A record without a "feasible" field counts as feasible.
    assert chosen([{k: v for k, v in trial(7, 150, 1.0, 1.0).items() if k != "feasible"}]) == 7


def test_the_front_breaks_a_tie_the_earliest_would_have_lost():
    # Trial 0 is larger and slower than trial 2 (dominated); trial 1 is faster but larger than trial 2.
    records = [trial(0, 177, 12000, 3e-6), trial(1, 177, 14000, 1e-6), trial(2, 177, 10000, 2e-6)]
    choice = selection.choose(records, resolution=RESOLUTION)
    assert [r["trial"] for r in choice.front] == [2, 1] and choice.best["trial"] == 2


def test_equal_sizes_are_broken_by_latency_then_accuracy_then_the_earlier_trial():
    assert chosen([trial(0, 177, 10000, 2e-6), trial(1, 176, 10000, 1e-6)]) == 1  # faster, one example worse
    assert selection.explain_choice([trial(0, 177, 10000, 2e-6), trial(1, 176, 10000, 1e-6)],
                                    resolution=RESOLUTION).endswith(
        "the smallest on the size/latency front, the fastest of those of its size")
    # Equal size and latency: the more accurate, even when later.
    assert chosen([trial(0, 176, 10000, 1e-6), trial(1, 177, 10000, 1e-6)]) == 1
    # Equal in size, latency and accuracy: the earlier trial, last of all.
    equal = [trial(5, 177, 10000, 1e-6), trial(6, 177, 10000, 1e-6), trial(3, 177, 12000, 1e-6)]
    assert chosen(equal) == 5
    assert selection.explain_choice(equal, resolution=RESOLUTION).endswith(
        "the earliest of those equal in size, latency and accuracy")


def test_an_unknown_cost_ranks_after_every_known_one():
    records = [trial(0, 177, None, None), trial(1, 177, 20000, None), trial(2, 177, 20000, 1e-6)]
    assert chosen(records) == 2
    assert chosen(records[:2]) == 1 and chosen(records[:1]) == 0


def test_a_single_best_is_explained_and_exact_ties_without_a_resolution():
    records = [trial(0, 170, 10000, 1e-6), trial(1, 177, 15000, 2e-6)]
    assert selection.explain_choice(records, resolution=RESOLUTION) == (
        "trial 1: the highest validation accuracy 0.9833 of the 2 feasible trials, no other within one validation "
        "example (0.0056)")
    tied = [trial(0, 177, 15000, 2e-6), trial(1, 177, 14000, 2e-6)]
    assert selection.explain_choice(tied) == (
        "trial 1: validation accuracy 0.9833, the best; of the 2 trials tied at it, the smallest on the size/latency "
        "front")


@pytest.mark.parametrize("resolution", [-0.01, math.nan, math.inf, None, "0.1"])
def test_a_resolution_that_is_not_a_finite_non_negative_number_is_refused(resolution):
    with pytest.raises(ValueError, match="resolution must be a finite number >= 0"):
        selection.best_trial([trial(0, 177, 1.0, 1.0)], resolution=resolution)


def test_what_a_search_records_and_how_it_is_read_back():
    settings = selection.selection_settings(EXAMPLES)
    assert settings == {"rule": selection.RULE, "validation_examples": 180, "resolution": 1 / 180}
    for bad in (0, -3, 1.5, True, None):
        with pytest.raises(ValueError, match="validation_examples must be an integer >= 1"):
            selection.selection_settings(bad)
    best_config, search = {"selection": settings}, {"selection": {"resolution": 0.01}}
    assert selection.recorded_resolution(best_config, search) == 1 / 180
    assert selection.recorded_resolution(None, search) == 0.01
    assert selection.recorded_resolution({}, {"selection": {"resolution": -1}}, None) is None
    assert selection.recorded_resolution() is None


def test_one_definition_reexported_by_the_store_and_the_report():
    assert store.best_trial is selection.best_trial is report.best_trial
    assert store.run_folder.best_trial is selection.best_trial
    assert set(selection.__all__) >= {"best_trial", "choose", "explain_choice", "selection_settings"}
