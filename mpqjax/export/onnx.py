"""Conversion of an integer-only JAX inference program into an ONNX model that onnxruntime runs with the same results.

`to_onnx` traces ``function(*constants, x)`` to a jaxpr under ``jax.enable_x64(True)``, with the batch axis of ``x``
symbolic, and translates it primitive by primitive: the constants become initializers and the batch stays a symbolic
dimension (``"batch"``), so one model runs any batch size. `write_onnx` writes the model atomically and `run_onnx`
runs it with onnxruntime on the CPU. ``onnx`` and ``onnxruntime`` are the optional extra ``mpqjax[onnx]``.

Supported primitives (integer results are bit-exact against XLA, float ones agree to rounding):

- elementwise: add, sub, mul, div, rem, max, min, neg, abs, sign, floor, ceil, round (both rounding methods), clamp,
  select_n, eq, ne, ge, gt, le, lt, and, or, xor, not (bools and integers), shift_left, shift_right_arithmetic,
  shift_right_logical, convert_element_type (float to integer truncates, saturates and sends NaN to 0, as XLA does);
- contractions: conv_general_dilated (any dimension numbers, strides, padding, kernel dilation, feature groups; no
  lhs dilation or batch groups) and dot_general (any contracting and batch dimensions) on 8-bit integer operands
  (ConvInteger, MatMulInteger: int32 accumulation) or float32 ones (Conv, MatMul); conv_general_dilated also on
  16-bit integers (split into bytes: one ConvInteger per pair of bytes), dot_general also on wider integers and
  float64 (MatMul);
- structure: reshape, transpose, broadcast_in_dim, squeeze, slice, pad (negative too, not interior), concatenate,
  iota, copy, copy_p, and gather with indices known at conversion (what jnp indexing such as ``x[..., :4]`` or
  ``x[:, ::2]`` gives with a symbolic batch); reductions reduce_sum, reduce_max, reduce_min; pooling
  reduce_window_max, reduce_window_min, reduce_window_sum and reduce_window whose body is one max, min or add;
- calls (jit/pjit, closed_call, core_call, custom_jvp_call, custom_vjp_call, remat) are inlined.

Equations on values known at conversion (literals, iotas, index arithmetic; not the constants) are computed then.
Any other primitive, or an unsupported form of one, raises `ValueError` naming it. Symbolic sizes other than the batch
itself (``2*batch`` after a reshape) may appear where a Reshape infers them (-1), nowhere else.

onnxruntime (1.32) differs from XLA in ways worked around here: some integer kernels are missing (Max, Min, Where and
Pad on int16, MatMul on int8, BitShift on signed types), so those operations run in a wider type and are cast back
(exact: narrowing casts wrap, as XLA's integer arithmetic does); integer ReduceSum accumulates in double, so integer
sums are MatMuls with ones; MaxPool and AveragePool are float or 8-bit only, so pooling windows are one strided Slice
per window position combined by Max, Min or Add (exact for every dtype); float-to-integer Cast wraps where XLA
saturates. Shifts by amounts known at conversion are products and floor divisions by powers of two; others run on
uint64 BitShift, an arithmetic right shift of a negative ``a`` as ``~(~a >> k)``.

Example:
    >>> def program(kernel, multiplier, x):  # jnp/lax code: quantise x, int8 conv, requantise in int64, ...
    ...     ...
    >>> write_onnx("model.onnx", program, [kernel, multiplier], input_shape=(8, 8, 1))
    >>> run_onnx("model.onnx", images).argmax(-1)
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Sequence
from typing import Any

import jax
import numpy as np
from jax.extend import core as jax_core

from mpqjax.export._onnx_graph import (
    BATCH,
    DEFAULT_OPSET,
    MIN_OPSET,
    Graph,
    Unsupported,
    import_package,
    is_static,
    same,
)
from mpqjax.export._onnx_primitives import CONVERTERS
from mpqjax.export.archive import one_line
from mpqjax.store.files import atomic_write

__all__ = ["run_onnx", "to_onnx", "write_onnx"]

_FOLD_LIMIT = 4096  # the most elements of a value computed at conversion
_CALLS = {"jit", "pjit", "closed_call", "core_call", "custom_jvp_call", "custom_vjp_call", "custom_vjp_call_jaxpr",
          "remat", "remat2", "checkpoint"}


def _called_jaxpr(eqn):
    """``(jaxpr, consts)`` of a call primitive to inline, else None."""
    if eqn.primitive.name not in _CALLS:
        return None
    inner = next(eqn.params[key] for key in ("jaxpr", "call_jaxpr", "fun_jaxpr") if key in eqn.params)
    return (inner.jaxpr, inner.consts) if hasattr(inner, "consts") else (inner, ())


def _folded(eqn, values: Sequence) -> list[np.ndarray] | None:
    """The equation's outputs computed now (index arithmetic, iotas) when all its inputs are known and its outputs are
    small and static, else None."""
    if any(value is None for value in values) or any(
            not all(map(is_static, var.aval.shape)) or math.prod(var.aval.shape) > _FOLD_LIMIT for var in eqn.outvars):
        return None
    try:
        with jax.enable_x64(True):
            outputs = eqn.primitive.bind(*values, **eqn.params)
    except Exception:  # not evaluable here (symbolic sizes): converted instead
        return None
    return [np.asarray(output) for output in (outputs if eqn.primitive.multiple_results else [outputs])]


def _convert_jaxpr(graph: Graph, jaxpr, consts: Sequence, arguments: Sequence[str]) -> list[str]:
    """Append ``jaxpr``'s equations to ``graph``; returns the names of its outputs."""
    names = dict(zip(jaxpr.constvars, (graph.constant(np.asarray(const)) for const in consts), strict=True))
    names.update(zip(jaxpr.invars, arguments, strict=True))

    def read(atom):
        if isinstance(atom, jax_core.Literal):
            return graph.constant(np.asarray(atom.val, atom.aval.dtype))
        return names[atom]

    for eqn in jaxpr.eqns:
        inputs, called = [read(atom) for atom in eqn.invars], _called_jaxpr(eqn)
        folded = None if called else _folded(eqn, [graph.known.get(name) for name in inputs])
        if folded is not None:
            outputs = [graph.constant(value) for value in folded]
        elif called is not None:
            outputs = _convert_jaxpr(graph, *called, inputs)
        elif eqn.primitive.name in CONVERTERS:
            try:
                outputs = [CONVERTERS[eqn.primitive.name](graph, eqn, inputs)]
            except Unsupported as error:
                raise ValueError(f"cannot convert primitive {eqn.primitive.name!r} to ONNX: {error}") from None
        else:
            raise ValueError(f"cannot convert primitive {eqn.primitive.name!r} to ONNX: no converter for it "
                             f"(mpqjax.export.onnx lists the supported primitives)")
        names.update(zip(eqn.outvars, outputs, strict=True))
    return [read(atom) for atom in jaxpr.outvars]


def _trace(function: Callable, constants: Sequence[np.ndarray], input_shape: tuple, input_dtype):
    """``(closed jaxpr of function(*constants, x), the symbolic batch size)``, traced with 64-bit types enabled."""
    (batch,) = jax.export.symbolic_shape(BATCH)
    specs = [jax.ShapeDtypeStruct(constant.shape, constant.dtype) for constant in constants]
    with jax.enable_x64(True):
        try:
            closed = jax.make_jaxpr(function)(*specs, jax.ShapeDtypeStruct((batch, *input_shape), input_dtype))
        except Exception as error:  # any failure of the user's code is reported the same way
            raise ValueError(f"function fails to trace with a symbolic batch ({one_line(error)})") from None
    if len(closed.out_avals) != 1:
        raise ValueError(f"function must return one array, got {len(closed.out_avals)} outputs")
    return closed, batch


def to_onnx(function: Callable, constants: Sequence[Any], input_shape: Sequence[int], *, input_dtype: Any = np.float32,
            input_name: str = "x", output_name: str = "logits", opset: int | None = None):
    """Convert ``function(*constants, x)`` into an ONNX model with the constants as initializers and a symbolic batch.

    Args:
        function: jax.numpy/lax code ``function(*constants, x) -> array``, traced with 64-bit types enabled.
        constants: concrete arrays (integer kernels, multipliers, shifts) passed first, in order; they become the
            initializers ``constant0``, ``constant1``, ...
        input_shape: one example's shape, without the batch axis.
        input_dtype: the dtype of ``x``.
        input_name: the ONNX input's name; its shape is ``("batch", *input_shape)``.
        output_name: the ONNX output's name.
        opset: the ONNX opset, from 18 to onnx's newest (None: 21).

    Returns:
        The checked ``onnx.ModelProto``.

    Raises:
        ImportError: onnx is not installed.
        ValueError: the function fails to trace with a symbolic batch, returns several arrays, or uses a primitive
            (or a form of one) that has no conversion (the module's docstring lists them); the message names it.
    """
    onnx = import_package("onnx")
    opset = DEFAULT_OPSET if opset is None else int(opset)
    if not MIN_OPSET <= opset <= onnx.defs.onnx_opset_version() or input_name == output_name:
        raise ValueError(f"opset {opset} must be from {MIN_OPSET} to {onnx.defs.onnx_opset_version()}, and the input "
                         f"and output names ({input_name!r}, {output_name!r}) must differ")
    constants, input_shape = [np.asarray(constant) for constant in constants], tuple(int(s) for s in input_shape)
    closed, batch = _trace(function, constants, input_shape, input_dtype)
    graph = Graph(onnx, input_name, batch)
    arguments = [graph.constant(constant, name=f"constant{index}") for index, constant in enumerate(constants)]
    (output,) = _convert_jaxpr(graph, closed.jaxpr, closed.consts, [*arguments, input_name])
    graph.nodes.append(onnx.helper.make_node("Identity", [output], [output_name]))
    used = {name for node in graph.nodes for name in node.input}
    initializers = [initializer for initializer in graph.initializers if initializer.name in used]
    helper, (out_aval,) = onnx.helper, closed.out_avals
    inputs = [helper.make_tensor_value_info(input_name, helper.np_dtype_to_tensor_dtype(np.dtype(input_dtype)),
                                            [BATCH, *input_shape])]
    sizes = [size if is_static(size) else BATCH if same(size, batch) else None for size in out_aval.shape]
    outputs = [helper.make_tensor_value_info(output_name, helper.np_dtype_to_tensor_dtype(np.dtype(out_aval.dtype)),
                                             sizes)]
    model = helper.make_model(helper.make_graph(graph.nodes, "mpqjax", inputs, outputs, initializers),
                              opset_imports=[helper.make_opsetid("", opset)], producer_name="mpqjax")
    model.ir_version = helper.find_min_ir_version_for(list(model.opset_import))
    onnx.checker.check_model(model)
    return model


def write_onnx(path: str | os.PathLike, function: Callable, constants: Sequence[Any], input_shape: Sequence[int],
               **options) -> None:
    """Convert ``function`` with `to_onnx` and write the model to ``path`` atomically.

    Args:
        path: the ``.onnx`` file to create or replace; its folder must exist. On any error it is left as it was and
            no temporary file remains.
        function, constants, input_shape: as for `to_onnx`.
        **options: `to_onnx`'s keyword options (input_dtype, input_name, output_name, opset).

    Raises:
        ImportError: onnx is not installed.
        ValueError: the folder does not exist, or the conversion fails (see `to_onnx`).
    """
    folder = os.path.dirname(os.path.abspath(os.fspath(path)))
    if not os.path.isdir(folder):
        raise ValueError(f"cannot write {os.fspath(path)!r}: folder {folder!r} does not exist")
    model = to_onnx(function, constants, input_shape, **options)
    atomic_write(path, lambda name: import_package("onnx").save_model(model, name))


def run_onnx(path_or_model: Any, x: Any) -> np.ndarray:
    """Run an ONNX model (a file or an ``onnx.ModelProto``) on ``x`` with onnxruntime on the CPU.

    Args:
        path_or_model: a path to an ``.onnx`` file, or a model from `to_onnx`.
        x: the input batch, of the model's input dtype (float32 for the default `to_onnx`).

    Returns:
        The model's first output.

    Raises:
        ImportError: onnxruntime is not installed.
    """
    onnxruntime = import_package("onnxruntime")
    source = path_or_model.SerializeToString() if hasattr(path_or_model, "SerializeToString") else os.fspath(
        path_or_model)
    session = onnxruntime.InferenceSession(source, providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: np.asarray(x)})[0]
