"""Where a user's model and its variables come from: a factory named ``"package.module:function"`` (as the command
line and a run folder name it) and an ``nnx.State``."""

from __future__ import annotations

import inspect
from collections.abc import Mapping, Sequence

from mpqjax.nn.models.flax_function import WidthFactory
from mpqjax.nn.models.model import Model, wrap

__all__ = ["as_variables", "from_factory"]

_FACTORY_MODELS: dict = {}


def _import_factory(spec: str):
    module_name, _, attribute = spec.partition(":")
    if not module_name or not attribute or not all(part.isidentifier() for part in module_name.split(".")):
        raise ValueError(f"model {spec!r}: expected a zoo name or package.module:factory")
    import importlib
    import os
    import sys

    if os.getcwd() not in sys.path and "" not in sys.path:  # as `python -m` does: the current folder imports
        sys.path.append(os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except Exception as error:  # the user's module may fail in any way while it is imported
        raise ValueError(f"model {spec!r}: cannot import {module_name!r} ({type(error).__name__}: "
                         f"{str(error).splitlines()[0] if str(error) else ''})") from None
    factory = module
    for part in attribute.split("."):
        if not hasattr(factory, part):
            raise ValueError(f"model {spec!r}: {module_name!r} has no attribute {attribute!r}")
        factory = getattr(factory, part)
    if not callable(factory):
        raise ValueError(f"model {spec!r}: {attribute!r} is not callable")
    return factory


def from_factory(spec: str, *, input_shape: Sequence[int] | None = None, num_classes: int | None = None,
                 quantize: bool = True, max_width: float = 1.0, widths=None, act_clipping: str = "calibrated",
                 **rules) -> Model:
    """The model that ``"package.module:factory"`` builds, wrapped (`wrap`); the same spec gives the same model.

    The factory is called without arguments, or with ``num_classes=`` when it takes that argument, and returns a
    linen or NNX module. A factory with a ``width`` argument is a width factory (`wrap`): the model is the one at
    ``width=1.0`` and grows up to ``max_width``. Its module is imported from the Python path or the current folder.

    Raises:
        ValueError: a spec that does not import, a factory that raises or returns something else than a module.
    """
    key = (spec, num_classes, act_clipping, tuple(sorted((name, repr(value)) for name, value in rules.items())))
    if key not in _FACTORY_MODELS:
        factory = _import_factory(spec)
        try:
            parameters = inspect.signature(factory).parameters
        except (TypeError, ValueError):
            parameters = {}
        options = {"num_classes": num_classes} if "num_classes" in parameters and num_classes is not None else {}
        if "width" in parameters:
            built = WidthFactory(lambda width: factory(width=width, **options), label=spec)
        else:
            try:
                built = factory(**options)
            except Exception as error:  # the user's factory may fail in any way
                raise ValueError(f"model factory {spec!r} raised {type(error).__name__}: "
                                 f"{str(error).splitlines()[0] if str(error) else ''}") from None
        try:
            _FACTORY_MODELS[key] = wrap(built.build if isinstance(built, WidthFactory) else built, input_shape=None,
                                        name=spec, num_classes=num_classes, act_clipping=act_clipping, source=spec,
                                        **rules)
        except ValueError as error:
            raise ValueError(f"model factory {spec!r}: {error}") from None
    shape = {} if input_shape is None else {"example_shape": tuple(int(size) for size in input_shape)}
    model = _FACTORY_MODELS[key].clone(quantize=quantize, max_width=max_width, widths=widths, **shape)
    if shape:
        model.analysis()  # a model without layers, or a rule matching none, fails here
    return model


def as_variables(model: Model, variables) -> dict:
    """A user's variables as mpqjax keeps them: a linen ``{"params", "batch_stats"}`` dict as it is; an
    ``nnx.State`` (``nnx.state(module)``), or a plain tree of one (as an orbax or msgpack checkpoint of it reads
    back), split into ``params`` and ``batch_stats`` plain dicts."""
    try:
        from flax import nnx
    except ImportError:  # pragma: no cover
        nnx = None
    if nnx is not None and isinstance(variables, nnx.State):
        params = nnx.to_pure_dict(nnx.filter_state(variables, nnx.Param))
        rest = nnx.to_pure_dict(nnx.filter_state(variables, nnx.Not(nnx.Param)))
        return {"params": params, **({"batch_stats": rest} if rest else {})}
    if isinstance(variables, Mapping) and "params" not in variables and model.function.kind == "nnx":
        return _split_nnx_tree(model, variables)
    if not isinstance(variables, Mapping) or "params" not in variables:
        raise ValueError(f"variables of model {model.name!r} must be a dict with 'params' (and 'batch_stats'), "
                         f"or an nnx.State; got {type(variables).__name__}")
    return dict(variables)


def _split_nnx_tree(model: Model, tree: Mapping) -> dict:
    """An NNX model's whole state as a plain tree (a checkpoint of ``nnx.state(module)``, with or without the
    ``value`` level of its variables) split into ``params`` and ``batch_stats`` by the model's own layout."""
    from flax import nnx, traverse_util

    flat = {}
    for key, value in traverse_util.flatten_dict(dict(tree)).items():
        flat[key[:-1] if key and key[-1] == "value" else key] = value
    param_keys = set(traverse_util.flatten_dict(nnx.to_pure_dict(model.function.param_template)))
    params = {key: value for key, value in flat.items() if key in param_keys}
    rest = {key: value for key, value in flat.items() if key not in param_keys}
    variables = {"params": traverse_util.unflatten_dict(params)}
    return {**variables, "batch_stats": traverse_util.unflatten_dict(rest)} if rest else variables

