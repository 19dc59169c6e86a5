"""The search: its configuration, the objective with limits, the problem, the pipeline's steps and the run loop.

Modules:

- `config`: `SearchConfig`, the settings with their defaults, help and validation;
- `inputs`: the model and dataset a search reads, by name or given as objects;
- `objective`: the limits and the Lagrangian objective;
- `problem`: `Problem`, one configuration's trial, and the limits in absolute units;
- `steps`: the float model, the sensitivity analysis, the final training and export (shared with the command line);
- `methods`: the search methods of the harness, k-means TPE and its peers (`METHODS`);
- `peers`: the one-shot methods' configurations (HAWQ-V3's ILP, rate-distortion, uniform precision);
- `relaxed` and `supernet`: the gradient-based methods (joint pruning with channel-wise precision, DNAS): their
  relaxed choices, and the supernet that trains them;
- `channels`: channel-wise configurations (a weight bit-width per output channel, 0 to prune);
- `trials` and `loop`: `run`, the trials, resume, the population choice and the baseline.

Every public name is re-exported here.

Example:
    >>> from mpqjax import search
    >>> result = search.run(search.SearchConfig(trials=30), "runs/digits")
"""

from mpqjax._lazy import attach

__getattr__, __dir__, __all__ = attach(
    __name__,
    submodules=["channels", "config", "inputs", "loop", "methods", "objective", "peers", "problem", "relaxed",
                 "steps", "supernet", "trials"],
    names={
        **{name: "config" for name in (
            "DEFAULT_SIZE_REDUCTION", "GROUPS", "LIMIT_SETTINGS", "MAX_SEED", "SearchConfig", "TWO_WAYS", "UNUSED")},
        **{name: "inputs" for name in (
            "PYTHON_PREFIX", "Given", "check_dataset_name", "check_model_name", "check_resumable", "dataset_named",
            "given",
            "given_dataset", "given_variables", "has_given_variables", "model_named", "prepare_config")},
        **{name: "objective" for name in (
            "DEFAULT_MULTIPLIER", "LIMIT_NAMES", "Limits", "is_feasible", "make_limits", "violations")},
        **{name: "problem" for name in (
            "COST_FIELDS", "TIME_FIELDS", "Problem", "cheapest_pruning", "check_attainable", "check_limits",
            "config_limits", "full_space")},
        **{name: "trials" for name in ("Clock", "run_one_shot", "run_proposals", "run_trials", "search_cost")},
        **{name: "methods" for name in ("DEFAULT_METHOD", "METHODS", "Method", "prunes", "runs_hessian")},
        **{name: "peers" for name in (
            "Proposal", "calibration_inputs", "channel_distortions", "layer_distortions", "layer_sensitivities",
            "propose", "prunable_layers", "pruning_distortions", "resource_tables", "uniform_proposals")},
        **{name: "relaxed" for name in (
            "RELAXED_METHODS", "Choice", "Configuration", "Relaxer", "Space", "fit", "relaxed_space", "relaxer")},
        **{name: "supernet" for name in (
            "TOTAL_TEMPERATURE_DECAY", "cost_ratios", "propose_relaxed", "train_supernet")},
        **{name: "steps" for name in (
            "FloatModel", "SearchKeys", "Trained", "analyze_sensitivity", "default_cache_dir",
            "enable_compilation_cache", "export_trained", "final_training", "finetune_configuration",
            "finetune_start", "float_model", "float_model_of", "layer_space_from_summary", "load_dataset",
            "quantized_model", "search_keys", "sensitivity_of", "train_configuration")},
        **{name: "channels" for name in ("ChannelLayout", "channel_layout", "weight_bits_of")},
        **{name: "loop" for name in ("FILES", "SearchResult", "choose_population", "default_out_dir", "run")},
    },
)
