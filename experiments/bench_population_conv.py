"""Why a population of ResNet-20 configurations gains less than its size on a GPU: one 3x3 convolution's forward
and backward pass for one member against 16 members vmapped (XLA lowers the batched kernels to a grouped
convolution), and against alternatives (im2col patches + batched matmul, bfloat16, 16x the batch with shared
weights).

    python experiments/bench_population_conv.py [--quick]   # prints JSON; ms per call, median of 5 x 20 calls
"""

from __future__ import annotations

import json
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

DIMENSIONS = ("NHWC", "HWIO", "NHWC")


def _milliseconds(fn, *args, calls: int = 20, repeats: int = 5) -> float:
    compiled = jax.jit(fn)
    jax.block_until_ready(compiled(*args))
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(calls):
            result = compiled(*args)
        jax.block_until_ready(result)
        times.append((time.perf_counter() - start) / calls * 1e3)
    return float(np.median(times))


def conv(x, w):
    return jax.lax.conv_general_dilated(x, w, (1, 1), "SAME", dimension_numbers=DIMENSIONS)


def patches_conv(x, w):
    patches = jax.lax.conv_general_dilated_patches(x, (3, 3), (1, 1), "SAME", dimension_numbers=DIMENSIONS)
    return patches @ jnp.transpose(w, (2, 0, 1, 3)).reshape(-1, w.shape[-1])  # patches are ordered (C, kh, kw)


def gradient(fn):
    return jax.grad(lambda x, w: jnp.sum(fn(x, w) ** 2), argnums=(0, 1))


def main() -> None:
    quick = "--quick" in sys.argv[1:]  # a CPU smoke run: 4 examples per member
    members, batch = 16, 4 if quick else 64
    key = jax.random.key(0)
    rows = []
    for size, channels in [(32, 20), (16, 40), (8, 80)]:  # ResNet-20's three stages at width 1.25
        x = jax.random.normal(key, (members, batch, size, size, channels))
        w = jax.random.normal(key, (members, 3, 3, channels, channels))
        batched = lambda fn: gradient(jax.vmap(fn))  # noqa: E731
        row = {
            "input": [batch, size, size, channels],
            "one_member_ms": _milliseconds(gradient(conv), x[0], w[0]),
            "vmapped_grouped_conv_ms": _milliseconds(batched(conv), x, w),
            "vmapped_patches_matmul_ms": _milliseconds(batched(patches_conv), x, w),
            "vmapped_grouped_conv_bfloat16_ms": _milliseconds(batched(conv), x.astype(jnp.bfloat16),
                                                              w.astype(jnp.bfloat16)),
            "shared_weights_16x_batch_ms": _milliseconds(gradient(conv), x.reshape(-1, size, size, channels), w[0]),
        }
        row["grouped_over_one_member"] = row["vmapped_grouped_conv_ms"] / row["one_member_ms"]
        rows.append(row)
    print(json.dumps({"backend": jax.default_backend(), "device": jax.devices()[0].device_kind,
                      "members": members, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
