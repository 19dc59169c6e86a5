"""Any tensorflow-datasets image-classification dataset as in-memory splits (`load_tfds`), and ImageNet.

A prepared copy is read through ``DatasetBuilder.as_data_source``: random access, and no tensorflow for the
array_record format (a tfrecord copy is read sequentially and needs tensorflow). Preparing a dataset (ImageNet from
its manually downloaded archives, or any other) needs tensorflow. tensorflow-datasets itself is imported only when a
loader runs, so ``import mpqjax.data`` stays light.

Example:
    >>> data = load_tfds("cifar10", 0, data_dir="~/tensorflow_datasets", download=False)  # doctest: +SKIP
    >>> data.input_shape  # doctest: +SKIP
    (32, 32, 3)
"""

from __future__ import annotations

import functools
import importlib.util
import io
import logging
import os
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from mpqjax.data.augmentation import AUGMENTATIONS
from mpqjax.data.dataset import Dataset, check_count, dataset_from_pixels

__all__ = ["default_data_dir", "load_imagenet2012", "load_tfds", "tfds_is_prepared"]


def default_data_dir() -> str:
    """tensorflow-datasets' own data folder: ``$TFDS_DATA_DIR``, else ``~/tensorflow_datasets``.

    The default ``data_dir`` of every loader, so one folder serves the local CIFAR archives and tfds copies alike.
    """
    return os.environ.get("TFDS_DATA_DIR", os.path.join(os.path.expanduser("~"), "tensorflow_datasets"))


def load_tfds(name: str, seed: int = 0, *, data_dir: str | None = None, download: bool = True,
              validation_size: int = 5000, max_train_examples: int | None = None,
              max_test_examples: int | None = None, image_size: int | None = None, crop_fraction: float = 1.0,
              train_split: str = "train", test_split: str = "test", image_key: str = "image",
              label_key: str = "label", augmentation: str | None = None, threads: int | None = None) -> Dataset:
    """Any tensorflow-datasets image-classification dataset as in-memory splits.

    Reads a prepared copy in ``data_dir`` through ``DatasetBuilder.as_data_source`` (random access, no tensorflow
    needed for the array_record format; a tfrecord copy is read sequentially and needs tensorflow). A copy that is
    not prepared is prepared as array_record when ``download`` is True, which needs tensorflow.

    The validation split is ``validation_size`` examples of ``train_split``, stratified by class; the training split
    is the rest, or ``max_train_examples`` of them (a uniform random subset of ``train_split`` is read first, so
    huge splits are never read whole). The test split is ``test_split``, or ``max_test_examples`` of it. All choices
    are fixed by ``seed``. Images stay uint8 until normalised into float32 splits with the training split's
    per-channel statistics: mind the memory, ``4 * H * W * C`` bytes per example.

    Args:
        name: the tensorflow-datasets name (``"cifar10"``, ``"imagenet2012"``, ...).
        seed: fixes the subsets and the validation split.
        data_dir: tensorflow-datasets' data folder (default ``$TFDS_DATA_DIR`` or ``~/tensorflow_datasets``).
        download: prepare the dataset when it is absent (tensorflow needed).
        validation_size: training examples held out for validation.
        max_train_examples: cap on the training split (None: every remaining training example).
        max_test_examples: cap on the test split (None: all of it).
        image_size: decode every image at ``image_size`` x ``image_size``: resize the shorter side to
            ``image_size / crop_fraction`` and cut the central square (None: keep the stored size, which must
            then be the same for every image).
        crop_fraction: share of the resized shorter side kept by the central crop (0.875: ImageNet's 256 -> 224).
        train_split, test_split: the tfds split names.
        image_key, label_key: the tfds feature names of the image and the class label.
        augmentation: the `Dataset.augmentation` to record (see `augment`).
        threads: decoding threads when ``image_size`` is set (default: one per CPU).

    Returns:
        The `Dataset` named ``name``, with ``num_classes`` from the label feature.

    Raises:
        FileNotFoundError: not prepared and cannot be (the message says what to do).
        ValueError: unknown dataset or split, bad options.

    Example:
        >>> data = load_tfds("cifar10", 0, data_dir="~/tensorflow_datasets", download=False)  # doctest: +SKIP
        >>> data.input_shape  # doctest: +SKIP
        (32, 32, 3)
    """
    import tensorflow_datasets as tfds

    check_count("validation_size", validation_size, 1)
    for option, value in [("max_train_examples", max_train_examples), ("max_test_examples", max_test_examples),
                          ("image_size", image_size), ("threads", threads)]:
        if value is not None:
            check_count(option, value, 1)
    if not 0 < crop_fraction <= 1:
        raise ValueError(f"crop_fraction must be in (0, 1], got {crop_fraction!r}")
    if augmentation is not None and augmentation not in AUGMENTATIONS:
        raise ValueError(f"augmentation must be one of {', '.join(AUGMENTATIONS)} or None, got {augmentation!r}")
    data_dir = os.path.expanduser(data_dir) if data_dir is not None else default_data_dir()
    try:
        builder = tfds.builder(name, data_dir=data_dir)
    except tfds.core.registered.DatasetNotFoundError:
        raise ValueError(f"tensorflow-datasets has no dataset {name!r}") from None
    features = builder.info.features
    if image_key not in features or label_key not in features:
        raise ValueError(f"{name} has no {image_key!r} image and {label_key!r} label features")
    if not tfds_is_prepared(builder):
        _prepare_tfds(builder, name, data_dir, download)

    # Encoded bytes when resizing: decoding is then ours (PIL, JPEG at reduced scale, in threads).
    decoders = {image_key: tfds.decode.SkipDecoding()} if image_size is not None else None
    train_source = _open_split(builder, name, data_dir, train_split, decoders)
    test_source = _open_split(builder, name, data_dir, test_split, decoders)
    rng = np.random.default_rng(seed)
    cap = None if max_train_examples is None else max_train_examples + validation_size
    train_positions = _subset(rng, len(train_source), cap)
    test_positions = _subset(rng, len(test_source), max_test_examples)
    check_count("validation_size", validation_size, 1, len(train_positions) - 1)

    channels = features[image_key].shape[-1] or 3
    read = functools.partial(_read_images, name=name, image_key=image_key, label_key=label_key,
                             image_size=image_size, crop_fraction=crop_fraction, channels=channels)
    with ThreadPoolExecutor(threads or os.cpu_count() or 1) as pool:
        train_pixels, train_labels = read(train_source, train_positions, pool=pool)
        test_pixels, test_labels = read(test_source, test_positions, pool=pool)
    return dataset_from_pixels(name, train_pixels, train_labels, test_pixels, test_labels, rng=rng,
                               validation_size=validation_size, num_classes=features[label_key].num_classes,
                               augmentation=augmentation)


def load_imagenet2012(seed: int = 0, *, data_dir: str | None = None, download: bool = True, image_size: int = 224,
                      max_train_examples: int | None = 10_000, validation_size: int = 5_000,
                      max_test_examples: int | None = 10_000, threads: int | None = None) -> Dataset:
    """A seeded subset of ImageNet (ILSVRC 2012, 1000 classes) from tensorflow-datasets, decoded in memory.

    The whole training set cannot be held in memory (1.28 million images, about 190 GB as uint8 at 224x224 and four
    times that as float32 splits), so a uniform random ``max_train_examples + validation_size`` of the training
    images is read (validation stratified among them) and ``max_test_examples`` of the 50000 images of ImageNet's
    'validation' split form the test split. Images are resized (shorter side ``image_size / 0.875``) and centre
    cropped to ``image_size``. The defaults hold about 15 GB of float32 splits (0.6 MB per 224x224 example; 4 GB
    more of uint8 while loading) and decode 25000 JPEGs, spread over ``threads``. The augmentation is a random
    horizontal flip (random resized crops would need the full-size images).

    tensorflow-datasets must have prepared imagenet2012 in ``data_dir``: that needs the archives
    ``ILSVRC2012_img_train.tar`` and ``ILSVRC2012_img_val.tar`` (from image-net.org, registration required) in
    ``data_dir/downloads/manual`` and tensorflow installed; mpqjax asks for the array_record format, which it then
    reads without tensorflow.

    Args:
        seed: fixes the subsets and the validation split.
        data_dir: tensorflow-datasets' data folder (default ``$TFDS_DATA_DIR`` or ``~/tensorflow_datasets``).
        download: prepare from the manual archives when not prepared yet.
        image_size: side of the square images.
        max_train_examples: training images (None: all, only sensible with a small ``image_size``).
        validation_size: training images held out for validation.
        max_test_examples: test images from ImageNet's validation split (None: all 50000).
        threads: decoding threads (default: one per CPU).

    Returns:
        The `Dataset` ``"imagenet2012"`` (augmentation ``"flip"``).

    Raises:
        FileNotFoundError: not prepared, and the archives or tensorflow to prepare it are missing (the message says
            what to download and where to put it).

    Example:
        >>> data = load_imagenet2012(0, image_size=128, max_train_examples=20_000)  # doctest: +SKIP
        >>> data.input_shape, data.num_classes  # doctest: +SKIP
        ((128, 128, 3), 1000)
    """
    return load_tfds("imagenet2012", seed, data_dir=data_dir, download=download, validation_size=validation_size,
                     max_train_examples=max_train_examples, max_test_examples=max_test_examples,
                     image_size=image_size, crop_fraction=0.875, train_split="train", test_split="validation",
                     augmentation="flip", threads=threads)


class _AbsentVariantFilter(logging.Filter):
    """Drops tensorflow-datasets' warning that a dataset's version folder holds no dataset_info.json when that folder
    does not exist at all: asking whether an absent copy is prepared is the normal case (the loader then says in
    one line what to do), not a problem. A folder that exists but lacks the file still warns."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not (isinstance(record.msg, str) and record.msg.startswith("Variant folder ") and record.args):
            return True
        folder = record.args[0]  # tfds passes an epath.Path (local or remote); anything else is read as a local path
        return folder.exists() if hasattr(folder, "exists") else os.path.exists(str(folder))


def tfds_is_prepared(builder) -> bool:
    """``builder.is_prepared()`` without tensorflow-datasets' warning about a copy that is simply absent."""
    absl_logger = logging.getLogger("absl")
    quiet = _AbsentVariantFilter()
    absl_logger.addFilter(quiet)
    try:
        return builder.is_prepared()
    finally:
        absl_logger.removeFilter(quiet)


def _tensorflow_available() -> bool:
    """Whether tensorflow is installed (looked up without importing it)."""
    return importlib.util.find_spec("tensorflow") is not None


def _resize(image, *, size: int, crop_fraction: float, channels: int) -> np.ndarray:
    """Resize the shorter side to ``size / crop_fraction`` and cut the central ``size`` x ``size`` square.

    ``image`` is encoded bytes (JPEG decoding then runs at the smallest sufficient scale) or a decoded array.
    """
    from PIL import Image

    shorter = max(size, round(size / crop_fraction))
    if isinstance(image, bytes):
        picture = Image.open(io.BytesIO(image))
        picture.draft("RGB" if channels == 3 else "L", (shorter, shorter))
    else:
        array = np.asarray(image)
        picture = Image.fromarray(array[..., 0] if array.ndim == 3 and array.shape[-1] == 1 else array)
    picture = picture.convert("RGB" if channels == 3 else "L")
    width, height = picture.size
    scale = shorter / min(width, height)
    new_width, new_height = max(size, round(width * scale)), max(size, round(height * scale))
    picture = picture.resize((new_width, new_height), Image.BILINEAR)
    left, top = (new_width - size) // 2, (new_height - size) // 2
    resized = np.asarray(picture.crop((left, top, left + size, top + size)), np.uint8)
    return resized[..., None] if resized.ndim == 2 else resized


class _TensorflowSplit:
    """A tfrecord-prepared split read in one sequential pass (needs tensorflow; no random access)."""

    def __init__(self, builder, split: str, decoders):
        self._dataset = builder.as_dataset(split=split, decoders=decoders, shuffle_files=False)
        self._length = builder.info.splits[split].num_examples

    def __len__(self) -> int:
        return self._length

    def records(self, positions: np.ndarray) -> Iterator[dict]:
        import tensorflow_datasets as tfds

        wanted = iter(positions.tolist())
        target = next(wanted, None)
        for position, record in enumerate(tfds.as_numpy(self._dataset)):
            if target is None:
                return
            if position == target:
                yield record
                target = next(wanted, None)


def _open_split(builder, name: str, data_dir: str, split: str, decoders):
    """A random-access data source for ``split`` (array_record/parquet), else a sequential tensorflow reader."""
    try:
        return builder.as_data_source(split=split, decoders=decoders)
    except NotImplementedError:  # prepared as tfrecord, which tfds can only read through tensorflow
        if not _tensorflow_available():
            raise FileNotFoundError(
                f"{name} in {data_dir} was prepared by tensorflow-datasets as tfrecord, which only tensorflow can "
                f"read: pip install tensorflow, or prepare it again as array_record (tfds build {name} "
                f"--file_format=array_record --data_dir {data_dir})") from None
        return _TensorflowSplit(builder, split, decoders)
    except (KeyError, ValueError) as error:
        raise ValueError(f"{name} has no split {split!r} ({error})") from None


def _records(source, positions: np.ndarray) -> Iterator[dict]:
    """The records at sorted ``positions``."""
    if isinstance(source, _TensorflowSplit):
        return source.records(positions)
    # One record at a time: batched ``__getitems__`` reads were about 30% cheaper on 32x32 PNGs, but
    # tfds.testing.mock_data breaks them (tfds 4.9.10), and decoding dominates for large images anyway.
    return (source[int(position)] for position in positions)


def _read_images(source, positions: np.ndarray, *, name: str, image_key: str, label_key: str,
                 image_size: int | None, crop_fraction: float, channels: int,
                 pool: ThreadPoolExecutor | None) -> tuple[np.ndarray, np.ndarray]:
    """Images (uint8, resized when ``image_size`` is set) and labels of the records at ``positions``."""
    pixels = None
    labels = np.empty(len(positions), np.int32)
    filled = 0
    pending: list[dict] = []

    def flush():
        nonlocal pixels, filled
        images = [record[image_key] for record in pending]
        if image_size is not None:
            images = list(pool.map(functools.partial(_resize, size=image_size, crop_fraction=crop_fraction,
                                                     channels=channels), images))
        images = [np.asarray(image)[..., None] if np.ndim(image) == 2 else np.asarray(image) for image in images]
        if pixels is None:
            pixels = np.empty((len(positions), *images[0].shape), np.uint8)
        for image in images:
            if image.shape != pixels.shape[1:] or image.dtype != np.uint8:
                raise ValueError(f"{name}: images differ in size or are not uint8 ({image.shape} {image.dtype} "
                                 f"after {pixels.shape[1:]} uint8): pass image_size")
        pixels[filled : filled + len(images)] = np.stack(images)
        labels[filled : filled + len(images)] = [int(record[label_key]) for record in pending]
        filled += len(images)
        pending.clear()

    for record in _records(source, positions):
        pending.append(record)
        if len(pending) == 512:
            flush()
    if pending:
        flush()
    if filled != len(positions):
        raise ValueError(f"{name}: read {filled} of {len(positions)} examples")
    return pixels, labels


def _prepare_tfds(builder, name: str, data_dir: str, download: bool) -> None:
    """Have tensorflow-datasets prepare ``name`` (array_record), or say in one line why it cannot."""
    import tensorflow_datasets as tfds

    manual_dir = os.path.join(data_dir, "downloads", "manual")
    if name == "imagenet2012":
        archives = ("ILSVRC2012_img_train.tar", "ILSVRC2012_img_val.tar")
        if any(not os.path.isfile(os.path.join(manual_dir, file)) for file in archives):
            raise FileNotFoundError(
                f"ImageNet (imagenet2012) is not prepared in {data_dir}: download {' and '.join(archives)} from "
                f"https://image-net.org/download-images (registration required) into {manual_dir}, install "
                "tensorflow, and load with download=True: tensorflow-datasets then prepares it once (hours)")
        if not download:
            raise FileNotFoundError(f"ImageNet (imagenet2012) is not prepared in {data_dir}, though its archives are "
                                    f"in {manual_dir}: load with download=True to prepare it (needs tensorflow)")
    elif not download:
        raise FileNotFoundError(f"{name} is not prepared in {data_dir}: load it with download=True (tensorflow-"
                                f"datasets then downloads and prepares it there, which needs tensorflow installed)")
    elif getattr(builder, "MANUAL_DOWNLOAD_INSTRUCTIONS", None) and not os.path.isdir(manual_dir):
        raise FileNotFoundError(f"{name} needs a manual download into {manual_dir}: see "
                                f"https://www.tensorflow.org/datasets/catalog/{name}")
    if not _tensorflow_available():
        raise FileNotFoundError(f"{name} is not prepared in {data_dir}, and tensorflow-datasets needs tensorflow to "
                                "prepare it: pip install tensorflow (reading a prepared array_record copy does not)")
    try:
        builder.download_and_prepare(file_format="array_record",
                                     download_config=tfds.download.DownloadConfig(manual_dir=manual_dir))
    except Exception as error:  # tfds raises many kinds (network, checksum, archive); the user needs one line
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else ""
        raise OSError(f"tensorflow-datasets could not prepare {name} in {data_dir} ({type(error).__name__}: "
                      f"{first_line})") from None


def _subset(rng: np.random.Generator, count: int, cap: int | None) -> np.ndarray:
    """Sorted positions: all ``count``, or a uniform random ``cap`` of them."""
    if cap is None or cap >= count:
        return np.arange(count)
    return np.sort(rng.choice(count, cap, replace=False))
