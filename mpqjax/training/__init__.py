"""Training: float training, quantisation-aware fine-tunes of one configuration or a population."""

from mpqjax._lazy import attach

__getattr__, __dir__, __all__ = attach(__name__, submodules=["population", "train"])
