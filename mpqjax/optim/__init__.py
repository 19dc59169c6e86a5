"""The optimiser: search spaces, deterministic 1-D k-means, Parzen estimators and k-means TPE.

Pure JAX: no Flax, no files. `KMeansTPE` has the shape of optax and evosax (``state = opt.init(key)``,
``x, state = opt.ask(key, state, n)``, ``state = opt.tell(state, x, y)``), jitted with the optimiser static. Every
public name of the modules is re-exported here:

- `mpqjax.optim.dimensions`: the dimensions (`ordinal`, `categorical`, `integer`, `real`, `normal`), made
  conditional with `conditional` and `optional`;
- `mpqjax.optim.space`: `SearchSpace`, its encoding (`SpaceSpec`) and which dimensions are active;
- `mpqjax.optim.cluster`: deterministic k-means (`kmeans_1d`, `kmeans`);
- `mpqjax.optim.parzen`: Parzen estimators over a space's encoding (`fit`, `log_prob`, `sample`, ...);
- `mpqjax.optim.acquisition`: the pure steps of a k-means TPE proposal (`split`, `log_ratio`, `select`, ...);
- `mpqjax.optim.bucket`: spaces padded to shared shapes (`pad_space`, `Bucket`), so programs serve many spaces;
- `mpqjax.optim.program`: the compiled programs of k-means TPE (`Program`), its state (`TPEState`, `TPEParams`);
- `mpqjax.optim.tpe`: `KMeansTPE`, the paper's preset (`PAPER_SETTINGS`) and the `run` loop;
- `mpqjax.optim.allocation`: one option per item under additive budgets, the one-shot peers' solvers (`solve_ilp`,
  `lagrangian_choice`, `bisect_multiplier`).
"""

from mpqjax._lazy import attach

_MODULES = {
    "dimensions": ["CATEGORICAL", "CONTINUOUS", "GRID", "INTEGER", "LOG_INT", "MAX_TABLE_CHOICES", "ORDINAL", "REAL",
                   "TABLE", "UNBOUNDED_SPREAD", "Dimension", "categorical", "conditional", "integer", "normal",
                   "optional", "ordinal", "real", "same_choice"],
    "space": ["SearchSpace", "SpaceSpec", "active", "deactivate", "encoded_values", "sample_uniform", "snap"],
    "cluster": ["NUM_STARTS", "KMeansResult", "kmeans", "kmeans_1d"],
    "parzen": ["LOG_FLOOR", "Kernels", "Parzen", "ParzenLayout", "component_log_probs", "dimension_log_weights", "fit",
               "kernel_tables", "kernels", "log_prob", "make_layout", "mixture_log_weights", "sample",
               "table_marginals"],
    "acquisition": ["BAD_SETS", "CLUSTER_ON", "MAX_ENUMERATED", "enumerate_configurations", "fingerprint",
                    "hash_multipliers", "history_order", "log_ratio", "normal_kmeans_thresholds", "select", "split",
                    "trial_outcomes", "uniform_pool"],
    "bucket": ["ENUMERATION_BUCKETS", "MIN_CHOICES", "Bucket", "PaddedSpace", "SpaceData", "bucket_size", "pad_space",
               "to_internal", "to_public"],
    "program": ["Feasibility", "Program", "TPEParams", "TPEState", "device_data", "traces"],
    "tpe": ["AUTO_JOINT_MAX_DIMS", "BATCH_STRATEGIES", "PAPER_SETTINGS", "KMeansTPE", "auto_batch", "auto_joint",
            "run"],
    "allocation": ["bisect_multiplier", "lagrangian_choice", "solve_ilp"],
}

__getattr__, __dir__, __all__ = attach(
    __name__,
    submodules=list(_MODULES),
    names={name: module for module, names in _MODULES.items() for name in names},
)
