"""A search on your own flax.linen model: the model and its data are yours, mpqjax is the last ten lines.

Run from the repository root: python examples/own_model_linen.py  (about a minute on a laptop CPU)
"""

import flax.linen as nn
import numpy as np
from sklearn.datasets import load_digits


class CNN(nn.Module):
    """A small residual CNN, written as any Flax user would."""

    @nn.compact
    def __call__(self, x, train: bool = False):
        norm = lambda: nn.BatchNorm(use_running_average=not train)  # noqa: E731
        x = nn.relu(norm()(nn.Conv(32, (3, 3))(x)))
        y = nn.relu(norm()(nn.Conv(32, (3, 3))(x)))
        x = nn.relu(x + norm()(nn.Conv(32, (3, 3))(y)))
        x = nn.relu(norm()(nn.Conv(64, (3, 3), strides=2)(x)))
        return nn.Dense(10)(x.mean(axis=(1, 2)))


digits = load_digits()
images, labels = (digits.images[..., None] / 16.0).astype(np.float32), digits.target

# -- mpqjax ---------------------------------------------------------------------------------------------------------
import mpqjax  # noqa: E402
from mpqjax.data import from_arrays  # noqa: E402
from mpqjax.export import load_program  # noqa: E402

dataset = from_arrays(train=(images[:1400], labels[:1400]), test=(images[1400:], labels[1400:]))
config = mpqjax.SearchConfig(trials=24, float_epochs=15, fixed_bits=(("Conv_0", 8), ("Dense_0", 8)))
result = mpqjax.run(config, "runs/own-linen", model=CNN(), dataset=dataset)
program = load_program("runs/own-linen/model.npz")  # runs anywhere jax runs, without this file's code
print(result.best["test_accuracy"], np.mean(program.predict(images[1400:]).argmax(-1) == labels[1400:]))
