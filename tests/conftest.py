"""Shared fixtures. JAX compilation dominates the suite's time: keep shapes tiny and share compiled objects."""

import os

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=1")
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import tempfile  # noqa: E402

# Trained float models are cached between runs (mpqjax.search.default_cache_dir); tests keep theirs private.
os.environ.setdefault("MPQJAX_CACHE_DIR", tempfile.mkdtemp(prefix="mpqjax-test-cache-"))
# One persistent compilation cache for the session, shared with the subprocesses some tests start (the kill -9
# resume test): identical programs compile once.
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", os.path.join(os.environ["MPQJAX_CACHE_DIR"], "xla"))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.2")
