"""Specification of mpqjax.data.cifar: CIFAR-10/100 from local folders of the official python archives (read
safely), from a download (checked, all or nothing), or from tensorflow-datasets, in that order. No test touches the
network."""

import dataclasses
import hashlib
import logging
import os
import pickle
import tarfile

import numpy as np
import pytest

from mpqjax import data


def _legacy_pickle(batch: dict) -> bytes:
    """A batch pickled like the official files: protocol 2, bytes keys, arrays referring to numpy.core."""
    payload = pickle.dumps({key.encode(): value for key, value in batch.items()}, protocol=2)
    return payload.replace(b"numpy._core.multiarray", b"numpy.core.multiarray")


def _cifar_rows(pixels: np.ndarray) -> np.ndarray:
    """(N, 32, 32, 3) -> the files' (N, 3072) rows: all red values, then green, then blue."""
    return pixels.transpose(0, 3, 1, 2).reshape(len(pixels), 3072)


def _random_pixels(rng, count, brightness=0):
    low = np.array([0, 100, 50]) + brightness
    return (low + rng.integers(0, 100, (count, 32, 32, 3))).astype(np.uint8)


@dataclasses.dataclass
class FakeCifar:
    root: str
    folder: str
    train_pixels: np.ndarray
    train_labels: np.ndarray
    test_pixels: np.ndarray
    test_labels: np.ndarray


def _write_cifar10(root, rng) -> FakeCifar:
    folder = os.path.join(root, "cifar-10-batches-py")
    os.makedirs(folder)
    train_pixels = _random_pixels(rng, 150)
    train_labels = rng.permutation(np.repeat(np.arange(10), 15))
    test_pixels = _random_pixels(rng, 40, brightness=20)  # brighter: statistics that counted it would show
    test_labels = np.tile(np.arange(10), 4)
    for number in range(5):
        part = slice(30 * number, 30 * number + 30)
        batch = {"batch_label": b"training batch", "labels": train_labels[part].tolist(),
                 "data": _cifar_rows(train_pixels[part]), "filenames": [b"x.png"] * 30}
        with open(os.path.join(folder, f"data_batch_{number + 1}"), "wb") as handle:
            handle.write(_legacy_pickle(batch))
    with open(os.path.join(folder, "test_batch"), "wb") as handle:
        handle.write(_legacy_pickle({"labels": test_labels.tolist(), "data": _cifar_rows(test_pixels)}))
    return FakeCifar(str(root), folder, train_pixels, train_labels, test_pixels, test_labels)


@pytest.fixture(scope="module")
def cifar10_folder(tmp_path_factory):
    return _write_cifar10(tmp_path_factory.mktemp("cifar10"), np.random.default_rng(0))


@pytest.fixture(scope="module")
def cifar10(cifar10_folder):
    return data.load("cifar10", seed=0, data_dir=cifar10_folder.root, download=False, validation_size=50)


def test_cifar10_folder_shapes_types_and_metadata(cifar10):
    assert (cifar10.name, cifar10.num_classes, cifar10.input_shape) == ("cifar10", 10, (32, 32, 3))
    assert [len(cifar10.train), len(cifar10.validation), len(cifar10.test)] == [100, 50, 40]
    for split in (cifar10.train, cifar10.validation, cifar10.test):
        assert split.x.dtype == np.float32 and split.y.dtype == np.int32
    assert cifar10.augmentation == "cifar" and cifar10.mean.shape == (3,) and cifar10.std.shape == (3,)


def test_cifar10_validation_comes_from_training_images_stratified(cifar10, cifar10_folder, raw, positions):
    train = positions(raw(cifar10, cifar10.train), cifar10_folder.train_pixels)
    validation = positions(raw(cifar10, cifar10.validation), cifar10_folder.train_pixels)
    assert not set(train) & set(validation) and len(set(train) | set(validation)) == 150
    np.testing.assert_array_equal(cifar10.train.y, cifar10_folder.train_labels[train])
    np.testing.assert_array_equal(cifar10.validation.y, cifar10_folder.train_labels[validation])
    np.testing.assert_array_equal(np.bincount(cifar10.validation.y, minlength=10), np.full(10, 5))
    # The test split is the test file, in order.
    np.testing.assert_array_equal(raw(cifar10, cifar10.test), cifar10_folder.test_pixels)
    np.testing.assert_array_equal(cifar10.test.y, cifar10_folder.test_labels)


def test_cifar10_normalised_per_channel_with_training_split_only(cifar10, cifar10_folder, raw, positions):
    train = positions(raw(cifar10, cifar10.train), cifar10_folder.train_pixels)
    pixels = cifar10_folder.train_pixels[train].astype(np.float64)
    np.testing.assert_allclose(cifar10.mean, pixels.mean(axis=(0, 1, 2)), rtol=1e-5)
    np.testing.assert_allclose(cifar10.std, pixels.std(axis=(0, 1, 2)), rtol=1e-5)
    everything = cifar10_folder.train_pixels.astype(np.float64).mean(axis=(0, 1, 2))
    assert np.abs(cifar10.mean - everything).max() > 1e-3  # the validation images were left out
    np.testing.assert_allclose(cifar10.train.x.mean(axis=(0, 1, 2)), 0, atol=1e-4)
    np.testing.assert_allclose(cifar10.train.x.std(axis=(0, 1, 2)), 1, atol=1e-4)
    assert np.all(cifar10.test.x.mean(axis=(0, 1, 2)) > 0.5)  # brighter test images stay brighter
    np.testing.assert_allclose(cifar10.normalise(cifar10_folder.test_pixels), cifar10.test.x, atol=1e-6)


def test_cifar10_split_fixed_by_seed(cifar10, cifar10_folder):
    again = data.load_cifar_folder(cifar10_folder.folder, 0, validation_size=50)
    np.testing.assert_array_equal(again.validation.x, cifar10.validation.x)
    other = data.load_cifar_folder(cifar10_folder.folder, 1, validation_size=50)
    assert not np.array_equal(other.validation.y, cifar10.validation.y)


def test_cifar_folder_found_by_its_own_path(cifar10_folder):
    by_path = data.load("cifar10", seed=0, data_dir=cifar10_folder.folder, download=False, validation_size=10)
    assert len(by_path.validation) == 10 and len(by_path.train) == 140


def test_cifar100_folder_uses_fine_labels(tmp_path):
    rng = np.random.default_rng(1)
    folder = tmp_path / "cifar-100-python"
    folder.mkdir()
    fine = {"train": rng.permutation(np.repeat(np.arange(100), 2)), "test": np.arange(100)}
    for file, labels in fine.items():
        batch = {"data": _cifar_rows(_random_pixels(rng, len(labels))), "fine_labels": labels.tolist(),
                 "coarse_labels": (labels // 5).tolist()}
        (folder / file).write_bytes(pickle.dumps(batch, protocol=4))  # written by Python 3 and NumPy 2
    dataset = data.load("cifar100", seed=0, data_dir=str(tmp_path), download=False, validation_size=100)
    assert dataset.num_classes == 100 and dataset.augmentation == "cifar"
    np.testing.assert_array_equal(np.bincount(dataset.validation.y, minlength=100), np.ones(100))
    np.testing.assert_array_equal(dataset.test.y, fine["test"])


def test_incomplete_corrupt_or_unsafe_folders_fail_clearly(tmp_path, cifar10_folder):
    incomplete = tmp_path / "incomplete" / "cifar-10-batches-py"
    incomplete.mkdir(parents=True)
    (incomplete / "test_batch").write_bytes(b"")
    with pytest.raises(FileNotFoundError, match="incomplete: data_batch_1 is missing"):
        data.load("cifar10", data_dir=str(incomplete.parent), download=False)

    broken = tmp_path / "broken" / "cifar-10-batches-py"
    broken.mkdir(parents=True)
    for file in os.listdir(cifar10_folder.folder):
        (broken / file).write_bytes(open(os.path.join(cifar10_folder.folder, file), "rb").read())
    (broken / "data_batch_2").write_bytes(b"not a pickle")
    with pytest.raises(ValueError, match="data_batch_2 is not a CIFAR python batch file"):
        data.load_cifar_folder(str(broken))

    marker = tmp_path / "ran"

    class Exploit:
        def __reduce__(self):
            return os.system, (f"touch {marker}",)

    (broken / "data_batch_2").write_bytes(pickle.dumps({b"data": Exploit()}, protocol=2))
    with pytest.raises(ValueError, match="refusing to load"):
        data.load_cifar_folder(str(broken))
    assert not marker.exists()

    with pytest.raises(FileNotFoundError, match="is not a CIFAR folder"):
        data.load_cifar_folder(str(tmp_path))


def test_cifar_split_options_are_checked(cifar10_folder):
    for size in (0, 150, 2.5):
        with pytest.raises(ValueError, match="validation_size must be an integer"):
            data.load_cifar_folder(cifar10_folder.folder, validation_size=size)


def test_default_data_dir_is_tensorflow_datasets_own(tmp_path, monkeypatch):
    monkeypatch.setenv("TFDS_DATA_DIR", str(tmp_path))
    with pytest.raises(FileNotFoundError, match=f"CIFAR-10 not found in {tmp_path}:"):
        data.load_cifar10(download=False)


def test_absent_cifar_without_download_says_what_to_do(tmp_path):
    with pytest.raises(FileNotFoundError, match="CIFAR-100 not found in .*cifar-100-python.tar.gz .*download=True"):
        data.load_cifar100(0, data_dir=str(tmp_path), download=False)
    with pytest.raises(ValueError, match="validation_size must be an integer >= 1"):  # checked before looking
        data.load_cifar10(0, data_dir=str(tmp_path), download=False, validation_size=0)


def test_absent_cifar_logs_nothing_before_its_one_line_error(tmp_path, caplog):
    # tensorflow-datasets warns about a version folder without dataset_info.json even when there is no folder at
    # all; for absent data that warning only precedes the real error, so it is dropped (a partial copy still warns)
    caplog.set_level(logging.DEBUG)
    with pytest.raises(FileNotFoundError, match="CIFAR-10 not found in"):
        data.load_cifar10(0, data_dir=str(tmp_path), download=False)
    assert [record.getMessage() for record in caplog.records if record.levelno >= logging.WARNING] == []
    (tmp_path / "cifar10" / "3.0.2").mkdir(parents=True)  # an interrupted preparation: worth a warning
    with pytest.raises(FileNotFoundError, match="CIFAR-10 not found in"):
        data.load_cifar10(0, data_dir=str(tmp_path), download=False)
    assert any("3.0.2 has no dataset_info.json" in record.getMessage() for record in caplog.records)


@pytest.fixture(scope="module")
def cifar10_archive(tmp_path_factory, cifar10_folder):
    """A tar.gz of the fake folder, served from a file:// URL, with its MD5 sum."""
    tarball = tmp_path_factory.mktemp("archive") / "cifar-10-python.tar.gz"
    with tarfile.open(tarball, "w:gz") as tar:
        tar.add(cifar10_folder.folder, arcname="cifar-10-batches-py")
    return tarball.as_uri(), hashlib.md5(tarball.read_bytes()).hexdigest()


def test_download_fetches_checks_and_extracts_the_archive(tmp_path, monkeypatch, cifar10_archive, cifar10):
    url, md5 = cifar10_archive
    monkeypatch.setitem(data.CIFAR_ARCHIVES, "cifar10", dataclasses.replace(data.CIFAR_ARCHIVES["cifar10"], url=url,
                                                                            md5=md5))
    fetched = data.load("cifar10", data_dir=str(tmp_path / "new"), validation_size=50)
    assert os.listdir(tmp_path / "new") == ["cifar-10-batches-py"]
    np.testing.assert_array_equal(fetched.validation.x, cifar10.validation.x)


@pytest.mark.parametrize("problem", ["checksum", "unreachable"])
def test_failed_download_leaves_nothing_and_says_what_to_do(tmp_path, monkeypatch, cifar10_archive, problem):
    url, md5 = cifar10_archive
    if problem == "checksum":
        md5 = "0" * 32
    else:
        url = (tmp_path / "missing.tar.gz").as_uri()
    monkeypatch.setitem(data.CIFAR_ARCHIVES, "cifar10", dataclasses.replace(data.CIFAR_ARCHIVES["cifar10"], url=url,
                                                                            md5=md5))
    with pytest.raises(OSError, match="could not download CIFAR-10") as caught:
        data.load("cifar10", data_dir=str(tmp_path / "new"))
    assert "\n" not in str(caught.value) and "extract it in" in str(caught.value)
    assert os.listdir(tmp_path / "new") == []


@pytest.mark.parametrize("name, classes", [("cifar10", 10), ("cifar100", 100)])
def test_cifar_from_tensorflow_datasets_when_no_local_folder(tmp_path, mocked_tfds, name, classes):
    with mocked_tfds(num_examples=60):
        dataset = data.load(name, seed=0, data_dir=str(tmp_path), download=False, validation_size=10)
    assert dataset.num_classes == classes and dataset.augmentation == "cifar" and dataset.input_shape == (32, 32, 3)
    assert [len(dataset.train), len(dataset.validation), len(dataset.test)] == [50, 10, 60]
    assert dataset.train.y.max() < classes and dataset.mean.shape == (3,)
    everything = np.bincount(np.concatenate([dataset.train.y, dataset.validation.y]), minlength=classes)
    held_out = np.bincount(dataset.validation.y, minlength=classes)
    assert np.all(np.abs(held_out - everything * 10 / 60) < 1)  # stratified


def test_local_folder_preferred_over_tensorflow_datasets(cifar10_folder, cifar10, mocked_tfds):
    with mocked_tfds(num_examples=60):
        dataset = data.load("cifar10", seed=0, data_dir=cifar10_folder.root, download=False, validation_size=50)
    np.testing.assert_array_equal(dataset.test.x, cifar10.test.x)
