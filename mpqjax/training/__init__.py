"""Training: float training, quantisation-aware fine-tunes of one configuration or a population, and its devices.

Submodules only (``train`` and ``population`` both define ``finetune``, ``calibrate``, ``predict`` and ``evaluate``,
for one configuration and for a population): `train`, `population`, `feed` (a run's batches, gathered on the
device), `devices` (mesh, distributed runs, memory) and `strategy` (the measured choice of population size and
strategy).
"""

from mpqjax._lazy import attach

__getattr__, __dir__, __all__ = attach(__name__, submodules=["devices", "feed", "population", "strategy", "train"])
