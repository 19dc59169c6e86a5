"""Allocation of one discrete choice per item under additive budgets: the solvers of the one-shot peer methods.

Both peers of the harness that are not black-box searches reduce to the same problem: items ``i`` (layers, or
channels) each take one option ``j`` (a bit-width) from an allowed set; option ``j`` of item ``i`` adds
``loss[i, j]`` to the objective (a sensitivity, a distortion) and ``costs[r, i, j]`` to resource ``r`` (bytes,
cycles, joules), and every resource has a budget.

- `solve_ilp` solves it exactly as an integer linear programme (HAWQ-V3's formulation: one-hot choice variables,
  ``min sum loss`` subject to ``sum costs[r] <= budgets[r]``), with SciPy's HiGHS branch and bound.
- `lagrangian_choice` and `bisect_multiplier` solve the rate-distortion form (one resource, the rate): for a
  multiplier ``lam`` every item independently takes ``argmin loss + lam * rate``; the rate of that choice falls as
  ``lam`` grows, so bisection finds the smallest multiplier whose choice fits the budget. It is linear in the items
  and reaches only the points on each item's lower convex hull, so the budget is met from below, not exactly.

Example:
    >>> loss = np.array([[0.0, 1.0, 5.0], [0.0, 2.0, 4.0]])      # two items, three options each
    >>> size = np.array([[[8.0, 4.0, 2.0], [8.0, 4.0, 2.0]]])    # one resource: bytes
    >>> solve_ilp(loss, size, [10.0]).tolist()                   # 4 + 4 bytes, loss 3
    [1, 1]
"""

from __future__ import annotations

import numpy as np

__all__ = ["bisect_multiplier", "lagrangian_choice", "solve_ilp"]


def _check(loss, costs, allowed):
    loss = np.asarray(loss, np.float64)
    if loss.ndim != 2 or loss.size == 0:
        raise ValueError(f"loss must be a non-empty [items, options] array, got shape {loss.shape}")
    costs = np.asarray(costs, np.float64).reshape(-1, *loss.shape)
    allowed = np.ones(loss.shape, bool) if allowed is None else np.asarray(allowed, bool)
    if allowed.shape != loss.shape:
        raise ValueError(f"allowed has shape {allowed.shape}, loss {loss.shape}")
    empty = np.flatnonzero(~allowed.any(axis=1))
    if len(empty):
        raise ValueError(f"item {int(empty[0])} has no allowed option")
    if not (np.isfinite(loss[allowed]).all() and np.isfinite(costs[:, allowed]).all()):
        raise ValueError("loss and costs must be finite on the allowed options")
    return loss, costs, allowed


def solve_ilp(loss, costs, budgets, *, allowed=None, time_limit: float = 60.0) -> np.ndarray:
    """The exact minimiser of ``sum_i loss[i, j_i]`` subject to ``sum_i costs[r, i, j_i] <= budgets[r]`` for all r.

    Args:
        loss: ``[items, options]`` objective of each option.
        costs: ``[resources, items, options]`` (or ``[items, options]`` for one resource).
        budgets: ``[resources]`` upper bounds (``inf`` for none).
        allowed: optional ``[items, options]`` booleans; an option not allowed is never chosen.
        time_limit: seconds the solver may take (an ILP of a few hundred binaries takes milliseconds).

    Returns:
        ``[items]`` int array: the chosen option of each item.

    Raises:
        ValueError: no choice meets the budgets, or malformed arguments.
    """
    from scipy import optimize, sparse  # SciPy only here: importing mpqjax.optim stays light

    loss, costs, allowed = _check(loss, costs, allowed)
    budgets = np.asarray(budgets, np.float64).reshape(-1)
    if budgets.shape[0] != costs.shape[0]:
        raise ValueError(f"{costs.shape[0]} resources but {budgets.shape[0]} budgets")
    items, options = loss.shape
    # cheapest option per item first: a budget below the cheapest choice is infeasible, say so before solving
    cheapest = np.where(allowed, costs, np.inf).min(axis=2).sum(axis=1)
    over = np.flatnonzero(cheapest > budgets)
    if len(over):
        raise ValueError(f"no choice meets budget {int(over[0])}: the cheapest costs {cheapest[over[0]]:.6g}, the "
                         f"budget is {budgets[over[0]]:.6g}")
    one_hot = sparse.kron(sparse.eye(items), np.ones((1, options)))  # each item takes exactly one option
    finite = np.isfinite(budgets)
    constraints = [optimize.LinearConstraint(one_hot, 1, 1)]
    if finite.any():
        constraints.append(optimize.LinearConstraint(costs[finite].reshape(int(finite.sum()), -1), -np.inf,
                                                     budgets[finite]))
    # scale the objective: HiGHS's tolerances are absolute, sensitivities can be 1e-9
    scale = max(float(np.abs(loss[allowed]).max()), 1e-300)
    result = optimize.milp(np.where(allowed, loss / scale, 0.0).reshape(-1), constraints=constraints,
                           integrality=np.ones(items * options), bounds=optimize.Bounds(0, allowed.reshape(-1)),
                           options={"time_limit": time_limit})
    if result.x is None:
        raise ValueError(f"the integer programme found no solution ({result.message})")
    return np.argmax(result.x.reshape(items, options), axis=1)


def lagrangian_choice(loss, rate, multiplier: float, *, allowed=None) -> np.ndarray:
    """Each item's option minimising ``loss + multiplier * rate`` (ties: the lower rate, then the first).

    Args:
        loss: ``[items, options]`` distortion of each option.
        rate: ``[items, options]`` rate (cost) of each option.
        multiplier: the Lagrange multiplier (>= 0).
        allowed: optional ``[items, options]`` booleans.

    Returns:
        ``[items]`` int array.
    """
    loss, rate, allowed = _check(loss, rate, allowed)
    rate = rate[0]
    total = np.where(allowed, loss + multiplier * rate, np.inf)
    best = total.min(axis=1, keepdims=True)
    # among the (near-)ties of the minimum, the cheapest: keeps the rate monotone in the multiplier
    tied = np.isclose(total, best, rtol=1e-12, atol=0.0) & allowed
    return np.argmin(np.where(tied, rate, np.inf), axis=1)


def bisect_multiplier(loss, rate, budget: float, *, allowed=None, iterations: int = 100
                      ) -> tuple[np.ndarray, float]:
    """The choice of the smallest multiplier whose total rate is within ``budget`` (rate-distortion allocation).

    The rate of `lagrangian_choice` does not grow as the multiplier grows, so the multipliers whose choice fits form
    an interval ``[lam*, inf)``; bisection on a log scale finds ``lam*`` to ``iterations`` halvings.

    Args:
        loss, rate, allowed: as in `lagrangian_choice`.
        budget: the largest total rate.
        iterations: bisection steps.

    Returns:
        ``(choice [items], multiplier)``.

    Raises:
        ValueError: even the cheapest choice exceeds the budget.
    """
    loss, rates, allowed = _check(loss, rate, allowed)
    rate = rates[0]
    total_rate = lambda choice: float(rate[np.arange(len(choice)), choice].sum())  # noqa: E731
    free = lagrangian_choice(loss, rate, 0.0, allowed=allowed)
    if total_rate(free) <= budget:
        return free, 0.0
    cheapest = float(np.where(allowed, rate, np.inf).min(axis=1).sum())
    if cheapest > budget:
        raise ValueError(f"no choice meets the budget: the cheapest rate is {cheapest:.6g}, the budget {budget:.6g}")
    # a multiplier above every loss difference per rate difference picks the cheapest option everywhere
    spread = float(np.ptp(loss[allowed])) + 1.0
    steps = np.abs(np.diff(np.sort(np.unique(rate[allowed])))) if np.unique(rate[allowed]).size > 1 else [1.0]
    low, high = 0.0, spread / max(float(np.min(steps)), 1e-300) * 2.0
    for _ in range(iterations):
        middle = 0.5 * (low + high) if low == 0.0 else float(np.sqrt(low * high))
        if total_rate(lagrangian_choice(loss, rate, middle, allowed=allowed)) <= budget:
            high = middle
        else:
            low = middle
        if high - low <= 1e-12 * high:
            break
    return lagrangian_choice(loss, rate, high, allowed=allowed), high
