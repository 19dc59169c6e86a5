"""The per-primitive converters of `mpqjax.export.onnx`: each turns one JAX equation into ONNX nodes of a `Graph`.

A converter is ``convert(graph, eqn, inputs) -> output name``, where ``inputs`` are the ONNX names of the equation's
operands; it raises `Unsupported` for a form it cannot convert. ``CONVERTERS`` maps primitive names to converters:
elementwise operations (shifts included), structure and reductions (pooling as strided Slices), gather with indices
known at conversion, and the contractions (conv_general_dilated, dot_general).
"""

from __future__ import annotations

import functools
import itertools
import math
from collections.abc import Callable, Sequence

import jax
import numpy as np

from mpqjax.export._onnx_graph import END, Unsupported, is_static, same, saturating_cast

__all__ = ["CONVERTERS"]


# -- elementwise -----------------------------------------------------------------------------------------------------


def _in_dtype(eqn, index: int = 0) -> np.dtype:
    return np.dtype(eqn.invars[index].aval.dtype)


def _out_dtype(eqn) -> np.dtype:
    return np.dtype(eqn.outvars[0].aval.dtype)


def _elementwise(op_type: str, **attributes) -> Callable:
    return lambda graph, eqn, inputs: graph.compute(op_type, inputs, _in_dtype(eqn), **attributes)


def _bitwise(op_type: str) -> Callable:
    """And/Or/Xor/Not on bools, their Bitwise forms on integers."""
    return lambda graph, eqn, inputs: graph.node(op_type if _in_dtype(eqn) == np.bool_ else "Bitwise" + op_type, inputs)


def _not_equal(graph, eqn, inputs):
    return graph.node("Not", [graph.node("Equal", inputs)])


def _clamp(graph, eqn, inputs):
    low, operand, high = inputs
    dtype = _in_dtype(eqn, 1)
    return graph.compute("Min", [graph.compute("Max", [operand, low], dtype), high], dtype)


def _select_n(graph, eqn, inputs):
    predicate, *cases = inputs
    boolean = _in_dtype(eqn) == np.bool_
    selected = cases[0]
    for index, case in enumerate(cases[1:], 1):
        chosen = predicate if boolean else graph.node("Equal", [predicate, graph.constant(index, _in_dtype(eqn))])
        selected = graph.compute("Where", [chosen, case, selected], _out_dtype(eqn), keep=(0,))
    return selected


def _round(graph, eqn, inputs):
    (operand,) = inputs
    if int(eqn.params["rounding_method"]) == int(jax.lax.RoundingMethod.TO_NEAREST_EVEN):
        return graph.node("Round", inputs)  # ONNX Round is half to even
    # away from zero: |x|'s floor plus one where its fraction (exact in floating point) is at least a half
    magnitude = graph.node("Abs", [operand])
    whole = graph.node("Floor", [magnitude])
    fraction = graph.node("Sub", [magnitude, whole])
    half_up = graph.cast(graph.node("GreaterOrEqual", [fraction, graph.constant(0.5, _in_dtype(eqn))]), _in_dtype(eqn))
    return graph.node("Mul", [graph.node("Sign", [operand]), graph.node("Add", [whole, half_up])])




def _convert_element_type(graph, eqn, inputs):
    source, target = _in_dtype(eqn), np.dtype(eqn.params["new_dtype"])
    if source == target:
        return inputs[0]
    if np.issubdtype(source, np.floating) and np.issubdtype(target, np.integer):
        return saturating_cast(graph, inputs[0], source, target)
    return graph.cast(inputs[0], target)


def _shift_amount(graph, eqn, amount: str) -> tuple[str, str]:
    """``(amount as uint64 (a negative one is huge, as in XLA), whether it is below the value's bit width)``."""
    bits = np.iinfo(_in_dtype(eqn)).bits
    unsigned = graph.cast(amount, np.uint64, _in_dtype(eqn, 1))
    return unsigned, graph.node("Less", [unsigned, graph.constant(bits, np.uint64)])


def _known_shift(graph, eqn, amount: str) -> np.ndarray | None:
    """The shift amounts if known at conversion, with the out-of-range ones (negative included) set to the width."""
    known, bits = graph.known.get(amount), np.iinfo(_in_dtype(eqn)).bits
    return None if known is None else np.where((known < 0) | (known >= bits), bits, known).astype(np.int64)


def _shift_left(graph, eqn, inputs):
    value, amount, dtype = *inputs, _in_dtype(eqn)
    if (known := _known_shift(graph, eqn, amount)) is not None:  # a product by 2**k (0 past the width), wrapping
        powers = np.left_shift(np.uint64(1), np.minimum(known, 63).astype(np.uint64))
        factor = np.where(known < np.iinfo(dtype).bits, powers, np.uint64(0)).astype(dtype)
        return graph.compute("Mul", [value, graph.constant(factor)], dtype)
    unsigned, in_range = _shift_amount(graph, eqn, amount)
    shift = graph.node("Min", [unsigned, graph.constant(63, np.uint64)])
    shifted = graph.node("BitShift", [graph.cast(value, np.uint64, dtype), shift], direction="LEFT")
    return graph.node("Mul", [graph.cast(shifted, _out_dtype(eqn)), graph.cast(in_range, _out_dtype(eqn))])


def _shift_right_logical(graph, eqn, inputs):
    value, amount = inputs
    unsigned, in_range = _shift_amount(graph, eqn, amount)
    bits = np.iinfo(_in_dtype(eqn)).bits
    same_width = graph.cast(value, np.dtype(f"uint{bits}"), _in_dtype(eqn))  # reinterpreted, then zero-extended
    shift = graph.node("Min", [unsigned, graph.constant(bits - 1, np.uint64)])
    shifted = graph.node("BitShift", [graph.cast(same_width, np.uint64), shift], direction="RIGHT")
    return graph.node("Mul", [graph.cast(shifted, _out_dtype(eqn)), graph.cast(in_range, _out_dtype(eqn))])


def _shift_right_arithmetic(graph, eqn, inputs):
    if not np.issubdtype(_in_dtype(eqn), np.signedinteger):
        raise Unsupported(f"operands of type {_in_dtype(eqn)} (signed integers only)")
    value, amount, bits = graph.cast(inputs[0], np.int64, _in_dtype(eqn)), inputs[1], np.iinfo(_in_dtype(eqn)).bits
    known = _known_shift(graph, eqn, amount)
    if known is not None and np.all(np.minimum(known, bits - 1) < 63):  # floor division: (a - a mod 2**k) / 2**k
        divisor = graph.constant(np.left_shift(np.int64(1), np.minimum(known, bits - 1)))
        remainder = graph.node("Mod", [value, divisor])  # fmod=0: the divisor's sign, so in [0, 2**k)
        quotient = graph.node("Div", [graph.node("Sub", [value, remainder]), divisor])
        return graph.cast(quotient, _out_dtype(eqn), np.int64)
    unsigned, _ = _shift_amount(graph, eqn, amount)
    shift = graph.node("Min", [unsigned, graph.constant(bits - 1, np.uint64)])
    # a >> k == ~(~a >> k) for negative a, where ~a = -1 - a is non-negative: logical shifts of non-negative values
    negative = graph.node("Less", [value, graph.constant(0, np.int64)])
    minus_one = graph.constant(-1, np.int64)
    magnitude = graph.node("Where", [negative, graph.node("Sub", [minus_one, value]), value])
    shifted = graph.cast(graph.node("BitShift", [graph.cast(magnitude, np.uint64), shift], direction="RIGHT"), np.int64)
    result = graph.node("Where", [negative, graph.node("Sub", [minus_one, shifted]), shifted])
    return graph.cast(result, _out_dtype(eqn), np.int64)


# -- structure and reductions ----------------------------------------------------------------------------------------


def _reshape(graph, eqn, inputs):
    if eqn.params.get("dimensions") is not None:
        raise Unsupported("reshape with dimensions (transpose first)")
    return graph.reshaped(inputs[0], eqn.invars[0].aval.shape, eqn.params["new_sizes"])


def _broadcast_in_dim(graph, eqn, inputs):
    shape, target = eqn.invars[0].aval.shape, eqn.params["shape"]
    aligned = [1] * len(target)
    for axis, size in zip(eqn.params["broadcast_dimensions"], shape, strict=True):
        aligned[axis] = size
    value = graph.reshaped(inputs[0], shape, aligned)
    if all(map(same, aligned, target)):
        return value
    # Expand keeps an axis whose target size is 1: a symbolic axis the value already has needs no size
    sizes = [1 if same(have, want) and not is_static(want) else want
             for have, want in zip(aligned, target, strict=True)]
    return graph.node("Expand", [value, graph.shape(sizes)])


def _squeeze(graph, eqn, inputs):
    axes = list(eqn.params["dimensions"])
    return graph.node("Squeeze", [inputs[0], graph.constant(axes, np.int64)]) if axes else inputs[0]


def _slice(graph, eqn, inputs):
    shape, starts, limits = eqn.invars[0].aval.shape, eqn.params["start_indices"], eqn.params["limit_indices"]
    strides = eqn.params["strides"] or (1,) * len(shape)
    axes = [axis for axis in range(len(shape))
            if (starts[axis], strides[axis]) != (0, 1) or not same(limits[axis], shape[axis])]
    if any(not is_static(starts[axis]) or not (is_static(limits[axis]) or same(limits[axis], shape[axis]))
           for axis in axes):
        raise Unsupported("symbolic start or limit other than the whole axis")
    ends = [END if same(limits[axis], shape[axis]) else limits[axis] for axis in axes]
    return graph.sliced(inputs[0], [starts[axis] for axis in axes], ends, axes, [strides[axis] for axis in axes])


def _pad(graph, eqn, inputs):
    config = eqn.params["padding_config"]
    if any(interior for _, _, interior in config):
        raise Unsupported("interior padding")
    pads = graph.constant([low for low, _, _ in config] + [high for _, high, _ in config], np.int64)
    return graph.compute("Pad", [inputs[0], pads, inputs[1]], _in_dtype(eqn), keep=(1,))


def _iota(graph, eqn, inputs):
    dtype, shape, dimension = np.dtype(eqn.params["dtype"]), eqn.params["shape"], eqn.params["dimension"]
    aligned = [size if axis == dimension else 1 for axis, size in enumerate(shape)]
    if all(map(is_static, shape)):
        return graph.constant(np.broadcast_to(np.arange(shape[dimension]).reshape(aligned), shape).astype(dtype))
    if is_static(shape[dimension]):
        positions = graph.constant(np.arange(shape[dimension]))
    else:
        limit = graph.node("Squeeze", [graph.shape([shape[dimension]])])
        positions = graph.node("Range", [graph.constant(0, np.int64), limit, graph.constant(1, np.int64)])
    positions = graph.reshaped(positions, [shape[dimension]], aligned)
    sizes = [1 if axis == dimension else size for axis, size in enumerate(shape)]
    return graph.cast(graph.node("Expand", [positions, graph.shape(sizes)]), dtype)


def _reduction(op_type: str) -> Callable:
    def convert(graph, eqn, inputs):
        axes = list(eqn.params["axes"])
        if not axes:
            return inputs[0]
        return graph.compute(op_type, [inputs[0], graph.constant(axes, np.int64)], _in_dtype(eqn), keep=(1,),
                             keepdims=0)

    return convert


def _reduce_sum(graph, eqn, inputs):
    """ReduceSum on floats; on integers a MatMul with ones, since onnxruntime's integer ReduceSum accumulates in
    double (inexact past 2**53, saturating where XLA wraps)."""
    dtype, shape, axes = _in_dtype(eqn), eqn.invars[0].aval.shape, list(eqn.params["axes"])
    if not axes or not np.issubdtype(dtype, np.integer):
        return _reduction("ReduceSum")(graph, eqn, inputs)
    if not all(is_static(shape[axis]) for axis in axes):
        raise Unsupported("an integer sum over a symbolic axis")
    kept = [axis for axis in range(len(shape)) if axis not in axes]
    size = math.prod(shape[axis] for axis in axes)
    rows = graph.reshaped(graph.transposed(inputs[0], [*kept, *axes]), [shape[axis] for axis in (*kept, *axes)],
                          [*(shape[axis] for axis in kept), size])
    return graph.compute("MatMul", [rows, graph.constant(np.ones(size, dtype))], dtype)


_WINDOW_OPS = {"max": "Max", "min": "Min", "add": "Add"}


def _window_reduce(graph, eqn, operand: str, op_type: str, init: str, include_init: bool) -> str:
    """A pooling window as one strided Slice per window position, combined by ``op_type``; the padding is ``init``."""
    params, shape, dtype = eqn.params, eqn.invars[0].aval.shape, _in_dtype(eqn)
    window, strides, dilation = params["window_dimensions"], params["window_strides"], params["window_dilation"]
    if any(size != 1 for size in params["base_dilation"]):
        raise Unsupported("base dilation")
    padding = params["padding"]
    if any(low or high for low, high in padding):
        pads = graph.constant([low for low, _ in padding] + [high for _, high in padding], np.int64)
        operand = graph.compute("Pad", [operand, pads, init], dtype, keep=(1,))
    axes = [axis for axis in range(len(shape)) if (window[axis], strides[axis]) != (1, 1)]
    if not all(is_static(shape[axis]) for axis in axes):
        raise Unsupported("a window over a symbolic axis")
    counts = [(shape[axis] + sum(padding[axis]) - (window[axis] - 1) * dilation[axis] - 1) // strides[axis] + 1
              for axis in axes]
    parts = [init] if include_init else []
    for offsets in itertools.product(*(range(window[axis]) for axis in axes)):
        starts = [offset * dilation[axis] for offset, axis in zip(offsets, axes, strict=True)]
        ends = [start + (count - 1) * strides[axis] + 1
                for start, count, axis in zip(starts, counts, axes, strict=True)]
        parts.append(graph.sliced(operand, starts, ends, axes, [strides[axis] for axis in axes]) if axes else operand)
    if op_type == "Add":  # onnxruntime's Sum is float-only
        return functools.reduce(lambda total, part: graph.compute("Add", [total, part], dtype), parts)
    return graph.compute(op_type, parts, dtype)


def _window_primitive(kind: str) -> Callable:
    """reduce_window_max/min/sum: padded with the operation's identity."""

    def convert(graph, eqn, inputs):
        dtype = _in_dtype(eqn)
        lowest, highest = ((-np.inf, np.inf) if np.issubdtype(dtype, np.floating)
                           else (np.iinfo(dtype).min, np.iinfo(dtype).max))
        identity = graph.constant({"max": lowest, "min": highest, "add": 0}[kind], dtype)
        return _window_reduce(graph, eqn, inputs[0], _WINDOW_OPS[kind], identity, include_init=False)

    return convert


def _reduce_window(graph, eqn, inputs):
    """The generic reduce_window whose body is one max, min or add of its two arguments."""
    body = getattr(eqn.params["jaxpr"], "jaxpr", eqn.params["jaxpr"])
    (step,) = body.eqns if len(body.eqns) == 1 else (None,)
    if (len(inputs) != 2 or step is None or step.primitive.name not in _WINDOW_OPS
            or list(step.invars) != list(body.invars)):
        raise Unsupported("a body other than one max, min or add of its arguments, or several operands")
    return _window_reduce(graph, eqn, inputs[0], _WINDOW_OPS[step.primitive.name], inputs[1], include_init=True)


def _gather(graph, eqn, inputs):
    """A gather whose indices are known at conversion (jnp indexing with static indices): the indexed axes are
    flattened into one and read by one Gather of flat positions, then collapsed axes go and the rest are ordered."""
    numbers, sizes, shape = eqn.params["dimension_numbers"], eqn.params["slice_sizes"], eqn.invars[0].aval.shape
    indices, mapped = graph.known.get(inputs[1]), list(numbers.start_index_map)
    mapped_shape = [shape[axis] for axis in mapped]
    if indices is None or numbers.operand_batching_dims or not all(map(is_static, mapped_shape)):
        raise Unsupported("indices computed at run time, batching dimensions or indices into a symbolic axis")
    starts = np.clip(indices.astype(np.int64), 0, np.subtract(mapped_shape, [sizes[axis] for axis in mapped]))
    if getattr(eqn.params["mode"], "name", "") == "FILL_OR_DROP" and np.any(starts != indices):
        raise Unsupported("out-of-bounds indices in mode fill")
    batch_shape, window = indices.shape[:-1], [sizes[axis] for axis in mapped]
    coordinates = (np.moveaxis(starts, -1, 0).reshape(len(mapped), *batch_shape, *[1] * len(mapped))
                   + np.indices(window).reshape(len(mapped), *[1] * len(batch_shape), *window))
    positions = np.ravel_multi_index(tuple(coordinates), mapped_shape) if mapped else np.zeros(batch_shape, np.int64)
    unmapped = [axis for axis in range(len(shape)) if axis not in mapped]
    trimmed = [axis for axis in unmapped if not same(sizes[axis], shape[axis])]
    operand = graph.sliced(inputs[0], [0] * len(trimmed), [sizes[axis] for axis in trimmed], trimmed)
    kept = [sizes[axis] for axis in unmapped]
    rows = graph.reshaped(graph.transposed(operand, [*unmapped, *mapped]), [*kept, *mapped_shape],
                          [*kept, math.prod(mapped_shape)])
    gathered = graph.node("Gather", [rows, graph.constant(positions.astype(np.int64))], axis=len(unmapped))
    labels = [*unmapped, *((None, index) for index in range(len(batch_shape))), *mapped]  # operand axes, batch axes
    collapsed = [position for position, label in enumerate(labels) if label in numbers.collapsed_slice_dims]
    if collapsed:
        gathered = graph.node("Squeeze", [gathered, graph.constant(collapsed, np.int64)])
        labels = [label for label in labels if label not in numbers.collapsed_slice_dims]
    offsets = iter(sorted(label for label in labels if isinstance(label, int)))
    batches = iter(label for label in labels if not isinstance(label, int))
    wanted = [next(offsets) if position in numbers.offset_dims else next(batches) for position in range(len(labels))]
    return graph.transposed(gathered, [labels.index(label) for label in wanted])


# -- contractions ----------------------------------------------------------------------------------------------------


def _byte_parts(graph, name: str, dtype: np.dtype) -> list[tuple[str, int]]:
    """``name`` as 8-bit parts with their weights: itself if 8-bit, else its low (uint8) and high bytes."""
    if dtype.itemsize == 1:
        return [(name, 1)]
    low = graph.node("BitwiseAnd", [name, graph.constant(255, dtype)])
    high = graph.node("Div", [graph.node("Sub", [name, low]), graph.constant(256, dtype)])  # exact
    return [(graph.cast(low, np.uint8), 1), (graph.cast(high, np.int8 if dtype.kind == "i" else np.uint8), 256)]


def _integer_contraction(graph, op_type: str, inputs: Sequence[str], dtypes: Sequence[np.dtype], **attributes):
    """ConvInteger or MatMulInteger (int32 accumulation) of 8-bit operands; a 16-bit operand is split into bytes and
    the partial products are weighted and added, which is exact modulo 2**32 as int32 accumulation is."""
    parts = itertools.product(*(_byte_parts(graph, name, dtype) for name, dtype in zip(inputs, dtypes, strict=True)))
    total = None
    for (lhs, lhs_weight), (rhs, rhs_weight) in parts:
        part = graph.node(op_type + "Integer", [lhs, rhs], **attributes)
        if lhs_weight * rhs_weight != 1:
            part = graph.node("Mul", [part, graph.constant(lhs_weight * rhs_weight, np.int32)])
        total = part if total is None else graph.node("Add", [total, part])
    return total


def _contract(graph, op_type: str, inputs: Sequence[str], eqn, **attributes) -> str:
    """Conv or MatMul of ``inputs`` into the equation's output dtype: ConvInteger/MatMulInteger for 8-bit integers
    (and Conv of 16-bit ones), else the float (or, for MatMul, int32/int64) operator in the output dtype."""
    dtypes, target = (_in_dtype(eqn, 0), _in_dtype(eqn, 1)), _out_dtype(eqn)
    names = {dtype.name for dtype in dtypes}
    if names <= {"int8", "uint8"} or (op_type == "Conv" and names <= {"int8", "uint8", "int16", "uint16"}):
        output, produced = _integer_contraction(graph, op_type, inputs, dtypes, **attributes), np.dtype(np.int32)
    elif target.name in ({"float32", "float64", "int32", "int64"} if op_type == "MatMul" else {"float32"}):
        operands = [graph.cast(name, target, dtype) for name, dtype in zip(inputs, dtypes, strict=True)]
        output, produced = graph.node(op_type, operands, **attributes), target
    else:
        raise Unsupported(f"{' x '.join(sorted(names))} operands into {target} (8- or 16-bit integers, or float32 "
                           f"{'and int32/int64 ' if op_type == 'MatMul' else ''}only)")
    return graph.cast(output, target, produced)


def _conv_general_dilated(graph, eqn, inputs):
    params = eqn.params
    lhs_spec, rhs_spec, out_spec = params["dimension_numbers"]
    if any(size != 1 for size in params["lhs_dilation"]) or params["batch_group_count"] != 1:
        raise Unsupported("lhs_dilation (a transposed convolution) or batch_group_count")
    if any(low < 0 or high < 0 for low, high in params["padding"]):
        raise Unsupported("negative padding")
    pads = [low for low, _ in params["padding"]] + [high for _, high in params["padding"]]
    output = _contract(graph, "Conv", [graph.transposed(inputs[0], lhs_spec), graph.transposed(inputs[1], rhs_spec)],
                       eqn, strides=list(params["window_strides"]), pads=pads, dilations=list(params["rhs_dilation"]),
                       group=params["feature_group_count"])
    return graph.transposed(output, np.argsort(out_spec))


def _dot_general(graph, eqn, inputs):
    (lhs_contract, rhs_contract), (lhs_batch, rhs_batch) = eqn.params["dimension_numbers"]
    lhs_shape, rhs_shape = eqn.invars[0].aval.shape, eqn.invars[1].aval.shape
    lhs_free = [axis for axis in range(len(lhs_shape)) if axis not in (*lhs_contract, *lhs_batch)]
    rhs_free = [axis for axis in range(len(rhs_shape)) if axis not in (*rhs_contract, *rhs_batch)]
    lhs_order, rhs_order = [*lhs_batch, *lhs_free, *lhs_contract], [*rhs_batch, *rhs_contract, *rhs_free]
    batch = [lhs_shape[axis] for axis in lhs_batch]
    rows, inner, columns = (math.prod(shape[axis] for axis in axes) for shape, axes in
                            ((lhs_shape, lhs_free), (lhs_shape, lhs_contract), (rhs_shape, rhs_free)))
    lhs = graph.reshaped(graph.transposed(inputs[0], lhs_order), [lhs_shape[axis] for axis in lhs_order],
                         [*batch, rows, inner])
    rhs = graph.reshaped(graph.transposed(inputs[1], rhs_order), [rhs_shape[axis] for axis in rhs_order],
                         [*batch, inner, columns])
    return graph.reshaped(_contract(graph, "MatMul", [lhs, rhs], eqn), [*batch, rows, columns],
                          eqn.outvars[0].aval.shape)


CONVERTERS: dict[str, Callable] = {
    **{name: _elementwise(op_type) for name, op_type in {
        "add": "Add", "sub": "Sub", "mul": "Mul", "div": "Div", "max": "Max", "min": "Min", "neg": "Neg",
        "abs": "Abs", "sign": "Sign", "floor": "Floor", "ceil": "Ceil", "eq": "Equal", "gt": "Greater",
        "ge": "GreaterOrEqual", "lt": "Less", "le": "LessOrEqual"}.items()},
    "rem": _elementwise("Mod", fmod=1),
    **{name: _bitwise(name.capitalize()) for name in ("and", "or", "xor", "not")},
    "ne": _not_equal, "clamp": _clamp, "select_n": _select_n, "round": _round,
    "convert_element_type": _convert_element_type, "shift_left": _shift_left,
    "shift_right_logical": _shift_right_logical, "shift_right_arithmetic": _shift_right_arithmetic,
    "reshape": _reshape, "broadcast_in_dim": _broadcast_in_dim, "squeeze": _squeeze, "slice": _slice, "pad": _pad,
    "iota": _iota, "transpose": lambda graph, eqn, inputs: graph.transposed(inputs[0], eqn.params["permutation"]),
    "concatenate": lambda graph, eqn, inputs: graph.node("Concat", inputs, axis=eqn.params["dimension"]),
    **dict.fromkeys(("copy", "copy_p", "stop_gradient"), lambda graph, eqn, inputs: inputs[0]),
    "reduce_sum": _reduce_sum, "reduce_max": _reduction("ReduceMax"),
    "reduce_min": _reduction("ReduceMin"), "reduce_window": _reduce_window,
    **{f"reduce_window_{name}": _window_primitive(kind) for name, kind in (("max", "max"), ("min", "min"),
                                                                          ("sum", "add"))},
    "conv_general_dilated": _conv_general_dilated, "dot_general": _dot_general, "gather": _gather,
}
