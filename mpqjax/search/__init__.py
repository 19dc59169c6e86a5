"""The search: its configuration, the objective with limits, and the pipeline from float model to export."""

from mpqjax._lazy import attach

__getattr__, __dir__, __all__ = attach(
    __name__,
    submodules=["objective", "pipeline"],
    names={name: "pipeline" for name in (
        "DEFAULT_SIZE_REDUCTION", "FILES", "Problem", "SearchConfig", "SearchResult", "analyze_sensitivity",
        "default_cache_dir", "default_out_dir", "enable_compilation_cache", "float_model", "run")},
)
