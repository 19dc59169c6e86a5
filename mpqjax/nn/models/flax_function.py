"""A user's Flax model as a pure function: `FlaxFunction` (a linen or NNX module) and `WidthFactory` (a function
from a width multiplier to such a module).

`FlaxFunction` turns either kind of module into ``(params, state, x, train) -> (output, new state)`` over plain
dicts (NNX states are split into parameters and the rest), and traces it to a jaxpr once per input shape. It is
compared by identity: two wraps of one module are two models.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

__all__ = ["RNG", "FlaxFunction", "WidthFactory", "leaf_paths", "path_text"]

# Where `Model.apply` passes the training step's dropout key to `FlaxFunction` (next to the model's state).
RNG = "__mpqjax_rng__"
_TRAIN_ARGUMENTS = {"train": True, "training": True, "is_training": True, "deterministic": False,
                    "use_running_average": False}


def path_text(path) -> str:
    """A pytree key path as ``"conv1/kernel"`` (dict keys, attribute names and indices joined with '/')."""
    return jax.tree_util.keystr(path, simple=True, separator="/")


def leaf_paths(tree) -> list[str]:
    """`path_text` of every leaf of ``tree``, in flattening order."""
    return [path_text(path) for path, _ in jax.tree_util.tree_flatten_with_path(tree)[0]]


class FlaxFunction:
    """A linen or NNX model as the pure function ``(params, state, x, train) -> (output, new state)``.

    ``state`` holds the non-parameter collections (``{"batch_stats": ...}``). Compared by identity.
    """

    def __init__(self, module, *, train_argument: str | None = "auto", initializer=None):
        try:
            from flax import nnx
        except ImportError:  # pragma: no cover - flax always ships nnx in the supported versions
            nnx = None
        if isinstance(module, nn.Module):
            self.kind = "linen"
            self.module = module
            self.train_argument = _train_argument(module.__call__, train_argument)
        elif nnx is not None and isinstance(module, nnx.Module):
            self.kind = "nnx"
            self.graphdef, self.param_template, self.state_template = nnx.split(module, nnx.Param, ...)
        else:
            raise ValueError(f"expected a flax.linen or flax.nnx module, got {type(module).__name__}")
        self.label = type(module).__name__
        self.initializer = initializer
        self._jaxprs: dict = {}
        self._inits: dict = {}

    def initial_variables(self, key, input_shape: Sequence[int]) -> dict:
        """The model's variables: ``module.init`` for linen (or the ``initializer`` given, a function of the key
        and the variables' shapes), the module's current state for NNX."""
        if self.kind == "nnx":
            from flax import nnx

            variables = {"params": nnx.to_pure_dict(self.param_template)}
            state = nnx.to_pure_dict(self.state_template)
            return {**variables, "batch_stats": state} if state else variables
        shape = tuple(int(size) for size in input_shape)
        if self.initializer is not None:
            return self.initializer(key, self.abstract_variables(shape))
        if shape not in self._inits:  # one compiled initialisation per input shape
            x = np.zeros((1, *shape), np.float32)  # a host constant: the cached program holds no tracer
            kwargs = {} if self.train_argument is None else {
                self.train_argument: not _TRAIN_ARGUMENTS[self.train_argument]}
            self._inits[shape] = jax.jit(lambda init_key: self.module.init(init_key, x, **kwargs))
        return dict(self._inits[shape](key))

    def __call__(self, params, state, x, train: bool):
        """Run the model; ``state[RNG]``, when present, is the training step's key for dropout."""
        state = dict(state)
        rng = state.pop(RNG, None)
        if self.kind == "nnx":
            return self._call_nnx(params, state, x, train)
        kwargs = {}
        if self.train_argument is not None:
            kwargs[self.train_argument] = train if _TRAIN_ARGUMENTS[self.train_argument] else not train
        if train and rng is not None:
            kwargs["rngs"] = {"dropout": rng}
        variables = {"params": params, **state}
        if train and state:
            out, updates = self.module.apply(variables, x, mutable=list(state), **kwargs)
            return out, {**state, **updates}
        return self.module.apply(variables, x, **kwargs), state

    def _call_nnx(self, params, state, x, train: bool):
        from flax import nnx

        param_state = jax.tree.map(lambda leaf: leaf, self.param_template)
        nnx.replace_by_pure_dict(param_state, params)
        other_state = jax.tree.map(lambda leaf: leaf, self.state_template)
        if state.get("batch_stats"):
            nnx.replace_by_pure_dict(other_state, state["batch_stats"])
        module = nnx.merge(self.graphdef, param_state, other_state)
        module.train() if train else module.eval()
        out = module(x)
        _, _, new_state = nnx.split(module, nnx.Param, ...)
        new_state = nnx.to_pure_dict(new_state)
        return out, ({"batch_stats": new_state} if new_state else {})

    @functools.lru_cache(maxsize=8)  # noqa: B019  (compared by identity, one entry per input shape)
    def abstract_variables(self, input_shape: tuple[int, ...]) -> dict:
        """Shapes and dtypes of the model's variables (`initial_variables` without running it)."""
        if self.kind == "linen":
            x = jax.ShapeDtypeStruct((1, *input_shape), jnp.float32)
            kwargs = {} if self.train_argument is None else {
                self.train_argument: not _TRAIN_ARGUMENTS[self.train_argument]}
            return dict(jax.eval_shape(lambda v: self.module.init(jax.random.key(0), v, **kwargs), x))
        return jax.eval_shape(lambda: self.initial_variables(jax.random.key(0), input_shape))

    def eval_jaxpr(self, input_shape: tuple[int, ...]):
        """``(closed jaxpr, parameter leaf paths, number of state leaves)`` of the inference call on one example."""
        variables = self.abstract_variables(tuple(input_shape))
        params = variables["params"]
        state = {name: value for name, value in variables.items() if name != "params"}
        x = jax.ShapeDtypeStruct((1, *input_shape), jnp.float32)
        closed, _ = self.jaxpr(params, state, x, False)
        return closed, leaf_paths(params), len(jax.tree.leaves(state))

    def jaxpr(self, params, state, x, train: bool):
        """``(closed jaxpr, output treedef)`` of the call at these shapes (cached per shapes and mode)."""
        flat, treedef = jax.tree.flatten((params, state, x))
        key = (train, treedef, tuple((leaf.shape, jnp.result_type(leaf)) for leaf in flat))
        if key not in self._jaxprs:
            closed, out_shape = jax.make_jaxpr(lambda p, s, v: self(p, s, v, train), return_shape=True)(
                params, state, x)
            self._jaxprs[key] = (closed, jax.tree.structure(out_shape))
        return self._jaxprs[key]


def _train_argument(method, requested: str | None) -> str | None:
    if requested != "auto":
        if requested is not None and requested not in _TRAIN_ARGUMENTS:
            raise ValueError(f"train_argument must be one of {sorted(_TRAIN_ARGUMENTS)}, None or 'auto'")
        return requested
    parameters = inspect.signature(method).parameters
    return next((name for name in _TRAIN_ARGUMENTS if name in parameters), None)


class WidthFactory:
    """A function ``width -> module`` (the model built at a width multiplier), its modules' functions memoised.

    The module at width 1 is the model; a wider one holds the parameters a search needs for multipliers up to its
    width. Both must have the same layers, the wider one at least ``width`` times the channels of each.
    """

    def __init__(self, build, *, train_argument: str | None = "auto", label: str = "", initializer=None):
        self.build = build
        self.train_argument = train_argument
        self.initializer = initializer
        self.label = label or getattr(build, "__name__", type(build).__name__)
        self._functions: dict[float, FlaxFunction] = {}

    def function(self, width: float) -> FlaxFunction:
        """The model built at ``width`` as a `FlaxFunction` (one per width)."""
        key = round(float(width), 9)
        if key not in self._functions:
            try:
                module = self.build(width)
            except Exception as error:  # the user's factory may fail in any way
                raise ValueError(f"the width factory {self.label!r} raised {type(error).__name__} at width "
                                 f"{width:g}: {str(error).splitlines()[0] if str(error) else ''}") from None
            self._functions[key] = FlaxFunction(module, train_argument=self.train_argument,
                                                initializer=self.initializer)
        return self._functions[key]
