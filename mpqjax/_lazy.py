"""Lazy package faces: a package declares what it exports, and each name's module is imported on first use.

``import mpqjax`` (or ``import mpqjax.cost``) then costs only the modules actually used: the cost model does not
pull in Flax, and the command line starts without compiling anything it does not run.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping, Sequence


def attach(package: str, *, submodules: Sequence[str] = (), names: Mapping[str, str] | None = None
           ) -> tuple[Callable[[str], object], Callable[[], list[str]], list[str]]:
    """``(__getattr__, __dir__, __all__)`` for a package that re-exports names from its submodules lazily.

    Args:
        package: the package's ``__name__``.
        submodules: submodules reachable as attributes (``mpqjax.cost``).
        names: public name -> the submodule (relative to ``package``) that defines it.

    Returns:
        The three module attributes; assign them in the package's ``__init__``.

    Example:
        >>> __getattr__, __dir__, __all__ = attach(__name__, submodules=["tpe"], names={"KMeansTPE": "tpe"})
    """
    names = dict(names or {})
    clashes = sorted(set(names) & set(submodules))
    if clashes:
        raise ValueError(f"{package}: {clashes} are both submodules and exported names")
    exported = sorted(set(submodules) | set(names))

    def __getattr__(name: str) -> object:
        if name in names:
            value = getattr(importlib.import_module(f"{package}.{names[name]}"), name)
            setattr(importlib.import_module(package), name, value)  # later lookups skip __getattr__
            return value
        if name in submodules:
            return importlib.import_module(f"{package}.{name}")
        raise AttributeError(f"module {package!r} has no attribute {name!r}")

    def __dir__() -> list[str]:
        return list(exported)

    return __getattr__, __dir__, exported
