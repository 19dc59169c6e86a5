"""A search on your own, already trained flax.nnx model: mpqjax reads its weights with nnx.state.

Run from the repository root: python examples/own_model_nnx.py  (about a minute on a laptop CPU)
"""

import numpy as np
import optax
from flax import nnx
from sklearn.datasets import load_digits


class CNN(nnx.Module):
    """A small CNN in NNX, trained below with its own optax loop."""

    def __init__(self, rngs: nnx.Rngs):
        self.conv1, self.bn1 = nnx.Conv(1, 32, (3, 3), rngs=rngs), nnx.BatchNorm(32, rngs=rngs)
        self.conv2, self.bn2 = nnx.Conv(32, 64, (3, 3), strides=2, rngs=rngs), nnx.BatchNorm(64, rngs=rngs)
        self.head = nnx.Linear(64, 10, rngs=rngs)

    def __call__(self, x):
        x = nnx.relu(self.bn1(self.conv1(x)))
        x = nnx.relu(self.bn2(self.conv2(x)))
        return self.head(x.mean(axis=(1, 2)))


digits = load_digits()
images, labels = (digits.images[..., None] / 16.0).astype(np.float32), digits.target
model = CNN(nnx.Rngs(0))
optimizer = nnx.Optimizer(model, optax.adam(3e-3), wrt=nnx.Param)


@nnx.jit
def train_step(model, optimizer, x, y):
    loss = lambda m: optax.softmax_cross_entropy_with_integer_labels(m(x), y).mean()  # noqa: E731
    optimizer.update(model, nnx.grad(loss)(model))


for step in range(600):
    batch = np.random.default_rng(step).integers(0, 1400, 64)
    train_step(model, optimizer, images[batch], labels[batch])

# -- mpqjax ---------------------------------------------------------------------------------------------------------
import mpqjax  # noqa: E402
from mpqjax.data import from_arrays  # noqa: E402

dataset = from_arrays(train=(images[:1400], labels[:1400]), test=(images[1400:], labels[1400:]))
config = mpqjax.SearchConfig(trials=24, widths=(0.75, 0.875, 1.0))
result = mpqjax.run(config, "runs/own-nnx", model=model, variables=nnx.state(model), dataset=dataset)
print(result.best["test_accuracy"], result.best["size_reduction_vs_fip16"])
