"""The k-means TPE optimiser's state as a file: what a search folder keeps to resume exactly."""

from __future__ import annotations

import os

import jax.numpy as jnp
import numpy as np

from mpqjax.optim.tpe import TPEParams, TPEState
from mpqjax.store.files import atomic_write

__all__ = ["load_tpe_state", "save_tpe_state"]


def _write_npz(path: str, arrays: dict) -> None:
    with open(path, "wb") as file:
        np.savez(file, **arrays)


def save_tpe_state(path: str | os.PathLike, state: TPEState) -> None:
    """Write a state to ``path`` (.npz) atomically: a temporary file in the same folder, then a rename."""
    path = os.fspath(path)
    arrays = {name: np.asarray(value) for name, value in state._asdict().items() if name != "params"}
    arrays.update({f"params.{name}": np.asarray(value) for name, value in state.params._asdict().items()})
    atomic_write(path, lambda name: _write_npz(name, arrays))


def load_tpe_state(path: str | os.PathLike) -> TPEState:
    """Read a state written by `save_tpe_state`; raises ValueError for a file that is not one."""
    try:
        with np.load(os.fspath(path)) as data:
            arrays = {name: jnp.asarray(data[name]) for name in data.files}
    except (OSError, ValueError) as error:
        raise ValueError(f"cannot read a TPE state from {os.fspath(path)!r}: {error}") from None
    try:
        params = TPEParams(**{name: arrays.pop(f"params.{name}") for name in TPEParams._fields})
        return TPEState(params=params, **{name: arrays[name] for name in TPEState._fields if name != "params"})
    except KeyError as error:
        raise ValueError(f"{os.fspath(path)!r} is not a TPE state file (missing {error})") from None
