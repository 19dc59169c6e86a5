"""The optimiser: search spaces, deterministic 1-D k-means, Parzen estimators and k-means TPE.

Pure JAX: no Flax, no files. `KMeansTPE` follows the ask/tell shape of optax and evosax
(``state = opt.init(key)``, ``x, state = opt.ask(key, state, n)``, ``state = opt.tell(state, x, y)``).
"""

from mpqjax._lazy import attach

__getattr__, __dir__, __all__ = attach(
    __name__,
    submodules=["cluster", "parzen", "space", "tpe"],
    names={
        "Dimension": "space", "SearchSpace": "space", "categorical": "space", "integer": "space",
        "ordinal": "space", "real": "space",
        "KMeansResult": "cluster", "kmeans": "cluster", "kmeans_1d": "cluster",
        "KMeansTPE": "tpe", "TPEParams": "tpe", "TPEState": "tpe", "auto_batch": "tpe", "auto_joint": "tpe",
        "run": "tpe",
    },
)
