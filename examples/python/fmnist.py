"""Fashion-MNIST as the examples read it: the IDX files of Debian's `dataset-fashion-mnist`
package, with numpy alone (no torchvision)."""

import gzip
import pathlib

import numpy as np

FASHION_MNIST = pathlib.Path("/usr/share/datasets/fashion-mnist")


def load(train=True, directory=FASHION_MNIST):
    """(images as float32 in [0, 1], shape (n, 1, 28, 28); labels as int64)."""
    prefix = "train" if train else "t10k"
    with gzip.open(directory / f"{prefix}-images-idx3-ubyte.gz") as f:
        images = np.frombuffer(f.read(), dtype=np.uint8, offset=16)
    with gzip.open(directory / f"{prefix}-labels-idx1-ubyte.gz") as f:
        labels = np.frombuffer(f.read(), dtype=np.uint8, offset=8)
    images = images.reshape(-1, 1, 28, 28).astype(np.float32) / 255.0
    return images, labels.astype(np.int64)
