"""Specification of mpqjax.data.tfds: any tensorflow-datasets image-classification dataset as in-memory splits
(array_record read without tensorflow, seeded subsets, resizing and central crops), clear errors for what is not
prepared, and ImageNet's subset from its 'train' and 'validation' splits. No test touches the network."""

import io
import logging
import sys

import numpy as np
import pytest
import tensorflow_datasets as tfds
from PIL import Image

from mpqjax import data


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
    # tfds looks for a checksums file beside a builder's code through importlib_resources, which tfds 4.9.10
    # imports but no longer installs; this builder downloads nothing, so it has no code path to search.
    code_path = None

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


def test_tfds_array_record_read_without_tensorflow(tiny_tfds_dir, raw, positions):
    dataset = data.load_tfds("mpqjax_tiny_pictures", 0, data_dir=tiny_tfds_dir, download=False, validation_size=8)
    train_images, train_labels = _tiny_images("train")
    test_images, test_labels = _tiny_images("test")
    assert dataset.num_classes == 4 and dataset.input_shape == (8, 8, 3) and dataset.augmentation is None
    assert [len(dataset.train), len(dataset.validation), len(dataset.test)] == [32, 8, 12]
    train = positions(raw(dataset, dataset.train), train_images)
    validation = positions(raw(dataset, dataset.validation), train_images)
    assert sorted([*train, *validation]) == list(range(40))
    np.testing.assert_array_equal(dataset.validation.y, train_labels[validation])
    np.testing.assert_array_equal(np.bincount(dataset.validation.y), [2, 2, 2, 2])
    np.testing.assert_array_equal(np.sort(positions(raw(dataset, dataset.test), test_images)), np.arange(12))
    np.testing.assert_array_equal(np.sort(dataset.test.y), np.sort(test_labels))
    np.testing.assert_allclose(dataset.mean, train_images[train].mean(axis=(0, 1, 2)), rtol=1e-5)


def test_tfds_caps_and_resizing(tiny_tfds_dir, raw, positions):
    load = dict(data_dir=tiny_tfds_dir, download=False, validation_size=4, max_train_examples=10, max_test_examples=5)
    capped = data.load_tfds("mpqjax_tiny_pictures", 3, **load)
    assert [len(capped.train), len(capped.validation), len(capped.test)] == [10, 4, 5]
    train_images, _ = _tiny_images("train")
    chosen = positions(raw(capped, capped.train), train_images)
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
    assert np.abs(raw(resized, resized.train).astype(float) - halved).max() <= 64


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


def test_default_data_dir_is_tensorflow_datasets_own(tmp_path, monkeypatch):
    monkeypatch.setenv("TFDS_DATA_DIR", str(tmp_path))
    assert data.default_data_dir() == str(tmp_path)
    monkeypatch.delenv("TFDS_DATA_DIR")
    monkeypatch.setenv("HOME", str(tmp_path))
    assert data.default_data_dir() == str(tmp_path / "tensorflow_datasets")


def test_tfds_not_prepared_explains_instead_of_a_tfds_traceback(tmp_path, monkeypatch, caplog):
    caplog.set_level(logging.WARNING)
    with pytest.raises(FileNotFoundError, match="mpqjax_tiny_pictures is not prepared in .*download=True"):
        data.load_tfds("mpqjax_tiny_pictures", data_dir=str(tmp_path), download=False)
    assert not caplog.records  # the one-line error only: no tensorflow-datasets warning about the absent copy
    # Preparing needs tensorflow; without it the loader says so before downloading anything.
    monkeypatch.setitem(sys.modules, "tensorflow", None)  # as if tensorflow were not installed
    with pytest.raises(FileNotFoundError, match="needs tensorflow to prepare it: pip install tensorflow"):
        data.load_tfds("mpqjax_tiny_pictures", data_dir=str(tmp_path), download=True)


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


def test_imagenet_subset_from_its_train_and_validation_splits(tmp_path, fake_imagenet, mocked_tfds, raw):
    splits, asked, as_data_source = fake_imagenet
    with mocked_tfds(as_data_source_fn=as_data_source):
        dataset = data.load_imagenet2012(0, data_dir=str(tmp_path), image_size=16, max_train_examples=20,
                                         validation_size=8, max_test_examples=10)
    assert set(asked) == {"train", "validation"}  # ImageNet's validation split is the test split
    assert (dataset.num_classes, dataset.input_shape, dataset.augmentation) == (1000, (16, 16, 3), "flip")
    assert [len(dataset.train), len(dataset.validation), len(dataset.test)] == [20, 8, 10]
    train_colours = {bytes(record["colour"]) for record in splits["train"]}
    test_colours = [bytes(record["colour"]) for record in splits["validation"]]
    for split, colours in [(dataset.train, train_colours), (dataset.validation, train_colours),
                           (dataset.test, test_colours)]:
        assert all(bytes(image[8, 8]) in colours for image in raw(dataset, split))  # the centre is the box
    assert len({bytes(image[8, 8]) for image in raw(dataset, dataset.train)}) == 20


@pytest.mark.parametrize("crop_fraction", [0.5, 1.0])
def test_tfds_resize_shorter_side_then_centre_crop(tmp_path, fake_imagenet, mocked_tfds, raw, crop_fraction):
    _, _, as_data_source = fake_imagenet
    with mocked_tfds(as_data_source_fn=as_data_source):
        dataset = data.load_tfds("imagenet2012", 0, data_dir=str(tmp_path), image_size=16, validation_size=8,
                                 test_split="validation", crop_fraction=crop_fraction)
    pixels = raw(dataset, dataset.test).reshape(30, -1, 3).astype(int)
    if crop_fraction == 0.5:
        # The central half of the shorter side, and as much of the longer one, lies inside every box.
        assert np.all(np.ptp(pixels, axis=1) == 0)
    else:
        # The whole shorter side: the black frame around the box shows.
        assert np.all(pixels.min(axis=(1, 2)) == 0) and np.all(pixels.max(axis=(1, 2)) >= 30)
