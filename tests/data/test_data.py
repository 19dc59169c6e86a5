"""Specification of mpqjax.data: fixed, normalised splits (digits, CIFAR folders and downloads, tensorflow-datasets,
ImageNet subsets), clear errors for absent data, augmentation and batching. No test touches the network."""

import contextlib
import dataclasses
import hashlib
import io
import os
import pickle
import tarfile
from unittest import mock

import jax
import numpy as np
import pytest
import tensorflow_datasets as tfds
from PIL import Image

from mpqjax import data


@pytest.fixture(scope="module")
def digits():
    return data.load_digits_splits(0)


def test_digits_splits_shapes_and_types(digits):
    assert digits.input_shape == (8, 8, 1) and digits.num_classes == 10
    sizes = [len(digits.train), len(digits.validation), len(digits.test)]
    assert sum(sizes) == 1797 and sizes[2] == pytest.approx(0.2 * 1797, abs=1) and sizes[1] == pytest.approx(180, abs=1)
    for split in (digits.train, digits.validation, digits.test):
        assert split.x.dtype == np.float32 and split.y.dtype == np.int32 and split.x.shape[1:] == (8, 8, 1)
    assert digits.augmentation is None


def test_splits_are_disjoint_and_stratified(digits):
    def keys(split):
        return {row.tobytes() + bytes([label]) for row, label in zip(split.x, split.y, strict=True)}

    train, validation, test = keys(digits.train), keys(digits.validation), keys(digits.test)
    assert not (train & test) and not (train & validation) and not (validation & test)
    for split in (digits.train, digits.test):
        shares = np.bincount(split.y, minlength=10) / len(split)
        assert np.all(np.abs(shares - 0.1) < 0.02)


def test_normalised_with_training_statistics(digits):
    assert abs(digits.train.x.mean()) < 1e-5 and digits.train.x.std() == pytest.approx(1.0, abs=1e-4)
    assert abs(digits.test.x.mean()) < 0.1
    assert digits.mean.shape == (1,) and digits.std.shape == (1,)
    raw_zero = digits.normalise(np.zeros((1, 8, 8, 1)))
    np.testing.assert_allclose(raw_zero, np.full((1, 8, 8, 1), -digits.mean / digits.std))
    assert digits.train.x.min() == pytest.approx(raw_zero.min())  # digits have pixels at 0


def test_same_seed_same_split_other_seed_other_split(digits):
    again = data.load("digits", seed=0)
    np.testing.assert_array_equal(again.test.x, digits.test.x)
    other = data.load("digits", seed=1)
    assert not np.array_equal(other.test.y, digits.test.y)


def test_unknown_dataset_option_and_bad_fractions():
    with pytest.raises(ValueError, match="unknown dataset 'cifar99'; available: digits, cifar10, cifar100, imagenet"):
        data.load("cifar99")
    with pytest.raises(ValueError, match="dataset 'digits': .*validation_size"):
        data.load("digits", validation_size=10)
    with pytest.raises(ValueError, match="fraction"):
        data.load_digits_splits(0, validation_fraction=0.5, test_fraction=0.6)
    assert data.load("digits", data_dir="/nowhere").num_classes == 10  # every loader accepts data_dir


def test_dataset_built_by_hand_keeps_the_old_constructor():
    split = data.Split(np.zeros((2, 4, 4, 1), np.float32), np.zeros(2, np.int32))
    dataset = data.Dataset("hand", split, split, split, 3)
    assert dataset.mean is None and dataset.augmentation is None and dataset.input_shape == (4, 4, 1)
    with pytest.raises(ValueError, match="no normalisation statistics"):
        dataset.normalise(np.zeros((1, 4, 4, 1)))


# ------------------------------------------------------------------------------------------------- CIFAR folders


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


def _raw(dataset, split):
    """The uint8 pixels a normalised split came from."""
    return np.rint(split.x * dataset.std + dataset.mean).astype(np.uint8)


def _positions(raw, pixels):
    """For each image of ``raw``, its position in ``pixels`` (images are unique)."""
    where = {image.tobytes(): position for position, image in enumerate(pixels)}
    return np.array([where[image.tobytes()] for image in raw])


def test_cifar10_folder_shapes_types_and_metadata(cifar10):
    assert (cifar10.name, cifar10.num_classes, cifar10.input_shape) == ("cifar10", 10, (32, 32, 3))
    assert [len(cifar10.train), len(cifar10.validation), len(cifar10.test)] == [100, 50, 40]
    for split in (cifar10.train, cifar10.validation, cifar10.test):
        assert split.x.dtype == np.float32 and split.y.dtype == np.int32
    assert cifar10.augmentation == "cifar" and cifar10.mean.shape == (3,) and cifar10.std.shape == (3,)


def test_cifar10_validation_comes_from_training_images_stratified(cifar10, cifar10_folder):
    train = _positions(_raw(cifar10, cifar10.train), cifar10_folder.train_pixels)
    validation = _positions(_raw(cifar10, cifar10.validation), cifar10_folder.train_pixels)
    assert not set(train) & set(validation) and len(set(train) | set(validation)) == 150
    np.testing.assert_array_equal(cifar10.train.y, cifar10_folder.train_labels[train])
    np.testing.assert_array_equal(cifar10.validation.y, cifar10_folder.train_labels[validation])
    np.testing.assert_array_equal(np.bincount(cifar10.validation.y, minlength=10), np.full(10, 5))
    # The test split is the test file, in order.
    np.testing.assert_array_equal(_raw(cifar10, cifar10.test), cifar10_folder.test_pixels)
    np.testing.assert_array_equal(cifar10.test.y, cifar10_folder.test_labels)


def test_cifar10_normalised_per_channel_with_training_split_only(cifar10, cifar10_folder):
    train = _positions(_raw(cifar10, cifar10.train), cifar10_folder.train_pixels)
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


# ------------------------------------------------------------------------------------------------- absent data


@pytest.mark.parametrize("name, says", [
    ("cifar10", ["CIFAR-10 not found in", "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",
                 "cifar-10-batches-py", "download=True"]),
    ("cifar100", ["CIFAR-100 not found in", "cifar-100-python.tar.gz", "cifar-100-python"]),
    ("imagenet2012", ["ImageNet (imagenet2012) is not prepared", "ILSVRC2012_img_train.tar",
                      "ILSVRC2012_img_val.tar", os.path.join("downloads", "manual"), "tensorflow"]),
])
def test_absent_data_says_what_to_download_and_where(tmp_path, name, says):
    with pytest.raises(FileNotFoundError) as caught:
        data.load(name, data_dir=str(tmp_path), download=False)
    message = str(caught.value)
    assert "\n" not in message and str(tmp_path) in message
    for text in says:
        assert text in message
    assert os.listdir(tmp_path) == []  # looking leaves nothing behind


def test_default_data_dir_is_tensorflow_datasets_own(tmp_path, monkeypatch):
    monkeypatch.setenv("TFDS_DATA_DIR", str(tmp_path))
    with pytest.raises(FileNotFoundError, match=f"CIFAR-10 not found in {tmp_path}:"):
        data.load("cifar10", download=False)


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


# ------------------------------------------------------------------------------------------------- tensorflow-datasets


def _png(image: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    return buffer.getvalue()


def _tiny_images(split):
    rng = np.random.default_rng({"train": 0, "test": 1}[split])
    count = {"train": 40, "test": 12}[split]
    return rng.integers(0, 256, (count, 8, 8, 3), dtype=np.uint8), np.arange(count) % 4


class MpqjaxTinyPictures(tfds.core.GeneratorBasedBuilder):
    """A real tensorflow-datasets dataset, prepared on disk as array_record without tensorflow."""

    VERSION = tfds.core.Version("1.0.0")

    def _info(self):
        return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({
            "image": tfds.features.Image(shape=(8, 8, 3)), "label": tfds.features.ClassLabel(num_classes=4)}))

    def _split_generators(self, dl_manager):
        return {split: self._generate_examples(split) for split in ("train", "test")}

    def _generate_examples(self, split):
        images, labels = _tiny_images(split)
        for number, (image, label) in enumerate(zip(images, labels, strict=True)):
            # Encoded bytes pass through tfds untouched; arrays would need tensorflow to encode.
            yield number, {"image": _png(image), "label": int(label)}


@pytest.fixture(scope="module")
def tiny_tfds_dir(tmp_path_factory):
    data_dir = str(tmp_path_factory.mktemp("tfds"))
    MpqjaxTinyPictures(data_dir=data_dir, file_format="array_record").download_and_prepare()
    return data_dir


def test_tfds_array_record_read_without_tensorflow(tiny_tfds_dir):
    dataset = data.load_tfds("mpqjax_tiny_pictures", 0, data_dir=tiny_tfds_dir, download=False, validation_size=8)
    train_images, train_labels = _tiny_images("train")
    test_images, test_labels = _tiny_images("test")
    assert dataset.num_classes == 4 and dataset.input_shape == (8, 8, 3) and dataset.augmentation is None
    assert [len(dataset.train), len(dataset.validation), len(dataset.test)] == [32, 8, 12]
    train = _positions(_raw(dataset, dataset.train), train_images)
    validation = _positions(_raw(dataset, dataset.validation), train_images)
    assert sorted([*train, *validation]) == list(range(40))
    np.testing.assert_array_equal(dataset.validation.y, train_labels[validation])
    np.testing.assert_array_equal(np.bincount(dataset.validation.y), [2, 2, 2, 2])
    np.testing.assert_array_equal(np.sort(_positions(_raw(dataset, dataset.test), test_images)), np.arange(12))
    np.testing.assert_array_equal(np.sort(dataset.test.y), np.sort(test_labels))
    np.testing.assert_allclose(dataset.mean, train_images[train].mean(axis=(0, 1, 2)), rtol=1e-5)


def test_tfds_caps_and_resizing(tiny_tfds_dir):
    load = dict(data_dir=tiny_tfds_dir, download=False, validation_size=4, max_train_examples=10, max_test_examples=5)
    capped = data.load_tfds("mpqjax_tiny_pictures", 3, **load)
    assert [len(capped.train), len(capped.validation), len(capped.test)] == [10, 4, 5]
    train_images, _ = _tiny_images("train")
    chosen = _positions(_raw(capped, capped.train), train_images)
    assert len(set(chosen)) == 10
    np.testing.assert_array_equal(data.load_tfds("mpqjax_tiny_pictures", 3, **load).train.x, capped.train.x)
    assert not np.array_equal(data.load_tfds("mpqjax_tiny_pictures", 4, **load).train.y, capped.train.y)
    # Four classes of 10: holding out 6 rounds two quotas of 1.5 up and two down.
    rounded = data.load_tfds("mpqjax_tiny_pictures", 3, data_dir=tiny_tfds_dir, download=False, validation_size=6)
    np.testing.assert_array_equal(np.sort(np.bincount(rounded.validation.y)), [1, 1, 2, 2])
    resized = data.load_tfds("mpqjax_tiny_pictures", 3, image_size=4, **load)
    assert resized.input_shape == (4, 4, 3)
    # Bilinear halving of the stored images: each pixel near the mean of its 2x2 block.
    halved = train_images[chosen].reshape(10, 4, 2, 4, 2, 3).astype(float).mean(axis=(2, 4))
    assert np.abs(_raw(resized, resized.train).astype(float) - halved).max() <= 64


def test_tfds_bad_names_splits_and_options(tiny_tfds_dir):
    with pytest.raises(ValueError, match="tensorflow-datasets has no dataset 'no_such_set'"):
        data.load_tfds("no_such_set", data_dir=tiny_tfds_dir)
    with pytest.raises(ValueError, match="no split 'holdout'"):
        data.load_tfds("mpqjax_tiny_pictures", data_dir=tiny_tfds_dir, download=False, test_split="holdout",
                       validation_size=4)
    for option in [dict(validation_size=40), dict(max_train_examples=0), dict(image_size=0), dict(crop_fraction=0.0),
                   dict(augmentation="mixup")]:
        with pytest.raises(ValueError, match=next(iter(option))):
            data.load_tfds("mpqjax_tiny_pictures", data_dir=tiny_tfds_dir, download=False,
                           **{"validation_size": 4, **option})


def test_tfds_not_prepared_explains_instead_of_a_tfds_traceback(tmp_path, monkeypatch):
    with pytest.raises(FileNotFoundError, match="mpqjax_tiny_pictures is not prepared in .*download=True"):
        data.load_tfds("mpqjax_tiny_pictures", data_dir=str(tmp_path), download=False)
    # Preparing needs tensorflow; without it the loader says so before downloading anything.
    monkeypatch.setattr(data, "_tensorflow_available", lambda: False)
    with pytest.raises(FileNotFoundError, match="needs tensorflow to prepare it: pip install tensorflow"):
        data.load_tfds("mpqjax_tiny_pictures", data_dir=str(tmp_path), download=True)


@contextlib.contextmanager
def mocked_tfds(**options):
    """tfds.testing.mock_data (no tensorflow needed for data sources), with the dataset counted as prepared:
    mock_data fakes reading and preparing but not `is_prepared`, which the loaders ask first."""
    with tfds.testing.mock_data(policy=tfds.testing.MockPolicy.USE_CODE, **options), mock.patch.object(
            tfds.core.DatasetBuilder, "is_prepared", return_value=True):
        yield


@pytest.mark.parametrize("name, classes", [("cifar10", 10), ("cifar100", 100)])
def test_cifar_from_tensorflow_datasets_when_no_local_folder(tmp_path, name, classes):
    with mocked_tfds(num_examples=60):
        dataset = data.load(name, seed=0, data_dir=str(tmp_path), download=False, validation_size=10)
    assert dataset.num_classes == classes and dataset.augmentation == "cifar" and dataset.input_shape == (32, 32, 3)
    assert [len(dataset.train), len(dataset.validation), len(dataset.test)] == [50, 10, 60]
    assert dataset.train.y.max() < classes and dataset.mean.shape == (3,)
    everything = np.bincount(np.concatenate([dataset.train.y, dataset.validation.y]), minlength=classes)
    held_out = np.bincount(dataset.validation.y, minlength=classes)
    assert np.all(np.abs(held_out - everything * 10 / 60) < 1)  # stratified


def test_local_folder_preferred_over_tensorflow_datasets(cifar10_folder, cifar10):
    with mocked_tfds(num_examples=60):
        dataset = data.load("cifar10", seed=0, data_dir=cifar10_folder.root, download=False, validation_size=50)
    np.testing.assert_array_equal(dataset.test.x, cifar10.test.x)


def _framed_picture(rng, portrait: bool):
    """A 64x96 black image (96x64 when portrait) with a coloured box over its central region, and the colour."""
    colour = rng.integers(30, 256, 3).astype(np.uint8)
    image = np.zeros((64, 96, 3), np.uint8)
    image[12:52, 24:72] = colour
    return (image.transpose(1, 0, 2) if portrait else image), colour


@pytest.fixture(scope="module")
def fake_imagenet():
    """Records of ImageNet's 'train' and 'validation' splits as tfds data sources give them (encoded images when
    a decoder skips decoding), and the splits asked for."""
    rng = np.random.default_rng(2)
    splits = {}
    for split, count in (("train", 40), ("validation", 30)):
        pictures = [_framed_picture(rng, portrait=number % 3 == 0) for number in range(count)]
        # 16 classes: a subset of 28 of the 40 training images leaves some class with one image.
        splits[split] = [{"image": _png(image), "label": number % 16, "colour": colour}
                         for number, (image, colour) in enumerate(pictures)]
    asked = []

    def as_data_source(self, split, decoders=None, **options):
        assert isinstance(decoders["image"], tfds.decode.SkipDecoding)
        asked.append(split)
        return splits[split]

    return splits, asked, as_data_source


def test_imagenet_subset_from_its_train_and_validation_splits(tmp_path, fake_imagenet):
    splits, asked, as_data_source = fake_imagenet
    with mocked_tfds(as_data_source_fn=as_data_source):
        dataset = data.load("imagenet2012", seed=0, data_dir=str(tmp_path), image_size=16, max_train_examples=20,
                            validation_size=8, max_test_examples=10)
    assert set(asked) == {"train", "validation"}  # ImageNet's validation split is the test split
    assert (dataset.num_classes, dataset.input_shape, dataset.augmentation) == (1000, (16, 16, 3), "flip")
    assert [len(dataset.train), len(dataset.validation), len(dataset.test)] == [20, 8, 10]
    train_colours = {bytes(record["colour"]) for record in splits["train"]}
    test_colours = [bytes(record["colour"]) for record in splits["validation"]]
    for split, colours in [(dataset.train, train_colours), (dataset.validation, train_colours),
                           (dataset.test, test_colours)]:
        assert all(bytes(image[8, 8]) in colours for image in _raw(dataset, split))  # the centre is the box
    assert len({bytes(image[8, 8]) for image in _raw(dataset, dataset.train)}) == 20


@pytest.mark.parametrize("crop_fraction", [0.5, 1.0])
def test_tfds_resize_shorter_side_then_centre_crop(tmp_path, fake_imagenet, crop_fraction):
    _, _, as_data_source = fake_imagenet
    with mocked_tfds(as_data_source_fn=as_data_source):
        dataset = data.load_tfds("imagenet2012", 0, data_dir=str(tmp_path), image_size=16, validation_size=8,
                                 test_split="validation", crop_fraction=crop_fraction)
    raw = _raw(dataset, dataset.test).reshape(30, -1, 3).astype(int)
    if crop_fraction == 0.5:
        # The central half of the shorter side, and as much of the longer one, lies inside every box.
        assert np.all(np.ptp(raw, axis=1) == 0)
    else:
        # The whole shorter side: the black frame around the box shows.
        assert np.all(raw.min(axis=(1, 2)) == 0) and np.all(raw.max(axis=(1, 2)) >= 30)


# ------------------------------------------------------------------------------------------------- augmentation


@pytest.fixture(scope="module")
def pictures():
    x = np.random.default_rng(3).normal(size=(64, 8, 8, 2)).astype(np.float32)
    return data.Split(x, np.arange(64, dtype=np.int32))  # labels name the examples


def _crop_and_flip_of(original, augmented, pad):
    """(row offset, column offset, flipped) such that augmented is that window of the padded original."""
    padded = np.pad(original, ((pad, pad), (pad, pad), (0, 0)))
    height, width = original.shape[:2]
    for row in range(2 * pad + 1):
        for column in range(2 * pad + 1):
            window = padded[row : row + height, column : column + width]
            for flipped, candidate in ((False, window), (True, window[:, ::-1])):
                if np.array_equal(candidate, augmented):
                    return row, column, flipped
    return None


def test_cifar_augmentation_crops_padded_images_and_flips(pictures):
    augmented = data.augment(jax.random.key(0), pictures.x, "cifar")
    assert augmented.shape == pictures.x.shape and augmented.dtype == np.float32
    found = [_crop_and_flip_of(original, image, 4) for original, image in zip(pictures.x, augmented, strict=True)]
    assert all(match is not None for match in found)
    assert {flipped for _, _, flipped in found} == {False, True}
    assert len({(row, column) for row, column, _ in found}) > 20  # offsets spread over the 9x9 choices


def test_flip_augmentation_flips_or_keeps(pictures):
    augmented = data.augment(jax.random.key(1), pictures.x, "flip")
    flipped = [np.array_equal(image, original[:, ::-1]) for original, image in zip(pictures.x, augmented, strict=True)]
    kept = [np.array_equal(image, original) for original, image in zip(pictures.x, augmented, strict=True)]
    assert all(f or k for f, k in zip(flipped, kept, strict=True)) and 10 < sum(flipped) < 54


def test_augmentation_is_determined_by_the_key(pictures):
    first = data.augment(jax.random.key(5), pictures.x, "cifar")
    np.testing.assert_array_equal(first, data.augment(jax.random.key(5), pictures.x, "cifar"))
    assert not np.array_equal(first, data.augment(jax.random.key(6), pictures.x, "cifar"))
    assert data.augment(jax.random.key(5), pictures.x, None) is pictures.x
    with pytest.raises(ValueError, match="unknown augmentation 'mixup'"):
        data.augment(jax.random.key(5), pictures.x, "mixup")


def test_batches_augment_each_batch_reproducibly(pictures):
    epoch = list(data.batches(jax.random.key(7), pictures, 16, augment="cifar"))
    again = list(data.batches(jax.random.key(7), pictures, 16, augment="cifar"))
    assert len(epoch) == 4 and sorted(np.concatenate([y for _, y in epoch])) == list(range(64))
    for (x, y), (x_again, y_again) in zip(epoch, again, strict=True):
        np.testing.assert_array_equal(x, x_again)
        np.testing.assert_array_equal(y, y_again)
        for image, label in zip(x, y, strict=True):
            assert _crop_and_flip_of(pictures.x[label], image, 4) is not None
    other = next(data.batches(jax.random.key(8), pictures, 16, augment="cifar"))[0]
    assert not np.array_equal(other, epoch[0][0])
    unshuffled = next(data.batches(jax.random.key(7), pictures, 16, shuffle=False, augment="flip"))
    np.testing.assert_array_equal(unshuffled[1], np.arange(16))
    with pytest.raises(ValueError, match="needs a PRNG key"):
        next(data.batches(None, pictures, 16, shuffle=False, augment="cifar"))


# ------------------------------------------------------------------------------------------------- batching


def test_batches_cover_an_epoch_once(digits):
    seen = [y for _, y in data.batches(jax.random.key(0), digits.validation, 32)]
    assert all(len(y) == 32 for y in seen) and len(seen) == len(digits.validation) // 32
    everything = np.concatenate([y for _, y in data.batches(None, digits.validation, 32, shuffle=False,
                                                            drop_remainder=False)])
    np.testing.assert_array_equal(everything, digits.validation.y)


def test_shuffle_is_determined_by_the_key(digits):
    first = next(data.batches(jax.random.key(1), digits.train, 16))[1]
    again = next(data.batches(jax.random.key(1), digits.train, 16))[1]
    other = next(data.batches(jax.random.key(2), digits.train, 16))[1]
    np.testing.assert_array_equal(first, again)
    assert not np.array_equal(first, other)


def test_bad_batch_size(digits):
    with pytest.raises(ValueError, match="batch_size"):
        next(data.batches(jax.random.key(0), digits.validation, 0))
    with pytest.raises(ValueError, match="exceeds"):
        next(data.batches(jax.random.key(0), digits.validation, 10_000))
