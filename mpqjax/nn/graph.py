"""What a traced model computes: its weight layers and the channel axes their widths may change, read from a jaxpr.

`discover` walks the jaxpr of ``forward(params, state, x)`` (any Flax linen or NNX model made a pure function) and
finds every *layer*: a ``conv_general_dilated`` or ``dot_general`` (``x @ w``, ``jnp.einsum``) whose one operand is
computed from the parameters alone (the weight) and whose other is computed from the input. A layer is named after its
weight's parameter path (``"block/Conv_0"`` for ``block/Conv_0/kernel``; the whole path for a weight not called
``kernel``).

Channel axes. Every axis of every activation belongs to a *space*; spaces that must have the same channels are
joined (union-find): both operands of an elementwise op, a depthwise convolution's input and output, the two
operands of a contraction between activations. A layer's output channels start a space of their own; every other
axis (the input's, spatial axes, a reshape that splits an axis) starts a *fixed* one. A space whose class holds a
fixed member cannot be narrowed; the layers whose outputs share one class form a width group. Concatenation along
an axis and zero padding make a *composite* space (its segments side by side), flattening makes a *product* space.
Whatever mixes channels other than a layer (a reduction over them, slicing part of them, gathering, a contraction
between activations, an operation not listed here) fixes the spaces involved: a narrowed model then equals the model
with those channels removed.

A layer reads its input through a *mask description* (`Discovery.in_masks`): which channel spaces its contracted
axis is made of, so that `mpqjax.nn.intercept` can zero the inactive input channels at a configuration's widths.
A composite joined with a width group (a zero-padding shortcut added to a residual stream) would carry its segments'
inactive channels into the group, since masks are applied where values are read: such a concatenation or padding
masks its segments where it forms instead (`Discovery.formations`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np
from jax.extend import core as jex_core

from mpqjax.nn.jaxprs import (
    CALL_PRIMITIVES,
    COMPOSING,
    FoundLayer,
    bodies,
    contracts,
    describe_layer,
    input_kinds,
    layer_operands,
    sub_jaxpr,
)
from mpqjax.nn.spaces import SpaceRules, Spaces

__all__ = ["Discovery", "discover"]

_NONNEG_UNARY = frozenset({"exp", "exp2", "logistic", "abs", "sqrt", "rsqrt", "square"})
_NONNEG_KEEP = frozenset({"convert_element_type", "reshape", "transpose", "broadcast_in_dim", "squeeze", "reduce_max",
                          "reduce_min", "reduce_sum", "reduce_window_sum", "reduce_window_max", "reduce_window",
                          "slice", "dynamic_slice", "gather", "copy", "copy_p", "sharding_constraint", "expand_dims",
                          "rev", "cumsum", "cummax", "sort"})
_NONNEG_BOTH = frozenset({"add", "mul", "div", "min", "concatenate", "select_n", "pad"})


@dataclasses.dataclass
class _Var:
    """What the walk knows of a value: the parameter leaves it depends on, whether it depends on the input, one
    space per axis (activations only) and whether it is known to be non-negative."""

    leaves: frozenset
    activation: bool
    spaces: tuple | None
    nonneg: bool
    state: bool = False  # computed from the model's state (batch statistics)


@dataclasses.dataclass(frozen=True)
class Discovery:
    """What `discover` found.

    Attributes:
        layers: the layers in execution order (`mpqjax.nn.jaxprs.FoundLayer`).
        names: each layer's name (its weight path, ``kernel`` dropped).
        in_masks: each layer's input mask description (`mpqjax.nn.intercept.mask_of` builds the mask).
        out_classes: each layer's output space class (layers of one class share a width multiplier).
        fixed: per layer, whether its output channels are fixed by the graph.
        input_nonneg: per layer, whether its input is known to be non-negative (after a ReLU).
        input_layer: per layer, a layer whose output it consumes (-1: the model input, a concatenation or a fixed
            axis).
        input_repeat: per layer, how many times ``input_layer``'s channels repeat in its input (the positions of a
            flattened feature map; 1 otherwise).
        use_bias: per layer, whether a parameter vector is added to its output right away.
        batch_norm: per layer, whether a batch norm (an affine map with the model's running statistics) follows.
        main_leaf: ``{parameter leaves a weight is computed from: the leaf that names it}``.
        formations: ``{composition: ((operand, axis, mask description), ...)}``: the concatenations and paddings
            (numbered in the order the walk meets them, `mpqjax.nn.jaxprs.COMPOSING`) whose result joins a width
            group; each listed operand is masked along ``axis`` as the segments are laid side by side.
    """

    layers: tuple
    names: tuple
    in_masks: tuple
    out_classes: tuple
    fixed: tuple
    input_nonneg: tuple
    input_layer: tuple
    input_repeat: tuple
    use_bias: tuple
    batch_norm: tuple
    main_leaf: dict
    formations: dict = dataclasses.field(default_factory=dict)


def _leaf_name(path: str) -> str:
    head, _, last = path.rpartition("/")
    return head if last == "kernel" and head else path


class _Walk(SpaceRules):
    """One pass over a jaxpr collecting layers and spaces (`discover`)."""

    def __init__(self, leaf_paths: Sequence[str], leaf_sizes: Sequence[int]):
        self.leaf_paths = list(leaf_paths)
        self.leaf_sizes = list(leaf_sizes)
        self.spaces = Spaces()
        self.layers: list[FoundLayer] = []
        self.layer_in: list[int | None] = []  # space node of each layer's contracted axis
        self.layer_out: list[int | None] = []
        self.layer_nonneg: list[bool] = []
        self.layer_of_output: dict = {}  # each layer's output variable -> the layer
        self.bias_after: set[int] = set()
        self.batch_norm: set[int] = set()
        self.following: dict = {}  # variables computed from a layer's output by per-channel affine operations
        self.main_leaf: dict = {}
        self.compositions: list[list] = []  # per concatenation or padding: [(composite node, axis, operands)]

    # -- values ------------------------------------------------------------------------------------------------
    def read(self, env, atom) -> _Var:
        if isinstance(atom, jex_core.Literal):
            value = np.asarray(atom.val)
            return _Var(frozenset(), False, None, bool(value.size and np.all(value >= 0)))
        return env[atom]

    def fresh(self, aval) -> tuple:
        return tuple(self.spaces.new(size) for size in aval.shape)

    def fix_all(self, var: _Var) -> None:
        if var.spaces is not None:
            for node in var.spaces:
                self.spaces.fix(node)

    # -- the walk ----------------------------------------------------------------------------------------------
    def run(self, jaxpr, consts, args: list[_Var]) -> list[_Var]:
        env = {}
        for var, const in zip(jaxpr.constvars, consts, strict=True):
            env[var] = _Var(frozenset(), False, None, bool(np.size(const) and np.all(np.asarray(const) >= 0)))
        for var, arg in zip(jaxpr.invars, args, strict=True):
            env[var] = arg
        for eqn in jaxpr.eqns:
            ins = [self.read(env, atom) for atom in eqn.invars]
            outs = self.equation(eqn, ins)
            for var, out in zip(eqn.outvars, outs, strict=True):
                env[var] = out
        return [self.read(env, atom) for atom in jaxpr.outvars]

    def equation(self, eqn, ins: list[_Var]) -> list[_Var]:
        leaves = frozenset().union(*(var.leaves for var in ins)) if ins else frozenset()
        activation = any(var.activation for var in ins)
        name = eqn.primitive.name
        body = sub_jaxpr(eqn) if name in CALL_PRIMITIVES else None
        if body is not None and len(body[0].invars) == len(ins):
            return self.run(body[0], body[1], ins)
        if activation and leaves and any(contracts(body) for body in bodies(eqn)):
            largest = max(sorted(leaves), key=lambda leaf: self.leaf_sizes[leaf])
            raise ValueError(f"layer {_leaf_name(self.leaf_paths[largest])!r} runs inside {name} (nn.scan, lax.scan, "
                             f"lax.cond...), which mpqjax cannot quantise: write the loop as a Python loop")
        if name == "conv_general_dilated" and eqn.params.get("batch_group_count", 1) != 1 and leaves:
            raise ValueError("a convolution with batch_group_count > 1 is not a layer mpqjax can quantise "
                             f"(weights {sorted(self.leaf_paths[leaf] for leaf in leaves)[0]!r})")
        if not activation:
            state = any(var.state for var in ins)
            return [_Var(leaves, False, None, self.nonneg(eqn, ins), state) for _ in eqn.outvars]
        is_weight = [bool(var.leaves) and not var.activation for var in ins]
        weight_position = layer_operands(eqn, is_weight, [var.activation for var in ins])
        if weight_position is not None:
            return [self.layer(eqn, ins, weight_position)]
        self.note_bias(eqn, ins)
        self.follow_output(eqn, ins)
        first_new = len(self.spaces.parent)
        outs = self.activation_spaces(eqn, ins)
        if name in COMPOSING:
            self.note_composition(eqn, outs[0], first_new)
        return [_Var(leaves, True, spaces, self.nonneg(eqn, ins)) for spaces in outs]

    def note_bias(self, eqn, ins: list[_Var]) -> None:
        """A parameter vector added to a layer's output itself is the layer's bias."""
        if eqn.primitive.name != "add" or not any(var.leaves and not var.activation for var in ins):
            return
        for atom in eqn.invars:
            if isinstance(atom, jex_core.Var) and atom in self.layer_of_output:
                self.bias_after.add(self.layer_of_output[atom])

    def follow_output(self, eqn, ins: list[_Var]) -> None:
        """Follow a layer's output through per-channel affine operations: one with the model's state (a running
        mean or variance) means a batch norm follows the layer."""
        if eqn.primitive.name not in ("add", "sub", "mul", "div", "convert_element_type"):
            return
        layers = [self.following.get(atom) for atom in eqn.invars if isinstance(atom, jex_core.Var)]
        layer = next((index for index in layers if index is not None), None)
        if layer is None:
            return
        self.following[eqn.outvars[0]] = layer
        if any(var.state and not var.activation for var in ins):
            self.batch_norm.add(layer)

    def note_composition(self, eqn, out_spaces: tuple, first_new: int) -> None:
        """Number a concatenation or padding; note the composite spaces it made (nodes from ``first_new`` on) and
        which operand each of their parts is."""
        made = []
        for axis, node in enumerate(out_spaces):
            if node >= first_new and self.spaces.kind[node] == "concat":
                operands = tuple(range(len(eqn.invars))) if eqn.primitive.name == "concatenate" else (0, None)
                made.append((node, axis, operands))
        self.compositions.append(made)

    def nonneg(self, eqn, ins: list[_Var]) -> bool:
        name = eqn.primitive.name
        if name in _NONNEG_UNARY:
            return True
        if name == "max":
            return any(var.nonneg for var in ins)
        if name == "integer_pow":
            return eqn.params["y"] % 2 == 0 or ins[0].nonneg
        if name in _NONNEG_KEEP:
            return ins[0].nonneg
        if name in _NONNEG_BOTH:
            relevant = ins[1:] if name == "select_n" else ins
            return all(var.nonneg for var in relevant)
        return False

    def layer(self, eqn, ins: list[_Var], weight_position: int) -> _Var:
        weight, activation = ins[weight_position], ins[1 - weight_position]
        leaf = max(weight.leaves, key=lambda index: self.leaf_sizes[index])
        found = describe_layer(eqn, weight_position, leaf)
        self.main_leaf[weight.leaves] = leaf
        index = len(self.layers)
        out_aval = eqn.outvars[0].aval
        spaces = self.fresh(out_aval)
        if eqn.primitive.name == "conv_general_dilated":
            numbers = eqn.params["dimension_numbers"]
            in_node = activation.spaces[numbers.lhs_spec[1]]
            out_axis = numbers.out_spec[1]
            spaces = list(spaces)
            spaces[numbers.out_spec[0]] = activation.spaces[numbers.lhs_spec[0]]
            if found.kind == "depthwise":
                out_node = self.spaces.new(found.out_channels, "layer", index)
                self.spaces.union(out_node, in_node)
            elif found.groups > 1:
                self.spaces.fix(in_node)
                out_node = spaces[out_axis]
            else:
                out_node = self.spaces.new(found.out_channels, "layer", index)
            spaces[out_axis] = out_node
            spaces = tuple(spaces)
        else:
            spaces, in_node, out_node = self.dense_spaces(eqn, activation, weight_position, index, found)
        self.layers.append(found)
        self.layer_in.append(in_node)
        self.layer_out.append(out_node)
        self.layer_nonneg.append(activation.nonneg)
        self.layer_of_output[eqn.outvars[0]] = index
        self.following[eqn.outvars[0]] = index
        return _Var(weight.leaves | activation.leaves, True, spaces, False)

    def dense_spaces(self, eqn, activation: _Var, weight_position: int, index: int, found: FoundLayer):
        (contracting, batch) = eqn.params["dimension_numbers"]
        act_position = 1 - weight_position
        act_contracting, act_batch = contracting[act_position], batch[act_position]
        weight_shape = eqn.invars[weight_position].aval.shape
        weight_free = [axis for axis in range(len(weight_shape))
                       if axis not in contracting[weight_position] and axis not in batch[weight_position]]
        contracted = [activation.spaces[axis] for axis in act_contracting]
        if len(contracted) == 1:
            in_node = contracted[0]
        else:
            in_node = self.spaces.new(found.in_channels, "product",
                                      parts=tuple((node, self.spaces.size[node]) for node in contracted))
        act_free = [axis for axis in range(len(activation.spaces))
                    if axis not in act_contracting and axis not in act_batch]
        batch_nodes = [activation.spaces[axis] for axis in act_batch]
        free_nodes = [activation.spaces[axis] for axis in act_free]
        if len(weight_free) == 1 and not batch[weight_position]:
            out_node = self.spaces.new(found.out_channels, "layer", index)
            weight_nodes = [out_node]
        else:
            out_node = None
            weight_nodes = [self.spaces.new(weight_shape[axis]) for axis in weight_free]
        # dot_general's output: batch axes, then the first operand's free axes, then the second's
        if weight_position == 1:
            spaces = tuple(batch_nodes + free_nodes + weight_nodes)
        else:
            spaces = tuple(batch_nodes + weight_nodes + free_nodes)
        return spaces, in_node, out_node

def _mask_description(spaces: Spaces, node: int | None, group_of_class: dict, fixed_classes: set, depth: int = 0):
    """How to build the mask of a space's channels: None (all kept), ``("group", layer, size)``,
    ``("concat", parts)`` or ``("product", parts)`` (parts: descriptions or ``("ones", size)``)."""
    if node is None or depth > 32:
        return None
    root = spaces.find(node)
    if root in fixed_classes:
        return None
    if root in group_of_class:
        return ("group", group_of_class[root], spaces.size[node])
    members = [k for k in range(len(spaces.parent))
               if spaces.find(k) == root and spaces.kind[k] in ("concat", "product")]
    if len(members) != 1:
        return None
    member = members[0]
    parts = []
    for part, size in spaces.parts[member]:
        description = _mask_description(spaces, part, group_of_class, fixed_classes, depth + 1)
        parts.append(description if description is not None else ("ones", size))
    if all(part[0] == "ones" for part in parts):
        return None
    return (spaces.kind[member], tuple(parts))


def _input_source(description) -> tuple[int, int]:
    """``(layer, repeat)``: the layer whose channels a layer reads, ``repeat`` times over (a flattened producer's
    channels at every position); ``(-1, 1)`` for the model input, a fixed axis or a concatenation."""
    if description is None:
        return -1, 1
    if description[0] == "group":
        return description[1], 1
    parts = description[1]
    groups = [part for part in parts if part[0] == "group"]
    if description[0] == "product" and len(groups) == 1 and all(part[0] in ("group", "ones") for part in parts):
        return groups[0][1], int(np.prod([part[1] for part in parts if part[0] == "ones"]))
    return -1, 1


def _resolve(walk: _Walk) -> tuple[dict, set, set]:
    """Which classes are width groups (class -> first layer), which are fixed, and which composite nodes are masked
    where they form."""
    spaces = walk.spaces
    fixed_classes = {spaces.find(k) for k in range(len(spaces.parent)) if spaces.kind[k] == "fixed"}
    formed = {node for made in walk.compositions for node, _, _ in made}
    masked_at_formation = set()
    # A composite joined with a layer group would leak its segments' inactive channels (masks are applied where
    # values are read): a concatenation or padding masks its segments as it forms instead, when none of them is in
    # the group itself. A product (a flattening) joined with a group fixes both.
    for k in range(len(spaces.parent)):
        if spaces.kind[k] in ("concat", "product"):
            root = spaces.find(k)
            joined_with_layer = any(spaces.find(node) == root for node in walk.layer_out if node is not None)
            parts_apart = all(part is None or spaces.find(part) != root for part, _ in spaces.parts[k])
            if joined_with_layer and root not in fixed_classes and k in formed and parts_apart:
                masked_at_formation.add(k)
            elif joined_with_layer or root in fixed_classes:
                fixed_classes.add(root)
                for part, _ in spaces.parts[k]:
                    if part is not None:
                        fixed_classes.add(spaces.find(part))
    group_of_class: dict[int, int] = {}
    for index, node in enumerate(walk.layer_out):
        if node is None:
            continue
        root = spaces.find(node)
        if root not in fixed_classes:
            group_of_class.setdefault(root, index)
    masked_at_formation = {k for k in masked_at_formation if spaces.find(k) in group_of_class}
    return group_of_class, fixed_classes, masked_at_formation


def _formations(walk: _Walk, masked: set, group_of_class: dict, fixed_classes: set) -> dict:
    """`Discovery.formations`: per numbered composition, the operands to mask as their segments are laid out."""
    formations = {}
    for number, made in enumerate(walk.compositions):
        masks = []
        for node, axis, operands in made:
            if node not in masked:
                continue
            for (part, _), operand in zip(walk.spaces.parts[node], operands, strict=True):
                description = _mask_description(walk.spaces, part, group_of_class, fixed_classes)
                if operand is not None and description is not None:
                    masks.append((operand, axis, description))
        if masks:
            formations[number] = tuple(masks)
    return formations


def discover(closed_jaxpr, leaf_paths: Sequence[str], num_param_leaves: int, num_state_leaves: int, *,
             fixed_layers: frozenset = frozenset()) -> Discovery:
    """The layers of a traced model ``forward(params, state, x)``.

    Args:
        closed_jaxpr: ``jax.make_jaxpr(forward)(params, state, x)`` (inputs flattened: parameter leaves, state
            leaves, then the input).
        leaf_paths: the parameter leaves' paths ('/'-joined) in flattening order.
        num_param_leaves, num_state_leaves: how the jaxpr's inputs split.
        fixed_layers: indices of layers left in float: their output channels are fixed.

    Returns:
        A `Discovery`.
    """
    jaxpr = closed_jaxpr.jaxpr
    sizes = [int(np.prod(var.aval.shape)) for var in jaxpr.invars[:num_param_leaves]]
    walk = _Walk(leaf_paths, sizes)
    args = []
    for position, (var, kind) in enumerate(zip(jaxpr.invars, input_kinds(len(jaxpr.invars), num_param_leaves,
                                                                          num_state_leaves), strict=True)):
        if kind == "param":
            args.append(_Var(frozenset({position}), False, None, False))
        elif kind == "state":
            args.append(_Var(frozenset(), False, None, False, True))
        else:
            args.append(_Var(frozenset(), True, walk.fresh(var.aval), False))
    outs = walk.run(jaxpr, closed_jaxpr.consts, args)
    for out in outs:
        walk.fix_all(out)
    for index in fixed_layers:  # a layer left in float reads and writes every channel
        walk.spaces.fix(walk.layer_out[index])
        walk.spaces.fix(walk.layer_in[index])
    group_of_class, fixed_classes, masked_at_formation = _resolve(walk)
    spaces = walk.spaces
    names, counts = [], {}
    for found in walk.layers:
        name = _leaf_name(leaf_paths[found.leaf])
        counts[name] = counts.get(name, 0) + 1
        names.append(name if counts[name] == 1 else f"{name}#{counts[name]}")
    in_masks = tuple(_mask_description(spaces, node, group_of_class, fixed_classes) for node in walk.layer_in)
    out_classes, fixed, input_layer, input_repeat = [], [], [], []
    for index, node in enumerate(walk.layer_out):
        root = spaces.find(node) if node is not None else -1 - index
        out_classes.append(group_of_class.get(root, index) if node is not None else index)
        fixed.append(node is None or root not in group_of_class)
        source, repeat = _input_source(in_masks[index])
        input_layer.append(source)
        input_repeat.append(repeat)
    return Discovery(layers=tuple(walk.layers), names=tuple(names), in_masks=in_masks, out_classes=tuple(out_classes),
                     fixed=tuple(fixed), input_nonneg=tuple(walk.layer_nonneg), input_layer=tuple(input_layer),
                     input_repeat=tuple(input_repeat),
                     use_bias=tuple(index in walk.bias_after for index in range(len(walk.layers))),
                     batch_norm=tuple(index in walk.batch_norm for index in range(len(walk.layers))),
                     main_leaf=dict(walk.main_leaf),
                     formations=_formations(walk, masked_at_formation, group_of_class, fixed_classes))
