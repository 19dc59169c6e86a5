"""Shared fixtures. JAX compilation dominates the suite's time: keep shapes tiny and share compiled objects."""

import os

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=1")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
