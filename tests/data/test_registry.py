"""Specification of mpqjax.data.registry: `load` by name, its errors for unknown names, options and absent data,
and a package that stays light to import."""

import os
import subprocess
import sys

import numpy as np
import pytest

from mpqjax import data


def test_loaders_by_name():
    assert list(data.LOADERS) == ["digits", "cifar10", "cifar100", "imagenet2012"]
    assert data.LOADERS["digits"] is data.load_digits_splits and data.LOADERS["cifar100"] is data.load_cifar100


def test_load_passes_the_seed_and_options_to_the_loader(digits):
    np.testing.assert_array_equal(data.load("digits", seed=0).test.x, digits.test.x)
    other = data.load("digits", seed=1, test_fraction=0.3)
    np.testing.assert_array_equal(other.test.y, data.load_digits_splits(1, test_fraction=0.3).test.y)


def test_unknown_dataset_or_option():
    with pytest.raises(ValueError, match="unknown dataset 'cifar99'; available: digits, cifar10, cifar100, imagenet"):
        data.load("cifar99")
    with pytest.raises(ValueError, match="dataset 'digits': .*validation_size"):
        data.load("digits", validation_size=10)
    assert data.load("digits", data_dir="/nowhere").num_classes == 10  # every loader accepts data_dir


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


def test_importing_the_package_and_its_loaders_does_not_import_tensorflow_datasets():
    code = ("import sys; import mpqjax.data as data; assert 'jax' not in sys.modules; "
            "data.load; data.load_tfds; data.load_cifar10; data.batches; "
            "heavy = {'tensorflow', 'tensorflow_datasets', 'sklearn'} & set(sys.modules); assert not heavy, heavy")
    subprocess.run([sys.executable, "-c", code], check=True)
