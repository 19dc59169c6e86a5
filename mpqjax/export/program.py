"""A self-contained program file for any quantised JAX model: its forward pass as serialised StableHLO plus its arrays.

`export_program` traces ``forward(variables, x) -> logits`` with `jax.export` (the variables are arguments of the
program, not constants) and writes one ``.npz`` archive, atomically. `load_program` needs neither the model's code
nor Flax: only NumPy and JAX, so a model written by a user runs wherever the file goes.

Format ``mpqjax-program/1`` (``numpy.load(path, allow_pickle=False)`` reads every entry):

=================  ===============  ===========================================================================
name               dtype, shape     meaning
=================  ===============  ===========================================================================
``__program__``    uint8, (n,)      ``jax.export`` serialisation of the program ``(variables..., x) -> logits``
``__config__``     str, ()          JSON: ``format``, ``input_shape`` (one example), ``input_dtype``,
                                    ``batch_size`` (null: any batch), ``output_shape`` (``"b"`` is the batch),
                                    ``output_dtype``, ``platforms``, ``jax_version`` (of the writer),
                                    ``variables`` (the program's argument order) and ``metadata``
``<path>``         any, any         one variable leaf; its path in the variables joined with ``/``
                                    (``params/conv1/kernel``); list items are numbered
=================  ===============  ===========================================================================

Example:
    >>> forward = lambda variables, x: model.apply(variables, x, bits=bits, train=False)
    >>> export_program("model.npz", forward, variables, input_shape=(8, 8, 1), metadata={"accuracy": 0.97})
    >>> program = load_program("model.npz")  # in any process: the model's code is not needed
    >>> program(images).shape
    (32, 10)
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Callable, Sequence
from typing import Any

import jax
import numpy as np

from mpqjax.export.archive import one_line, read_archive
from mpqjax.store.files import atomic_write, to_json_value

__all__ = ["LOWERING_PLATFORMS", "PROGRAM_FORMAT", "Program", "export_program", "load_program"]

PROGRAM_FORMAT = "mpqjax-program/1"
LOWERING_PLATFORMS = ("cpu", "cuda", "rocm", "tpu")
_PROGRAM, _CONFIG = "__program__", "__config__"


def _nest(names: Sequence[str], leaves: Sequence[np.ndarray]) -> dict:
    """The nested dict ``{"params": {"conv1": {"kernel": ...}}}`` of '/'-joined names; ValueError on a clash."""
    nested: dict = {}
    for name, leaf in zip(names, leaves, strict=True):
        *folders, last = name.split("/")
        node = nested
        for folder in folders:
            node = node.setdefault(folder, {})
            if not isinstance(node, dict):
                raise ValueError(f"variable {name!r} clashes with another variable's path")
        if last in node or name.startswith("__") or not all(name.split("/")):
            raise ValueError(f"variable path {name!r} is empty, reserved or repeated")
        node[last] = leaf
    return nested


def _exported_program(forward, variables, input_spec, platforms):
    """``(jax.export.Exported, variable names, leaves)`` of ``forward`` with the variables as leading arguments."""
    paths_leaves, treedef = jax.tree_util.tree_flatten_with_path(variables)
    names = [jax.tree_util.keystr(path, simple=True, separator="/") for path, _ in paths_leaves]
    leaves = [np.asarray(leaf) for _, leaf in paths_leaves]
    _nest(names, leaves)

    def program(*arguments):
        return forward(jax.tree_util.tree_unflatten(treedef, arguments[:-1]), arguments[-1])

    specs = [jax.ShapeDtypeStruct(leaf.shape, leaf.dtype) for leaf in leaves]
    # Without Python tracebacks in its locations, the same model gives the same bytes from any caller.
    previous_limit = jax.config.jax_traceback_in_locations_limit
    jax.config.update("jax_traceback_in_locations_limit", 0)
    try:
        exported = jax.export.export(jax.jit(program), platforms=platforms)(*specs, input_spec)
    except Exception as error:  # any failure of the user's code is reported the same way
        raise ValueError(f"forward fails to trace at export ({one_line(error)})") from None
    finally:
        jax.config.update("jax_traceback_in_locations_limit", previous_limit)
    if len(exported.out_avals) != 1 or exported.out_tree != jax.tree_util.tree_structure(0):
        raise ValueError(f"forward must return one array (the logits), got {len(exported.out_avals)} outputs")
    return exported, names, leaves


def export_program(path: str | os.PathLike, forward: Callable, variables: Any, *, input_shape: Sequence[int],
                   batch_size: int | None = None, input_dtype: Any = np.float32, metadata: dict | None = None,
                   platforms: Sequence[str] = ("cpu",)) -> None:
    """Write ``forward`` with its variables as one self-contained program file (format in the module docstring).

    Args:
        path: the ``.npz`` file to create or replace (atomically; its folder must exist).
        forward: ``forward(variables, x) -> logits``, jittable; it closes over the model, bits and widths.
        variables: a pytree of arrays (a Flax variables dict); stored as named arrays, passed to the program.
        input_shape: one example's shape, without the batch axis.
        batch_size: None for a program that runs any batch (symbolic batch), else the only batch size it runs.
        input_dtype: the dtype of ``x``.
        metadata: free-form JSON values kept in the file (accuracy, cost, ...).
        platforms: lowering platforms among `LOWERING_PLATFORMS`, e.g. ``("cpu", "cuda")``.

    Example:
        >>> export_program("model.npz", forward, variables, input_shape=(8, 8, 1), platforms=("cpu", "cuda"))
    """
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise ValueError(f"cannot write {path!r}: folder {folder!r} does not exist")
    platforms = (platforms,) if isinstance(platforms, str) else tuple(platforms)
    unknown = [platform for platform in platforms if platform not in LOWERING_PLATFORMS]
    if unknown or not platforms:
        raise ValueError(f"platforms {list(platforms)} must be some of {list(LOWERING_PLATFORMS)}; jax does not "
                         f"know {unknown or 'an empty list'}")
    input_shape = tuple(int(size) for size in input_shape)
    if any(size < 1 for size in input_shape) or (batch_size is not None and int(batch_size) < 1):
        raise ValueError(f"input_shape {input_shape} and batch_size {batch_size} must be positive sizes")
    batch = "b" if batch_size is None else str(int(batch_size))
    input_dtype = np.dtype(input_dtype)
    input_spec = jax.ShapeDtypeStruct(jax.export.symbolic_shape(", ".join([batch, *map(str, input_shape)])),
                                      input_dtype)
    exported, names, leaves = _exported_program(forward, variables, input_spec, platforms)
    output = exported.out_avals[0]
    config = dict(format=PROGRAM_FORMAT, input_shape=list(input_shape), input_dtype=input_dtype.name,
                  batch_size=None if batch_size is None else int(batch_size),
                  output_shape=[int(size) if isinstance(size, int) else str(size) for size in output.shape],
                  output_dtype=np.dtype(output.dtype).name, platforms=list(platforms), jax_version=jax.__version__,
                  variables=names, metadata=metadata or {})
    try:
        text = json.dumps(to_json_value(config), allow_nan=False)
    except (TypeError, ValueError) as error:
        raise ValueError(f"metadata must be JSON values ({one_line(error)})") from None
    arrays = {_PROGRAM: np.frombuffer(bytes(exported.serialize()), dtype=np.uint8), _CONFIG: np.asarray(text),
              **dict(zip(names, leaves, strict=True))}

    def write(temporary):
        with open(temporary, "wb") as handle:  # a file object: np.savez would append ".npz" to a bare name
            np.savez_compressed(handle, **arrays)

    atomic_write(path, write)


@dataclasses.dataclass(frozen=True, eq=False)
class Program:
    """A loaded program file: call it on a batch of examples to get the logits as a NumPy array.

    Attributes:
        config: the whole ``__config__`` JSON object.
        variables: the nested dict of the stored arrays (NumPy).
    """

    config: dict
    variables: dict
    _exported: Any = dataclasses.field(repr=False)
    _arguments: tuple = dataclasses.field(repr=False)
    _run: Callable = dataclasses.field(repr=False)

    @property
    def metadata(self) -> dict:
        """The free-form metadata given at export."""
        return self.config["metadata"]

    @property
    def input_shape(self) -> tuple[int, ...]:
        """One example's shape, without the batch axis."""
        return tuple(self.config["input_shape"])

    def __call__(self, x) -> np.ndarray:
        """The logits of the batch ``x`` (shape ``(batch, *input_shape)``), as a NumPy array."""
        x = np.asarray(x, dtype=self.config["input_dtype"])
        if x.ndim == 0 or x.shape[1:] != self.input_shape:
            raise ValueError(f"input has example shape {x.shape[1:]}, expected {self.input_shape}")
        fixed = self.config["batch_size"]
        if fixed is not None and x.shape[0] != fixed:
            raise ValueError(f"program runs batches of {fixed} only (exported with batch_size={fixed}), "
                             f"got {x.shape[0]}")
        if x.shape[0] == 0:
            raise ValueError("input holds no examples")
        return np.asarray(self._run(*self._arguments, x))

    def predict(self, x, batch_size: int | None = None) -> np.ndarray:
        """The logits of every example of ``x``, run in batches of ``batch_size`` (default 256, or the fixed batch).

        A fixed-batch program pads the last batch and drops the padding's logits.
        """
        x = np.asarray(x, dtype=self.config["input_dtype"])
        fixed = self.config["batch_size"]
        batch_size = batch_size or fixed or 256
        if batch_size < 1 or (fixed is not None and batch_size != fixed):
            raise ValueError(f"batch_size {batch_size} must be positive{f' and {fixed}' if fixed else ''}")
        if x.ndim == 0 or len(x) == 0:
            raise ValueError("input holds no examples")
        outputs = []
        for start in range(0, len(x), batch_size):
            chunk = x[start:start + batch_size]
            padding = batch_size - len(chunk) if fixed is not None else 0
            padded = np.concatenate([chunk, np.zeros((padding, *chunk.shape[1:]), chunk.dtype)]) if padding else chunk
            outputs.append(self(padded)[:len(chunk)])
        return np.concatenate(outputs)


def _read_entries(path: str) -> tuple[dict[str, np.ndarray], dict]:
    """Every entry of a program file and its parsed config; any failure is a one-line ValueError naming the file."""
    return read_archive(path, kind="mpqjax program file", required=(_CONFIG, _PROGRAM), config_entry=_CONFIG,
                        format_version=PROGRAM_FORMAT)


def _arguments_of(entries: dict, config: dict, exported) -> list[np.ndarray]:
    """The stored variables in the program's argument order, checked against its argument types."""
    names = config["variables"]
    if len(exported.in_avals) != len(names) + 1:
        raise ValueError(f"the program takes {len(exported.in_avals) - 1} variables, the config names {len(names)}")
    arguments = []
    for name, aval in zip(names, exported.in_avals, strict=False):
        if name not in entries:
            raise ValueError(f"variable {name!r} is missing")
        value = entries[name]
        if value.dtype != aval.dtype and value.dtype.kind == "V" and value.dtype.itemsize == aval.dtype.itemsize:
            value = value.view(aval.dtype)  # bfloat16 and other ml_dtypes are stored as raw bytes
        if value.shape != aval.shape or value.dtype != aval.dtype:
            raise ValueError(f"variable {name!r} is {value.dtype}{list(value.shape)}, the program takes {aval}")
        arguments.append(value)
    return arguments


def _device_for(platforms: Sequence[str]):
    """This process's default device when the program was lowered for it, else the CPU."""
    if jax.export.default_export_platform() in platforms:
        return jax.devices()[0]
    if "cpu" in platforms:
        return jax.devices("cpu")[0]
    raise ValueError(f"the program runs on {list(platforms)}; this process has {jax.export.default_export_platform()}")


def load_program(path: str | os.PathLike) -> Program:
    """Load a program file written by `export_program`; only NumPy and JAX are needed, not the model's code.

    Example:
        >>> program = load_program("model.npz")
        >>> program.predict(images, batch_size=64).argmax(-1)
    """
    path = os.fspath(path)
    entries, config = _read_entries(path)
    try:
        exported = jax.export.deserialize(bytearray(entries[_PROGRAM].tobytes()))
    except Exception as error:  # a damaged flatbuffer raises anything from struct.error on
        raise ValueError(f"{path!r} is a damaged mpqjax program file (its program, written by jax "
                         f"{config.get('jax_version')}, does not load in jax {jax.__version__}: "
                         f"{one_line(error)})") from None
    try:
        arguments = _arguments_of(entries, config, exported)
        variables = _nest(config["variables"], arguments)
        missing = {"input_shape", "input_dtype", "batch_size", "metadata"} - set(config)
        if missing:
            raise ValueError(f"{_CONFIG} lacks {sorted(missing)}")
    except (ValueError, KeyError, TypeError) as error:
        raise ValueError(f"{path!r} is a damaged mpqjax program file ({one_line(error)})") from None
    device = _device_for(exported.platforms)
    return Program(config=config, variables=variables, _exported=exported,
                   _arguments=tuple(jax.device_put(arguments, device)), _run=jax.jit(exported.call))
