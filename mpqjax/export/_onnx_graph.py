"""The ONNX graph builder behind `mpqjax.export.onnx`, and what it knows of onnxruntime's dtype gaps.

`Graph` collects nodes and initializers with fresh value names, keeps the values known at conversion (so equations on
them are folded), and builds shape tensors where the batch size is symbolic. `Graph.compute` runs an operator in a
wider integer type and casts back where onnxruntime (1.32) has no CPU kernel for the operand's type (the table of
missing kernels is here); `saturating_cast` converts float to integer as XLA does (onnxruntime's Cast wraps).
`Unsupported` is raised by a converter for a primitive's form with no conversion; `import_package` imports the optional
onnx/onnxruntime with an install hint. ``BATCH`` is the name of the symbolic batch dimension, ``END`` a Slice end past
any size, and ``DEFAULT_OPSET``/``MIN_OPSET`` the opsets `to_onnx` defaults to and accepts from.
"""

from __future__ import annotations

import importlib
from collections.abc import Sequence

import numpy as np

__all__ = ["BATCH", "DEFAULT_OPSET", "END", "MIN_OPSET", "Graph", "Unsupported", "import_package", "is_static", "same",
           "saturating_cast"]

DEFAULT_OPSET, MIN_OPSET = 21, 18
BATCH = "batch"
END = np.iinfo(np.int64).max  # a Slice end past any size
# Input dtypes that onnxruntime 1.32's CPU kernels lack, per operator: those run in _WIDER's type and are cast back.
_MISSING_KERNELS = {
    **dict.fromkeys(("Max", "Min"), {"int16", "uint16", "bool"}),
    **dict.fromkeys(("ReduceMax", "ReduceMin"), {"int16", "uint16", "uint32"}),
    **dict.fromkeys(("Add", "Sub", "Mul", "Abs", "Sign", "Greater", "GreaterOrEqual", "Less", "LessOrEqual"), {"bool"}),
    "Where": {"int16", "uint16", "uint64", "bool"}, "Pad": {"int16", "uint16"},
    "MatMul": {"int8", "uint8", "int16", "uint16", "bool"}, "Neg": {"uint8", "uint16", "uint32"},
}
_WIDER = {"bool": np.int32, "int8": np.int32, "uint8": np.int32, "int16": np.int32, "uint16": np.int32,
          "uint32": np.int64}
_PREDICATES = {"Equal", "Greater", "GreaterOrEqual", "Less", "LessOrEqual"}


class Unsupported(Exception):
    """A primitive's form that has no conversion; the converter loop reports it as a ValueError naming the primitive."""


def import_package(name: str):
    """The module ``name`` (onnx, onnxruntime), or an ImportError saying how to install it."""
    try:
        return importlib.import_module(name)
    except ImportError:
        raise ImportError(f'{name} is needed for ONNX export: pip install "mpqjax[onnx]"') from None


def is_static(size) -> bool:
    return isinstance(size, (int, np.integer))


def same(first, second) -> bool:
    """Whether two sizes, static or symbolic, are the same."""
    return is_static(first) == is_static(second) and first == second


class Graph:
    """An ONNX graph under construction: nodes, initializers and fresh value names; ``batch`` is the symbolic size."""

    def __init__(self, onnx, input_name: str, batch):
        self.onnx, self.input_name, self.batch = onnx, input_name, batch
        self.nodes, self.initializers, self.known, self._shared, self._count, self._batch_size = [], [], {}, {}, 0, None

    def fresh(self, hint: str) -> str:
        self._count += 1
        return f"{hint}_{self._count}"

    def node(self, op_type: str, inputs: Sequence[str], **attributes) -> str:
        output = self.fresh(op_type.lower())
        self.nodes.append(self.onnx.helper.make_node(op_type, list(inputs), [output], **attributes))
        return output

    def constant(self, value, dtype=None, name: str | None = None) -> str:
        """An initializer holding ``value``. Unnamed ones are known at conversion (equations on them are folded) and
        shared when small; named ones are the function's constants."""
        array = np.asarray(value, dtype)
        key = (array.dtype.str, array.shape, array.tobytes()) if name is None and array.size <= 64 else None
        if key is None or key not in self._shared:
            initializer = name or self.fresh("constant")
            self.initializers.append(self.onnx.numpy_helper.from_array(array, initializer))
            if name is None:
                self.known[initializer] = array
            if key is None:
                return initializer
            self._shared[key] = initializer
        return self._shared[key]

    def cast(self, name: str, dtype, source=None) -> str:
        """``name`` cast to ``dtype``, unless it is known to be of that type already (``source``)."""
        if source is not None and np.dtype(source) == np.dtype(dtype):
            return name
        return self.node("Cast", [name], to=self.onnx.helper.np_dtype_to_tensor_dtype(np.dtype(dtype)))

    def compute(self, op_type: str, inputs: Sequence[str], dtype, keep: Sequence[int] = (), **attributes) -> str:
        """``op_type`` on inputs of ``dtype`` (those at positions ``keep`` are of other types), widened and cast back
        where onnxruntime has no kernel for ``dtype``."""
        dtype = np.dtype(dtype)
        if dtype.name not in _MISSING_KERNELS.get(op_type, ()):
            return self.node(op_type, inputs, **attributes)
        if dtype.name not in _WIDER:
            raise Unsupported(f"onnxruntime has no {op_type} kernel for {dtype}")
        widened = [name if index in keep else self.cast(name, _WIDER[dtype.name]) for index, name in enumerate(inputs)]
        output = self.node(op_type, widened, **attributes)
        return output if op_type in _PREDICATES else self.cast(output, dtype)

    def batch_size(self) -> str:
        """The int64 tensor ``[batch]``, read from the input's shape."""
        if self._batch_size is None:
            self._batch_size = self.node("Shape", [self.input_name], start=0, end=1)
        return self._batch_size

    def shape(self, sizes: Sequence, infer: bool = False) -> str:
        """An int64 shape tensor of ``sizes``: a lone symbolic size becomes -1 when ``infer`` (for Reshape), the batch
        is read at run time, other symbolic sizes are refused."""
        symbolic = [size for size in sizes if not is_static(size)]
        if not symbolic or (infer and len(symbolic) == 1):
            return self.constant([size if is_static(size) else -1 for size in sizes], np.int64)
        if any(not same(size, self.batch) for size in symbolic):
            raise Unsupported(f"shape {tuple(sizes)}: only the batch size may be symbolic here")
        pieces = [self.constant([size], np.int64) if is_static(size) else self.batch_size() for size in sizes]
        return self.node("Concat", pieces, axis=0)

    def reshaped(self, name: str, shape: Sequence, target: Sequence) -> str:
        if len(shape) == len(target) and all(map(same, shape, target)):
            return name
        return self.node("Reshape", [name, self.shape(target, infer=True)])

    def sliced(self, name: str, starts: Sequence, ends: Sequence, axes: Sequence, steps: Sequence | None = None) -> str:
        if not axes:
            return name
        arguments = [starts, ends, axes] + ([steps] if steps is not None else [])
        return self.node("Slice", [name, *(self.constant(values, np.int64) for values in arguments)])

    def transposed(self, name: str, permutation: Sequence[int]) -> str:
        permutation = [int(axis) for axis in permutation]
        return name if permutation == sorted(permutation) else self.node("Transpose", [name], perm=permutation)


def saturating_cast(graph, name: str, source: np.dtype, target: np.dtype) -> str:
    """Float to integer as XLA does it: truncation, saturation at the target's range and NaN to 0."""
    info = np.iinfo(target)
    limit = graph.constant(2.0 ** (info.bits - (info.min < 0)), source)  # info.max + 1, exact in any float type
    too_large = graph.node("GreaterOrEqual", [name, limit])
    invalid = graph.node("Or", [too_large, graph.node("IsNaN", [name])])
    in_range = graph.node("Max", [name, graph.constant(info.min, source)])
    converted = graph.cast(graph.node("Where", [invalid, graph.constant(0, source), in_range]), target)
    return graph.compute("Where", [too_large, graph.constant(info.max, target), converted], target, keep=(0,))
