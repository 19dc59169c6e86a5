"""Plug k-means TPE into other optimisation libraries: optuna (`mpqjax.integrations.optuna`) and hyperopt
(`mpqjax.integrations.hyperopt`).

Both build on `mpqjax.integrations.proposals`: `propose` rebuilds a `KMeansTPE` state from a study's encoded
history and asks it, with one compiled program per space bucket (`mpqjax.optim.bucket`) and power-of-two history
bucket, kept on disk by JAX's persistent compilation cache (`cached_proposers` lists the optimisers in use).

Neither optuna nor hyperopt is imported here, so ``import mpqjax`` works without them; they are in the ``peers``
extra (``pip install mpqjax[peers]``). Import the submodules by name: ``from mpqjax.integrations.optuna import
KMeansTPESampler``.
"""

from mpqjax._lazy import attach

__getattr__, __dir__, __all__ = attach(
    __name__,
    submodules=["proposals"],  # not optuna and hyperopt: ``from mpqjax.integrations import *`` must not need them
    names={name: "proposals" for name in (
        "CACHE_SIZE", "DEFAULT_N_INITIAL", "MIN_CAPACITY", "NUMERIC_SETTINGS", "STATIC_SETTINGS", "ProposerInfo",
        "cached_proposers", "capacity_bucket", "check_settings", "make_optimiser", "propose")},
)
