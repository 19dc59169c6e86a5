"""How channel axes flow through a traced model: spaces joined, fixed or composed by each operation.

`Spaces` is a union-find over channel spaces (one node per axis that an operation creates). `SpaceRules` holds, per
jaxpr primitive, how the spaces of its operands' axes become those of its outputs (elementwise operations join them,
a transpose permutes them, a concatenation composes them, a reduction over them fixes them...); any primitive without
a rule fixes every space it touches. `mpqjax.nn.graph` walks a model's jaxpr with these rules.
"""

from __future__ import annotations

__all__ = ["ELEMENTWISE", "SpaceRules", "Spaces"]

ELEMENTWISE = frozenset({
    "abs", "acos", "acosh", "add", "and", "asin", "asinh", "atan", "atan2", "atanh", "cbrt", "ceil", "clamp",
    "convert_element_type", "copy", "copy_p", "cos", "cosh", "div", "eq", "erf", "erf_inv", "erfc", "exp", "exp2",
    "expm1", "floor", "ge", "gt", "imag", "integer_pow", "is_finite", "le", "lgamma", "digamma", "log", "log1p",
    "logistic", "lt", "max", "min", "mul", "ne", "neg", "nextafter", "not", "or", "pow", "real", "reduce_precision",
    "rem", "round", "rsqrt", "select_n", "sharding_constraint", "sign", "sin", "sinh", "sqrt", "square", "sub", "tan",
    "tanh", "xor", "stop_gradient", "optimization_barrier",
})
# Higher-order primitives whose body runs once, in order: the walk enters them.

class Spaces:
    """Union-find over channel spaces; each node is a layer's output, fixed, composite or a product."""

    def __init__(self):
        self.parent: list[int] = []
        self.kind: list[str] = []  # "layer", "fixed", "concat", "product"
        self.layer: list[int] = []
        self.parts: list[tuple] = []  # concat/product: ((node or None, size), ...)
        self.size: list[int] = []

    def new(self, size: int, kind: str = "fixed", layer: int = -1, parts: tuple = ()) -> int:
        self.parent.append(len(self.parent))
        self.kind.append(kind)
        self.layer.append(layer)
        self.parts.append(parts)
        self.size.append(int(size))
        return len(self.parent) - 1

    def find(self, node: int) -> int:
        while self.parent[node] != node:
            self.parent[node] = self.parent[self.parent[node]]
            node = self.parent[node]
        return node

    def union(self, a: int | None, b: int | None) -> None:
        if a is None or b is None:
            return
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.parent[max(ra, rb)] = min(ra, rb)

    def fix(self, node: int | None) -> None:
        """Join ``node``'s class with a new fixed space (its channels can no longer change)."""
        if node is not None:
            self.union(node, self.new(self.size[node]))


class SpaceRules:
    """Per-primitive rules mapping operand spaces to output spaces; a subclass provides ``spaces`` (`Spaces`),
    ``fresh(aval)`` (new fixed spaces for an output) and ``fix_all(var)``. Operands are values with ``activation``
    (computed from the input) and ``spaces`` (one node per axis)."""

    def activation_spaces(self, eqn, ins: list) -> list[tuple]:
        name = eqn.primitive.name
        acts = [var for var in ins if var.activation]
        handler = getattr(self, "_" + name, None)
        if name in ELEMENTWISE:
            out = eqn.outvars[0].aval
            spaces = []
            for axis, size in enumerate(out.shape):
                nodes = [var.spaces[axis] for var, atom in zip(ins, eqn.invars, strict=True)
                         if var.activation and len(atom.aval.shape) == len(out.shape) and atom.aval.shape[axis] == size]
                for node in nodes[1:]:
                    self.spaces.union(nodes[0], node)
                spaces.append(nodes[0] if nodes else self.spaces.new(size))
            return [tuple(spaces) for _ in eqn.outvars]
        if handler is not None:
            return handler(eqn, ins)
        for var in acts:
            self.fix_all(var)
        return [self.fresh(var.aval) for var in eqn.outvars]

    def _reduce(self, eqn, ins):
        axes = set(eqn.params["axes"])
        spaces = ins[0].spaces
        for axis in axes:
            if self.spaces.kind[self.spaces.find(spaces[axis])] != "fixed":
                self.spaces.fix(spaces[axis])
        return [tuple(node for axis, node in enumerate(spaces) if axis not in axes)]

    _reduce_sum = _reduce_max = _reduce_min = _argmax = _argmin = _reduce_prod = _reduce_and = _reduce_or = _reduce

    def _transpose(self, eqn, ins):
        return [tuple(ins[0].spaces[axis] for axis in eqn.params["permutation"])]

    def _squeeze(self, eqn, ins):
        dropped = set(axis % len(ins[0].spaces) for axis in eqn.params["dimensions"])
        return [tuple(node for axis, node in enumerate(ins[0].spaces) if axis not in dropped)]

    def _broadcast_in_dim(self, eqn, ins):
        out_shape = eqn.outvars[0].aval.shape
        spaces = list(self.fresh(eqn.outvars[0].aval))
        operand_shape = eqn.invars[0].aval.shape
        for axis, out_axis in enumerate(eqn.params["broadcast_dimensions"]):
            if operand_shape[axis] == out_shape[out_axis]:
                spaces[out_axis] = ins[0].spaces[axis]
        return [tuple(spaces)]

    def _reshape(self, eqn, ins):
        in_shape = list(eqn.invars[0].aval.shape)
        out_shape = list(eqn.outvars[0].aval.shape)
        source = ins[0].spaces
        spaces: list = [None] * len(out_shape)
        i = j = 0
        while i < len(in_shape) or j < len(out_shape):
            if j < len(out_shape) and out_shape[j] == 1 and (i >= len(in_shape) or in_shape[i] != 1):
                spaces[j] = self.spaces.new(1)
                j += 1
                continue
            if i < len(in_shape) and in_shape[i] == 1 and (j >= len(out_shape) or out_shape[j] != 1):
                i += 1
                continue
            start_i, start_j = i, j
            size_in, size_out = in_shape[i], out_shape[j]
            i, j = i + 1, j + 1
            while size_in != size_out:
                if size_in < size_out:
                    size_in *= in_shape[i]
                    i += 1
                else:
                    size_out *= out_shape[j]
                    j += 1
            group_in, count_out = list(range(start_i, i)), j - start_j
            if len(group_in) == 1 and count_out == 1:
                spaces[start_j] = source[start_i]
            elif count_out == 1:
                spaces[start_j] = self.spaces.new(size_out, "product",
                                                  parts=tuple((source[k], in_shape[k]) for k in group_in))
            else:
                for k in group_in:
                    self.spaces.fix(source[k])
                for k in range(start_j, j):
                    spaces[k] = self.spaces.new(out_shape[k])
        return [tuple(spaces)]

    def _concatenate(self, eqn, ins):
        dimension = eqn.params["dimension"]
        out = eqn.outvars[0].aval
        parts = []
        for var, atom in zip(ins, eqn.invars, strict=True):
            parts.append((var.spaces[dimension] if var.activation else None, atom.aval.shape[dimension]))
        spaces = []
        for axis, size in enumerate(out.shape):
            if axis == dimension:
                spaces.append(self.spaces.new(size, "concat", parts=tuple(parts)))
                continue
            nodes = [var.spaces[axis] for var in ins if var.activation]
            for node in nodes[1:]:
                self.spaces.union(nodes[0], node)
            spaces.append(nodes[0])
        return [tuple(spaces)]

    def _slice(self, eqn, ins):
        """Axes taken whole keep their space (a strided spatial subsampling); any other axis is fixed."""
        spaces = []
        shape = eqn.invars[0].aval.shape
        strides = eqn.params["strides"] or (1,) * len(shape)
        for axis, node in enumerate(ins[0].spaces):
            whole = (eqn.params["start_indices"][axis], eqn.params["limit_indices"][axis], strides[axis]) == (
                0, shape[axis], 1)
            if whole:
                spaces.append(node)
            else:
                self.spaces.fix(node)
                spaces.append(self.spaces.new(eqn.outvars[0].aval.shape[axis]))
        return [tuple(spaces)]

    def _pad(self, eqn, ins):
        source = ins[0].spaces
        spaces = []
        for axis, (low, high, interior) in enumerate(eqn.params["padding_config"]):
            size = eqn.invars[0].aval.shape[axis]
            if (low, high, interior) == (0, 0, 0):
                spaces.append(source[axis])
            elif low == 0 and interior == 0 and high > 0:
                spaces.append(self.spaces.new(size + high, "concat", parts=((source[axis], size), (None, high))))
            else:
                self.spaces.fix(source[axis])
                spaces.append(self.spaces.new(eqn.outvars[0].aval.shape[axis]))
        return [tuple(spaces)]

    def _window(self, eqn, ins):
        spaces = []
        dims = eqn.params["window_dimensions"]
        strides = eqn.params["window_strides"]
        padding = eqn.params.get("padding", ((0, 0),) * len(dims))
        for axis, node in enumerate(ins[0].spaces):
            if dims[axis] == 1 and strides[axis] == 1 and tuple(padding[axis]) == (0, 0):
                spaces.append(node)
            else:
                self.spaces.fix(node)
                spaces.append(self.spaces.new(eqn.outvars[0].aval.shape[axis]))
        return [tuple(spaces)] * len(eqn.outvars)

    _reduce_window_sum = _reduce_window_max = _reduce_window_min = _reduce_window = _window

    def _dot_general(self, eqn, ins):
        """A contraction of two activations (attention scores): contracted and batch axes are tied; contracted
        channels are fixed (their masked values would still be summed)."""
        (contracting, batch) = eqn.params["dimension_numbers"]
        lhs, rhs = ins
        if not (lhs.activation and rhs.activation):
            for var in ins:
                self.fix_all(var)
            return [self.fresh(eqn.outvars[0].aval)]
        for a, b in zip(contracting[0], contracting[1], strict=True):
            self.spaces.union(lhs.spaces[a], rhs.spaces[b])
            self.spaces.fix(lhs.spaces[a])
        for a, b in zip(batch[0], batch[1], strict=True):
            self.spaces.union(lhs.spaces[a], rhs.spaces[b])
        lhs_free = [n for k, n in enumerate(lhs.spaces) if k not in contracting[0] and k not in batch[0]]
        rhs_free = [n for k, n in enumerate(rhs.spaces) if k not in contracting[1] and k not in batch[1]]
        return [tuple([lhs.spaces[k] for k in batch[0]] + lhs_free + rhs_free)]
