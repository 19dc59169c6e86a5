"""What a search reads: its model and its dataset, named in the settings or given as Python objects.

A `SearchConfig` names its model and dataset with strings, so that a run folder records how to read them again:

- a zoo model (``"resnet20"``) or a user's factory, ``"package.module:factory"`` (`mpqjax.nn.models.from_factory`);
- a registered dataset (``"digits"``, ``"cifar10"``).

`mpqjax.run` also takes a module, its variables and a dataset as objects (``run(config, model=..., variables=...,
dataset=...)``). They are named ``"python:<name>"`` in the settings and live in the `given` context while the search
runs: a command (``mpqjax search --resume``) cannot rebuild them and says so; a resume from Python passes them again.

Example:
    >>> with given(model=my_model, dataset=my_data):
    ...     model = model_named("python:MyCNN", input_shape=(8, 8, 1))
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import os
import re
from typing import Any

from mpqjax import data, store
from mpqjax.nn import models
from mpqjax.store import run_folder

__all__ = ["PYTHON_PREFIX", "Given", "check_dataset_name", "check_model_name", "check_resumable", "dataset_named",
           "given", "given_dataset", "given_variables", "has_given_variables", "model_named", "prepare_config"]

PYTHON_PREFIX = "python:"
_SPEC = re.compile(r"[A-Za-z_][\w.]*:[A-Za-z_][\w.]*")


@dataclasses.dataclass(frozen=True)
class Given:
    """Inputs given as objects: a wrapped model (`mpqjax.nn.models.Model`), its float variables, a dataset."""

    model: Any = None
    variables: Any = None
    dataset: data.Dataset | None = None


_NOTHING_GIVEN = Given()
_GIVEN: contextvars.ContextVar[Given] = contextvars.ContextVar("mpqjax_given_inputs", default=_NOTHING_GIVEN)  # noqa: B039


@contextlib.contextmanager
def given(*, model=None, variables=None, dataset: data.Dataset | None = None):
    """Make objects the search's inputs while the block runs (`model_named`, `dataset_named`, `given_variables`)."""
    token = _GIVEN.set(Given(model, variables, dataset))
    try:
        yield _GIVEN.get()
    finally:
        _GIVEN.reset(token)


def check_model_name(value) -> None:
    """Refuse a model setting that is not a zoo name, ``package.module:factory`` or ``python:<name>``."""
    if isinstance(value, str) and (value in models.available() or value.startswith(PYTHON_PREFIX)
                                   or _SPEC.fullmatch(value)):
        return
    raise ValueError(f"unknown model {value!r}; available: {', '.join(models.available())}, or "
                     f"package.module:factory")


def check_dataset_name(value) -> None:
    """Refuse a dataset setting that is neither registered nor ``python:<name>``."""
    if isinstance(value, str) and (value in data.LOADERS or value.startswith(PYTHON_PREFIX)):
        return
    raise ValueError(f"unknown dataset {value!r}; available: {', '.join(data.LOADERS)}")


def _object_missing(what: str, name: str) -> ValueError:
    return ValueError(f"the {what} {name!r} was given to mpqjax.run as a Python object: pass it again "
                      f"(run(..., {what}=...)); a command cannot rebuild it")


def check_resumable(out_dir, *, model=None, dataset: data.Dataset | None = None) -> None:
    """Refuse to resume a folder whose model or dataset was given as an object, when it is not given again."""
    path = run_folder.file_path(out_dir, "search")
    if not os.path.isfile(path):
        return
    try:
        settings = store.read_json(path).get("settings", {})
    except (ValueError, AttributeError):  # not a search file: the folder check says so
        return
    for what, given_object in (("model", model), ("dataset", dataset)):
        name = settings.get(what)
        if isinstance(name, str) and name.startswith(PYTHON_PREFIX) and given_object is None:
            raise _object_missing(what, name)


def model_named(name: str, **model_kwargs):
    """The model a setting names (`mpqjax.nn.models.get`, or the given object for ``python:<name>``)."""
    if name.startswith(PYTHON_PREFIX):
        model = _GIVEN.get().model
        if model is None or model.name != name[len(PYTHON_PREFIX):]:
            raise _object_missing("model", name)
        model_kwargs.pop("num_classes", None)
        model_kwargs.pop("input_shape", None)
        return model.clone(**model_kwargs)
    return models.get(name, **model_kwargs)


def dataset_named(name: str, **options) -> data.Dataset:
    """The dataset a setting names (`mpqjax.data.load`, or the given object for ``python:<name>``)."""
    if name.startswith(PYTHON_PREFIX):
        dataset = _GIVEN.get().dataset
        if dataset is None or dataset.name != name[len(PYTHON_PREFIX):]:
            raise _object_missing("dataset", name)
        return dataset
    return data.load(name, **options)


def given_dataset() -> data.Dataset | None:
    """The dataset given as an object, or None."""
    return _GIVEN.get().dataset


def has_given_variables() -> bool:
    """Whether float variables were given with the model."""
    return _GIVEN.get().variables is not None


def given_variables(model) -> dict | None:
    """The float variables given with the model (as `mpqjax.nn.models.as_variables` keeps them), or None."""
    current = _GIVEN.get()
    if current.variables is None:
        return None
    return models.as_variables(model, current.variables)


def prepare_config(config, *, model=None, dataset: data.Dataset | None = None, input_shape=None):
    """``config`` naming the given objects (``python:<name>``), with a user model's pinned bits added to
    ``fixed_bits`` and, for a model that cannot grow, the default width multipliers above 1 left out.

    Args:
        config: the settings.
        model, dataset: objects given to the search (None: the settings name them).
        input_shape: one example's shape, when ``model`` is given without ``dataset``.

    Returns:
        ``(config, wrapped model or None)``.

    Raises:
        ValueError: width multipliers above 1 asked of a model that cannot grow.
    """
    changes = {}
    if dataset is not None:
        if not isinstance(dataset, data.Dataset):
            raise ValueError(f"dataset must be an mpqjax.data.Dataset (see mpqjax.data.from_arrays), got "
                             f"{type(dataset).__name__}")
        changes["dataset"] = PYTHON_PREFIX + dataset.name
    wrapped = None
    if model is not None:
        shape = dataset.input_shape if dataset is not None else input_shape
        wrapped = models.wrap(model, input_shape=shape)
        if wrapped.example_shape is None:
            wrapped = dataclasses.replace(wrapped, example_shape=tuple(shape))
        changes["model"] = PYTHON_PREFIX + wrapped.name
    config = dataclasses.replace(config, **changes)
    own = wrapped
    if own is None and not config.model.startswith(PYTHON_PREFIX) and config.model not in models.available():
        own = models.get(config.model)
    if own is not None:
        pinned = {**own.pinned_bits(), **dict(config.fixed_bits)} if own.example_shape is not None else dict(
            config.fixed_bits)
        widths = config.widths if own.factory is not None else tuple(w for w in config.widths if w <= 1.0 + 1e-9)
        if len(widths) != len(config.widths) and config.widths != type(config)().widths:
            raise ValueError(f"model {own.name!r} is a plain module: width multipliers above 1 are unavailable "
                             f"(asked for {[w for w in config.widths if w > 1]}); give widths up to 1")
        config = dataclasses.replace(config, fixed_bits=tuple(sorted(pinned.items())), widths=widths)
    return config, wrapped
