"""CIFAR-10 and CIFAR-100 (32x32 colour images): local folders, the official archives, or tensorflow-datasets.

Where the data is looked for, in this order (``DATA_DIR`` is ``data_dir``, by default tensorflow-datasets' own
folder: ``$TFDS_DATA_DIR`` or ``~/tensorflow_datasets``):

1. a local folder in the format of the official python archives: ``DATA_DIR`` itself, or
   ``DATA_DIR/cifar-10-batches-py`` (``data_batch_1`` .. ``data_batch_5``, ``test_batch``) or
   ``DATA_DIR/cifar-100-python`` (``train``, ``test``);
2. a copy prepared by tensorflow-datasets in ``DATA_DIR`` (``DATA_DIR/cifar10/3.0.2``); the array_record format
   is read without tensorflow, the tfrecord format needs tensorflow;
3. with ``download=True`` (the default), the official python archive is downloaded from the CIFAR page, checked
   against its MD5 sum and extracted into ``DATA_DIR`` (no tensorflow needed; a failed download raises a one-line
   `OSError` and leaves nothing behind);
4. otherwise (``download=False``) a one-line `FileNotFoundError` says what to download and where to put it.

5000 training images are held out (stratified by class) for validation by default; the augmentation recorded is
``"cifar"`` (4-pixel zero padding, random 32x32 crop, random horizontal flip).

Example:
    >>> data = load_cifar10(0, data_dir="~/data")  # doctest: +SKIP
    >>> data.input_shape, data.augmentation  # doctest: +SKIP
    ((32, 32, 3), 'cifar')
"""

from __future__ import annotations

import codecs
import dataclasses
import hashlib
import os
import pickle
import tarfile
import tempfile
import urllib.error
import urllib.request

import numpy as np

from mpqjax.data.dataset import Dataset, check_count, dataset_from_pixels
from mpqjax.data.tfds import default_data_dir, load_tfds, tfds_is_prepared

__all__ = ["CIFAR_ARCHIVES", "CifarArchive", "load_cifar10", "load_cifar100", "load_cifar_folder"]


@dataclasses.dataclass(frozen=True)
class CifarArchive:
    """Where the official python version of a CIFAR dataset comes from and what its folder holds."""

    title: str
    folder: str
    url: str
    md5: str
    train_files: tuple[str, ...]
    test_file: str
    label_key: str
    num_classes: int


CIFAR_ARCHIVES: dict[str, CifarArchive] = {
    "cifar10": CifarArchive("CIFAR-10", "cifar-10-batches-py", "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",
                            "c58f30108f718f92721af3b95e74349a", tuple(f"data_batch_{i}" for i in range(1, 6)),
                            "test_batch", "labels", 10),
    "cifar100": CifarArchive("CIFAR-100", "cifar-100-python",
                             "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz",
                             "eb9058c3a382ffc7106e4002c42a8d85", ("train",), "test", "fine_labels", 100),
}
"""The official CIFAR python archives (URL, MD5 sum, folder layout), by dataset name."""


def load_cifar_folder(path: str, seed: int = 0, *, validation_size: int = 5000) -> Dataset:
    """CIFAR-10 or CIFAR-100 from an extracted official python archive (``cifar-10-batches-py``,
    ``cifar-100-python``); the kind is recognised from the folder's name or files.

    The files are python pickles; they are read with an unpickler that only builds NumPy arrays and plain
    containers, so a foreign file cannot run code. CIFAR-100 uses its 100 fine labels.

    Args:
        path: the folder holding ``data_batch_1`` .. ``data_batch_5`` and ``test_batch`` (CIFAR-10) or ``train``
            and ``test`` (CIFAR-100).
        seed: fixes which training images form the validation split.
        validation_size: training images held out (stratified by class) for validation.

    Returns:
        The `Dataset` ``"cifar10"`` or ``"cifar100"`` (augmentation ``"cifar"``).

    Raises:
        FileNotFoundError: not a CIFAR folder, or a file of it is missing.
        ValueError: a file is not a CIFAR batch; bad ``validation_size``.

    Example:
        >>> data = load_cifar_folder("~/data/cifar-10-batches-py", seed=0)  # doctest: +SKIP
        >>> data.input_shape, len(data.validation)  # doctest: +SKIP
        ((32, 32, 3), 5000)
    """
    path = os.path.expanduser(path)
    name = _cifar_folder_kind(path)
    if name is None:
        raise FileNotFoundError(f"{path} is not a CIFAR folder: expected data_batch_1 .. data_batch_5 and test_batch "
                                "(cifar-10-batches-py) or train and test (cifar-100-python)")
    archive = CIFAR_ARCHIVES[name]
    for file in (*archive.train_files, archive.test_file):
        if not os.path.isfile(os.path.join(path, file)):
            raise FileNotFoundError(f"{archive.title} folder {path} is incomplete: {file} is missing (extract "
                                    f"{archive.url} again)")
    parts = [_read_cifar_file(os.path.join(path, file), archive.label_key, archive.num_classes)
             for file in archive.train_files]
    train_pixels = np.concatenate([pixels for pixels, _ in parts])
    train_labels = np.concatenate([labels for _, labels in parts])
    test_pixels, test_labels = _read_cifar_file(os.path.join(path, archive.test_file), archive.label_key,
                                                archive.num_classes)
    return dataset_from_pixels(name, train_pixels, train_labels, test_pixels, test_labels,
                               rng=np.random.default_rng(seed), validation_size=validation_size,
                               num_classes=archive.num_classes, augmentation="cifar")

def load_cifar10(seed: int = 0, *, data_dir: str | None = None, download: bool = True,
                 validation_size: int = 5000) -> Dataset:
    """CIFAR-10 (50000 training and 10000 test 32x32 colour images, 10 classes).

    Looked for in ``data_dir`` as a local ``cifar-10-batches-py`` folder, then as a tensorflow-datasets copy, then
    (``download=True``) downloaded; the module docstring gives the order in full.

    Args:
        seed: fixes which training images form the validation split (for a given source of the data).
        data_dir: where the data is or goes; default ``$TFDS_DATA_DIR`` or ``~/tensorflow_datasets``. May also be
            the ``cifar-10-batches-py`` folder itself.
        download: download the official archive (163 MB) when the data is absent.
        validation_size: training images held out, stratified by class, for validation (the rest train).

    Returns:
        The `Dataset` ``"cifar10"`` (augmentation ``"cifar"``).

    Raises:
        FileNotFoundError: the data is absent and ``download`` is False (the message says what to download).
        OSError: the download failed.

    Example:
        >>> data = load_cifar10(0, data_dir="~/data")  # doctest: +SKIP
        >>> [len(data.train), len(data.validation), len(data.test)], data.augmentation  # doctest: +SKIP
        ([45000, 5000, 10000], 'cifar')
    """
    return _load_cifar("cifar10", seed, data_dir, download, validation_size)


def load_cifar100(seed: int = 0, *, data_dir: str | None = None, download: bool = True,
                  validation_size: int = 5000) -> Dataset:
    """CIFAR-100 with its 100 fine labels (50000 training and 10000 test 32x32 colour images).

    Looked for like `load_cifar10`, with the local folder ``cifar-100-python``; takes the same arguments.

    Returns:
        The `Dataset` ``"cifar100"`` (augmentation ``"cifar"``).

    Example:
        >>> data = load_cifar100(0, data_dir="~/data")  # doctest: +SKIP
        >>> data.num_classes, data.input_shape  # doctest: +SKIP
        (100, (32, 32, 3))
    """
    return _load_cifar("cifar100", seed, data_dir, download, validation_size)


class _ArrayUnpickler(pickle.Unpickler):
    """Unpickles only plain containers and NumPy arrays: a CIFAR batch file cannot run code when read."""

    _ALLOWED = {
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): np.dtype,
        # The official files were written by NumPy 1 (numpy.core); NumPy 2 writes numpy._core.
        ("numpy.core.multiarray", "_reconstruct"): np.zeros(0).__reduce__()[0],
        ("numpy._core.multiarray", "_reconstruct"): np.zeros(0).__reduce__()[0],
        ("numpy.core.multiarray", "scalar"): np.float64(0).__reduce__()[0],
        ("numpy._core.multiarray", "scalar"): np.float64(0).__reduce__()[0],
        ("_codecs", "encode"): codecs.encode,  # how protocol 2 pickles bytes under Python 3
    }

    def find_class(self, module, name):
        if (module, name) not in self._ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name}")
        return self._ALLOWED[module, name]


def _read_cifar_file(path: str, label_key: str, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """Images (N, 32, 32, 3) uint8 and labels (N,) int32 of one python-pickled CIFAR batch file."""
    try:
        with open(path, "rb") as handle:
            # encoding="bytes" is what the CIFAR page prescribes for its Python 2 pickles.
            batch = _ArrayUnpickler(handle, encoding="bytes").load()
        batch = {key.decode() if isinstance(key, bytes) else key: value for key, value in batch.items()}
        flat = np.asarray(batch["data"], np.uint8)
        labels = np.asarray(batch[label_key], np.int32)
        valid = flat.ndim == 2 and flat.shape[1] == 3072 and labels.shape == (len(flat),)
    except (pickle.UnpicklingError, EOFError, AttributeError, KeyError, TypeError, ValueError) as error:
        raise ValueError(f"{path} is not a CIFAR python batch file ({type(error).__name__}: {error})") from None
    if not valid or (len(labels) and (labels.min() < 0 or labels.max() >= num_classes)):
        raise ValueError(f"{path} is not a CIFAR python batch file (expected 'data' (N, 3072) uint8 and N "
                         f"'{label_key}' in [0, {num_classes}))")
    # Rows are channel-major (1024 red, 1024 green, 1024 blue values, each row by row).
    return np.ascontiguousarray(flat.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)), labels


def _cifar_folder_kind(path: str) -> str | None:
    for name, archive in CIFAR_ARCHIVES.items():
        marker = os.path.join(path, archive.test_file)
        if os.path.basename(os.path.normpath(path)) == archive.folder or (
                os.path.isfile(marker) and all(os.path.isfile(os.path.join(path, f)) for f in archive.train_files)):
            return name
    return None


def _download_cifar(archive: CifarArchive, data_dir: str) -> str:
    """Download, check and extract ``archive`` into ``data_dir``; returns the folder. All or nothing."""
    target = os.path.join(data_dir, archive.folder)
    advice = (f"download {archive.url} yourself and extract it in {data_dir} (giving {target})")
    try:
        os.makedirs(data_dir, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=data_dir, prefix=".mpqjax-download-") as staging:
            tarball = os.path.join(staging, "archive.tar.gz")
            digest = hashlib.md5(usedforsecurity=False)
            with urllib.request.urlopen(archive.url, timeout=60) as response, open(tarball, "wb") as out:
                while block := response.read(1 << 20):
                    digest.update(block)
                    out.write(block)
            if digest.hexdigest() != archive.md5:
                raise OSError(f"MD5 sum {digest.hexdigest()} differs from {archive.md5}")
            with tarfile.open(tarball) as tar:
                tar.extractall(staging, filter="data")
            if not os.path.isdir(os.path.join(staging, archive.folder)):
                raise OSError(f"the archive holds no {archive.folder} folder")
            os.replace(os.path.join(staging, archive.folder), target)
    except (OSError, urllib.error.URLError, tarfile.TarError) as error:
        raise OSError(f"could not download {archive.title} from {archive.url} into {data_dir} "
                      f"({type(error).__name__}: {error}): {advice}") from None
    return target


def _tfds_prepared(name: str, data_dir: str) -> bool:
    """Whether tensorflow-datasets has a prepared copy of ``name`` in ``data_dir``."""
    import tensorflow_datasets as tfds

    return tfds_is_prepared(tfds.builder(name, data_dir=data_dir))


def _load_cifar(name: str, seed: int, data_dir: str | None, download: bool, validation_size: int) -> Dataset:
    """The module docstring's search: local folder, tensorflow-datasets copy, download, or a one-line error."""
    archive = CIFAR_ARCHIVES[name]
    data_dir = os.path.expanduser(data_dir) if data_dir is not None else default_data_dir()
    check_count("validation_size", validation_size, 1)
    if _cifar_folder_kind(data_dir) == name:
        return load_cifar_folder(data_dir, seed, validation_size=validation_size)
    if os.path.isdir(os.path.join(data_dir, archive.folder)):
        return load_cifar_folder(os.path.join(data_dir, archive.folder), seed, validation_size=validation_size)
    if _tfds_prepared(name, data_dir):
        return load_tfds(name, seed, data_dir=data_dir, download=False, validation_size=validation_size,
                         augmentation="cifar")
    if not download:
        raise FileNotFoundError(
            f"{archive.title} not found in {data_dir}: download {archive.url} and extract it there (giving "
            f"{os.path.join(data_dir, archive.folder)}), or load it with download=True and network access")
    return load_cifar_folder(_download_cifar(archive, data_dir), seed, validation_size=validation_size)
