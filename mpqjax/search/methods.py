"""The search methods of the harness: their names and what each one chooses (`METHODS`).

Every method receives the same float model, layer table, dataset splits, cost model and limits (a
`mpqjax.search.problem.Problem`), and its configurations go through the same fine-tune (the trial), the same choice of
the best, final training, report and export. Two kinds:

- *iterative* methods ask an optimiser for configurations and tell it the results, trial after trial:
  ``kmeans_tpe`` (the paper's k-means TPE, the default) and ``random`` (uniform draws from the same space);
- *one-shot* methods compute their configurations once from the float model, then fine-tune each (their trials):
  ``uniform``, ``hawq_ilp``, ``rd_layers`` and ``rd_channels`` (`mpqjax.search.peers`), and the gradient-based
  ``mixprec`` and ``dnas``, which train a supernet of relaxed choices first (`mpqjax.search.relaxed`).

This module is the registry only (plain data, imported by the settings' validation); `mpqjax.search.peers` and
`mpqjax.search.relaxed` compute the one-shot methods' configurations.

Example:
    >>> METHODS["hawq_ilp"].iterative, METHODS["hawq_ilp"].uses_hessian
    (False, True)
"""

from __future__ import annotations

import dataclasses

__all__ = ["DEFAULT_METHOD", "METHODS", "Method", "prunes", "runs_hessian"]

DEFAULT_METHOD = "kmeans_tpe"


@dataclasses.dataclass(frozen=True)
class Method:
    """A search method of the harness.

    Attributes:
        name: its ``--method`` spelling.
        summary: one line of what it does.
        iterative: it asks an optimiser trial after trial (``trials`` configurations); else it proposes its
            configurations once and fine-tunes each.
        searches_widths: it chooses width multipliers (else every width is 1).
        uses_hessian: it reads the Hessian traces (else the Hessian runs only to prune an iterative method's space).
        relaxed: it trains a supernet whose choices are relaxed into probabilities (`mpqjax.search.relaxed`).
    """

    name: str
    summary: str
    iterative: bool
    searches_widths: bool
    uses_hessian: bool
    relaxed: bool = False


METHODS = {method.name: method for method in (
    Method("kmeans_tpe", "k-means tree-structured Parzen estimator over the (pruned) space, the paper's method",
           iterative=True, searches_widths=True, uses_hessian=False),
    Method("random", "uniform random draws from the same space", iterative=True, searches_widths=True,
           uses_hessian=False),
    Method("uniform", "every layer at one bit-width, width 1: each bit-width of bits that meets the limits",
           iterative=False, searches_widths=False, uses_hessian=False),
    Method("hawq_ilp", "HAWQ-V3: Hessian-weighted quantisation error minimised by an integer linear programme",
           iterative=False, searches_widths=False, uses_hessian=True),
    Method("rd_layers", "rate-distortion: per-layer output distortion, Lagrange multiplier bisected to the limit",
           iterative=False, searches_widths=False, uses_hessian=False),
    Method("rd_channels", "rate-distortion per output channel: a weight bit-width per channel, or pruned, under "
           "the size limit", iterative=False, searches_widths=False, uses_hessian=False),
    Method("mixprec", "joint pruning and channel-wise precision (PLiNIO): per-channel weight bit-widths or pruned, "
           "per-layer activation bit-widths, trained as softmax-relaxed choices under the expected cost",
           iterative=False, searches_widths=False, uses_hessian=False, relaxed=True),
    Method("dnas", "differentiable architecture search (DARTS-style) over per-layer bit-widths and width "
           "multipliers under the expected cost, weight and architecture steps alternating", iterative=False,
           searches_widths=True, uses_hessian=False, relaxed=True),
)}


def prunes(config) -> bool:
    """Whether a search's Hessian analysis prunes its space: an iterative method with ``prune``."""
    return METHODS[config.method].iterative and config.prune


def runs_hessian(config) -> bool:
    """Whether a search computes Hessian traces: to prune, or for a method that reads them."""
    return prunes(config) or METHODS[config.method].uses_hessian
