"""The Pareto front of a search: the trials no other trial beats in both accuracy and cost.

Example:
    >>> pareto_front([0.9, 0.8, 0.95, None], [2.0, 3.0, 5.0, 1.0]).tolist()
    [0, 2]
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = ["pareto_front"]


def _as_float_array(values: Sequence) -> np.ndarray:
    return np.array([np.nan if value is None else value for value in values], dtype=float)


def pareto_front(accuracy: Sequence, cost: Sequence) -> np.ndarray:
    """The non-dominated points when maximising accuracy and minimising cost, sorted by increasing cost.

    A point is dominated when another is at least as accurate and at most as costly, and strictly better in one.
    Identical points (same accuracy and cost) are all non-dominated; the front keeps the first of them only. Points
    with a missing or non-finite accuracy or cost (failed trials) are left out.

    Args:
        accuracy: one value per point; None or NaN for a failed trial.
        cost: one value per point (size, latency, ...); None or NaN when unknown.

    Returns:
        Integer indices into the inputs: along the front, cost increases and accuracy strictly increases.

    Raises:
        ValueError: ``accuracy`` and ``cost`` are not two lists of the same length.

    Example:
        >>> pareto_front([0.9, 0.8, 0.95, None], [2.0, 3.0, 5.0, 1.0]).tolist()
        [0, 2]
    """
    accuracy, cost = _as_float_array(accuracy), _as_float_array(cost)
    if accuracy.shape != cost.shape or accuracy.ndim != 1:
        raise ValueError(f"accuracy and cost must be two lists of the same length, got {accuracy.shape} and "
                         f"{cost.shape}")
    valid = np.flatnonzero(np.isfinite(accuracy) & np.isfinite(cost))
    # Cheapest first; at equal cost the most accurate first, and among identical points the lowest index first: a
    # sweep then keeps exactly the points more accurate than everything cheaper or equally cheap before them.
    order = valid[np.lexsort((valid, -accuracy[valid], cost[valid]))]
    front, best_accuracy = [], -np.inf
    for index in order:
        if accuracy[index] > best_accuracy:
            front.append(index)
            best_accuracy = accuracy[index]
    return np.array(front, dtype=int)
