"""Files: caches, atomic writes, JSON and JSON-lines logs, model variables, and the run folder's contract and lock."""

from mpqjax._lazy import attach

__getattr__, __dir__, __all__ = attach(
    __name__,
    submodules=["compilation_cache", "files", "lock", "run_folder", "selection", "tpe_state"],
    names={
        **{name: "files" for name in (
            "TrialLog", "atomic_write", "atomic_write_bytes", "atomic_write_json", "atomic_write_text",
            "load_variables", "read_checkpoint", "read_json", "read_jsonl", "save_variables", "to_json_value")},
        **{name: "compilation_cache" for name in (
            "default_cache_dir", "enable_compilation_cache", "enable_default_compilation_cache")},
        "load_tpe_state": "tpe_state", "save_tpe_state": "tpe_state",
        **{name: "lock" for name in ("LOCK_FILE", "FolderLock", "FolderLockedError", "check_unlocked", "holder")},
        **{name: "run_folder" for name in (
            "FILES", "FORMAT", "PHASES", "RESUMABLE_CHANGES", "Run", "RunFolder", "check_folder", "file_path",
            "is_finished", "load_run", "read_best_layers", "settings_differences")},
        **{name: "selection" for name in (
            "RULE", "Choice", "best_trial", "choose", "explain_choice", "is_ok", "number", "recorded_resolution",
            "selection_settings")},
    },
)
