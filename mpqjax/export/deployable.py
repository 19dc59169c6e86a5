"""A deployable integer model: the integer-only program (`mpqjax.export.lowering`) with bit-packed weights, as
one self-contained file, and the way from a search's output folder to it.

`write_integer_model` stores an `IntegerProgram` in the program-file format (`mpqjax.export.program`): the
serialised StableHLO of ``(packed weights, input) -> logits`` and, as its arguments, each layer's kept weight codes
packed at the layer's bit-width (`mpqjax.export.bitpack`); a channel-wise configuration packs each group of output
channels of equal weight bit-width at its own. The program unpacks them, places the kept channels in
the kernels and runs the integer arithmetic; `mpqjax.export.load_program` runs the file in any process with JAX and
NumPy, without mpqjax's models or the model's code. The description of the integer model (every layer's bit-width,
input step, weight scales, kept channels and payload, the input's type and normalisation) is in the file's
metadata under ``"integer"`` (format ``mpqjax-integer/1``).

`integer_program_of_run` rebuilds the model, its trained variables and its dataset from a search folder
(``model.npz``) and lowers the chosen configuration.

Example:
    >>> program, run = integer_program_of_run("runs/digits")
    >>> described = write_integer_model("runs/digits/model_int.npz", program, metadata=run.metadata)
    >>> described["payload_bytes"], described["layers"][0]["bits"]
    (10140, 6)
"""

from __future__ import annotations

import dataclasses
import json
import os

import jax
import jax.numpy as jnp
import numpy as np

from mpqjax.export import bitpack
from mpqjax.export.lowering import IntegerProgram, lower
from mpqjax.export.program import Program, export_program, load_program

__all__ = ["INTEGER_FORMAT", "RunModel", "describe", "integer_program_of_run", "run_model", "write_integer_model"]

INTEGER_FORMAT = "mpqjax-integer/1"
_WEIGHTS = "weights"


def _expand(block, kept, shape):
    """The full kernel of ``shape`` with ``block`` at the kept channels and zeros elsewhere (JAX)."""
    kernel = block
    for axis, indices in reversed(kept):
        full_shape = list(kernel.shape)
        full_shape[axis] = shape[axis]
        index = (slice(None),) * axis + (jnp.asarray(indices),)
        kernel = jnp.zeros(full_shape, kernel.dtype).at[index].set(kernel)
    return kernel


def describe(program: IntegerProgram, *, layout: str = "bitstream") -> dict:
    """The integer model's description (the file's ``metadata["integer"]``): per layer and in total.

    Every layer lists its ``name``, ``bits``, ``signed`` input, ``input_step``, ``weight_scale`` (per output
    channel), ``kernel_shape``, ``kept`` (``[[axis, [channel, ...]], ...]``), ``kept_weights`` and
    ``payload_bytes``.
    """
    layers = []
    for layer in program.layers:
        block = layer.block()
        per_channel = block.size // max(block.shape[layer.channel_axis], 1)
        groups = layer.weight_groups()
        described = {"name": layer.name, "bits": layer.bits, "signed": layer.signed, "input_step": layer.input_step,
                     "weight_scale": [float(scale) for scale in layer.weight_scale],
                     "kernel_shape": list(layer.codes.shape),
                     "kept": [[int(axis), [int(i) for i in indices]] for axis, indices in layer.kept],
                     "kept_weights": int(block.size),
                     "payload_bytes": sum(bitpack.packed_bytes(len(channels) * per_channel, bits, layout=layout)
                                          for bits, channels in groups)}
        if layer.weight_bits is not None:
            described.update(channel_axis=int(layer.channel_axis % layer.codes.ndim),
                             weight_groups=[[bits, [int(c) for c in channels]] for bits, channels in groups])
        layers.append(described)
    return {"format": INTEGER_FORMAT, "layout": layout, "input_dtype": program.input_dtype.name,
            "input_bound": program.input_bound, "normalisation": program.normalisation, "layers": layers,
            "payload_bytes": sum(layer["payload_bytes"] for layer in layers)}


def write_integer_model(path: str | os.PathLike, program: IntegerProgram, *, layout: str = "bitstream",
                        metadata: dict | None = None, platforms=("cpu",)) -> dict:
    """Write an integer program with bit-packed weights as one self-contained file (atomically).

    Args:
        path: the ``.npz`` file to create or replace; its folder must exist.
        program: `mpqjax.export.lowering.lower`'s result.
        layout: ``"bitstream"`` (weights back to back at their bit-width) or ``"dsp"`` (the packed-DSP memory image,
            `mpqjax.export.bitpack`).
        metadata: free-form JSON values kept beside the integer description.
        platforms: lowering platforms, as `mpqjax.export.export_program`.

    Returns:
        The description written under ``metadata["integer"]`` (`describe`).

    Raises:
        ValueError: an unknown layout, a folder that does not exist, metadata that is not JSON; nothing is written.
    """
    if layout not in bitpack.LAYOUTS:
        raise ValueError(f"packing layout must be one of {bitpack.LAYOUTS}, got {layout!r}")
    described = describe(program, layout=layout)
    payload, blocks = {}, []
    for layer in program.layers:
        block, axis = layer.block(), layer.channel_axis % layer.codes.ndim
        groups = []
        for bits, channels in layer.weight_groups():  # one group at the layer's bits unless channel-wise
            key = f"{_WEIGHTS}/{layer.name}" if layer.weight_bits is None else f"{_WEIGHTS}/{layer.name}/{bits}"
            part = np.take(block, channels, axis=axis)
            payload[key] = bitpack.pack(part, bits, layout=layout)
            groups.append((key, bits, channels, part.shape))
        blocks.append((block.shape, axis, groups, layer))

    def forward(variables, x):
        kernels = []
        for shape, axis, groups, layer in blocks:
            block = jnp.zeros(shape, jnp.int8)
            for key, bits, channels, part_shape in groups:
                part = bitpack.unpack_jax(variables[key], int(np.prod(part_shape)), bits, layout=layout)
                index = (slice(None),) * axis + (jnp.asarray(channels),)
                block = block.at[index].set(part.reshape(part_shape).astype(jnp.int8))
            kernels.append(_expand(block, layer.kept, layer.codes.shape))
        return program.run(kernels, x)

    with jax.enable_x64(True):
        export_program(path, forward, payload, input_shape=program.input_shape, input_dtype=program.input_dtype,
                       metadata={**(metadata or {}), "integer": described}, platforms=platforms)
    return described


@dataclasses.dataclass(frozen=True)
class RunModel:
    """What a search folder's ``model.npz`` holds, rebuilt: the model, its variables, configuration and data."""

    model: object
    variables: dict
    bits: list
    widths: list
    metadata: dict
    dataset: object
    fake_quantised: Program


def run_model(out_dir: str | os.PathLike, *, model=None, dataset=None) -> RunModel:
    """The model, trained variables, configuration and dataset of a search folder's ``model.npz``."""
    out_dir = os.fspath(out_dir)
    from mpqjax import data
    from mpqjax.nn import models

    path = os.path.join(out_dir, "model.npz")
    if not os.path.isfile(path):
        raise ValueError(f"{out_dir!r} has no finished model (no model.npz: the search has not ended, or this is "
                         f"not a search folder)")
    fake = load_program(path)
    metadata = fake.metadata
    missing = [key for key in ("model", "dataset", "bits", "widths") if key not in metadata]
    if missing:
        raise ValueError(f"{path!r} lacks {', '.join(missing)} in its metadata: not a search's model")
    settings = {**_settings(out_dir), **{key: metadata[key] for key in ("seed", "data_dir", "max_width")
                                         if key in metadata}}
    for what, name, given in (("model", metadata["model"], model), ("dataset", metadata["dataset"], dataset)):
        if str(name).startswith("python:") and given is None:
            raise ValueError(f"the {what} {name!r} was given to the search as a Python object: export from Python, "
                             f"mpqjax.export.integer_program_of_run({out_dir!r}, {what}=...)")
    if model is not None:  # a module as the search was given it: wrapped as the search wrapped it
        model = models.wrap(model, input_shape=fake.input_shape)
    max_width = settings.get("max_width") or max(models.DEFAULT_MAX_WIDTH, *settings.get("widths", ()),
                                                 *metadata["widths"])
    # a name the search was given as an object ("python:...") is the object passed here; other names are rebuilt
    if str(metadata["model"]).startswith("python:"):
        built = model.clone(max_width=max_width)
    else:
        built = models.get(metadata["model"], num_classes=metadata.get("num_classes"), max_width=max_width)
    if str(metadata["dataset"]).startswith("python:"):
        loaded = dataset
    else:
        data_options = {"data_dir": settings["data_dir"]} if settings.get("data_dir") else {}
        loaded = data.load(metadata["dataset"], seed=settings.get("seed", 0), **data_options)
    _check_fits(built, fake)
    return RunModel(built, fake.variables, metadata["bits"], metadata["widths"], metadata, loaded, fake)


def _check_fits(model, fake: Program) -> None:
    """The stored parameters have the shapes of the rebuilt model's (the model named is the one trained)."""
    expected = model.model_function.abstract_variables(fake.input_shape)["params"]
    stored = fake.variables.get("params", {})
    flat_expected = {jax.tree_util.keystr(path): tuple(leaf.shape)
                     for path, leaf in jax.tree_util.tree_flatten_with_path(expected)[0]}
    flat_stored = {jax.tree_util.keystr(path): tuple(np.shape(leaf))
                   for path, leaf in jax.tree_util.tree_flatten_with_path(stored)[0]}
    if flat_expected != flat_stored:
        different = sorted(set(flat_expected.items()) ^ set(flat_stored.items()))[0][0]
        raise ValueError(f"the stored variables do not fit model {model.name!r} (parameter {different}): the model "
                         f"given or named is not the one this folder trained")


def _settings(out_dir: str) -> dict:
    """A search folder's settings (empty for a folder of ``mpqjax train``)."""
    try:
        with open(os.path.join(out_dir, "search.json")) as file:
            return json.load(file).get("settings", {})
    except (OSError, ValueError):
        return {}


def integer_program_of_run(out_dir: str | os.PathLike, *, model=None, dataset=None,
                           raw_pixels: bool = True) -> tuple[IntegerProgram, RunModel]:
    """The integer program of a search folder's final model, and what it was built from.

    Args:
        out_dir: a finished search's output folder (its ``model.npz``).
        model, dataset: the objects a search run from Python was given (``python:...`` in its settings).
        raw_pixels: when the dataset has normalisation statistics, the program takes raw 8-bit pixels and
            normalises them in integers; False (or a dataset without them) takes the model's float inputs.

    Raises:
        ValueError: no finished model in the folder, a model or dataset that cannot be rebuilt, an operation the
            integer program cannot express (`mpqjax.export.lowering.LoweringError`).
    """
    run = run_model(out_dir, model=model, dataset=dataset)
    train_x = run.dataset.train.x
    if raw_pixels and run.dataset.mean is not None and run.dataset.std is not None:
        entry = {"normalisation": (run.dataset.mean, run.dataset.std)}
    else:
        entry = {"input_bound": float(np.max(np.abs(train_x)))}
    program = lower(run.model, run.variables, run.bits, run.widths, input_shape=run.fake_quantised.input_shape,
                    **entry)
    return program, run
