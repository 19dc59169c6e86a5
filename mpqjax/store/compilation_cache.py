"""Where mpqjax keeps its caches, and JAX's persistent compilation cache under it.

A compiled XLA program kept on disk is loaded by the next process instead of compiled again: a second search of the
same model skips compiling its training step, Hessian probes and optimiser, and a new optuna study or hyperopt run
finds k-means TPE's programs compiled (`mpqjax.optim.program`). The ``mpqjax`` command, the optuna sampler and the
hyperopt algorithm turn it on (`enable_compilation_cache`) unless ``MPQJAX_NO_COMPILATION_CACHE`` is set in the
environment, or you already gave JAX a cache folder of your own, which they then leave as it is.
"""

from __future__ import annotations

import os

import jax

__all__ = ["default_cache_dir", "enable_compilation_cache", "enable_default_compilation_cache"]


def default_cache_dir() -> str:
    """Where mpqjax caches trained float models and compiled programs: ``$MPQJAX_CACHE_DIR``, else
    ``~/.cache/mpqjax``."""
    return os.environ.get("MPQJAX_CACHE_DIR") or os.path.join(os.path.expanduser("~"), ".cache", "mpqjax")


def enable_compilation_cache(path: str | None = None, *, min_compile_seconds: float = 0.2) -> str:
    """Keep compiled XLA programs on disk (JAX's persistent compilation cache) from now on, in this process.

    Args:
        path: cache folder (default ``<default_cache_dir()>/xla``).
        min_compile_seconds: programs that compile faster than this are not stored.

    Returns:
        The cache folder.
    """
    path = path or os.path.join(default_cache_dir(), "xla")
    os.makedirs(path, exist_ok=True)
    jax.config.update("jax_compilation_cache_dir", path)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", min_compile_seconds)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    return path


def enable_default_compilation_cache() -> str | None:
    """`enable_compilation_cache` with its defaults, unless ``MPQJAX_NO_COMPILATION_CACHE`` is set or JAX already
    has a cache folder (yours is kept); returns the folder in use, None when the cache is off."""
    if os.environ.get("MPQJAX_NO_COMPILATION_CACHE"):
        return jax.config.jax_compilation_cache_dir
    if jax.config.jax_compilation_cache_dir:
        return jax.config.jax_compilation_cache_dir
    try:
        return enable_compilation_cache()
    except OSError:  # an unwritable home folder: compile in memory, as without the cache
        return None
