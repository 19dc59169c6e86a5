"""mpqjax: hardware-aware mixed-precision quantisation and width search for Flax models.

Subpackages, from the bottom of the house up (imports flow upward only):

* `mpqjax.optim`: search spaces, 1-D k-means, Parzen estimators and the k-means TPE optimiser (pure JAX);
* `mpqjax.nn`: fake quantisation, quantised layers, layer tables and the model zoo;
* `mpqjax.data`: datasets (digits embedded; CIFAR, tfds, ImageNet), augmentation and batching;
* `mpqjax.cost`: hardware targets and the size/latency/energy cost model (no Flax);
* `mpqjax.store`: files written atomically and the run folder's contract;
* `mpqjax.training`: float training, quantisation-aware fine-tunes, populations over devices;
* `mpqjax.sensitivity`: Hessian traces and the candidate bit-widths they prune;
* `mpqjax.search`: the search's configuration, objective and pipeline (`SearchConfig`, `run`);
* `mpqjax.report`, `mpqjax.export`: a finished run's report and its exported model;
* `mpqjax.integrations`: k-means TPE as an optuna sampler and a hyperopt algorithm;
* `mpqjax.cli`: the ``mpqjax`` command.

Every name below is imported on first use, so ``import mpqjax`` is cheap.

Example:
    >>> import mpqjax
    >>> result = mpqjax.run(mpqjax.SearchConfig(trials=30), "runs/digits")
"""

from mpqjax._lazy import attach

__version__ = "0.1.0"

__getattr__, __dir__, __all__ = attach(
    __name__,
    submodules=["cli", "cost", "data", "export", "integrations", "nn", "optim", "report", "search", "sensitivity",
                "store", "training"],
    names={
        # the optimiser
        "SearchSpace": "optim", "categorical": "optim", "integer": "optim", "ordinal": "optim", "real": "optim",
        "KMeansTPE": "optim", "TPEParams": "optim", "TPEState": "optim",
        # sensitivity
        "LayerTraces": "sensitivity", "hvp": "sensitivity", "layer_traces": "sensitivity",
        "LayerSpace": "sensitivity", "Sensitivity": "sensitivity", "layer_space": "sensitivity",
        "prune_space": "sensitivity",
        # the search
        "SearchConfig": "search", "SearchResult": "search", "run": "search",
    },
)
